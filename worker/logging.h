#pragma once

// The worker's own log: one named logger per component, text or JSON lines on stderr, every
// line about a run tagged with its flow run id.

#include <string>
#include <string_view>

#include <poolworker/log_sink.h>

namespace poolworker::logging {

/// @brief Configures the process-wide log: `level` is trace/debug/info/warning/error/critical,
/// `format` is "text" or "json". Safe to call again (tests, reconfiguration).
void setup(const std::string& level, const std::string& format);

/// @brief True when `level` would be written.
bool enabled(LogLevel level);

/// @brief A component's logger, e.g. Logger("worker.poller").
class Logger {
 public:
  explicit Logger(std::string component) : component_(std::move(component)) {}

  /// @brief Writes one line; `flow_run_id` tags it when not empty.
  void log(LogLevel level, std::string_view message, std::string_view flow_run_id = {}) const;

  void debug(std::string_view message, std::string_view flow_run_id = {}) const {
    log(LogLevel::Debug, message, flow_run_id);
  }
  void info(std::string_view message, std::string_view flow_run_id = {}) const {
    log(LogLevel::Info, message, flow_run_id);
  }
  void warn(std::string_view message, std::string_view flow_run_id = {}) const {
    log(LogLevel::Warning, message, flow_run_id);
  }
  void error(std::string_view message, std::string_view flow_run_id = {}) const {
    log(LogLevel::Error, message, flow_run_id);
  }

  const std::string& component() const { return component_; }

 private:
  std::string component_;
};

/// @brief Escapes a string for inclusion in a JSON document (without the quotes).
std::string jsonEscape(std::string_view text);

}  // namespace poolworker::logging
