#include "backends/docker/job_config.h"

#include <cctype>
#include <utility>

#include "backends/docker/byte_size.h"
#include "backends/docker/volumes.h"

namespace poolworker::backends::docker {
namespace {

Error invalid(const std::string& key, const std::string& why) {
  return makeError(ErrorKind::InvalidConfiguration, "job variable '" + key + "' " + why);
}

const Json* find(const Json& configuration, const char* key) {
  const auto it = configuration.find(key);
  return it == configuration.end() ? nullptr : &*it;
}

// pydantic's lax booleans: true/false, 0/1 and the usual words.
Result<bool> readBool(const Json& value, const char* key) {
  if (value.is_boolean()) {
    return value.get<bool>();
  }
  if (value.is_number_integer() && (value.get<long long>() == 0 || value.get<long long>() == 1)) {
    return value.get<long long>() == 1;
  }
  if (value.is_string()) {
    std::string text = value.get<std::string>();
    for (auto& c : text) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    for (const char* yes : {"true", "1", "yes", "on", "t", "y"}) {
      if (text == yes) {
        return true;
      }
    }
    for (const char* no : {"false", "0", "no", "off", "f", "n"}) {
      if (text == no) {
        return false;
      }
    }
  }
  return invalid(key, "must be true or false, not " + value.dump());
}

Result<std::optional<std::string>> readOptionalString(const Json& value, const char* key) {
  if (value.is_null()) {
    return std::optional<std::string>();
  }
  if (!value.is_string()) {
    return invalid(key, std::string("must be a string or null, not ") + value.type_name());
  }
  return std::optional<std::string>(value.get<std::string>());
}

Result<std::vector<std::string>> readStringList(const Json& value, const char* key) {
  if (value.is_null()) {
    return std::vector<std::string>();
  }
  if (!value.is_array()) {
    return invalid(key, std::string("must be a list of strings, not ") + value.type_name());
  }
  std::vector<std::string> out;
  for (const auto& item : value) {
    if (!item.is_string()) {
      return invalid(key, "must be a list of strings; it holds " + item.dump());
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

Result<Json> readStringMap(const Json& value, const char* key, bool allow_null_values) {
  if (value.is_null()) {
    return Json::object();
  }
  if (!value.is_object()) {
    return invalid(key, std::string("must be an object of strings, not ") + value.type_name());
  }
  for (const auto& [name, item] : value.items()) {
    if (!item.is_string() && !(allow_null_values && item.is_null())) {
      return invalid(key, "must hold strings; '" + name + "' is " + item.dump());
    }
  }
  return value;
}

Result<std::optional<Json>> readSize(const Json& value, const char* key) {
  if (value.is_null()) {
    return std::optional<Json>();
  }
  if (auto parsed = parseByteSize(value, std::string("job variable '") + key + "'"); !parsed) {
    return parsed.error();
  }
  return std::optional<Json>(value);
}

}  // namespace

Result<DockerJob> parseJobConfiguration(const Json& configuration,
                                        const std::filesystem::path& base) {
  if (!configuration.is_object()) {
    return makeError(
        ErrorKind::InvalidConfiguration,
        std::string("the job configuration must be an object, not ") + configuration.type_name());
  }
  DockerJob job;
  if (const Json* v = find(configuration, "command")) {
    auto command = readOptionalString(*v, "command");
    if (!command) {
      return command.error();
    }
    if (*command && !(*command)->empty()) {
      job.command = std::move(command).value();
    }
  }
  if (const Json* v = find(configuration, "env")) {
    auto env = readStringMap(*v, "env", true);
    if (!env) {
      return env.error();
    }
    job.env = std::move(env).value();
  }
  if (const Json* v = find(configuration, "labels")) {
    auto labels = readStringMap(*v, "labels", false);
    if (!labels) {
      return labels.error();
    }
    job.labels = std::move(labels).value();
  }
  if (const Json* v = find(configuration, "name")) {
    auto name = readOptionalString(*v, "name");
    if (!name) {
      return name.error();
    }
    job.name = std::move(name).value();
  }
  if (const Json* v = find(configuration, "image")) {
    auto image = readOptionalString(*v, "image");
    if (!image) {
      return image.error();
    }
    if (*image && !(*image)->empty()) {
      job.image = **image;
    }
  }
  if (const Json* v = find(configuration, "registry_credentials")) {
    auto credentials = parseRegistryCredentials(*v);
    if (!credentials) {
      return credentials.error();
    }
    job.registry_credentials = std::move(credentials).value();
  }
  if (const Json* v = find(configuration, "image_pull_policy")) {
    auto policy = parsePullPolicy(*v);
    if (!policy) {
      return policy.error();
    }
    job.image_pull_policy = *policy;
  }
  if (const Json* v = find(configuration, "networks")) {
    auto networks = readStringList(*v, "networks");
    if (!networks) {
      return networks.error();
    }
    job.networks = std::move(networks).value();
  }
  if (const Json* v = find(configuration, "network_mode")) {
    auto mode = readOptionalString(*v, "network_mode");
    if (!mode) {
      return mode.error();
    }
    job.network_mode = std::move(mode).value();
  }
  for (const auto& [key, target] : {std::pair<const char*, bool*>{"auto_remove", &job.auto_remove},
                                    {"stream_output", &job.stream_output},
                                    {"privileged", &job.privileged}}) {
    if (const Json* v = find(configuration, key); v != nullptr && !v->is_null()) {
      auto flag = readBool(*v, key);
      if (!flag) {
        return flag.error();
      }
      *target = *flag;
    }
  }
  if (const Json* v = find(configuration, "volumes")) {
    auto volumes = readStringList(*v, "volumes");
    if (!volumes) {
      return volumes.error();
    }
    for (const auto& volume : *volumes) {
      auto checked = validateVolume(volume);
      if (!checked) {
        return checked.error();
      }
      job.volumes.push_back(resolveRelativeBind(*checked, base));
    }
  }
  if (const Json* v = find(configuration, "mem_limit")) {
    auto size = readSize(*v, "mem_limit");
    if (!size) {
      return size.error();
    }
    job.mem_limit = std::move(size).value();
  }
  if (const Json* v = find(configuration, "memswap_limit")) {
    auto size = readSize(*v, "memswap_limit");
    if (!size) {
      return size.error();
    }
    job.memswap_limit = std::move(size).value();
  }
  if (const Json* v = find(configuration, "container_create_kwargs");
      v != nullptr && !v->is_null()) {
    if (!v->is_object()) {
      return invalid("container_create_kwargs",
                     std::string("must be an object or null, not ") + v->type_name());
    }
    job.container_create_kwargs = *v;
  }
  return job;
}

}  // namespace poolworker::backends::docker
