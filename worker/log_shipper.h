#pragma once

// Sends the worker's messages about runs to Prefect (POST /logs/, logger
// `prefect.flow_runs.worker`) and its events (POST /events), in batches, without ever blocking
// the caller.

#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include <poolworker/json.h>
#include <poolworker/log_sink.h>

#include "worker/async.h"
#include "worker/logging.h"

namespace poolworker {

namespace prefect {
class PrefectClient;
}  // namespace prefect
class Metrics;

/// @brief Batches run logs and events for the Prefect API. Thread-safe producers.
class ApiLogShipper {
 public:
  ApiLogShipper(asio::io_context& io, prefect::PrefectClient& client, Metrics& metrics);

  /// @brief Queues a message for a run's logs in Prefect.
  void log(const std::string& flow_run_id, LogLevel level, std::string_view message);
  /// @brief Queues an event.
  void event(Json event);
  /// @brief Starts the periodic flush on the io_context.
  void start();
  /// @brief Sends everything queued now (used when stopping).
  asio::awaitable<void> flush();

 private:
  asio::awaitable<void> loop();

  asio::io_context& io_;
  prefect::PrefectClient& client_;
  Metrics& metrics_;
  logging::Logger log_{"worker.logs"};
  std::mutex mu_;
  std::deque<Json> logs_;
  std::deque<Json> events_;
  bool flushing_ = false;
};

/// @brief The LogSink of one run: worker log + the run's logs in Prefect; stream output goes to
/// the worker's stdout/stderr.
class RunLogSink final : public LogSink {
 public:
  RunLogSink(std::string flow_run_id, ApiLogShipper* shipper)
      : flow_run_id_(std::move(flow_run_id)), shipper_(shipper) {}

  void log(LogLevel level, std::string_view message) override;
  void output(std::string_view chunk, bool is_stderr) override;

 private:
  std::string flow_run_id_;
  ApiLogShipper* shipper_;
  logging::Logger logger_{"worker.run"};
};

}  // namespace poolworker
