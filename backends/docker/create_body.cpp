#include "backends/docker/create_body.h"

#include <algorithm>
#include <map>
#include <utility>

#include "backends/common/shell_split.h"
#include "backends/docker/byte_size.h"
#include "backends/docker/create_kwargs.h"
#include "backends/docker/naming.h"
#include "backends/docker/networking.h"
#include "backends/docker/volumes.h"

namespace poolworker::backends::docker {
namespace {

// The order docker-py writes the top-level fields and the HostConfig fields in.
constexpr const char* kConfigOrder[] = {
    "Hostname",
    "Domainname",
    "ExposedPorts",
    "User",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "Env",
    "Cmd",
    "Image",
    "Volumes",
    "NetworkDisabled",
    "Entrypoint",
    "WorkingDir",
    "HostConfig",
    "NetworkingConfig",
    "MacAddress",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "StopTimeout",
    "Runtime",
};

constexpr const char* kHostConfigOrder[] = {
    "Memory",
    "MemorySwap",
    "MemoryReservation",
    "KernelMemory",
    "MemorySwappiness",
    "ShmSize",
    "PidMode",
    "IpcMode",
    "Privileged",
    "OomKillDisable",
    "OomScoreAdj",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "DnsSearch",
    "NetworkMode",
    "RestartPolicy",
    "CapAdd",
    "CapDrop",
    "Devices",
    "GroupAdd",
    "Dns",
    "DnsOptions",
    "SecurityOpt",
    "Sysctls",
    "VolumesFrom",
    "Binds",
    "PortBindings",
    "ExtraHosts",
    "Links",
    "LxcConf",
    "CgroupParent",
    "Ulimits",
    "LogConfig",
    "CpuQuota",
    "CpuPeriod",
    "CpuShares",
    "CpusetCpus",
    "CpusetMems",
    "CPURealtimePeriod",
    "CPURealtimeRuntime",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "Tmpfs",
    "UsernsMode",
    "UTSMode",
    "PidsLimit",
    "Isolation",
    "AutoRemove",
    "StorageOpt",
    "Init",
    "InitPath",
    "VolumeDriver",
    "CpuCount",
    "CpuPercent",
    "NanoCpus",
    "Runtime",
    "Mounts",
    "DeviceCgroupRules",
    "DeviceRequests",
    "CgroupnsMode",
};

Json ordered(std::map<std::string, Json>& fields, const char* const* begin,
             const char* const* end) {
  Json out = Json::object();
  for (auto it = begin; it != end; ++it) {
    if (auto found = fields.find(*it); found != fields.end()) {
      out[*it] = std::move(found->second);
      fields.erase(found);
    }
  }
  for (auto& [key, value] : fields) {
    out[key] = std::move(value);
  }
  return out;
}

std::string stringOf(const Json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

// docker-py's format_extra_hosts: sorted by host, "host:ip".
Json formatExtraHosts(const Json& hosts) {
  if (!hosts.is_object()) {
    return hosts;
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const auto& [host, ip] : hosts.items()) {
    pairs.emplace_back(host, stringOf(ip));
  }
  std::sort(pairs.begin(), pairs.end());
  Json list = Json::array();
  for (const auto& [host, ip] : pairs) {
    list.push_back(host + ":" + ip);
  }
  return list;
}

}  // namespace

Result<ContainerPlan> planContainer(const DockerJob& job, const RunContext& run,
                                    const EngineFacts& facts) {
  ContainerPlan plan;
  plan.image = job.image;
  plan.image_ref = parseImageRef(job.image);
  plan.pull_policy = effectivePullPolicy(job.image_pull_policy, plan.image_ref);
  plan.registry_credentials = job.registry_credentials;
  plan.networks = job.networks;
  if (job.networks.size() > 1) {
    plan.extra_networks.assign(job.networks.begin() + 1, job.networks.end());
  }
  plan.stream_output = job.stream_output;
  plan.auto_remove = job.auto_remove;
  if (job.name) {
    plan.name = slugifyContainerName(*job.name);
  }

  auto kwargs = translateCreateKwargs(job.container_create_kwargs, facts.api_version);
  if (!kwargs) {
    return kwargs.error();
  }
  TranslatedKwargs& extra = *kwargs;
  plan.warnings = extra.warnings;
  plan.platform = extra.platform;
  plan.tty = extra.tty;

  // The network mode follows PREFECT_API_URL as the container would get it before any rewrite.
  Json env = job.env.is_object() ? job.env : Json::object();
  std::string api_url = run.api_url;
  const auto api_entry = env.find("PREFECT_API_URL");
  if (api_entry != env.end() && api_entry->is_string()) {
    api_url = api_entry->get<std::string>();
  }
  const std::optional<std::string> network_mode =
      inferNetworkMode(job.network_mode, job.networks, api_url, facts.linux);
  if (job.network_mode && *job.network_mode == "host" && !facts.linux) {
    plan.warnings.push_back("network mode 'host' may not work as intended off Linux");
  }
  // Prefect rewrites the URL of the worker's own settings, never one the user set in env.
  if (api_entry != env.end() && api_entry->is_string() &&
      (run.api_url.empty() || api_entry->get<std::string>() == run.api_url) &&
      network_mode.value_or("") != "host") {
    *api_entry = rewriteLocalApiUrl(api_entry->get<std::string>());
  }

  std::optional<Json> extra_hosts;
  if (wantsHostGateway(env, facts.linux)) {
    if (supportsHostGateway(facts.engine_version)) {
      extra_hosts = Json{{"host.docker.internal", "host-gateway"}};
    } else {
      extra_hosts = Json::object();
      plan.warnings.push_back(
          "`host.docker.internal` could not be automatically resolved to your local ip address. "
          "This feature is not supported on Docker Engine v" +
          facts.engine_version + ", upgrade to v20.10.0+ if you encounter issues.");
    }
  }
  if (extra.extra_hosts) {
    const Json& user = *extra.extra_hosts;
    if (extra_hosts && !extra_hosts->empty()) {
      if (user.is_array()) {
        for (const auto& entry : user) {
          if (!entry.is_string()) {
            return makeError(ErrorKind::InvalidConfiguration,
                             "job variable 'container_create_kwargs': 'extra_hosts' must hold "
                             "'host:ip' strings, not " +
                                 entry.dump());
          }
          const std::string text = entry.get<std::string>();
          const auto colon = text.find(':');
          if (colon != std::string::npos) {
            (*extra_hosts)[text.substr(0, colon)] = text.substr(colon + 1);
          }
        }
      } else if (user.is_object()) {
        for (const auto& [host, ip] : user.items()) {
          (*extra_hosts)[host] = ip;
        }
      }
    } else {
      extra_hosts = user;
    }
  }
  if (extra_hosts && !extra_hosts->is_null() && !extra_hosts->is_array() &&
      !extra_hosts->is_object()) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "job variable 'container_create_kwargs': 'extra_hosts' must be a list of "
                     "'host:ip' strings or an object");
  }

  auto argv = common::shellSplit(job.command.value_or(kDefaultCommand));
  if (!argv) {
    return makeError(
        ErrorKind::InvalidConfiguration,
        "job variable 'command': cannot be split into arguments: " + argv.error().message);
  }

  Json env_list = Json::array();
  for (const auto& [key, value] : env.items()) {
    env_list.push_back(value.is_null() ? key : key + "=" + stringOf(value));
  }

  Json labels = job.labels.is_object() ? job.labels : Json::object();
  labels = toDockerLabels(labels);
  labels["io.prefect.version"] = kPrefectVersion;

  std::map<std::string, Json> host;
  for (auto& [key, value] : extra.host_config.items()) {
    host[key] = value;
  }
  if (job.mem_limit) {
    auto bytes = parseByteSize(*job.mem_limit, "job variable 'mem_limit'");
    if (!bytes) {
      return bytes.error();
    }
    host["Memory"] = *bytes;
  }
  if (job.memswap_limit) {
    auto bytes = parseByteSize(*job.memswap_limit, "job variable 'memswap_limit'");
    if (!bytes) {
      return bytes.error();
    }
    host["MemorySwap"] = *bytes;
  }
  if (job.privileged) {
    host["Privileged"] = true;
  }
  std::string mode = network_mode.value_or("");
  std::optional<Json> networking;
  if (!job.networks.empty()) {
    const std::string& first = job.networks.front();
    mode = first;
    if (extra.networking_config && extra.networking_config->contains(first)) {
      networking = Json{{"EndpointsConfig", *extra.networking_config}};
    } else {
      networking = Json{{"EndpointsConfig", {{first, Json::object()}}}};
    }
  }
  if (mode == "host" && host.count("PortBindings") != 0) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "job variable 'container_create_kwargs': 'ports' cannot be used with the "
                     "network mode 'host'");
  }
  host["NetworkMode"] = mode.empty() ? "default" : mode;
  Json volume_paths = Json::object();
  if (!job.volumes.empty()) {
    host["Binds"] = job.volumes;
    for (const auto& volume : job.volumes) {
      volume_paths[containerPathOfVolume(volume)] = Json::object();
    }
  }
  if (extra_hosts && !extra_hosts->is_null()) {
    host["ExtraHosts"] = formatExtraHosts(*extra_hosts);
  }
  if (job.auto_remove) {
    host["AutoRemove"] = true;
  }

  std::map<std::string, Json> config;
  for (auto& [key, value] : extra.config.items()) {
    config[key] = value;
  }
  const bool attach = !extra.detach;
  config["Tty"] = extra.tty;
  config["OpenStdin"] = extra.stdin_open;
  config["StdinOnce"] = attach && extra.stdin_open;
  config["AttachStdin"] = attach && extra.stdin_open;
  config["AttachStdout"] = attach;
  config["AttachStderr"] = attach;
  config["Env"] = std::move(env_list);
  config["Cmd"] = *argv;
  config["Image"] = job.image;
  if (!volume_paths.empty()) {
    config["Volumes"] = std::move(volume_paths);
  }
  if (config.count("NetworkDisabled") == 0) {
    config["NetworkDisabled"] = false;
  }
  config["HostConfig"] = ordered(host, std::begin(kHostConfigOrder), std::end(kHostConfigOrder));
  if (networking) {
    config["NetworkingConfig"] = std::move(*networking);
  }
  config["Labels"] = std::move(labels);
  plan.body = ordered(config, std::begin(kConfigOrder), std::end(kConfigOrder));
  return plan;
}

Json previewOf(const ContainerPlan& plan) {
  Json preview = Json::object();
  preview["image"] = plan.image;
  preview["name"] = plan.name ? Json(*plan.name) : Json();
  preview["pull_policy"] = pullPolicyName(plan.pull_policy);
  preview["create"] = plan.body;
  preview["networks"] = plan.extra_networks;
  return preview;
}

}  // namespace poolworker::backends::docker
