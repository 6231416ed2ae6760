#pragma once

// Runs a real Worker (real Prefect client, real process backend) on its own thread against the
// in-process fake Prefect API, for the integration tests.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "backends/plugins/loader.h"
#include "backends/registry.h"
#include "tests/fakes/fake_prefect.h"
#include "tests/test_support.h"
#include "worker/async.h"
#include "worker/metrics.h"
#include "worker/prefect_client.h"
#include "worker/worker.h"

namespace poolworker::testing {

struct HarnessOptions {
  std::string pool = "pool";
  std::string name;
  std::optional<int> limit;
  int max_starting = 32;
  bool run_once = false;
  double query_seconds = 0.1;
  double heartbeat_seconds = 0.5;
  double cancellation_poll_seconds = 0.2;
  double kill_grace_seconds = 2;
  double prefetch_seconds = 10;
  double drain_seconds = 0;
  std::string type = "process";
  std::string state_dir;  ///< Empty: a temporary directory of the harness.
  int max_retries = 3;
  double retry_base_seconds = 0.05;
  std::string api_url;                    ///< Empty: the fake's.
  std::vector<std::string> plugin_dirs;   ///< Backend plugins to load beside the built-ins.
  Json backend_options = Json::object();  ///< backends.<name>.<option>, beside the process shim.
};

/// The command that runs the fake engine, for a deployment's `command` job variable.
inline std::string fakeEngineCommand() {
  return "python3 " + sourcePath("tests/fakes/fake_engine.py").string();
}

class WorkerHarness {
 public:
  WorkerHarness(FakePrefect& api, HarnessOptions options) : options_(std::move(options)) {
    if (const char* level = std::getenv("POOLWORKER_TEST_LOG")) {
      logging::setup(level, "text");
    } else {
      logging::setup("warning", "text");
    }
    if (options_.state_dir.empty()) {
      own_state_ = std::make_unique<TempDir>();
      options_.state_dir = own_state_->path().string();
    }
    Settings s;
    s.pool = options_.pool;
    s.name = options_.name;
    s.limit = options_.limit;
    s.max_starting = options_.max_starting;
    s.run_once = options_.run_once;
    s.type = options_.type;
    s.query_seconds = options_.query_seconds;
    s.heartbeat_seconds = options_.heartbeat_seconds;
    s.cancellation_poll_seconds = options_.cancellation_poll_seconds;
    s.kill_grace_seconds = options_.kill_grace_seconds;
    s.prefetch_seconds = options_.prefetch_seconds;
    s.drain_seconds = options_.drain_seconds;
    s.state_dir = options_.state_dir;
    s.api.url = options_.api_url.empty() ? api.apiUrl() : options_.api_url;
    s.api.max_retries = options_.max_retries;
    s.api.retry_base_seconds = options_.retry_base_seconds;
    s.api.request_timeout_seconds = 10;
    s.prefect_settings["PREFECT_API_URL"] = s.api.url;
    s.backend_options = {{"process", {{"shim_path", binPath("poolworker-run").string()}}}};
    for (const auto& [name, values] : options_.backend_options.items()) {
      s.backend_options[name] = values;
    }
    (void)backends::registerBuiltinBackends(registry_, io_);
    plugin_report_ = backends::plugins::loadPlugins(registry_, io_, options_.plugin_dirs);
    client_ = std::make_unique<prefect::PrefectClient>(io_, s.api, "poolworker-test/0 (API 0.8.4)");
    worker_ = std::make_unique<Worker>(io_, std::move(s), *client_, registry_, metrics_);
    thread_ = std::thread([this] {
      asio::co_spawn(
          io_,
          [this]() -> asio::awaitable<void> {
            int code = co_await worker_->run();
            {
              std::lock_guard lock(mu_);
              exit_code_ = code;
            }
            cv_.notify_all();
            io_.stop();
          },
          asio::detached);
      io_.run();
      std::lock_guard lock(mu_);
      finished_ = true;
      cv_.notify_all();
    });
  }

  ~WorkerHarness() {
    stop(StopMode::Drain);
    if (!waitForExit(std::chrono::seconds(60))) {
      io_.stop();
    }
    thread_.join();
  }

  WorkerHarness(const WorkerHarness&) = delete;
  WorkerHarness& operator=(const WorkerHarness&) = delete;

  void stop(StopMode mode) {
    asio::post(io_, [this, mode] { worker_->requestStop(mode); });
  }

  /// Waits until the worker's run() returned; true when it did within `timeout`.
  bool waitForExit(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return exit_code_.has_value() || finished_; });
  }

  std::optional<int> exitCode() {
    std::lock_guard lock(mu_);
    return exit_code_;
  }

  /// A metric's value, read on the worker's thread.
  double metric(const std::string& name, const Labels& labels = {}) {
    return metrics_.value(name, labels);
  }

  const std::string& stateDir() const { return options_.state_dir; }

  /// What the plugin loader loaded and refused.
  const backends::plugins::LoadReport& pluginReport() const { return plugin_report_; }

 private:
  HarnessOptions options_;
  std::unique_ptr<TempDir> own_state_;
  asio::io_context io_;
  Metrics metrics_;
  backends::BackendRegistry registry_;
  backends::plugins::LoadReport plugin_report_;
  std::unique_ptr<prefect::PrefectClient> client_;
  std::unique_ptr<Worker> worker_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<int> exit_code_;
  bool finished_ = false;
};

}  // namespace poolworker::testing
