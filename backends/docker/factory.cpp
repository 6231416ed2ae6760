#include "backends/docker/factory.h"

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "backends/docker/docker_backend.h"

extern const char kDockerDefaultTemplate[];

namespace poolworker::backends::docker {
namespace {

namespace fs = std::filesystem;

constexpr char kDefaultHost[] = "unix:///var/run/docker.sock";
constexpr double kDefaultTimeoutSeconds = 60;

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

bool environmentSet(const char* name) { return std::getenv(name) != nullptr; }

Result<std::string> stringOption(const Json& options, const char* key, std::string fallback) {
  const auto it = options.find(key);
  if (it == options.end() || it->is_null()) {
    return fallback;
  }
  if (!it->is_string()) {
    return invalid(std::string("backends.docker.") + key + " must be a string, not " +
                   it->type_name());
  }
  return it->get<std::string>();
}

// Options set through POOLWORKER_BACKEND_DOCKER_<KEY> arrive as strings.
std::optional<bool> boolOf(const Json& value) {
  if (value.is_boolean()) {
    return value.get<bool>();
  }
  if (value.is_string()) {
    const std::string text = value.get<std::string>();
    if (text == "1" || text == "true" || text == "True" || text == "yes" || text == "on") {
      return true;
    }
    if (text == "0" || text == "false" || text == "False" || text == "no" || text == "off" ||
        text.empty()) {
      return false;
    }
  }
  return std::nullopt;
}

Result<common::TlsSettings> tlsSettings(const Json& options) {
  common::TlsSettings tls;
  bool verify = false;
  if (const auto it = options.find("tls_verify"); it != options.end() && !it->is_null()) {
    const auto flag = boolOf(*it);
    if (!flag) {
      return invalid("backends.docker.tls_verify must be true or false, not " + it->dump());
    }
    verify = *flag;
  } else {
    // docker-py and the Docker CLI: set and non-empty means on, whatever the value.
    verify = environmentSet("DOCKER_TLS_VERIFY") && !environment("DOCKER_TLS_VERIFY").empty();
  }
  auto cert_path = stringOption(options, "cert_path", environment("DOCKER_CERT_PATH"));
  if (!cert_path) {
    return cert_path.error();
  }
  if (!verify && cert_path->empty()) {
    return tls;
  }
  fs::path directory = *cert_path;
  if (directory.empty()) {
    directory = fs::path(environment("HOME")) / ".docker";
  }
  tls.enabled = true;
  tls.verify = verify;
  std::error_code ec;
  if (verify) {
    const fs::path ca = directory / "ca.pem";
    if (!fs::exists(ca, ec)) {
      return invalid("backends.docker: tls_verify is on but the CA file '" + ca.string() +
                     "' does not exist (set cert_path or DOCKER_CERT_PATH)");
    }
    tls.ca_file = ca.string();
  }
  const fs::path cert = directory / "cert.pem";
  const fs::path key = directory / "key.pem";
  const bool has_cert = fs::exists(cert, ec);
  const bool has_key = fs::exists(key, ec);
  if (has_cert != has_key) {
    return invalid("backends.docker: a client certificate needs both '" + cert.string() +
                   "' and '" + key.string() + "'");
  }
  if (has_cert) {
    tls.cert_file = cert.string();
    tls.key_file = key.string();
  }
  return tls;
}

Result<std::chrono::milliseconds> timeoutOption(const Json& options) {
  double seconds = kDefaultTimeoutSeconds;
  const auto parse = [](const std::string& text) -> std::optional<double> {
    try {
      size_t used = 0;
      const double value = std::stod(text, &used);
      if (used == text.size()) {
        return value;
      }
    } catch (...) {
    }
    return std::nullopt;
  };
  if (const auto it = options.find("timeout"); it != options.end() && !it->is_null()) {
    const auto value = it->is_number()   ? std::optional<double>(it->get<double>())
                       : it->is_string() ? parse(it->get<std::string>())
                                         : std::nullopt;
    if (!value) {
      return invalid("backends.docker.timeout must be a number of seconds, not " + it->dump());
    }
    seconds = *value;
  } else if (const std::string text = environment("DOCKER_CLIENT_TIMEOUT"); !text.empty()) {
    const auto value = parse(text);
    if (!value) {
      return invalid("DOCKER_CLIENT_TIMEOUT='" + text + "' is not a number of seconds");
    }
    seconds = *value;
  }
  if (!(seconds > 0) || seconds > 86400.0 * 365) {
    return invalid("backends.docker.timeout must be a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

fs::path dockerConfigFile() {
  fs::path directory;
  if (const std::string configured = environment("DOCKER_CONFIG"); !configured.empty()) {
    directory = configured;
  } else if (const std::string home = environment("HOME"); !home.empty()) {
    directory = fs::path(home) / ".docker";
  } else {
    return {};
  }
  return directory / "config.json";
}

class DockerBackendFactory final : public BackendFactory {
 public:
  explicit DockerBackendFactory(boost::asio::io_context& io) : io_(io) {}

  BackendInfo info() const override {
    BackendInfo info;
    info.name = "docker";
    info.version = POOLWORKER_VERSION;
    info.origin = "built-in";
    info.description =
        "Runs each flow run as a container on a Docker engine, as Prefect's Docker worker does";
    info.options = {
        OptionSpec{"host", "string", nullptr,
                   "Address of the Docker engine: unix:///path or tcp://host:port; unset: "
                   "DOCKER_HOST, else unix:///var/run/docker.sock."},
        OptionSpec{"tls_verify", "boolean", nullptr,
                   "Speak TLS to a TCP engine and verify its certificate against "
                   "<cert_path>/ca.pem; unset: on when DOCKER_TLS_VERIFY is set and not empty."},
        OptionSpec{"cert_path", "string", nullptr,
                   "Directory of ca.pem, cert.pem and key.pem for TLS (setting it turns TLS on); "
                   "unset: DOCKER_CERT_PATH, else ~/.docker when tls_verify is on."},
        OptionSpec{"timeout", "number", nullptr,
                   "Seconds an engine request may take (waits and log streams are not bounded); "
                   "unset: DOCKER_CLIENT_TIMEOUT, else 60."},
        OptionSpec{"api_version", "string", nullptr,
                   "Engine API version to speak instead of negotiating one, e.g. \"1.41\". For "
                   "testing only."},
    };
    return info;
  }

  Json defaultBaseJobTemplate() const override {
    return Json::parse(kDockerDefaultTemplate, nullptr, false);
  }

  Result<BackendPtr> create(const BackendContext& context) override {
    if (context.executor == nullptr) {
      return invalid("the Docker backend needs an executor");
    }
    const Json options = context.options.is_object() ? context.options : Json::object();
    std::string fallback_host = environment("DOCKER_HOST");
    if (fallback_host.empty()) {
      fallback_host = kDefaultHost;
    }
    auto host = stringOption(options, "host", fallback_host);
    if (!host) {
      return host.error();
    }
    auto tls = tlsSettings(options);
    if (!tls) {
      return tls.error();
    }
    auto endpoint = common::parseHttpEndpoint(*host, *tls, "2375", "2376");
    if (!endpoint) {
      return invalid("backends.docker.host: " + endpoint.error().message);
    }
    auto timeout = timeoutOption(options);
    if (!timeout) {
      return timeout.error();
    }
    auto api_version = stringOption(options, "api_version", "");
    if (!api_version) {
      return api_version.error();
    }
    DockerBackendSettings settings;
    settings.endpoint = std::move(endpoint).value();
    settings.timeout = *timeout;
    settings.api_version = std::move(api_version).value();
    settings.docker_config = dockerConfigFile();
    std::error_code ec;
    settings.working_directory = fs::current_path(ec);
    return BackendPtr(std::make_unique<DockerBackend>(io_, *context.executor, std::move(settings)));
  }

 private:
  boost::asio::io_context& io_;
};

}  // namespace

BackendFactoryPtr makeFactory(boost::asio::io_context& io) {
  return std::make_unique<DockerBackendFactory>(io);
}

}  // namespace poolworker::backends::docker
