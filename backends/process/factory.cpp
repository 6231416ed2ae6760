#include "backends/process/factory.h"

#include <filesystem>

#include "backends/process/process_backend.h"

extern const char kProcessDefaultTemplate[];

namespace poolworker::backends::process {
namespace {

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

Result<std::string> stringOption(const Json& options, const char* key, std::string fallback) {
  const auto it = options.find(key);
  if (it == options.end() || it->is_null()) {
    return fallback;
  }
  if (!it->is_string()) {
    return invalid(std::string("backends.process.") + key + " must be a string, not " +
                   it->type_name());
  }
  return it->get<std::string>();
}

class ProcessBackendFactory final : public BackendFactory {
 public:
  explicit ProcessBackendFactory(boost::asio::io_context& io) : io_(io) {}

  BackendInfo info() const override {
    BackendInfo info;
    info.name = "process";
    info.version = POOLWORKER_VERSION;
    info.origin = "built-in";
    info.description =
        "Runs each flow run as a local process, in a session of its own that outlives the worker";
    info.options = {
        OptionSpec{"python", "string", "python3",
                   "Interpreter of the default command '<python> -m prefect.engine', looked up "
                   "on the run's PATH unless it is a path."},
        OptionSpec{"shim_path", "string", "",
                   "Path of the poolworker-run program; empty: beside the poolworker binary, "
                   "else in ../libexec/poolworker/."},
    };
    return info;
  }

  Json defaultBaseJobTemplate() const override {
    return Json::parse(kProcessDefaultTemplate, nullptr, false);
  }

  Result<BackendPtr> create(const BackendContext& context) override {
    if (context.executor == nullptr) {
      return invalid("the process backend needs an executor");
    }
    if (context.state_directory.empty()) {
      return invalid("the process backend needs a state directory");
    }
    const Json options = context.options.is_object() ? context.options : Json::object();
    ProcessBackendSettings settings;
    auto python = stringOption(options, "python", "python3");
    if (!python) {
      return std::move(python).error();
    }
    if (python->empty()) {
      return invalid("backends.process.python must not be empty");
    }
    settings.python = std::move(python).value();
    auto shim = stringOption(options, "shim_path", "");
    if (!shim) {
      return std::move(shim).error();
    }
    if (shim->empty()) {
      settings.shim_path = defaultShimPath();
    } else {
      std::error_code error;
      settings.shim_path =
          std::filesystem::absolute(std::filesystem::path(*shim), error).lexically_normal();
      if (error) {
        return invalid("backends.process.shim_path: cannot resolve '" + *shim +
                       "': " + error.message());
      }
    }
    std::error_code error;
    settings.state_directory =
        std::filesystem::absolute(std::filesystem::path(context.state_directory), error)
            .lexically_normal();
    if (error) {
      return invalid("the process backend's state directory '" + context.state_directory +
                     "' cannot be resolved: " + error.message());
    }
    return BackendPtr(
        std::make_unique<ProcessBackend>(io_, *context.executor, std::move(settings)));
  }

 private:
  boost::asio::io_context& io_;
};

}  // namespace

BackendFactoryPtr makeFactory(boost::asio::io_context& io) {
  return std::make_unique<ProcessBackendFactory>(io);
}

}  // namespace poolworker::backends::process
