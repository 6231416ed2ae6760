#include "worker/log_shipper.h"

#include <cstdio>

#include "worker/metrics.h"
#include "worker/prefect_client.h"

namespace poolworker {
namespace {

constexpr size_t kMaxQueued = 20000;
constexpr size_t kMaxBatch = 500;
constexpr size_t kMaxMessage = 1000000;
constexpr auto kInterval = std::chrono::milliseconds(1000);

int pythonLevel(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return 10;
    case LogLevel::Info:
      return 20;
    case LogLevel::Warning:
      return 30;
    case LogLevel::Error:
      return 40;
  }
  return 20;
}

std::mutex& outputMutex() {
  static std::mutex m;
  return m;
}

}  // namespace

ApiLogShipper::ApiLogShipper(asio::io_context& io, prefect::PrefectClient& client, Metrics& metrics)
    : io_(io), client_(client), metrics_(metrics) {}

void ApiLogShipper::log(const std::string& flow_run_id, LogLevel level, std::string_view message) {
  std::string text(message);
  if (text.size() > kMaxMessage) {
    text = text.substr(0, kMaxMessage) + "... [truncated]";
  }
  Json entry = {{"name", "prefect.flow_runs.worker"},
                {"level", pythonLevel(level)},
                {"message", std::move(text)},
                {"timestamp", prefect::formatTimestamp(std::chrono::system_clock::now())},
                {"flow_run_id", flow_run_id},
                {"task_run_id", nullptr}};
  std::lock_guard lock(mu_);
  if (logs_.size() >= kMaxQueued) {
    logs_.pop_front();
    metrics_.inc("api_logs_dropped_total");
  }
  logs_.push_back(std::move(entry));
}

void ApiLogShipper::event(Json event) {
  std::lock_guard lock(mu_);
  if (events_.size() >= kMaxQueued) {
    events_.pop_front();
  }
  events_.push_back(std::move(event));
}

void ApiLogShipper::start() {
  asio::co_spawn(io_, loop(), asio::detached);
}

asio::awaitable<void> ApiLogShipper::loop() {
  for (;;) {
    co_await sleepFor(kInterval);
    co_await flush();
  }
}

asio::awaitable<void> ApiLogShipper::flush() {
  if (flushing_) {
    co_return;
  }
  flushing_ = true;
  for (;;) {
    Json logs = Json::array();
    Json events = Json::array();
    {
      std::lock_guard lock(mu_);
      while (!logs_.empty() && logs.size() < kMaxBatch) {
        logs.push_back(std::move(logs_.front()));
        logs_.pop_front();
      }
      while (!events_.empty() && events.size() < kMaxBatch) {
        events.push_back(std::move(events_.front()));
        events_.pop_front();
      }
    }
    if (logs.empty() && events.empty()) {
      break;
    }
    bool failed = false;
    if (!logs.empty()) {
      auto sent = co_await client_.createLogs(logs);
      if (!sent && sent.error().retryable()) {
        failed = true;
        std::lock_guard lock(mu_);
        for (auto it = logs.rbegin(); it != logs.rend(); ++it) {
          logs_.push_front(std::move(*it));
        }
      } else if (!sent) {
        log_.warn("could not send " + std::to_string(logs.size()) +
                  " log lines to Prefect: " + sent.error().message);
      }
    }
    if (!events.empty()) {
      auto sent = co_await client_.emitEvents(events);
      if (!sent && sent.error().retryable()) {
        failed = true;
        std::lock_guard lock(mu_);
        for (auto it = events.rbegin(); it != events.rend(); ++it) {
          events_.push_front(std::move(*it));
        }
      } else if (!sent) {
        log_.debug("could not send events to Prefect: " + sent.error().message);
      }
    }
    if (failed) {
      break;
    }
  }
  flushing_ = false;
}

void RunLogSink::log(LogLevel level, std::string_view message) {
  logger_.log(level, message, flow_run_id_);
  if (shipper_ != nullptr) {
    shipper_->log(flow_run_id_, level, message);
  }
}

void RunLogSink::output(std::string_view chunk, bool is_stderr) {
  std::lock_guard lock(outputMutex());
  FILE* stream = is_stderr ? stderr : stdout;
  std::fwrite(chunk.data(), 1, chunk.size(), stream);
  std::fflush(stream);
}

}  // namespace poolworker
