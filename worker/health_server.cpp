#include "worker/health_server.h"

#include "worker/http_server.h"
#include "worker/logging.h"
#include "worker/metrics.h"
#include "worker/worker.h"

namespace poolworker {

HealthServer::HealthServer(asio::io_context& io, const Worker& worker, Metrics& metrics,
                           double query_seconds)
    : server_(std::make_unique<http::HttpServer>(io)) {
  server_->setHandler([&worker, &metrics, query_seconds](const http::Request& request,
                                                          http::Responder respond) {
    http::Response response;
    if (request.method != "GET" && request.method != "HEAD") {
      response.status = 405;
      response.body = R"({"detail":"Method Not Allowed"})";
    } else if (request.path == "/health") {
      // Prefect's rule: unhealthy when the last poll is older than 30 query intervals.
      double age = worker.secondsSinceLastPoll();
      if (age <= 30 * query_seconds) {
        response.body = R"({"message":"OK"})";
      } else {
        static const logging::Logger kLog("worker.health");
        kLog.error("Worker has not polled in the last " + std::to_string(static_cast<int>(age)) +
                   " seconds and should be restarted");
        response.status = 503;
        response.body = R"({"message":"Worker may be unresponsive at this time"})";
      }
    } else if (request.path == "/health/live") {
      response.body = R"({"status":"alive"})";
    } else if (request.path == "/health/ready") {
      bool ready = worker.ready() && worker.apiHealthy();
      response.status = ready ? 200 : 503;
      response.body = ready ? R"({"status":"ready"})" : R"({"status":"not ready"})";
    } else if (request.path == "/metrics") {
      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
      response.body = metrics.render();
    } else {
      response.status = 404;
      response.body = R"({"detail":"Not Found"})";
    }
    respond(std::move(response));
  });
}

HealthServer::~HealthServer() { stop(); }

Result<void> HealthServer::listen(const std::string& host, uint16_t port) {
  return server_->listen(host, port);
}

uint16_t HealthServer::port() const { return server_->port(); }

void HealthServer::stop() { server_->stop(); }

}  // namespace poolworker
