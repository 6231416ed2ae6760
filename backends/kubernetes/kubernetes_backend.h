#pragma once

/// @file
/// @brief The Kubernetes backend: each flow run is a Kubernetes Job, created through the
/// Kubernetes REST API and followed by one shared watch per namespace.

#include <chrono>
#include <memory>
#include <string>

#include <poolworker/backend.h>

#include "backends/kubernetes/kube_config.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::kubernetes {

/// @brief Settings of one Kubernetes backend instance.
struct KubernetesBackendSettings {
  /// Name of the worker; its slug labels the Jobs (`prefect.io/worker-name`) and selects them
  /// in the shared watch.
  std::string worker_name;
  /// Where the in-cluster and kubeconfig settings come from (the process environment outside
  /// tests).
  ConnectionEnvironment environment;
  /// Attempts at creating a Job when the API server cannot be reached (Prefect: 3).
  int create_attempts = 3;
  /// Pause between those attempts.
  std::chrono::milliseconds create_retry_delay{1000};
  /// The worker's own log, for watch problems that concern no single run.
  std::shared_ptr<LogSink> worker_log;
  /// Longest pause between watch reconnections after errors.
  std::chrono::milliseconds max_watch_backoff{30000};
};

/// @brief Runs flow runs as Kubernetes Jobs.
///
/// `start` prepares the Job manifest as prefect-kubernetes does, picks the API server and
/// credentials (the job configuration's `cluster_config`, else the pod's service account, else
/// `KUBECONFIG` or `~/.kube/config`) and creates the Job (`generateName`). The handle's
/// `infrastructure_pid` is `<namespace>:<job name>`, as prefect-kubernetes 0.6 and later write
/// it; the legacy `<cluster uid>:<namespace>:<job name>` is accepted when reading.
///
/// Every Job and its pods are then followed by one shared watch per API server, namespace and
/// worker label: a list of the labelled Jobs and of the labelled Pods, then a watch of each from
/// the list's resourceVersion with bookmarks, reconnected on EOF and re-listed on 410 Gone. So
/// 1,000 runs in a namespace cost two connections, not 2,000. Events go to the run they concern.
///
/// `wait` completes with the exit code of the pod's `prefect-job` container when the Job
/// completes or fails; without an exit code (pod evicted, image not pullable for longer than
/// `pod_watch_timeout_seconds`, Job deleted by someone else) the outcome's detail says which.
/// With `stream_output`, the pod's log is followed into the run's output.
///
/// `kill` deletes the Job with foreground propagation and the grace period; `recover` finds a
/// journalled Job again and follows it.
class KubernetesBackend final : public Backend {
 public:
  KubernetesBackend(boost::asio::io_context& io, Executor& executor,
                    KubernetesBackendSettings settings);
  ~KubernetesBackend() override;
  KubernetesBackend(const KubernetesBackend&) = delete;
  KubernetesBackend& operator=(const KubernetesBackend&) = delete;

  void start(const StartRequest& request, std::shared_ptr<LogSink> log,
             Callback<RunHandle> done) override;
  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Outcome> done) override;
  void kill(const RunHandle& handle, std::chrono::milliseconds grace, Callback<void> done) override;
  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
               Callback<Recovery> done) override;

  /// @brief The Job manifest `start` would create: `{"namespace", "manifest"}`. Nothing is
  /// contacted. Values are not redacted; the caller hides secrets before printing.
  Result<Json> preview(const StartRequest& request) override;

  /// @brief Ends the watches and abandons every request in flight. Jobs keep running.
  void shutdown() override;

  /// @brief How many watch connections have been opened so far (for tests and metrics).
  int watchConnections() const;

 private:
  class Core;
  std::shared_ptr<Core> core_;
};

/// @brief Splits an `infrastructure_pid`: `<namespace>:<job>` or the legacy
/// `<cluster uid>:<namespace>:<job>`.
/// @return `{namespace, job}`, or `InvalidConfiguration`.
Result<std::pair<std::string, std::string>> parseInfrastructurePid(const std::string& pid);

}  // namespace poolworker::backends::kubernetes
