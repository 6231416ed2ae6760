#pragma once

// The worker's HTTP endpoint (--with-healthcheck): Prefect's /health, plus /health/live,
// /health/ready and Prometheus /metrics.

#include <cstdint>
#include <memory>
#include <string>

#include <poolworker/result.h>

#include "worker/async.h"

namespace poolworker {

class Metrics;
class Worker;
namespace http {
class HttpServer;
}  // namespace http

/// @brief Serves the worker's health and metrics on the io_context.
class HealthServer {
 public:
  HealthServer(asio::io_context& io, const Worker& worker, Metrics& metrics, double query_seconds);
  ~HealthServer();
  HealthServer(const HealthServer&) = delete;
  HealthServer& operator=(const HealthServer&) = delete;

  /// @brief Starts listening; fails with a message naming host:port.
  Result<void> listen(const std::string& host, uint16_t port);
  /// @brief The bound port (useful with port 0).
  uint16_t port() const;
  void stop();

 private:
  std::unique_ptr<http::HttpServer> server_;
};

}  // namespace poolworker
