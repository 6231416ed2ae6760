#pragma once

/// @file
/// @brief The Job manifest of a flow run, prepared from its job configuration exactly as
/// prefect-kubernetes' `KubernetesWorkerJobConfiguration` validates and prepares it.

#include <string>

#include <poolworker/json.h>
#include <poolworker/result.h>
#include <poolworker/run.h>

namespace poolworker::backends::kubernetes {

/// @brief The default image when neither the template nor the job variables name one: the
/// Prefect image of the Prefect version poolworker follows (as the Docker backend uses).
inline constexpr char kDefaultImage[] = "prefecthq/prefect:3.8.8-python3.12";

/// @brief The container Prefect's template names, whose exit code is the run's.
inline constexpr char kContainerName[] = "prefect-job";

/// @brief Checks the manifest as Prefect does: fills `metadata`, its `annotations`, `labels`
/// and `namespace` (from `namespace`); then refuses missing required paths ("Job is missing
/// required attributes at the following paths: /spec/template/spec/containers") and values
/// that Prefect fixes ("Job has incompatible values for the following attributes:
/// /kind must have value 'Job'").
/// @param manifest the job configuration's `job_manifest`.
/// @param namespace_ the job configuration's `namespace`.
/// @return the completed manifest or `InvalidConfiguration` with Prefect's message.
Result<Json> validateJobManifest(Json manifest, const std::string& namespace_);

/// @brief The whole preparation of a run's Job manifest (Prefect's `prepare_for_flow_run` after
/// the generic part the worker already did): the Kubernetes `app.kubernetes.io/*` labels, the
/// SIGTERM behaviour that matches `backoffLimit`, env as a name/value list (ahead of entries
/// hard-coded in the template), labels and annotation keys slugified, the default image, the
/// command as `args`, `generateName` from the run's name, labels and annotations copied to the
/// pod template.
/// @param configuration the run's prepared job configuration.
/// @param run who the run is (for the `app.kubernetes.io/name` label).
/// @return the manifest to POST, or `InvalidConfiguration` naming what is wrong.
Result<Json> prepareJobManifest(const Json& configuration, const RunContext& run);

/// @brief A label key slugified as Prefect does: prefix `[A-Za-z0-9-.]` up to 253 characters,
/// name `[A-Za-z0-9-_.]` up to 63, both trimmed of `_-.`, the original kept when nothing is left.
std::string slugifyLabelKey(const std::string& key);

/// @brief A label value slugified as Prefect does: `[A-Za-z0-9-_.]`, at most 63 characters.
std::string slugifyLabelValue(const std::string& value);

/// @brief A Job name prefix as Prefect makes it: lower case `[a-z0-9-]`, at most 45
/// characters; empty when nothing is left.
std::string slugifyName(const std::string& name);

}  // namespace poolworker::backends::kubernetes
