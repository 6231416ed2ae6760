#pragma once

// The worker: syncs with its work pool, heartbeats, polls for scheduled flow runs, claims them,
// prepares their job configuration, starts them on a backend, follows them to their end,
// cancels them when asked, and settles journalled runs after a restart.

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <poolworker/backend.h>

#include "backends/registry.h"
#include "worker/async.h"
#include "worker/journal.h"
#include "worker/logging.h"
#include "worker/metrics.h"
#include "worker/prefect_client.h"
#include "worker/settings.h"

namespace poolworker {

class ApiLogShipper;
class HealthServer;

/// @brief How the worker was asked to stop.
enum class StopMode {
  Drain,   ///< Claim nothing new; let running flows go on (up to drain_seconds), then leave them
           ///< to the next worker.
  Cancel,  ///< Cancel the running flows, then exit.
};

/// @brief A run the worker holds: from the moment a slot is taken until it is settled.
struct RunState {
  std::string id;
  std::string name;
  Json flow_run;
  std::string transition_id;
  bool claimed = false;
  std::optional<RunHandle> handle;
  bool cancel_requested = false;  ///< The run was seen CANCELLING/CANCELLED.
  bool killing = false;           ///< A kill was sent because of a cancellation.
  bool stop_cancel = false;       ///< Killed because the worker was told to cancel its runs.
  bool recovered = false;         ///< Adopted from the journal of an earlier worker.
  std::shared_ptr<LogSink> log;
  std::chrono::steady_clock::time_point started;
};

/// @brief Where a worker's runs come from when it serves deployments of its own (`poolworker
/// serve`) instead of a work pool. The worker keeps claiming, preparing, supervising,
/// cancelling and journalling runs as usual; the source replaces the pool's sync and poll.
/// Every method is called on the worker's io_context.
class RunSource {
 public:
  virtual ~RunSource() = default;

  /// @brief The backend that runs the flows (a registered worker type, e.g. "process").
  virtual std::string backendType() const = 0;

  /// @brief Called at start-up and then every heartbeat interval: registers what is not yet
  /// registered, or checks that the API still answers. A non-transient error at start-up ends
  /// the worker.
  virtual asio::awaitable<Result<void>> sync(bool at_startup) = 0;

  /// @brief The SCHEDULED runs due before `before`, as the API's list of flow runs.
  virtual asio::awaitable<Result<Json>> scheduledRuns(
      std::chrono::system_clock::time_point before) = 0;

  /// @brief The most runs of a deployment this process may hold at once, if limited.
  virtual std::optional<int> limitFor(const std::string& deployment_id) const = 0;

  /// @brief The work pool stand-in a run is prepared with: the base job template only.
  virtual Json preparationPool() const = 0;

  /// @brief The deployment as a run is prepared with it: the server's copy with this source's
  /// job variables in place of its own.
  virtual Json preparedDeployment(const Json& deployment) const = 0;

  /// @brief Called once the worker stops claiming, before it exits (pauses schedules).
  virtual asio::awaitable<void> stop() = 0;
};

/// @brief One poolworker instance serving one work pool.
class Worker {
 public:
  Worker(asio::io_context& io, Settings settings, prefect::PrefectClient& client,
         backends::BackendRegistry& registry, Metrics& metrics);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  /// @brief Runs until stopped (or, with --run-once, until its runs have finished).
  /// @return the process exit code: 0 after a normal stop, 1 after a fatal start-up error.
  asio::awaitable<int> run();

  /// @brief Called once start-up has succeeded (systemd READY=1).
  void onStarted(std::function<void()> hook) { on_started_ = std::move(hook); }

  /// @brief Serves a run source instead of the work pool named in the settings (`serve`). Set
  /// before run(); the source must outlive the worker.
  void setRunSource(RunSource* source) { source_ = source; }

  /// @brief Asks the worker to stop. Safe to call more than once; `Cancel` wins over `Drain`.
  void requestStop(StopMode mode);

  // ---- Introspection for health, metrics and tests ---------------------------------------

  const std::string& name() const { return name_; }
  /// @brief Seconds since the last successful poll (or since start before the first sync).
  double secondsSinceLastPoll() const;
  /// @brief Seconds since the last successful heartbeat, or -1 before the first.
  double secondsSinceLastHeartbeat() const;
  /// @brief True once the API answered and the backend checked out.
  bool ready() const { return ready_; }
  /// @brief True while the API answered the last sync.
  bool apiHealthy() const { return api_healthy_; }
  size_t runsInFlight() const { return runs_.size(); }
  int slotsInUse() const { return slots_in_use_; }

 private:
  asio::awaitable<Result<void>> startup();
  asio::awaitable<Result<void>> syncOnce(bool at_startup);
  asio::awaitable<Result<void>> heartbeat();
  asio::awaitable<void> firstHeartbeat();
  asio::awaitable<void> syncLoop();
  asio::awaitable<void> pollLoop();
  asio::awaitable<void> pollOnce();
  asio::awaitable<void> cancellationLoop();
  asio::awaitable<void> checkCancellations();
  asio::awaitable<void> submitRun(std::shared_ptr<RunState> run);
  asio::awaitable<void> superviseRun(std::shared_ptr<RunState> run);
  // Reports a run's end, from the outcome its backend gave (or the error that lost it).
  asio::awaitable<void> settleRun(std::shared_ptr<RunState> run, Result<Outcome> outcome);
  asio::awaitable<void> cancelRun(std::shared_ptr<RunState> run);
  asio::awaitable<void> recoverRuns();
  asio::awaitable<void> settleJournalEntry(JournalEntry entry);
  asio::awaitable<void> shutdown();
  // The claim (PENDING); true when the run is this worker's to start.
  asio::awaitable<bool> claimRun(std::shared_ptr<RunState> run);
  // Starts a claimed run and supervises it to its end.
  asio::awaitable<void> continueClaimedRun(std::shared_ptr<RunState> run);
  // Prepares and starts a claimed run, holding a `starting_` slot; true when it was started.
  asio::awaitable<bool> startClaimedRun(std::shared_ptr<RunState> run);
  // Puts a claimed run that never started back to SCHEDULED for another worker.
  asio::awaitable<void> releaseUnstarted(std::shared_ptr<RunState> run);
  // The state the run had ended in just before this worker's accepted claim (COMPLETED, FAILED
  // or CRASHED), read from its state history; nullopt when the claim followed a live state.
  asio::awaitable<std::optional<Json>> finishedBeforeOurClaim(std::shared_ptr<RunState> run);

  asio::awaitable<Result<Json>> cachedDeployment(const std::string& id);
  asio::awaitable<Result<Json>> cachedFlow(const std::string& id);
  asio::awaitable<void> proposeCrashed(const std::shared_ptr<RunState>& run,
                                       const std::string& message);
  asio::awaitable<void> markCancelled(const std::shared_ptr<RunState>& run,
                                      const std::string& message);
  asio::awaitable<Result<prefect::OrchestrationResult>> propose(const std::string& id,
                                                                const Json& state, bool force,
                                                                bool retry = true);
  void releaseRun(const std::shared_ptr<RunState>& run, const char* outcome);
  std::shared_ptr<LogSink> makeRunLog(const std::string& flow_run_id);
  void journal(const std::shared_ptr<RunState>& run, RunPhase phase);
  void emitEvent(const std::string& event, const std::shared_ptr<RunState>& run,
                 const Json& extra_flow_run_labels = Json::object());
  double jittered(double seconds);
  void wakeStopWaiters();

  asio::io_context& io_;
  Settings settings_;
  prefect::PrefectClient& client_;
  backends::BackendRegistry& registry_;
  Metrics& metrics_;
  AsioExecutor executor_;
  logging::Logger log_{"worker"};

  std::string name_;
  std::string type_;
  std::string worker_id_;
  Json pool_;
  std::optional<Json> startup_pool_;  ///< The pool as read to learn its type, for the first sync.
  Json default_template_;
  BackendPtr backend_;
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<ApiLogShipper> shipper_;
  std::unique_ptr<HealthServer> health_;

  bool synced_ = false;
  bool ready_ = false;
  bool api_healthy_ = false;
  bool stopping_ = false;
  std::optional<StopMode> stop_mode_;
  std::chrono::steady_clock::time_point last_polled_;
  std::optional<std::chrono::steady_clock::time_point> last_heartbeat_;
  std::unordered_map<std::string, std::shared_ptr<RunState>> runs_;
  int slots_in_use_ = 0;
  AsyncGate starting_{1};  ///< Claimed runs being prepared and started (worker.max_starting).
  std::string started_event_id_;
  std::unique_ptr<asio::steady_timer> stop_timer_;    ///< Cancelled to wake run() on stop.
  std::unique_ptr<asio::steady_timer> runs_changed_;  ///< Cancelled whenever a run is released.
  std::map<std::string, std::pair<std::chrono::steady_clock::time_point, Json>> deployment_cache_;
  /// A deployment read under way: the runs that need it meanwhile wait on `done`.
  struct SharedRead {
    explicit SharedRead(asio::io_context& io) : done(io, asio::steady_timer::time_point::max()) {}
    asio::steady_timer done;
    std::optional<Result<Json>> result;
  };
  std::map<std::string, std::shared_ptr<SharedRead>> deployment_reads_;
  std::map<std::string, std::pair<std::chrono::steady_clock::time_point, Json>> flow_cache_;
  std::function<void()> on_started_;
  RunSource* source_ = nullptr;
};

}  // namespace poolworker
