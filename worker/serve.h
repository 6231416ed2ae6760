#pragma once

// `poolworker serve`: the deployments of a file, registered with Prefect as `flow.serve` registers
// them (no work pool), and their runs polled for and run by a worker on the process backend.

#include <map>
#include <string>
#include <vector>

#include "worker/logging.h"
#include "worker/prefect_client.h"
#include "worker/serve_config.h"
#include "worker/worker.h"

namespace poolworker::serve {

/// @brief The run source of `poolworker serve`.
class ServeSource final : public RunSource {
 public:
  /// @param client the worker's API client (outlives the source).
  /// @param file the checked deployment file.
  /// @param base_job_template the process backend's default template, which runs are prepared
  ///   with in place of a work pool's.
  /// @param pause_on_shutdown whether stop() pauses the deployments.
  ServeSource(prefect::PrefectClient& client, ServeFile file, Json base_job_template,
              bool pause_on_shutdown);

  std::string backendType() const override { return "process"; }
  asio::awaitable<Result<void>> sync(bool at_startup) override;
  asio::awaitable<Result<Json>> scheduledRuns(
      std::chrono::system_clock::time_point before) override;
  std::optional<int> limitFor(const std::string& deployment_id) const override;
  Json preparationPool() const override;
  Json preparedDeployment(const Json& deployment) const override;
  asio::awaitable<void> stop() override;

  /// @brief The ids of the registered deployments, in file order (empty before sync()).
  const std::vector<std::string>& deploymentIds() const { return ids_; }

 private:
  asio::awaitable<Result<void>> registerAll();

  prefect::PrefectClient& client_;
  ServeFile file_;
  Json base_job_template_;
  bool pause_on_shutdown_;
  bool registered_ = false;
  std::vector<std::string> ids_;
  std::map<std::string, size_t> index_by_id_;
  logging::Logger log_{"serve"};
};

}  // namespace poolworker::serve
