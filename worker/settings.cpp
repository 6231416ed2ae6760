#include "worker/settings.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include "worker/yaml_json.h"

extern char** environ;  // NOLINT(readability-identifier-naming)

namespace poolworker {
namespace {

// A value from one source, with where it came from for error messages.
struct RawValue {
  Json value;
  std::string origin;  // e.g. "flag --limit", "environment variable PREFECT_API_URL"
  std::string layer;   // "flag", "environment", "config file", "profile", "default"
};

enum class Kind { String, Number, Integer, Boolean, StringList, IntList, Object, SecretValue };

struct Spec {
  std::string key;               // dotted key in the YAML file
  std::vector<std::string> env;  // environment variables, first found wins
  bool prefect = false;          // a Prefect setting: passed on to runs as env[0]
  Kind kind = Kind::String;
  std::function<void(Settings&, const Json&)> apply;
};

Error invalid(const RawValue& raw, const std::string& what) {
  return makeError(ErrorKind::InvalidConfiguration, raw.origin + ": " + what);
}

std::string trim(std::string s) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string describe(const Json& v) {
  return v.is_string() ? "'" + v.get<std::string>() + "'" : v.dump();
}

// Converts a raw value to the Json shape `kind` asks for, accepting the string forms that
// environment variables and flags have.
Result<Json> convert(const RawValue& raw, Kind kind) {
  const Json& v = raw.value;
  switch (kind) {
    case Kind::String:
    case Kind::SecretValue:
      if (v.is_string()) {
        return v;
      }
      if (v.is_number() || v.is_boolean()) {
        return Json(v.dump());
      }
      return invalid(raw, "expected a string, got " + v.dump());
    case Kind::Number: {
      if (v.is_number()) {
        return v;
      }
      if (v.is_string()) {
        std::string s = trim(v.get<std::string>());
        try {
          size_t used = 0;
          double d = std::stod(s, &used);
          if (used == s.size() && std::isfinite(d)) {
            return Json(d);
          }
        } catch (const std::exception&) {
        }
      }
      return invalid(raw, "expected a number, got " + describe(v));
    }
    case Kind::Integer: {
      if (v.is_number_integer()) {
        return v;
      }
      if (v.is_string()) {
        std::string s = trim(v.get<std::string>());
        try {
          size_t used = 0;
          long long n = std::stoll(s, &used);
          if (used == s.size()) {
            return Json(n);
          }
        } catch (const std::exception&) {
        }
      }
      return invalid(raw, "expected a whole number, got " + describe(v));
    }
    case Kind::Boolean: {
      if (v.is_boolean()) {
        return v;
      }
      if (v.is_string()) {
        std::string s = lower(trim(v.get<std::string>()));
        if (s == "1" || s == "true" || s == "yes" || s == "on" || s == "t" || s == "y") {
          return Json(true);
        }
        if (s == "0" || s == "false" || s == "no" || s == "off" || s == "f" || s == "n") {
          return Json(false);
        }
      }
      return invalid(raw, "expected true or false, got " + describe(v));
    }
    case Kind::StringList: {
      if (v.is_array()) {
        for (const auto& item : v) {
          if (!item.is_string()) {
            return invalid(raw, "expected a list of strings, got " + v.dump());
          }
        }
        return v;
      }
      if (v.is_string()) {
        Json out = Json::array();
        std::stringstream ss(v.get<std::string>());
        std::string part;
        while (std::getline(ss, part, ',')) {
          if (!trim(part).empty()) {
            out.push_back(trim(part));
          }
        }
        return out;
      }
      return invalid(raw, "expected a list of strings, got " + v.dump());
    }
    case Kind::IntList: {
      Json out = Json::array();
      if (v.is_array()) {
        for (const auto& item : v) {
          if (!item.is_number_integer()) {
            return invalid(raw, "expected a list of whole numbers, got " + v.dump());
          }
          out.push_back(item);
        }
        return out;
      }
      if (v.is_string()) {
        std::stringstream ss(v.get<std::string>());
        std::string part;
        while (std::getline(ss, part, ',')) {
          part = trim(part);
          if (part.empty()) {
            continue;
          }
          try {
            size_t used = 0;
            int n = std::stoi(part, &used);
            if (used != part.size()) {
              throw std::invalid_argument(part);
            }
            out.push_back(n);
          } catch (const std::exception&) {
            return invalid(raw, "expected comma-separated status codes, got '" + part + "'");
          }
        }
        return out;
      }
      return invalid(raw, "expected a list of whole numbers, got " + v.dump());
    }
    case Kind::Object: {
      if (v.is_object()) {
        return v;
      }
      if (v.is_string()) {
        std::string s = trim(v.get<std::string>());
        if (s.empty()) {
          return Json::object();
        }
        Json parsed = Json::parse(s, nullptr, false);
        if (!parsed.is_discarded() && parsed.is_object()) {
          return parsed;
        }
      }
      return invalid(raw, "expected a JSON object, got " + describe(v));
    }
  }
  return invalid(raw, "unsupported value");
}

std::string readSecretFile(const std::string& path, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "cannot read '" + path + "'";
    return {};
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return trim(ss.str());
}

// The table of settings. Adding a setting means adding one line here.
const std::vector<Spec>& specs() {
  static const std::vector<Spec> kSpecs = [] {
    std::vector<Spec> s;
    auto str = [](std::string Settings::*field) {
      return [field](Settings& st, const Json& v) { st.*field = v.get<std::string>(); };
    };
    auto num = [](double Settings::*field) {
      return [field](Settings& st, const Json& v) { st.*field = v.get<double>(); };
    };
    auto flag = [](bool Settings::*field) {
      return [field](Settings& st, const Json& v) { st.*field = v.get<bool>(); };
    };
    s.push_back({"pool", {"POOLWORKER_POOL"}, false, Kind::String, str(&Settings::pool)});
    s.push_back(
        {"work_queues",
         {"POOLWORKER_WORK_QUEUES"},
         false,
         Kind::StringList,
         [](Settings& st, const Json& v) { st.work_queues = v.get<std::vector<std::string>>(); }});
    s.push_back({"name", {"POOLWORKER_NAME"}, false, Kind::String, str(&Settings::name)});
    s.push_back(
        {"limit", {"POOLWORKER_LIMIT"}, false, Kind::Integer, [](Settings& st, const Json& v) {
           st.limit = v.get<int>();
         }});
    s.push_back({"prefetch_seconds",
                 {"PREFECT_WORKER_PREFETCH_SECONDS"},
                 true,
                 Kind::Number,
                 num(&Settings::prefetch_seconds)});
    s.push_back({"run_once", {}, false, Kind::Boolean, flag(&Settings::run_once)});
    s.push_back({"type", {"POOLWORKER_TYPE"}, false, Kind::String, str(&Settings::type)});
    s.push_back({"base_job_template",
                 {"POOLWORKER_BASE_JOB_TEMPLATE"},
                 false,
                 Kind::String,
                 str(&Settings::base_job_template_path)});
    s.push_back({"with_healthcheck",
                 {"POOLWORKER_WITH_HEALTHCHECK"},
                 false,
                 Kind::Boolean,
                 flag(&Settings::with_healthcheck)});
    s.push_back({"create_pool_if_not_found",
                 {"POOLWORKER_CREATE_POOL_IF_NOT_FOUND"},
                 false,
                 Kind::Boolean,
                 flag(&Settings::create_pool_if_not_found)});
    s.push_back(
        {"state_dir", {"POOLWORKER_STATE_DIR"}, false, Kind::String, str(&Settings::state_dir)});
    s.push_back(
        {"plugin_dirs",
         {"POOLWORKER_PLUGIN_DIRS", "POOLWORKER_PLUGIN_DIR"},
         false,
         Kind::StringList,
         [](Settings& st, const Json& v) { st.plugin_dirs = v.get<std::vector<std::string>>(); }});
    // The singular spelling, for a config file that names one directory. Read after
    // plugin_dirs, it must not override a flag or an environment variable.
    s.push_back({"plugin_dir", {}, false, Kind::StringList, [](Settings& st, const Json& v) {
                   if (st.plugin_dirs.empty()) {
                     st.plugin_dirs = v.get<std::vector<std::string>>();
                   }
                 }});

    s.push_back(
        {"api.url", {"PREFECT_API_URL"}, true, Kind::String, [](Settings& st, const Json& v) {
           std::string url = trim(v.get<std::string>());
           while (!url.empty() && url.back() == '/') {
             url.pop_back();
           }
           st.api.url = url;
         }});
    s.push_back(
        {"api.key", {"PREFECT_API_KEY"}, true, Kind::SecretValue, [](Settings& st, const Json& v) {
           st.api.key = Secret(v.get<std::string>());
         }});
    s.push_back(
        {"api.auth_string",
         {"PREFECT_API_AUTH_STRING"},
         true,
         Kind::SecretValue,
         [](Settings& st, const Json& v) { st.api.auth_string = Secret(v.get<std::string>()); }});
    s.push_back(
        {"api.request_timeout",
         {"PREFECT_API_REQUEST_TIMEOUT"},
         true,
         Kind::Number,
         [](Settings& st, const Json& v) { st.api.request_timeout_seconds = v.get<double>(); }});
    s.push_back(
        {"api.tls_insecure_skip_verify",
         {"PREFECT_API_TLS_INSECURE_SKIP_VERIFY"},
         true,
         Kind::Boolean,
         [](Settings& st, const Json& v) { st.api.tls_insecure_skip_verify = v.get<bool>(); }});
    s.push_back({"api.ssl_cert_file",
                 {"PREFECT_API_SSL_CERT_FILE", "SSL_CERT_FILE"},
                 true,
                 Kind::String,
                 [](Settings& st, const Json& v) { st.api.ssl_cert_file = v.get<std::string>(); }});
    s.push_back({"client.max_retries",
                 {"PREFECT_CLIENT_MAX_RETRIES"},
                 true,
                 Kind::Integer,
                 [](Settings& st, const Json& v) { st.api.max_retries = v.get<int>(); }});
    s.push_back(
        {"client.retry_jitter_factor",
         {"PREFECT_CLIENT_RETRY_JITTER_FACTOR"},
         true,
         Kind::Number,
         [](Settings& st, const Json& v) { st.api.retry_jitter_factor = v.get<double>(); }});
    s.push_back({"client.retry_base_seconds",
                 {"POOLWORKER_CLIENT_RETRY_BASE_SECONDS"},
                 false,
                 Kind::Number,
                 [](Settings& st, const Json& v) { st.api.retry_base_seconds = v.get<double>(); }});
    s.push_back({"client.retry_extra_codes",
                 {"PREFECT_CLIENT_RETRY_EXTRA_CODES"},
                 true,
                 Kind::IntList,
                 [](Settings& st, const Json& v) {
                   st.api.retry_extra_codes = v.get<std::vector<int>>();
                 }});
    s.push_back({"client.csrf_support_enabled",
                 {"PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"},
                 true,
                 Kind::Boolean,
                 [](Settings& st, const Json& v) { st.api.csrf_support_enabled = v.get<bool>(); }});
    s.push_back({"client.custom_headers",
                 {"PREFECT_CLIENT_CUSTOM_HEADERS"},
                 true,
                 Kind::Object,
                 [](Settings& st, const Json& v) { st.api.custom_headers = v; }});
    s.push_back({"cloud.api_url",
                 {"PREFECT_CLOUD_API_URL"},
                 true,
                 Kind::String,
                 [](Settings& st, const Json& v) { st.api.cloud_api_url = v.get<std::string>(); }});

    s.push_back({"worker.query_seconds",
                 {"PREFECT_WORKER_QUERY_SECONDS"},
                 true,
                 Kind::Number,
                 num(&Settings::query_seconds)});
    s.push_back({"worker.heartbeat_seconds",
                 {"PREFECT_WORKER_HEARTBEAT_SECONDS"},
                 true,
                 Kind::Number,
                 num(&Settings::heartbeat_seconds)});
    s.push_back({"worker.webserver_host",
                 {"PREFECT_WORKER_WEBSERVER_HOST"},
                 true,
                 Kind::String,
                 str(&Settings::webserver_host)});
    s.push_back({"worker.webserver_port",
                 {"PREFECT_WORKER_WEBSERVER_PORT"},
                 true,
                 Kind::Integer,
                 [](Settings& st, const Json& v) { st.webserver_port = v.get<int>(); }});
    s.push_back({"worker.cancellation_poll_seconds",
                 {"POOLWORKER_CANCELLATION_POLL_SECONDS"},
                 false,
                 Kind::Number,
                 num(&Settings::cancellation_poll_seconds)});
    s.push_back({"worker.kill_grace_seconds",
                 {"POOLWORKER_KILL_GRACE_SECONDS"},
                 false,
                 Kind::Number,
                 num(&Settings::kill_grace_seconds)});
    s.push_back({"worker.max_starting",
                 {"POOLWORKER_MAX_STARTING"},
                 false,
                 Kind::Integer,
                 [](Settings& st, const Json& v) { st.max_starting = v.get<int>(); }});
    s.push_back({"worker.drain_seconds",
                 {"POOLWORKER_DRAIN_SECONDS"},
                 false,
                 Kind::Number,
                 num(&Settings::drain_seconds)});
    s.push_back(
        {"log.level", {"POOLWORKER_LOG_LEVEL"}, false, Kind::String, str(&Settings::log_level)});
    s.push_back(
        {"log.format", {"POOLWORKER_LOG_FORMAT"}, false, Kind::String, str(&Settings::log_format)});
    return s;
  }();
  return kSpecs;
}

// Keys of the YAML file that are not plain settings.
constexpr const char* kFileOnlyKeys[] = {"api.key_file", "api.auth_string_file"};

// ---- YAML ------------------------------------------------------------------------------

struct FileLayer {
  std::map<std::string, RawValue> values;  // dotted key → value
  Json backends = Json::object();
  std::map<std::string, std::string> prefect_settings;  // from `settings:`
};

bool isKnownKey(const std::string& key) {
  for (const auto& spec : specs()) {
    if (spec.key == key) {
      return true;
    }
  }
  for (const char* k : kFileOnlyKeys) {
    if (key == k) {
      return true;
    }
  }
  return false;
}

bool isKnownSection(const std::string& prefix) {
  for (const auto& spec : specs()) {
    if (spec.key.rfind(prefix + ".", 0) == 0) {
      return true;
    }
  }
  for (const char* k : kFileOnlyKeys) {
    if (std::string(k).rfind(prefix + ".", 0) == 0) {
      return true;
    }
  }
  return false;
}

Result<void> flattenYaml(const std::string& path, const YAML::Node& node, const std::string& prefix,
                         FileLayer& out) {
  for (const auto& item : node) {
    std::string name = item.first.Scalar();
    std::string key = prefix.empty() ? name : prefix + "." + name;
    std::string where = path + ":" + std::to_string(item.first.Mark().line + 1);
    if (key == "backends") {
      if (!item.second.IsMap()) {
        return makeError(ErrorKind::InvalidConfiguration,
                         where + ": 'backends' must be a mapping of backend name to options");
      }
      out.backends = yamlToJson(item.second);
      continue;
    }
    if (key == "settings") {
      if (!item.second.IsMap()) {
        return makeError(ErrorKind::InvalidConfiguration,
                         where + ": 'settings' must be a mapping of PREFECT_* names to values");
      }
      for (const auto& setting : item.second) {
        std::string setting_name = setting.first.Scalar();
        if (setting_name.rfind("PREFECT_", 0) != 0 || !setting.second.IsScalar()) {
          return makeError(ErrorKind::InvalidConfiguration,
                           path + ":" + std::to_string(setting.first.Mark().line + 1) +
                               ": 'settings." + setting_name +
                               "' must be a PREFECT_* setting with a scalar value");
        }
        out.prefect_settings[setting_name] = setting.second.Scalar();
      }
      continue;
    }
    if (item.second.IsMap() && !isKnownKey(key)) {
      if (!isKnownSection(key)) {
        return makeError(ErrorKind::InvalidConfiguration, where + ": unknown key '" + key + "'");
      }
      if (auto nested = flattenYaml(path, item.second, key, out); !nested) {
        return nested;
      }
      continue;
    }
    if (!isKnownKey(key)) {
      return makeError(ErrorKind::InvalidConfiguration, where + ": unknown key '" + key + "'");
    }
    out.values[key] =
        RawValue{yamlToJson(item.second), where + " (key '" + key + "')", "config file"};
  }
  return success();
}

Result<FileLayer> loadConfigFile(const std::string& path) {
  FileLayer layer;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return makeError(ErrorKind::InvalidConfiguration, "cannot read config file '" + path + "'");
  } catch (const YAML::ParserException& e) {
    return makeError(ErrorKind::InvalidConfiguration,
                     path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (root.IsNull()) {
    return layer;
  }
  if (!root.IsMap()) {
    return makeError(ErrorKind::InvalidConfiguration,
                     path + ": the config file must be a YAML mapping");
  }
  try {
    if (auto flat = flattenYaml(path, root, "", layer); !flat) {
      return flat.error();
    }
  } catch (const YAML::Exception& e) {
    return makeError(ErrorKind::InvalidConfiguration,
                     path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  return layer;
}

// ---- Prefect profile (profiles.toml), a small subset of TOML --------------------------------

// Parses `key = value` lines under `[section]` headers. Values are basic strings, literal
// strings, numbers or booleans, which is all Prefect writes to profiles.toml.
std::map<std::string, std::map<std::string, std::string>> parseSimpleToml(std::istream& in) {
  std::map<std::string, std::map<std::string, std::string>> out;
  std::string section;
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#') {
      continue;
    }
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      // Prefect writes [profiles.default] and [profiles."my profile"].
      section.erase(std::remove(section.begin(), section.end(), '"'), section.end());
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos) {
      continue;
    }
    std::string key = trim(line.substr(0, eq));
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'')) {
      char quote = value.front();
      std::string unquoted;
      for (size_t i = 1; i < value.size() && value[i] != quote; ++i) {
        if (quote == '"' && value[i] == '\\' && i + 1 < value.size()) {
          ++i;
          switch (value[i]) {
            case 'n':
              unquoted += '\n';
              break;
            case 't':
              unquoted += '\t';
              break;
            default:
              unquoted += value[i];
          }
          continue;
        }
        unquoted += value[i];
      }
      value = unquoted;
    } else if (auto hash = value.find('#'); hash != std::string::npos) {
      value = trim(value.substr(0, hash));
    }
    out[section][key] = value;
  }
  return out;
}

std::map<std::string, std::string> loadProfile(const Environment& env) {
  std::string home;
  if (auto it = env.find("PREFECT_HOME"); it != env.end() && !it->second.empty()) {
    home = it->second;
  } else if (auto h = env.find("HOME"); h != env.end()) {
    home = h->second + "/.prefect";
  } else {
    return {};
  }
  std::string path = home + "/profiles.toml";
  if (auto it = env.find("PREFECT_PROFILES_PATH"); it != env.end() && !it->second.empty()) {
    path = it->second;
  }
  std::ifstream in(path);
  if (!in) {
    return {};
  }
  auto toml = parseSimpleToml(in);
  std::string active;
  if (auto it = env.find("PREFECT_PROFILE"); it != env.end() && !it->second.empty()) {
    active = it->second;
  } else if (auto top = toml.find(""); top != toml.end() && top->second.contains("active")) {
    active = top->second.at("active");
  } else {
    active = "ephemeral";
  }
  auto section = toml.find("profiles." + active);
  if (section == toml.end()) {
    return {};
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : section->second) {
    if (key.rfind("PREFECT_", 0) == 0) {
      out[key] = value;
    }
  }
  return out;
}

}  // namespace

bool ApiSettings::isCloud() const {
  return !cloud_api_url.empty() && url.rfind(cloud_api_url, 0) == 0;
}

Environment currentEnvironment() {
  Environment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) {
      env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
    }
  }
  return env;
}

std::string defaultStateDirectory(const Environment& env) {
  if (auto it = env.find("STATE_DIRECTORY"); it != env.end() && !it->second.empty()) {
    // systemd's StateDirectory= may list several, separated by ':'.
    return it->second.substr(0, it->second.find(':'));
  }
  if (geteuid() == 0) {
    return "/var/lib/poolworker";
  }
  if (auto it = env.find("XDG_STATE_HOME"); it != env.end() && !it->second.empty()) {
    return it->second + "/poolworker";
  }
  if (auto it = env.find("HOME"); it != env.end() && !it->second.empty()) {
    return it->second + "/.local/state/poolworker";
  }
  return "/tmp/poolworker-" + std::to_string(geteuid());
}

Result<Settings> resolveSettings(const StartFlags& flags, const Environment& env) {
  Settings settings;

  // Layer 1: flags.
  std::map<std::string, RawValue> flag_values;
  auto put_flag = [&](const std::string& key, const std::string& flag_name, Json value) {
    flag_values[key] = RawValue{std::move(value), "flag " + flag_name, "flag"};
  };
  if (flags.pool) {
    put_flag("pool", "--pool", *flags.pool);
  }
  if (!flags.work_queues.empty()) {
    put_flag("work_queues", "--work-queue", flags.work_queues);
  }
  if (flags.name) {
    put_flag("name", "--name", *flags.name);
  }
  if (flags.limit) {
    put_flag("limit", "--limit", *flags.limit);
  }
  if (flags.prefetch_seconds) {
    put_flag("prefetch_seconds", "--prefetch-seconds", *flags.prefetch_seconds);
  }
  if (flags.run_once) {
    put_flag("run_once", "--run-once", true);
  }
  if (flags.type) {
    put_flag("type", "--type", *flags.type);
  }
  if (flags.base_job_template) {
    put_flag("base_job_template", "--base-job-template", *flags.base_job_template);
  }
  if (flags.with_healthcheck) {
    put_flag("with_healthcheck", "--with-healthcheck", true);
  }
  if (flags.create_pool_if_not_found) {
    put_flag("create_pool_if_not_found", "--create-pool-if-not-found",
             *flags.create_pool_if_not_found);
  }
  if (flags.state_dir) {
    put_flag("state_dir", "--state-dir", *flags.state_dir);
  }
  if (flags.log_level) {
    put_flag("log.level", "--log-level", *flags.log_level);
  }
  if (flags.log_format) {
    put_flag("log.format", "--log-format", *flags.log_format);
  }
  if (!flags.plugin_dirs.empty()) {
    put_flag("plugin_dirs", "--plugin-dir", flags.plugin_dirs);
  }

  // Layer 3: the config file.
  FileLayer file;
  std::string config_path;
  if (flags.config_file) {
    config_path = *flags.config_file;
  } else if (auto it = env.find("POOLWORKER_CONFIG"); it != env.end() && !it->second.empty()) {
    config_path = it->second;
  }
  if (!config_path.empty()) {
    auto loaded = loadConfigFile(config_path);
    if (!loaded) {
      return loaded.error();
    }
    file = std::move(loaded).value();
  }

  // Layer 4: the active Prefect profile, and the config file's `settings:` map, both of which
  // speak in PREFECT_* names and sit below the environment.
  std::map<std::string, std::string> profile = loadProfile(env);

  for (const auto& spec : specs()) {
    std::optional<RawValue> chosen;
    if (auto it = flag_values.find(spec.key); it != flag_values.end()) {
      chosen = it->second;
    }
    if (!chosen) {
      for (const auto& name : spec.env) {
        if (auto it = env.find(name); it != env.end() && !it->second.empty()) {
          chosen = RawValue{Json(it->second), "environment variable " + name, "environment"};
          break;
        }
      }
    }
    if (!chosen) {
      if (auto it = file.values.find(spec.key); it != file.values.end()) {
        chosen = it->second;
      }
    }
    if (!chosen && !spec.env.empty()) {
      const std::string& name = spec.env.front();
      if (auto it = file.prefect_settings.find(name); it != file.prefect_settings.end()) {
        chosen =
            RawValue{Json(it->second), config_path + " (settings." + name + ")", "config file"};
      } else if (auto p = profile.find(name); p != profile.end()) {
        chosen = RawValue{Json(p->second), "Prefect profile setting " + name, "profile"};
      }
    }
    if (!chosen || chosen->value.is_null()) {
      continue;
    }
    auto converted = convert(*chosen, spec.kind);
    if (!converted) {
      return converted.error();
    }
    spec.apply(settings, *converted);
    settings.sources[spec.key] = chosen->layer;
    if (spec.prefect && !spec.env.empty() && spec.env.front().rfind("PREFECT_", 0) == 0) {
      // Runs get the value in the form Prefect itself reads from its environment.
      const Json& given = chosen->value;
      settings.prefect_settings[spec.env.front()] =
          given.is_string() ? given.get<std::string>() : given.dump();
    }
  }

  // Secrets from files: the API key and auth string need not sit in the environment.
  auto secret_from_file = [&](const std::string& key, const std::string& env_name, Secret& target,
                              const std::string& prefect_name) -> Result<void> {
    std::string path;
    std::string origin;
    if (auto it = env.find(env_name); it != env.end() && !it->second.empty()) {
      path = it->second;
      origin = "environment variable " + env_name;
    } else if (auto f = file.values.find(key);
               f != file.values.end() && f->second.value.is_string()) {
      path = f->second.value.get<std::string>();
      origin = f->second.origin;
    }
    if (path.empty() || !target.empty()) {
      return success();
    }
    std::string error;
    std::string value = readSecretFile(path, &error);
    if (!error.empty()) {
      return makeError(ErrorKind::InvalidConfiguration, origin + ": " + error);
    }
    target = Secret(value);
    settings.prefect_settings[prefect_name] = value;
    settings.sources[key] = "file";
    return success();
  };
  if (auto r = secret_from_file("api.key_file", "POOLWORKER_API_KEY_FILE", settings.api.key,
                                "PREFECT_API_KEY");
      !r) {
    return r.error();
  }
  if (auto r = secret_from_file("api.auth_string_file", "POOLWORKER_API_AUTH_STRING_FILE",
                                settings.api.auth_string, "PREFECT_API_AUTH_STRING");
      !r) {
    return r.error();
  }
  // systemd credentials (LoadCredential=prefect-api-key:...) are read the same way.
  if (auto it = env.find("CREDENTIALS_DIRECTORY"); it != env.end() && settings.api.key.empty()) {
    std::string path = it->second + "/prefect-api-key";
    if (std::filesystem::exists(path)) {
      std::string error;
      std::string value = readSecretFile(path, &error);
      if (error.empty() && !value.empty()) {
        settings.api.key = Secret(value);
        settings.prefect_settings["PREFECT_API_KEY"] = value;
        settings.sources["api.key"] = "credential";
      }
    }
  }

  // Every other Prefect setting the user set is passed on to runs unchanged, as Prefect does.
  for (const auto& [name, value] : profile) {
    settings.prefect_settings.try_emplace(name, value);
  }
  for (const auto& [name, value] : file.prefect_settings) {
    settings.prefect_settings[name] = value;
  }
  for (const auto& [name, value] : env) {
    if (name.rfind("PREFECT_", 0) == 0 && name.rfind("PREFECT__", 0) != 0) {
      settings.prefect_settings[name] = value;
    }
  }

  // Backend options: the file's `backends:` map, overridden by POOLWORKER_BACKEND_<NAME>_<KEY>.
  settings.backend_options = file.backends;
  for (const auto& [name, value] : env) {
    const std::string prefix = "POOLWORKER_BACKEND_";
    if (name.rfind(prefix, 0) != 0) {
      continue;
    }
    std::string rest = lower(name.substr(prefix.size()));
    auto underscore = rest.find('_');
    if (underscore == std::string::npos || underscore == 0) {
      return makeError(
          ErrorKind::InvalidConfiguration,
          "environment variable " + name + ": expected POOLWORKER_BACKEND_<BACKEND>_<OPTION>");
    }
    settings.backend_options[rest.substr(0, underscore)][rest.substr(underscore + 1)] = value;
  }

  // Checks that need the whole picture.
  if (settings.pool.empty()) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "Missing required option '--pool' / '-p' (the work pool to poll)");
  }
  for (char c : std::string("/%")) {
    if (settings.name.find(c) != std::string::npos) {
      return makeError(
          ErrorKind::InvalidConfiguration,
          std::string("worker name '") + settings.name + "' must not contain '" + c + "'");
    }
  }
  if (settings.limit && *settings.limit < 1) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "--limit must be at least 1, got " + std::to_string(*settings.limit));
  }
  if (settings.max_starting < 1) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "worker.max_starting (POOLWORKER_MAX_STARTING) must be at least 1, got " +
                         std::to_string(settings.max_starting));
  }
  auto positive = [](double v) { return v > 0; };
  if (!positive(settings.query_seconds)) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "PREFECT_WORKER_QUERY_SECONDS must be greater than 0");
  }
  if (!positive(settings.heartbeat_seconds)) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "PREFECT_WORKER_HEARTBEAT_SECONDS must be greater than 0");
  }
  if (settings.prefetch_seconds < 0) {
    return makeError(ErrorKind::InvalidConfiguration, "--prefetch-seconds must not be negative");
  }
  if (settings.webserver_port < 0 || settings.webserver_port > 65535) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "PREFECT_WORKER_WEBSERVER_PORT must be between 0 and 65535");
  }
  if (settings.log_format != "text" && settings.log_format != "json") {
    return makeError(ErrorKind::InvalidConfiguration,
                     "log format must be 'text' or 'json', got '" + settings.log_format + "'");
  }
  static const std::vector<std::string> kLevels = {"trace",   "debug", "info",
                                                   "warning", "error", "critical"};
  settings.log_level = lower(settings.log_level);
  if (settings.log_level == "warn") {
    settings.log_level = "warning";
  }
  if (std::find(kLevels.begin(), kLevels.end(), settings.log_level) == kLevels.end()) {
    return makeError(
        ErrorKind::InvalidConfiguration,
        "log level must be one of trace, debug, info, warning, error, critical; got '" +
            settings.log_level + "'");
  }
  if (auto debug = env.find("PREFECT_WORKER_DEBUG_MODE");
      debug != env.end() && !settings.sources.contains("log.level")) {
    std::string v = lower(debug->second);
    if (v == "1" || v == "true" || v == "yes" || v == "on") {
      settings.log_level = "debug";
    }
  }
  if (settings.state_dir.empty()) {
    settings.state_dir = defaultStateDirectory(env);
  }
  return settings;
}

}  // namespace poolworker
