#include "worker/metrics.h"

#include <gtest/gtest.h>

#include "worker/secret.h"

namespace poolworker {
namespace {

TEST(Metrics, RendersPrometheusText) {
  Metrics m;
  m.describe("runs_started_total", Metrics::Type::Counter, "Runs started.");
  m.inc("runs_started_total");
  m.inc("runs_started_total");
  m.inc("api_requests_total", {{"endpoint", "/flow_runs/{id}"}, {"status", "200"}});
  m.observe("api_request_duration_seconds", {{"endpoint", "/x"}}, 0.02);
  m.gaugeFunction("runs_in_flight", "In flight.", [] { return 7.0; });
  std::string text = m.render();
  EXPECT_NE(text.find("# HELP poolworker_runs_started_total Runs started."), std::string::npos);
  EXPECT_NE(text.find("# TYPE poolworker_runs_started_total counter"), std::string::npos);
  EXPECT_NE(text.find("poolworker_runs_started_total 2\n"), std::string::npos);
  EXPECT_NE(
      text.find("poolworker_api_requests_total{endpoint=\"/flow_runs/{id}\",status=\"200\"} 1"),
      std::string::npos);
  EXPECT_NE(
      text.find("poolworker_api_request_duration_seconds_bucket{endpoint=\"/x\",le=\"0.025\"} 1"),
      std::string::npos);
  EXPECT_NE(
      text.find("poolworker_api_request_duration_seconds_bucket{endpoint=\"/x\",le=\"0.01\"} 0"),
      std::string::npos);
  EXPECT_NE(text.find("poolworker_api_request_duration_seconds_count{endpoint=\"/x\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("poolworker_runs_in_flight 7"), std::string::npos);
  EXPECT_DOUBLE_EQ(m.value("runs_started_total"), 2);
  EXPECT_DOUBLE_EQ(m.value("runs_in_flight"), 7);
}

TEST(Secret, NeverPrintsAndMasksItsBasicAuthForm) {
  Secret s("user:pass");
  EXPECT_EQ(s.masked(), "********");
  std::string text = "auth user:pass or dXNlcjpwYXNz in a message";
  EXPECT_EQ(maskSecrets(text, {&s}), "auth ******** or ******** in a message");
}

}  // namespace
}  // namespace poolworker
