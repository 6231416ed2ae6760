#include "backends/docker/create_kwargs.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <utility>

#include "backends/common/shell_split.h"
#include "backends/docker/byte_size.h"
#include "backends/docker/engine_version.h"

namespace poolworker::backends::docker {
namespace {

enum class Target { Config, Host };

enum class Kind {
  Copy,            // as given
  Str,             // Python str() of a scalar
  Int,             // an integer
  Bytes,           // a size: "512m" or bytes
  Command,         // a string split like a shell, or a list
  Devices,         // "/dev/x[:/dev/y[:rwm]]" strings or objects
  DeviceRequests,  // objects normalised to the Engine's DeviceRequest
  Ulimits,         // objects normalised to {Name, Soft, Hard}
  LogConfig,       // {type, config} to {Type, Config}
  Sysctls,         // object, values turned into strings
  Tmpfs,           // object, or a list of "path[:options]"
  VolumesFrom,     // "a,b" or a list
  Links,           // object or pairs, to sorted "name:alias"
  Healthcheck,     // {test, interval, ...} to {Test, Interval, ...}
  StringList,      // list, each item as a string
  LxcConf,         // object to [{Key, Value}]
  Dict,            // must be an object
  List,            // must be a list
  String,          // must be a string
  HostOnly,        // must be the string "host"
};

// Whether docker-py keeps a value when it is merely not None, or only when it is truthy.
enum class Keep { NotNone, Truthy };

struct Entry {
  const char* key;
  Target target;
  const char* field;
  Kind kind;
  Keep keep;
  const char* min_api;  // nullptr: any version
};

// docker-py's RUN_CREATE_KWARGS and RUN_HOST_CONFIG_KWARGS, less the keys the worker sets.
constexpr Entry kEntries[] = {
    {"domainname", Target::Config, "Domainname", Kind::Copy, Keep::NotNone, nullptr},
    {"entrypoint", Target::Config, "Entrypoint", Kind::Command, Keep::NotNone, nullptr},
    {"healthcheck", Target::Config, "Healthcheck", Kind::Healthcheck, Keep::NotNone, "1.24"},
    {"hostname", Target::Config, "Hostname", Kind::Copy, Keep::NotNone, nullptr},
    {"mac_address", Target::Config, "MacAddress", Kind::Copy, Keep::NotNone, nullptr},
    {"network_disabled", Target::Config, "NetworkDisabled", Kind::Copy, Keep::NotNone, nullptr},
    {"stop_signal", Target::Config, "StopSignal", Kind::Copy, Keep::NotNone, nullptr},
    {"user", Target::Config, "User", Kind::Str, Keep::NotNone, nullptr},
    {"working_dir", Target::Config, "WorkingDir", Kind::Copy, Keep::NotNone, nullptr},
    {"blkio_weight_device", Target::Host, "BlkioWeightDevice", Kind::List, Keep::Truthy, "1.22"},
    {"blkio_weight", Target::Host, "BlkioWeight", Kind::Int, Keep::Truthy, "1.22"},
    {"cap_add", Target::Host, "CapAdd", Kind::Copy, Keep::Truthy, nullptr},
    {"cap_drop", Target::Host, "CapDrop", Kind::Copy, Keep::Truthy, nullptr},
    {"cgroup_parent", Target::Host, "CgroupParent", Kind::Copy, Keep::NotNone, nullptr},
    {"cgroupns", Target::Host, "CgroupnsMode", Kind::Copy, Keep::Truthy, nullptr},
    {"cpu_count", Target::Host, "CpuCount", Kind::Int, Keep::Truthy, "1.25"},
    {"cpu_percent", Target::Host, "CpuPercent", Kind::Int, Keep::Truthy, "1.25"},
    {"cpu_period", Target::Host, "CpuPeriod", Kind::Int, Keep::Truthy, nullptr},
    {"cpu_quota", Target::Host, "CpuQuota", Kind::Int, Keep::Truthy, nullptr},
    {"cpu_shares", Target::Host, "CpuShares", Kind::Int, Keep::Truthy, nullptr},
    {"cpuset_cpus", Target::Host, "CpusetCpus", Kind::Copy, Keep::Truthy, nullptr},
    {"cpuset_mems", Target::Host, "CpusetMems", Kind::String, Keep::Truthy, nullptr},
    {"cpu_rt_period", Target::Host, "CPURealtimePeriod", Kind::Int, Keep::Truthy, "1.25"},
    {"cpu_rt_runtime", Target::Host, "CPURealtimeRuntime", Kind::Int, Keep::Truthy, "1.25"},
    {"device_cgroup_rules", Target::Host, "DeviceCgroupRules", Kind::List, Keep::NotNone, "1.28"},
    {"device_read_bps", Target::Host, "BlkioDeviceReadBps", Kind::List, Keep::Truthy, "1.22"},
    {"device_read_iops", Target::Host, "BlkioDeviceReadIOps", Kind::List, Keep::Truthy, "1.22"},
    {"device_write_bps", Target::Host, "BlkioDeviceWriteBps", Kind::List, Keep::Truthy, "1.22"},
    {"device_write_iops", Target::Host, "BlkioDeviceWriteIOps", Kind::List, Keep::Truthy, "1.22"},
    {"devices", Target::Host, "Devices", Kind::Devices, Keep::Truthy, nullptr},
    {"device_requests", Target::Host, "DeviceRequests", Kind::DeviceRequests, Keep::NotNone,
     "1.40"},
    {"dns_opt", Target::Host, "DnsOptions", Kind::Copy, Keep::NotNone, nullptr},
    {"dns_search", Target::Host, "DnsSearch", Kind::Copy, Keep::Truthy, nullptr},
    {"dns", Target::Host, "Dns", Kind::Copy, Keep::NotNone, nullptr},
    {"group_add", Target::Host, "GroupAdd", Kind::StringList, Keep::Truthy, nullptr},
    {"init", Target::Host, "Init", Kind::Copy, Keep::NotNone, "1.25"},
    {"init_path", Target::Host, "InitPath", Kind::Copy, Keep::NotNone, "1.25"},
    {"ipc_mode", Target::Host, "IpcMode", Kind::Copy, Keep::Truthy, nullptr},
    {"isolation", Target::Host, "Isolation", Kind::String, Keep::Truthy, "1.24"},
    {"kernel_memory", Target::Host, "KernelMemory", Kind::Bytes, Keep::Truthy, nullptr},
    {"links", Target::Host, "Links", Kind::Links, Keep::NotNone, nullptr},
    {"log_config", Target::Host, "LogConfig", Kind::LogConfig, Keep::NotNone, nullptr},
    {"lxc_conf", Target::Host, "LxcConf", Kind::LxcConf, Keep::NotNone, nullptr},
    {"mem_reservation", Target::Host, "MemoryReservation", Kind::Bytes, Keep::Truthy, nullptr},
    {"mem_swappiness", Target::Host, "MemorySwappiness", Kind::Int, Keep::NotNone, nullptr},
    {"mounts", Target::Host, "Mounts", Kind::Copy, Keep::NotNone, "1.30"},
    {"nano_cpus", Target::Host, "NanoCpus", Kind::Int, Keep::Truthy, "1.25"},
    {"oom_kill_disable", Target::Host, "OomKillDisable", Kind::Copy, Keep::Truthy, nullptr},
    {"oom_score_adj", Target::Host, "OomScoreAdj", Kind::Int, Keep::Truthy, "1.22"},
    {"pid_mode", Target::Host, "PidMode", Kind::Copy, Keep::Truthy, nullptr},
    {"pids_limit", Target::Host, "PidsLimit", Kind::Int, Keep::Truthy, "1.23"},
    {"publish_all_ports", Target::Host, "PublishAllPorts", Kind::Copy, Keep::Truthy, nullptr},
    {"read_only", Target::Host, "ReadonlyRootfs", Kind::Copy, Keep::NotNone, nullptr},
    {"restart_policy", Target::Host, "RestartPolicy", Kind::Dict, Keep::Truthy, nullptr},
    {"security_opt", Target::Host, "SecurityOpt", Kind::List, Keep::NotNone, nullptr},
    {"shm_size", Target::Host, "ShmSize", Kind::Bytes, Keep::NotNone, nullptr},
    {"storage_opt", Target::Host, "StorageOpt", Kind::Copy, Keep::NotNone, "1.24"},
    {"sysctls", Target::Host, "Sysctls", Kind::Sysctls, Keep::Truthy, nullptr},
    {"tmpfs", Target::Host, "Tmpfs", Kind::Tmpfs, Keep::Truthy, "1.22"},
    {"ulimits", Target::Host, "Ulimits", Kind::Ulimits, Keep::NotNone, nullptr},
    {"userns_mode", Target::Host, "UsernsMode", Kind::HostOnly, Keep::Truthy, "1.23"},
    {"uts_mode", Target::Host, "UTSMode", Kind::HostOnly, Keep::Truthy, nullptr},
    {"volume_driver", Target::Host, "VolumeDriver", Kind::Copy, Keep::NotNone, nullptr},
    {"volumes_from", Target::Host, "VolumesFrom", Kind::VolumesFrom, Keep::NotNone, nullptr},
    {"runtime", Target::Host, "Runtime", Kind::Copy, Keep::Truthy, "1.25"},
};

// Job variables of the Docker worker: Prefect drops kwargs named like them.
constexpr const char* kJobVariableNames[] = {
    "command",
    "env",
    "labels",
    "name",
    "image",
    "registry_credentials",
    "image_pull_policy",
    "networks",
    "network_mode",
    "auto_remove",
    "volumes",
    "stream_output",
    "mem_limit",
    "memswap_limit",
    "privileged",
    "container_create_kwargs",
};

// Keys with handling of their own.
constexpr const char* kSpecialKeys[] = {
    "ports",  "networking_config", "platform", "extra_hosts",
    "detach", "stdin_open",        "tty",      "use_config_proxy"};

Error invalid(const std::string& key, const std::string& why) {
  return makeError(ErrorKind::InvalidConfiguration,
                   "job variable 'container_create_kwargs': '" + key + "' " + why);
}

bool truthy(const Json& value) {
  if (value.is_null()) {
    return false;
  }
  if (value.is_boolean()) {
    return value.get<bool>();
  }
  if (value.is_number()) {
    return value.get<double>() != 0.0;
  }
  if (value.is_string()) {
    return !value.get<std::string>().empty();
  }
  return !value.empty();
}

// Python's str() of a JSON scalar.
std::string pyStr(const Json& value) {
  if (value.is_string()) {
    return value.get<std::string>();
  }
  if (value.is_boolean()) {
    return value.get<bool>() ? "True" : "False";
  }
  if (value.is_null()) {
    return "None";
  }
  return value.dump();
}

Result<Json> normaliseDevice(const Json& device, const std::string& key) {
  if (device.is_object()) {
    return device;
  }
  if (!device.is_string()) {
    return invalid(key, "must hold strings such as '/dev/sda:/dev/xvda:rwm' or objects");
  }
  const std::string text = device.get<std::string>();
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const auto colon = text.find(':', start);
    parts.push_back(text.substr(start, colon - start));
    if (colon == std::string::npos) {
      break;
    }
    start = colon + 1;
  }
  Json out = Json::object();
  out["PathOnHost"] = parts[0];
  out["PathInContainer"] = parts.size() > 1 ? parts[1] : parts[0];
  out["CgroupPermissions"] = parts.size() > 2 ? parts[2] : "rwm";
  return out;
}

const Json* either(const Json& object, const char* snake, const char* engine) {
  if (const auto it = object.find(snake); it != object.end()) {
    return &*it;
  }
  if (const auto it = object.find(engine); it != object.end()) {
    return &*it;
  }
  return nullptr;
}

Json valueOr(const Json* value, Json fallback) {
  return value == nullptr || value->is_null() ? std::move(fallback) : *value;
}

Result<Json> portBinding(const Json& binding, const std::string& key) {
  Json out = Json::object();
  out["HostIp"] = "";
  out["HostPort"] = "";
  if (binding.is_object()) {
    const auto port = binding.find("HostPort");
    if (port == binding.end()) {
      return invalid(key, "port binding " + binding.dump() + " has no HostPort");
    }
    out["HostPort"] = port->is_null() ? "" : pyStr(*port);
    if (const auto ip = binding.find("HostIp"); ip != binding.end()) {
      out["HostIp"] = *ip;
    }
  } else if (binding.is_array()) {
    // A Python tuple arrives as a JSON list: (port,), (ip,) or (ip, port).
    if (binding.size() == 2) {
      out["HostIp"] = binding[0];
      out["HostPort"] = binding[1].is_null() ? "" : pyStr(binding[1]);
    } else if (binding.size() == 1 && binding[0].is_string()) {
      out["HostIp"] = binding[0];
    } else if (binding.size() == 1) {
      out["HostPort"] = binding[0].is_null() ? "" : pyStr(binding[0]);
    } else {
      return invalid(key, "port binding " + binding.dump() + " is not (ip, port)");
    }
  } else if (!binding.is_null()) {
    out["HostPort"] = pyStr(binding);
  }
  return out;
}

// [ip, port] is how users write docker-py's ("127.0.0.1", 8080) in JSON; docker-py would read
// a list as two bindings, the first with the address as its port.
bool looksLikeAddressPair(const Json& value) {
  if (!value.is_array() || value.size() != 2 || !value[0].is_string()) {
    return false;
  }
  const std::string first = value[0].get<std::string>();
  const bool address = first.find_first_of(".:") != std::string::npos || first == "localhost";
  const bool port =
      value[1].is_number_integer() || value[1].is_null() ||
      (value[1].is_string() && !value[1].get<std::string>().empty() &&
       std::all_of(value[1].get<std::string>().begin(), value[1].get<std::string>().end(),
                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }));
  return address && port;
}

Result<void> translatePorts(const Json& ports, TranslatedKwargs& out) {
  if (!ports.is_object()) {
    return invalid("ports", "must be an object such as {\"8080/tcp\": 8080}");
  }
  // docker-py keeps the given order in PortBindings and sorts the given keys for ExposedPorts.
  Json port_bindings = Json::object();
  std::map<std::string, std::string> exposed_by_key;
  for (const auto& [port, value] : ports.items()) {
    std::string name = port;
    if (name.find('/') == std::string::npos) {
      name += "/tcp";
    }
    Json list = Json::array();
    if (value.is_array() && !looksLikeAddressPair(value)) {
      for (const auto& item : value) {
        auto binding = portBinding(item, "ports");
        if (!binding) {
          return binding.error();
        }
        list.push_back(std::move(binding).value());
      }
    } else {
      auto binding = portBinding(value, "ports");
      if (!binding) {
        return binding.error();
      }
      list.push_back(std::move(binding).value());
    }
    port_bindings[name] = std::move(list);
    exposed_by_key[port] = name;
  }
  Json exposed = Json::object();
  for (const auto& [key, name] : exposed_by_key) {
    exposed[name] = Json::object();
  }
  out.host_config["PortBindings"] = std::move(port_bindings);
  out.config["ExposedPorts"] = std::move(exposed);
  return success();
}

Result<Json> convert(const Entry& entry, const Json& value, std::string_view api_version) {
  const std::string key = entry.key;
  switch (entry.kind) {
    case Kind::Copy:
      return value;
    case Kind::Str:
      return Json(pyStr(value));
    case Kind::Int:
      if (!value.is_number_integer()) {
        return invalid(key, "must be an integer, not " + value.dump());
      }
      return value;
    case Kind::Bytes: {
      auto bytes = parseByteSize(value, "job variable 'container_create_kwargs': '" + key + "'");
      if (!bytes) {
        return bytes.error();
      }
      return Json(*bytes);
    }
    case Kind::Command: {
      if (value.is_array()) {
        return value;
      }
      if (!value.is_string()) {
        return invalid(key, "must be a string or a list of strings");
      }
      auto words = common::shellSplit(value.get<std::string>());
      if (!words) {
        return invalid(key, "cannot be split into arguments: " + words.error().message);
      }
      return Json(*words);
    }
    case Kind::Devices: {
      if (!value.is_array()) {
        return invalid(key, "must be a list");
      }
      Json list = Json::array();
      for (const auto& device : value) {
        auto converted = normaliseDevice(device, key);
        if (!converted) {
          return converted.error();
        }
        list.push_back(std::move(converted).value());
      }
      return list;
    }
    case Kind::DeviceRequests: {
      if (!value.is_array()) {
        return invalid(key, "must be a list");
      }
      Json list = Json::array();
      for (const auto& request : value) {
        if (!request.is_object()) {
          return invalid(key,
                         "must hold objects such as {\"count\": -1, \"capabilities\": "
                         "[[\"gpu\"]]}");
        }
        const Json driver = valueOr(either(request, "driver", "Driver"), "");
        const Json count = valueOr(either(request, "count", "Count"), 0);
        const Json ids = valueOr(either(request, "device_ids", "DeviceIDs"), Json::array());
        const Json caps = valueOr(either(request, "capabilities", "Capabilities"), Json::array());
        const Json options = valueOr(either(request, "options", "Options"), Json::object());
        if (!driver.is_string() || !count.is_number_integer() || !ids.is_array() ||
            !caps.is_array() || !options.is_object()) {
          return invalid(key, "has a request with a field of the wrong type: " + request.dump());
        }
        Json converted = Json::object();
        converted["Driver"] = driver;
        converted["Count"] = count;
        converted["DeviceIDs"] = ids;
        converted["Capabilities"] = caps;
        converted["Options"] = options;
        list.push_back(std::move(converted));
      }
      return list;
    }
    case Kind::Ulimits: {
      if (!value.is_array()) {
        return invalid(key, "must be a list");
      }
      Json list = Json::array();
      for (const auto& limit : value) {
        if (!limit.is_object()) {
          return invalid(key,
                         "must hold objects such as {\"name\": \"nofile\", \"soft\": 1024, "
                         "\"hard\": 2048}");
        }
        const Json name = valueOr(either(limit, "name", "Name"), nullptr);
        const Json soft = valueOr(either(limit, "soft", "Soft"), nullptr);
        const Json hard = valueOr(either(limit, "hard", "Hard"), nullptr);
        if (!name.is_string()) {
          return invalid(key, "has a limit without a name: " + limit.dump());
        }
        if ((truthy(soft) && !soft.is_number_integer()) ||
            (truthy(hard) && !hard.is_number_integer())) {
          return invalid(key, "limits must be integers: " + limit.dump());
        }
        list.push_back(Json{{"Name", name}, {"Soft", soft}, {"Hard", hard}});
      }
      return list;
    }
    case Kind::LogConfig: {
      if (!value.is_object()) {
        return invalid(key, "must be an object such as {\"type\": \"json-file\", \"config\": {}}");
      }
      const Json type = valueOr(either(value, "type", "Type"), nullptr);
      Json config = valueOr(either(value, "config", "Config"), Json::object());
      if (!truthy(config)) {
        config = Json::object();
      }
      if (!config.is_object()) {
        return invalid(key, "'config' must be an object");
      }
      return Json{{"Type", type}, {"Config", config}};
    }
    case Kind::Sysctls: {
      if (!value.is_object()) {
        return invalid(key, "must be an object");
      }
      Json out = Json::object();
      for (const auto& [name, item] : value.items()) {
        out[name] = pyStr(item);
      }
      return out;
    }
    case Kind::Tmpfs: {
      if (value.is_object()) {
        return value;
      }
      if (!value.is_array()) {
        return invalid(key, "must be an object or a list of 'path[:options]' strings");
      }
      Json out = Json::object();
      for (const auto& mount : value) {
        if (!mount.is_string()) {
          return invalid(key, "must hold strings, not " + mount.dump());
        }
        const std::string text = mount.get<std::string>();
        const auto colon = text.find(':');
        out[text.substr(0, colon)] = colon == std::string::npos ? "" : text.substr(colon + 1);
      }
      return out;
    }
    case Kind::VolumesFrom: {
      if (!value.is_string()) {
        return value;
      }
      Json list = Json::array();
      const std::string text = value.get<std::string>();
      size_t start = 0;
      while (true) {
        const auto comma = text.find(',', start);
        list.push_back(text.substr(start, comma - start));
        if (comma == std::string::npos) {
          break;
        }
        start = comma + 1;
      }
      return list;
    }
    case Kind::Links: {
      std::vector<std::pair<std::string, Json>> pairs;
      if (value.is_object()) {
        for (const auto& [name, alias] : value.items()) {
          pairs.emplace_back(name, alias);
        }
      } else if (value.is_array()) {
        for (const auto& link : value) {
          if (link.is_array() && link.size() == 2 && link[0].is_string()) {
            pairs.emplace_back(link[0].get<std::string>(), link[1]);
          } else if (link.is_string()) {
            pairs.emplace_back(link.get<std::string>(), nullptr);
          } else {
            return invalid(key, "must hold [name, alias] pairs, not " + link.dump());
          }
        }
      } else {
        return invalid(key, "must be an object or a list of [name, alias] pairs");
      }
      std::sort(pairs.begin(), pairs.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      Json list = Json::array();
      for (const auto& [name, alias] : pairs) {
        list.push_back(truthy(alias) ? name + ":" + pyStr(alias) : name);
      }
      return list;
    }
    case Kind::Healthcheck: {
      if (!value.is_object() || value.empty()) {
        return value;
      }
      Json test = valueOr(either(value, "test", "Test"), nullptr);
      if (test.is_string()) {
        test = Json::array({"CMD-SHELL", test});
      }
      return Json{{"Test", test},
                  {"Interval", valueOr(either(value, "interval", "Interval"), nullptr)},
                  {"Timeout", valueOr(either(value, "timeout", "Timeout"), nullptr)},
                  {"Retries", valueOr(either(value, "retries", "Retries"), nullptr)},
                  {"StartPeriod", valueOr(either(value, "start_period", "StartPeriod"), nullptr)}};
    }
    case Kind::StringList: {
      if (!value.is_array()) {
        return invalid(key, "must be a list");
      }
      Json list = Json::array();
      for (const auto& item : value) {
        list.push_back(pyStr(item));
      }
      return list;
    }
    case Kind::LxcConf: {
      if (!value.is_object()) {
        return value;
      }
      Json list = Json::array();
      for (const auto& [name, item] : value.items()) {
        list.push_back(Json{{"Key", name}, {"Value", pyStr(item)}});
      }
      return list;
    }
    case Kind::Dict:
      if (!value.is_object()) {
        return invalid(key, "must be an object");
      }
      return value;
    case Kind::List:
      if (!value.is_array()) {
        return invalid(key, "must be a list");
      }
      return value;
    case Kind::String:
      if (!value.is_string()) {
        return invalid(key, "must be a string");
      }
      return value;
    case Kind::HostOnly:
      if (value != "host") {
        return invalid(key, "can only be 'host', not " + value.dump());
      }
      return value;
  }
  (void)api_version;
  return value;
}

bool contains(const char* const* begin, const char* const* end, std::string_view key) {
  return std::any_of(begin, end, [&](const char* name) { return key == name; });
}

}  // namespace

std::vector<std::string> supportedCreateKwargs() {
  std::vector<std::string> keys;
  for (const auto& entry : kEntries) {
    keys.emplace_back(entry.key);
  }
  for (const char* key : kSpecialKeys) {
    keys.emplace_back(key);
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

Result<TranslatedKwargs> translateCreateKwargs(const Json& kwargs, std::string_view api_version) {
  TranslatedKwargs out;
  if (kwargs.is_null()) {
    return out;
  }
  if (!kwargs.is_object()) {
    return makeError(ErrorKind::InvalidConfiguration,
                     std::string("job variable 'container_create_kwargs' must be an object, not ") +
                         kwargs.type_name());
  }
  const auto needs = [&](const std::string& key, const char* min_api) -> Result<void> {
    if (min_api != nullptr && compareVersions(api_version, min_api) < 0) {
      return invalid(key, std::string("needs Engine API ") + min_api +
                              " or newer; the engine speaks " + std::string(api_version));
    }
    return success();
  };
  for (const auto& [key, value] : kwargs.items()) {
    if (contains(std::begin(kJobVariableNames), std::end(kJobVariableNames), key)) {
      if (key == "volumes") {
        out.warnings.push_back(
            "'volumes' in container_create_kwargs is ignored: set the job variable 'volumes' "
            "instead, e.g. {\"volumes\": [\"/host/path:/container/path\"]}");
      }
      continue;
    }
    if (key == "environment" || key == "network" || key == "version") {
      const char* instead = key == "environment" ? "the job variable 'env'"
                            : key == "network"   ? "the job variable 'networks'"
                                                 : "nothing: the worker negotiates the API version";
      return invalid(key, std::string("is set by the worker itself; use ") + instead);
    }
    if (key == "ports") {
      if (!truthy(value)) {
        continue;
      }
      if (auto ok = translatePorts(value, out); !ok) {
        return ok.error();
      }
      continue;
    }
    if (key == "networking_config") {
      if (!value.is_null() && !value.is_object()) {
        return invalid(key, "must be an object of endpoint settings keyed by network name");
      }
      if (!value.is_null()) {
        out.networking_config = value;
      }
      continue;
    }
    if (key == "platform") {
      if (value.is_null()) {
        continue;
      }
      if (!value.is_string()) {
        return invalid(key, "must be a string such as 'linux/amd64'");
      }
      if (auto ok = needs(key, "1.41"); !ok) {
        return ok.error();
      }
      out.platform = value.get<std::string>();
      continue;
    }
    if (key == "extra_hosts") {
      out.extra_hosts = value;
      continue;
    }
    if (key == "detach" || key == "stdin_open" || key == "tty") {
      if (!value.is_null() && !value.is_boolean()) {
        return invalid(key, "must be true or false");
      }
      const bool flag = value.is_boolean() && value.get<bool>();
      (key == "detach" ? out.detach : key == "tty" ? out.tty : out.stdin_open) = flag;
      continue;
    }
    if (key == "use_config_proxy") {
      out.warnings.push_back(
          "'use_config_proxy' in container_create_kwargs is ignored: poolworker does not copy "
          "proxy settings from the Docker CLI's config.json; set them in 'env'");
      continue;
    }
    const auto entry = std::find_if(std::begin(kEntries), std::end(kEntries),
                                    [&](const Entry& e) { return key == e.key; });
    if (entry == std::end(kEntries)) {
      return invalid(key,
                     "is not a docker-py keyword argument of containers.create that "
                     "poolworker knows; see the docker-py documentation");
    }
    if (value.is_null() || (entry->keep == Keep::Truthy && !truthy(value))) {
      continue;
    }
    if (auto ok = needs(key, entry->min_api); !ok) {
      return ok.error();
    }
    if (key == "init_path" && compareVersions(api_version, "1.29") >= 0) {
      return invalid(key, "is not supported from Engine API 1.29 on");
    }
    auto converted = convert(*entry, value, api_version);
    if (!converted) {
      return converted.error();
    }
    (entry->target == Target::Config ? out.config : out.host_config)[entry->field] =
        std::move(converted).value();
  }
  return out;
}

}  // namespace poolworker::backends::docker
