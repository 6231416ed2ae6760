#pragma once

/// @file
/// @brief An in-process fake of the Kubernetes API server, for the Kubernetes backend's tests.
///
/// It serves plain HTTP on 127.0.0.1 (an ephemeral port) and follows the real API's semantics
/// for what a Job-running client does: `generateName` (five characters of the API server's
/// alphabet), a cluster-wide `resourceVersion` counter, list with an equality `labelSelector`,
/// watch streams (ADDED, MODIFIED, DELETED, BOOKMARK with `allowWatchBookmarks`, and ERROR with
/// a 410 `Expired` Status when the asked resourceVersion was compacted away), error bodies in
/// the real `Status` format (403 Forbidden naming the verb, resource and group, 404 NotFound,
/// 409 AlreadyExists, 422 Invalid with field causes), DELETE with `propagationPolicy`
/// (Foreground: `deletionTimestamp` and the `foregroundDeletion` finalizer first, the pods,
/// then the Job; Background: the Job, then its pods; Orphan: the pods stay), and the pod log
/// endpoint (`follow=true` streams until the container ends; 400 while it is waiting).
///
/// A small Job controller creates one pod per Job (labels of the pod template plus `job-name`,
/// `batch.kubernetes.io/job-name` and `controller-uid`, an ownerReference) and moves it through
/// Pending, Running and Succeeded or Failed as the test directs (`Script`), marking the Job
/// Complete or Failed (BackoffLimitExceeded) as the real controller does. With `run_commands`
/// (the standalone binary's `--kubelet`), the pod's container `args` are actually run as a
/// local process with the container's env, and its output is the pod's log.
///
/// Every public method is thread-safe.

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>

namespace poolworker::testing {

/// @brief What the fake kubelet does with a Job's pod.
struct PodScript {
  enum class Kind {
    Exit,      ///< Pending, Running, then the container exits with `exit_code`.
    Hold,      ///< Pending, Running, then waits for `FakeKube::finishPod`.
    Evict,     ///< Pending, Running, then the pod is evicted (no exit code).
    PullFail,  ///< Stays Pending: the image cannot be pulled (ErrImagePull, ImagePullBackOff).
    Pending,   ///< Stays Pending (unschedulable), without any container status.
  };
  Kind kind = Kind::Exit;
  int exit_code = 0;
  /// Written to the container's log while it runs.
  std::string log = "";
  /// Time between the steps (Pending -> Running -> end).
  std::chrono::milliseconds step{20};
};

/// @brief The fake API server. Starts serving in the constructor and stops in the destructor.
class FakeKube {
 public:
  /// @param port TCP port on 127.0.0.1; 0 picks a free one.
  /// @param run_commands run each pod's container `args` as a local process (fake kubelet).
  explicit FakeKube(unsigned short port = 0, bool run_commands = false);
  ~FakeKube();
  FakeKube(const FakeKube&) = delete;
  FakeKube& operator=(const FakeKube&) = delete;

  /// @brief "http://127.0.0.1:<port>".
  std::string url() const;
  /// @brief The port served.
  unsigned short port() const;
  /// @brief A kubeconfig (YAML) whose current context points at this server with a token.
  std::string kubeconfig(const std::string& namespace_ = "default") const;
  /// @brief The bearer token the server expects (it answers 401 to any other one).
  static constexpr const char* kToken = "fake-kube-token";

  /// @brief Adds a namespace ("default" exists from the start).
  void createNamespace(const std::string& name);

  /// @brief Decides the script of each new Job's pod (default: exit 0 after 20 ms steps).
  void setScript(std::function<PodScript(const Json& job)> script);

  /// @brief Ends a held pod's container with `exit_code`. False when no such held pod.
  bool finishPod(const std::string& ns, const std::string& job, int exit_code);

  /// @brief Deletes a Job as `kubectl delete job` would (Background propagation).
  bool deleteJobFromOutside(const std::string& ns, const std::string& name);

  /// @brief Answers 403 Forbidden to `verb` on `resource` (e.g. "create", "jobs").
  void forbid(const std::string& verb, const std::string& resource);

  /// @brief Closes every open watch connection, as a load balancer's idle timeout would.
  void dropWatches();

  /// @brief Forgets the event history up to now: a watch that resumes from an older
  /// resourceVersion gets a 410 Expired ERROR event and must re-list.
  void compact();

  /// @brief How many watch requests were received for `resource` ("jobs" or "pods").
  int watchRequests(const std::string& resource) const;
  /// @brief How many list requests were received for `resource`.
  int listRequests(const std::string& resource) const;
  /// @brief How many watch connections for `resource` are open now.
  int openWatches(const std::string& resource) const;

  /// @brief The Job, or nullopt when it does not exist.
  std::optional<Json> job(const std::string& ns, const std::string& name) const;
  /// @brief Every Job of a namespace.
  std::vector<Json> jobs(const std::string& ns) const;
  /// @brief Every pod of a Job.
  std::vector<Json> podsOf(const std::string& ns, const std::string& job) const;
  /// @brief The query strings of the DELETE requests received for Jobs.
  std::vector<std::string> jobDeletions() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolworker::testing
