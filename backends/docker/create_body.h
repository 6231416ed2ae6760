#pragma once

/// @file
/// @brief What `start` sends the engine for a run: the container-create body, its name, the
/// image and its pull policy, and the networks to connect, built as Prefect's Docker worker
/// and docker-py build them (contract §2.3 and §2.5).

#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>
#include <poolworker/run.h>

#include "backends/docker/engine_version.h"
#include "backends/docker/image_ref.h"
#include "backends/docker/job_config.h"

namespace poolworker::backends::docker {

/// @brief What the body depends on besides the job: the engine and the worker's platform.
struct EngineFacts {
  std::string api_version = kNewestTestedApiVersion;  ///< Negotiated Engine API version.
  std::string engine_version = "20.10.0";             ///< Engine release (for host-gateway).
  bool linux = true;  ///< The worker runs on Linux (Prefect checks its own platform).
};

/// @brief Everything `start` needs to create one container.
struct ContainerPlan {
  std::string image;                                        ///< Image reference.
  ImageRef image_ref;                                       ///< The same, split for a pull.
  PullPolicy pull_policy = PullPolicy::IfNotPresent;        ///< Effective policy.
  std::optional<RegistryCredentials> registry_credentials;  ///< For the pull.
  std::optional<std::string> name;      ///< Container name; nullopt: the engine picks one.
  std::optional<std::string> platform;  ///< `platform` query parameter.
  Json body = Json::object();           ///< Body of `POST /containers/create`.
  std::vector<std::string> networks;    ///< Every network of the job.
  std::vector<std::string>
      extra_networks;                 ///< Networks connected after create (all but the first).
  bool tty = false;                   ///< The container has a TTY: its output is not multiplexed.
  bool stream_output = true;          ///< Copy the output to the run's log sink.
  bool auto_remove = false;           ///< The engine removes the container when it exits.
  std::vector<std::string> warnings;  ///< Messages for the run's log.
};

/// @brief Builds the plan of a run's container.
///
/// Labels are converted to Docker style with `io.prefect.version` added; the name is
/// slugified; the command (default `prefect flow-run execute`) is split like `shlex.split`;
/// PREFECT_API_URL is rewritten to `host.docker.internal` when it points at this host, came
/// from the worker (equals `run.api_url`) and the network mode is not `host`; the network mode
/// is inferred and `host.docker.internal:host-gateway` added as Prefect does; memory limits are
/// parsed; `container_create_kwargs` is translated.
/// @param job the checked job configuration.
/// @param run the run (for the worker's own API URL).
/// @param facts the engine's version and the platform.
/// @return the plan, or `InvalidConfiguration`.
Result<ContainerPlan> planContainer(const DockerJob& job, const RunContext& run,
                                    const EngineFacts& facts);

/// @brief What `Backend::preview` shows of a plan: `{"image", "name", "pull_policy",
/// "create", "networks"}`, where `networks` are those connected after create (the first of the
/// job's networks is attached by `create.HostConfig.NetworkMode`).
Json previewOf(const ContainerPlan& plan);

}  // namespace poolworker::backends::docker
