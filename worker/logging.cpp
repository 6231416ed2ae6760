#include "worker/logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <mutex>

namespace poolworker::logging {
namespace {

std::mutex& setupMutex() {
  static std::mutex m;
  return m;
}

bool json_format = false;  // NOLINT(readability-identifier-naming): set once at start-up

spdlog::level::level_enum toSpd(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return spdlog::level::debug;
    case LogLevel::Info:
      return spdlog::level::info;
    case LogLevel::Warning:
      return spdlog::level::warn;
    case LogLevel::Error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

std::shared_ptr<spdlog::logger> rootLogger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto created = spdlog::stderr_logger_mt("poolworker");
    created->set_pattern("%Y-%m-%d %H:%M:%S.%e %-7l %v");
    created->flush_on(spdlog::level::trace);
    return created;
  }();
  return logger;
}

}  // namespace

void setup(const std::string& level, const std::string& format) {
  std::lock_guard lock(setupMutex());
  auto logger = rootLogger();
  logger->set_level(spdlog::level::from_str(level == "warning" ? "warn" : level));
  json_format = format == "json";
  if (json_format) {
    logger->set_pattern("{\"time\":\"%Y-%m-%dT%H:%M:%S.%fZ\",\"level\":\"%l\",%v}",
                        spdlog::pattern_time_type::utc);
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %-7l %v");
  }
}

bool enabled(LogLevel level) { return rootLogger()->should_log(toSpd(level)); }

std::string jsonEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 8);
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

void Logger::log(LogLevel level, std::string_view message, std::string_view flow_run_id) const {
  auto logger = rootLogger();
  auto spd_level = toSpd(level);
  if (!logger->should_log(spd_level)) {
    return;
  }
  std::string line;
  if (json_format) {
    line = "\"logger\":\"" + jsonEscape(component_) + "\"";
    if (!flow_run_id.empty()) {
      line += ",\"flow_run_id\":\"" + jsonEscape(flow_run_id) + "\"";
    }
    line += ",\"message\":\"" + jsonEscape(message) + "\"";
  } else {
    line = component_;
    if (!flow_run_id.empty()) {
      line += " [flow_run=";
      line += flow_run_id;
      line += "]";
    }
    line += " ";
    line += message;
  }
  logger->log(spd_level, "{}", line);
}

}  // namespace poolworker::logging
