#include "tests/fakes/fake_prefect.h"

#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include "tests/test_support.h"

extern char** environ;

namespace poolworker::testing {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;
  std::string body;
  Json json;
  // True when the server closed the connection without answering.
  bool dropped = false;
};

// A plain blocking HTTP client: one connection per call, as simple as a worker's first try.
Reply send(uint16_t port, const std::string& method, const std::string& target,
           const std::optional<std::string>& body,
           const std::map<std::string, std::string>& headers) {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  bhttp::request<bhttp::string_body> request(bhttp::string_to_verb(method), target, 11);
  request.set(bhttp::field::host, "127.0.0.1:" + std::to_string(port));
  for (const auto& [name, value] : headers) {
    request.set(name, value);
  }
  if (body) {
    request.body() = *body;
    request.prepare_payload();
  }
  bhttp::write(socket, request);
  beast::flat_buffer buffer;
  bhttp::response<bhttp::string_body> response;
  beast::error_code ec;
  bhttp::read(socket, buffer, response, ec);
  Reply reply;
  if (ec) {
    reply.dropped = true;
    return reply;
  }
  reply.status = static_cast<int>(response.result_int());
  for (const auto& field : response.base()) {
    reply.headers[std::string(field.name_string())] = std::string(field.value());
  }
  reply.body = response.body();
  reply.json = Json::parse(reply.body, nullptr, false);
  if (reply.json.is_discarded()) {
    reply.json = nullptr;
  }
  return reply;
}

std::string text(const Json& value) { return value.is_string() ? value.get<std::string>() : ""; }

std::map<std::string, std::string> defaultHeaders() {
  return {{"X-PREFECT-API-VERSION", "0.8.4"},
          {"User-Agent", "poolworker-test/1.0"},
          {"Content-Type", "application/json"}};
}

class FakePrefectTest : public ::testing::Test {
 protected:
  Reply call(const std::string& method, const std::string& path,
             const std::optional<Json>& body = std::nullopt,
             std::map<std::string, std::string> headers = defaultHeaders()) {
    std::optional<std::string> text;
    if (body) {
      text = body->dump();
    }
    return send(fake_.port(), method, "/api" + path, text, headers);
  }

  Reply setState(const std::string& run, const std::string& type, const std::string& name = "",
                 bool force = false, const std::string& transition_id = "") {
    Json state = {
        {"type", type},
        {"state_details",
         {{"flow_run_id", run},
          {"transition_id", transition_id.empty() ? Json(nullptr) : Json(transition_id)}}}};
    if (!name.empty()) {
      state["name"] = name;
    }
    return call("POST", "/flow_runs/" + run + "/set_state",
                Json{{"state", state}, {"force", force}});
  }

  // A pool "pool" with a deployment "dep" of flow "flow" on its default queue.
  void seedDeployment(std::optional<int> concurrency_limit = std::nullopt,
                      const std::string& strategy = "ENQUEUE") {
    fake_.createWorkPool("pool", "process");
    flow_id_ = fake_.createFlow("flow");
    deployment_id_ =
        fake_.createDeployment(flow_id_, "dep", "pool", "default", Json{{"env", {{"A", "1"}}}},
                               concurrency_limit, strategy);
  }

  FakePrefect fake_;
  std::string flow_id_;
  std::string deployment_id_;
};

// ---- Health, headers, auth, CSRF -------------------------------------------------------------

TEST_F(FakePrefectTest, HealthAndUnknownRoutes) {
  auto health = call("GET", "/health", std::nullopt, {});
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.json, Json(true));
  EXPECT_EQ(call("GET", "/nope").status, 404);
  EXPECT_EQ(call("GET", "/nope").json, Json({{"detail", "Not Found"}}));
  EXPECT_EQ(send(fake_.port(), "GET", "/health", std::nullopt, {}).status, 404);
  EXPECT_EQ(call("DELETE", "/health").status, 405);
  EXPECT_EQ(fake_.apiUrl(), "http://127.0.0.1:" + std::to_string(fake_.port()) + "/api");
}

TEST_F(FakePrefectTest, RedirectsAMissingTrailingSlashLikeStarlette) {
  auto reply = call("POST", "/work_pools", Json{{"name", "p"}, {"type", "process"}});
  EXPECT_EQ(reply.status, 307);
  EXPECT_EQ(reply.headers["Location"],
            "http://127.0.0.1:" + std::to_string(fake_.port()) + "/api/work_pools/");
  EXPECT_TRUE(fake_.workPool("p").is_null()) << "a redirect creates nothing";
}

TEST_F(FakePrefectTest, RejectsMalformedApiVersionHeaders) {
  auto headers = defaultHeaders();
  headers["X-PREFECT-API-VERSION"] = "latest";
  auto bad = call("GET", "/work_pools/p", std::nullopt, headers);
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.json["detail"],
            "Invalid X-PREFECT-API-VERSION header format.Expected header in format 'x.y.z' but "
            "received latest");
  headers["X-PREFECT-API-VERSION"] = "0.7.9";
  auto old = call("GET", "/work_pools/p", std::nullopt, headers);
  EXPECT_EQ(old.status, 400);
  EXPECT_NE(text(old.json["detail"]).find("requires version 0.8.0 or higher"), std::string::npos);
  headers.erase("X-PREFECT-API-VERSION");
  EXPECT_EQ(call("GET", "/work_pools/p", std::nullopt, headers).status, 404) << "missing = latest";
}

TEST_F(FakePrefectTest, RecordsRequestsAndUserAgents) {
  auto headers = defaultHeaders();
  headers["User-Agent"] = "prefect/3.8.8 (API 0.8.4)";
  call("GET", "/work_pools/p?x=1", std::nullopt, headers);
  call("GET", "/health");
  auto requests = fake_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].method, "GET");
  EXPECT_EQ(requests[0].path, "/work_pools/p");
  EXPECT_EQ(requests[0].target, "/api/work_pools/p?x=1");
  EXPECT_EQ(requests[0].status, 404);
  EXPECT_EQ(requests[0].headers.at("user-agent"), "prefect/3.8.8 (API 0.8.4)");
  EXPECT_EQ(fake_.userAgents(),
            (std::vector<std::string>{"prefect/3.8.8 (API 0.8.4)", "poolworker-test/1.0"}));
  EXPECT_EQ(fake_.countRequests("GET", "/work_pools/.*"), 1);
  EXPECT_EQ(fake_.countRequests("*", "/.*"), 2);
  fake_.clearRequests();
  EXPECT_TRUE(fake_.requests().empty());
}

TEST(FakePrefectAuth, BasicAuthLikePrefectServerApiAuthString) {
  FakePrefectOptions options;
  options.auth_string = "admin:pass";
  FakePrefect fake(options);
  auto headers = defaultHeaders();
  auto denied = send(fake.port(), "GET", "/api/work_pools/p", std::nullopt, headers);
  EXPECT_EQ(denied.status, 401);
  EXPECT_EQ(denied.json, Json({{"exception_message", "Unauthorized"}}));
  EXPECT_EQ(send(fake.port(), "GET", "/api/health", std::nullopt, headers).status, 200);
  headers["Authorization"] = "Basic YWRtaW46d3Jvbmc=";  // admin:wrong
  EXPECT_EQ(send(fake.port(), "GET", "/api/work_pools/p", std::nullopt, headers).status, 401);
  headers["Authorization"] = "Bearer YWRtaW46cGFzcw==";
  EXPECT_EQ(send(fake.port(), "GET", "/api/work_pools/p", std::nullopt, headers).status, 401);
  headers["Authorization"] = "Basic YWRtaW46cGFzcw==";  // admin:pass
  EXPECT_EQ(send(fake.port(), "GET", "/api/work_pools/p", std::nullopt, headers).status, 404);
  fake.setAuthString(std::nullopt);
  headers.erase("Authorization");
  EXPECT_EQ(send(fake.port(), "GET", "/api/work_pools/p", std::nullopt, headers).status, 404);
}

TEST_F(FakePrefectTest, CsrfDisabledAnswers422WithTheRealText) {
  auto reply = call("GET", "/csrf-token?client=abc");
  EXPECT_EQ(reply.status, 422);
  EXPECT_EQ(reply.json, Json({{"detail", "CSRF protection is disabled."}}));
  auto missing = call("GET", "/csrf-token");
  EXPECT_EQ(missing.status, 422);
  EXPECT_EQ(missing.json["exception_detail"][0]["loc"], Json::array({"query", "client"}));
}

TEST_F(FakePrefectTest, CsrfTokenProtocol) {
  fake_.setCsrfEnabled(true);
  Json pool = {{"name", "p"}, {"type", "process"}};
  auto missing = call("POST", "/work_pools/", pool);
  EXPECT_EQ(missing.status, 403);
  EXPECT_EQ(missing.json, Json({{"detail", "Missing CSRF token."}}));
  auto headers = defaultHeaders();
  headers["Prefect-Csrf-Token"] = "t";
  EXPECT_EQ(call("POST", "/work_pools/", pool, headers).json,
            Json({{"detail", "Missing client identifier."}}));
  headers["Prefect-Csrf-Client"] = "client-1";
  auto invalid = call("POST", "/work_pools/", pool, headers);
  EXPECT_EQ(invalid.status, 403);
  EXPECT_EQ(invalid.json, Json({{"detail", "Invalid CSRF token or client identifier."}}));

  auto token = call("GET", "/csrf-token?client=client-1");
  ASSERT_EQ(token.status, 200);
  EXPECT_EQ(token.json["client"], "client-1");
  EXPECT_TRUE(parsePrefectTime(text(token.json["expiration"])).has_value());
  headers["Prefect-Csrf-Token"] = text(token.json["token"]);
  EXPECT_EQ(call("POST", "/work_pools/", pool, headers).status, 201);
  EXPECT_EQ(call("GET", "/work_pools/p").status, 200) << "reads need no token";

  fake_.expireCsrfTokens();
  auto expired = call("PATCH", "/work_pools/p", Json{{"description", "x"}}, headers);
  EXPECT_EQ(expired.status, 403);
  EXPECT_NE(expired.body.find("Invalid CSRF token"), std::string::npos);
}

// ---- Work pools, queues, heartbeats ----------------------------------------------------------

TEST_F(FakePrefectTest, WorkPoolLifecycle) {
  auto missing = call("GET", "/work_pools/my%20pool");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.json, Json({{"detail", "Work pool \"my pool\" not found."}}));

  auto created = call("POST", "/work_pools/", Json{{"name", "my pool"}, {"type", "process"}});
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.json["status"], "NOT_READY");
  EXPECT_EQ(created.json["base_job_template"], Json::object());
  EXPECT_TRUE(created.json["default_queue_id"].is_string());
  EXPECT_EQ(fake_.workQueue("my pool", "default")["id"], created.json["default_queue_id"]);
  EXPECT_EQ(fake_.workQueue("my pool", "default")["priority"], 1);

  // The path segment may be percent-encoded.
  auto read = call("GET", "/work_pools/my%20pool");
  EXPECT_EQ(read.status, 200);
  EXPECT_EQ(read.json["id"], created.json["id"]);

  EXPECT_EQ(call("POST", "/work_pools/", Json{{"name", "my pool"}, {"type", "process"}}).json,
            Json({{"detail", "A work pool with this name already exists."}}));
  EXPECT_EQ(call("POST", "/work_pools/", Json{{"name", "Prefect-x"}, {"type", "process"}}).status,
            403);

  Json template_json = {{"job_configuration", {{"command", "{{ command }}"}}},
                        {"variables", {{"properties", {{"command", {{"type", "string"}}}}}}}};
  auto patched = call("PATCH", "/work_pools/my%20pool", Json{{"base_job_template", template_json}});
  EXPECT_EQ(patched.status, 204);
  EXPECT_EQ(patched.body, "");
  EXPECT_EQ(fake_.workPool("my pool")["base_job_template"], template_json);
  EXPECT_EQ(call("PATCH", "/work_pools/other", Json{{"description", "x"}}).status, 404);
}

TEST_F(FakePrefectTest, WorkPoolValidationMatchesThe422sOfTheServer) {
  auto extra = call("POST", "/work_pools/", Json{{"name", "p"}, {"type", "process"}, {"x", 1}});
  EXPECT_EQ(extra.status, 422);
  EXPECT_EQ(extra.json["exception_message"], "Invalid request received.");
  EXPECT_EQ(extra.json["exception_detail"][0]["type"], "extra_forbidden");
  EXPECT_EQ(extra.json["exception_detail"][0]["loc"], Json::array({"body", "x"}));

  auto half = call("POST", "/work_pools/",
                   Json{{"name", "p"}, {"base_job_template", {{"job_configuration", {{"a", 1}}}}}});
  EXPECT_EQ(half.status, 422);
  EXPECT_NE(half.body.find("must contain both a `job_configuration` key and a `variables` key"),
            std::string::npos);

  Json undeclared = {{"job_configuration", {{"command", "{{ command }}"}, {"env", "{{ env }}"}}},
                     {"variables", {{"properties", {{"command", Json::object()}}}}}};
  auto placeholder =
      call("POST", "/work_pools/", Json{{"name", "p"}, {"base_job_template", undeclared}});
  EXPECT_EQ(placeholder.status, 422);
  EXPECT_NE(placeholder.body.find("undeclared variable(s): env."), std::string::npos);

  EXPECT_EQ(call("POST", "/work_pools/", Json{{"name", "a/b"}}).status, 422);
  EXPECT_EQ(call("POST", "/work_pools/", Json{{"name", "p"}, {"concurrency_limit", -1}}).status,
            422);
  EXPECT_EQ(call("POST", "/work_pools/", std::nullopt).status, 422);
  EXPECT_EQ(call("PATCH", "/work_pools/p", Json{{"type", "docker"}}).status, 422);
  EXPECT_TRUE(fake_.workPool("p").is_null());
}

TEST_F(FakePrefectTest, HeartbeatRecordsTheWorkerAndReadiesThePool) {
  fake_.createWorkPool("pool", "process");
  auto reply = call("POST", "/work_pools/pool/workers/heartbeat",
                    Json{{"name", "ProcessWorker 1"}, {"heartbeat_interval_seconds", 30}});
  EXPECT_EQ(reply.status, 204);
  auto beats = fake_.heartbeats();
  ASSERT_EQ(beats.size(), 1u);
  EXPECT_EQ(beats[0]["name"], "ProcessWorker 1");
  EXPECT_EQ(beats[0]["heartbeat_interval_seconds"], 30);
  EXPECT_EQ(beats[0]["work_pool"], "pool");
  EXPECT_EQ(fake_.workPool("pool")["status"], "READY");

  EXPECT_EQ(call("POST", "/work_pools/pool/workers/heartbeat",
                 Json{{"name", "w"}, {"heartbeat_interval_seconds", 30.5}})
                .status,
            422);
  EXPECT_EQ(call("POST", "/work_pools/pool/workers/heartbeat",
                 Json{{"name", "w"}, {"heartbeat_interval_seconds", "soon"}})
                .status,
            422);
  EXPECT_EQ(call("POST", "/work_pools/pool/workers/heartbeat",
                 Json{{"name", "w"}, {"heartbeat_interval_seconds", nullptr}})
                .status,
            204);
  EXPECT_EQ(
      call("POST", "/work_pools/pool/workers/heartbeat", Json{{"heartbeat_interval_seconds", 30}})
          .status,
      422);
  auto unknown = call("POST", "/work_pools/nope/workers/heartbeat", Json{{"name", "w"}});
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(unknown.json["detail"], "Work pool \"nope\" not found.");
  EXPECT_EQ(fake_.heartbeats().size(), 2u);

  auto workers = call("POST", "/work_pools/pool/workers/filter", Json::object());
  EXPECT_EQ(workers.json.size(), 2u);
}

TEST_F(FakePrefectTest, PausedPoolKeepsItsStatusOnHeartbeat) {
  fake_.createWorkPool("pool", "process");
  fake_.setWorkPoolPaused("pool", true);
  call("POST", "/work_pools/pool/workers/heartbeat", Json{{"name", "w"}});
  EXPECT_EQ(fake_.workPool("pool")["status"], "PAUSED");
}

TEST_F(FakePrefectTest, WorkQueuesCanBeCreatedReadAndFiltered) {
  fake_.createWorkPool("pool", "process");
  auto created = call("POST", "/work_pools/pool/queues", Json{{"name", "high"}, {"priority", 1}});
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.json["priority"], 1);
  EXPECT_EQ(fake_.workQueue("pool", "default")["priority"], 2);
  EXPECT_EQ(call("POST", "/work_pools/pool/queues/", Json{{"name", "x"}}).status, 307);
  EXPECT_EQ(call("POST", "/work_pools/pool/queues", Json{{"name", "high"}}).status, 409);
  auto all = call("POST", "/work_pools/pool/queues/filter", Json::object());
  ASSERT_EQ(all.json.size(), 2u);
  EXPECT_EQ(all.json[0]["name"], "high");
  auto named = call("POST", "/work_pools/pool/queues/filter",
                    Json{{"work_queues", {{"name", {{"any_", {"default"}}}}}}});
  ASSERT_EQ(named.json.size(), 1u);
  EXPECT_EQ(named.json[0]["name"], "default");
  EXPECT_EQ(call("GET", "/work_pools/pool/queues/high").json["name"], "high");
  EXPECT_EQ(call("GET", "/work_pools/pool/queues/nope").json["detail"],
            "Work pool queue 'pool/nope' not found.");
}

// ---- Polling ---------------------------------------------------------------------------------

TEST_F(FakePrefectTest, PollReturnsDueRunsByQueuePriorityThenTime) {
  seedDeployment();
  fake_.createWorkQueue("pool", "urgent", 1);  // default becomes priority 2
  std::string urgent_dep =
      fake_.createDeployment(flow_id_, "urgent-dep", "pool", "urgent", Json::object());
  std::string late = fake_.createFlowRun(deployment_id_, Json::object(), -60s);
  std::string early = fake_.createFlowRun(deployment_id_, Json::object(), -120s);
  std::string urgent = fake_.createFlowRun(urgent_dep, Json::object(), -1s);
  std::string future = fake_.createFlowRun(deployment_id_, Json::object(), 3600s);

  auto reply =
      call("POST", "/work_pools/pool/get_scheduled_flow_runs",
           Json{{"work_queue_names", Json::array()},
                {"scheduled_before", formatPrefectTime(std::chrono::system_clock::now() + 10s)}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  ASSERT_EQ(reply.json.size(), 3u);
  EXPECT_EQ(reply.json[0]["flow_run"]["id"], urgent);
  EXPECT_EQ(reply.json[1]["flow_run"]["id"], early);
  EXPECT_EQ(reply.json[2]["flow_run"]["id"], late);
  const Json& first = reply.json[0];
  EXPECT_EQ(first["work_pool_id"], fake_.workPool("pool")["id"]);
  EXPECT_EQ(first["work_queue_id"], fake_.workQueue("pool", "urgent")["id"]);
  EXPECT_TRUE(first["flow_run"]["state"].is_null()) << "the poll never loads the state";
  EXPECT_EQ(first["flow_run"]["state_type"], "SCHEDULED");
  EXPECT_EQ(first["flow_run"]["state_name"], "Scheduled");
  EXPECT_FALSE(first["flow_run"].contains("work_pool_name"));
  EXPECT_EQ(fake_.workQueue("pool", "urgent")["status"], "READY");
  EXPECT_TRUE(fake_.workQueue("pool", "urgent")["last_polled"].is_string());
  EXPECT_EQ(fake_.deployment(urgent_dep)["status"], "READY");

  // Without scheduled_before every scheduled run is due; the Python worker always sends it.
  EXPECT_EQ(call("POST", "/work_pools/pool/get_scheduled_flow_runs", Json::object()).json.size(),
            4u);
  auto only_default = call("POST", "/work_pools/pool/get_scheduled_flow_runs",
                           Json{{"work_queue_names", {"default"}}});
  EXPECT_EQ(only_default.json.size(), 3u);
  (void)future;
}

TEST_F(FakePrefectTest, PollValidatesLimitsAndQueueNames) {
  seedDeployment();
  auto too_many = call("POST", "/work_pools/pool/get_scheduled_flow_runs", Json{{"limit", 201}});
  EXPECT_EQ(too_many.status, 422);
  EXPECT_EQ(too_many.json, Json({{"detail", "Invalid limit: must be less than or equal to 200."}}));
  auto negative = call("POST", "/work_pools/pool/get_scheduled_flow_runs", Json{{"limit", -1}});
  EXPECT_EQ(negative.json,
            Json({{"detail", "Invalid limit: must be greater than or equal to 0."}}));
  auto queue = call("POST", "/work_pools/pool/get_scheduled_flow_runs",
                    Json{{"work_queue_names", {"typo"}}});
  EXPECT_EQ(queue.status, 404);
  EXPECT_EQ(queue.json["detail"], "Work pool queue 'pool/typo' not found.");
  EXPECT_EQ(call("POST", "/work_pools/none/get_scheduled_flow_runs", Json::object()).status, 404);
  auto bad_time = call("POST", "/work_pools/pool/get_scheduled_flow_runs",
                       Json{{"scheduled_before", "tomorrow"}});
  EXPECT_EQ(bad_time.status, 422);
  // The Python worker's str(datetime) form is accepted.
  EXPECT_EQ(call("POST", "/work_pools/pool/get_scheduled_flow_runs",
                 Json{{"scheduled_before", "2026-08-21 16:27:43.123456+00:00"}})
                .status,
            200);
  fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  fake_.createFlowRun(deployment_id_, Json::object(), -2s);
  EXPECT_EQ(
      call("POST", "/work_pools/pool/get_scheduled_flow_runs", Json{{"limit", 1}}).json.size(), 1u);
}

TEST_F(FakePrefectTest, PollRespectsConcurrencyLimitsAndPauses) {
  seedDeployment();
  std::string a = fake_.createFlowRun(deployment_id_, Json::object(), -3s);
  fake_.createFlowRun(deployment_id_, Json::object(), -2s);
  fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  auto poll = [this] {
    return call("POST", "/work_pools/pool/get_scheduled_flow_runs", Json::object()).json.size();
  };
  EXPECT_EQ(poll(), 3u);
  fake_.setWorkQueueConcurrencyLimit("pool", "default", 2);
  EXPECT_EQ(poll(), 2u);
  ASSERT_EQ(setState(a, "PENDING").status, 201);
  EXPECT_EQ(poll(), 1u) << "PENDING runs take a slot";
  fake_.setWorkQueueConcurrencyLimit("pool", "default", std::nullopt);
  EXPECT_EQ(poll(), 2u);
  fake_.setWorkQueuePaused("pool", "default", true);
  EXPECT_EQ(poll(), 0u);
  fake_.setWorkQueuePaused("pool", "default", false);
  fake_.setWorkPoolPaused("pool", true);
  EXPECT_EQ(poll(), 0u);
  fake_.setWorkPoolPaused("pool", false);

  FakePrefect limited;
  limited.createWorkPool("lp", "process", Json::object(), 1);
  std::string flow = limited.createFlow("f");
  std::string dep = limited.createDeployment(flow, "d", "lp");
  std::string first = limited.createFlowRun(dep, Json::object(), -2s);
  limited.createFlowRun(dep, Json::object(), -1s);
  EXPECT_EQ(send(limited.port(), "POST", "/api/work_pools/lp/get_scheduled_flow_runs", "{}",
                 defaultHeaders())
                .json.size(),
            1u);
  limited.setState(first, "PENDING");
  EXPECT_EQ(send(limited.port(), "POST", "/api/work_pools/lp/get_scheduled_flow_runs", "{}",
                 defaultHeaders())
                .json.size(),
            0u);
  EXPECT_EQ(limited.workPool("lp")["active_slots"], 1);
}

// ---- Orchestration ---------------------------------------------------------------------------

TEST_F(FakePrefectTest, ClaimIsAcceptedOnceAndASecondClaimAborts) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  auto claim = setState(run, "PENDING");
  EXPECT_EQ(claim.status, 201);
  EXPECT_EQ(claim.json["status"], "ACCEPT");
  EXPECT_EQ(claim.json["details"], Json({{"type", "accept_details"}}));
  EXPECT_EQ(claim.json["state"]["type"], "PENDING");
  EXPECT_EQ(claim.json["state"]["name"], "Pending");
  EXPECT_EQ(claim.json["state"]["state_details"]["flow_run_id"], run);
  EXPECT_EQ(claim.json["state"]["state_details"]["scheduled_time"],
            fake_.stateHistory(run)[0]["state_details"]["scheduled_time"])
      << "CopyScheduledTime";

  auto second = setState(run, "PENDING");
  EXPECT_EQ(second.status, 200);
  EXPECT_EQ(second.json["status"], "ABORT");
  EXPECT_EQ(second.json["details"]["reason"],
            "This run is in a PENDING state and cannot transition to a PENDING state.");
  EXPECT_EQ(second.json["state"]["id"], claim.json["state"]["id"]);

  auto submitting = setState(run, "PENDING", "Submitting");
  EXPECT_EQ(submitting.status, 201);
  EXPECT_EQ(submitting.json["status"], "ACCEPT");
  EXPECT_EQ(submitting.json["state"]["name"], "Submitting");
  EXPECT_EQ(submitting.json["state"]["state_details"]["scheduled_time"],
            claim.json["state"]["state_details"]["scheduled_time"]);
  EXPECT_EQ(setState(run, "PENDING").json["status"], "ABORT") << "Pending after Submitting";

  auto history = fake_.stateHistory(run);
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(history[0]["name"], "Scheduled");
  EXPECT_EQ(history[2]["name"], "Submitting");
  EXPECT_EQ(fake_.flowRun(run)["state_name"], "Submitting");
}

TEST_F(FakePrefectTest, RunningWaitsForTheScheduledTime) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), 600s);
  ASSERT_EQ(setState(run, "PENDING").json["status"], "ACCEPT");
  auto wait = setState(run, "RUNNING");
  EXPECT_EQ(wait.status, 200);
  EXPECT_EQ(wait.json["status"], "WAIT");
  EXPECT_EQ(wait.json["details"]["type"], "wait_details");
  EXPECT_GE(wait.json["details"]["delay_seconds"].get<int>(), 590);
  EXPECT_LE(wait.json["details"]["delay_seconds"].get<int>(), 600);
  EXPECT_EQ(wait.json["details"]["reason"], "Scheduled time is in the future");
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "PENDING");

  std::string due = fake_.createFlowRun(deployment_id_, Json::object(), -5s);
  ASSERT_EQ(setState(due, "PENDING").json["status"], "ACCEPT");
  auto running = setState(due, "RUNNING");
  EXPECT_EQ(running.status, 201);
  EXPECT_EQ(running.json["status"], "ACCEPT");
  Json flow_run = fake_.flowRun(due);
  EXPECT_EQ(flow_run["run_count"], 1);
  EXPECT_EQ(flow_run["start_time"], running.json["state"]["timestamp"]);
  EXPECT_TRUE(flow_run["next_scheduled_start_time"].is_null());
}

TEST_F(FakePrefectTest, TerminalRunsRefuseCrashedButRunningOnesAccept) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(run, "PENDING");
  setState(run, "RUNNING");
  auto done = setState(run, "COMPLETED");
  EXPECT_EQ(done.json["status"], "ACCEPT");
  EXPECT_TRUE(fake_.flowRun(run)["end_time"].is_string());
  auto crashed = setState(run, "CRASHED");
  EXPECT_EQ(crashed.status, 200);
  EXPECT_EQ(crashed.json["status"], "ABORT");
  EXPECT_EQ(crashed.json["details"]["reason"], "Run is already in terminal state COMPLETED.");
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "COMPLETED");

  std::string other = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(other, "PENDING");
  setState(other, "RUNNING");
  auto accepted = setState(other, "CRASHED");
  EXPECT_EQ(accepted.status, 201);
  EXPECT_EQ(accepted.json["status"], "ACCEPT");
  EXPECT_EQ(fake_.flowRun(other)["state_name"], "Crashed");
}

TEST_F(FakePrefectTest, CancellingOnlyLeadsToCancelled) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(run, "PENDING");
  setState(run, "RUNNING");
  Json cancelling = fake_.setState(run, "CANCELLING");
  EXPECT_EQ(cancelling["status"], "ACCEPT");
  auto crashed = setState(run, "CRASHED");
  EXPECT_EQ(crashed.json["status"], "REJECT");
  EXPECT_EQ(crashed.json["state"]["type"], "CANCELLING");
  EXPECT_EQ(crashed.json["details"]["reason"],
            "Cannot transition flows that are cancelling to a state other than Cancelled.");
  auto cancelled = setState(run, "CANCELLED", "", true);
  EXPECT_EQ(cancelled.status, 201);
  EXPECT_EQ(cancelled.json["status"], "ACCEPT");
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "CANCELLED");
  EXPECT_EQ(setState(run, "CANCELLING").json["status"], "ABORT");
}

TEST_F(FakePrefectTest, ForcedCancelledIsAcceptedFromAnyState) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(run, "PENDING");
  setState(run, "RUNNING");
  setState(run, "COMPLETED");
  auto forced = setState(run, "CANCELLED", "Cancelled", true);
  EXPECT_EQ(forced.json["status"], "ACCEPT");
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "CANCELLED");
}

TEST_F(FakePrefectTest, CancellingAScheduledRunWithoutInfrastructureCancelsIt) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), 60s);
  Json result = fake_.setState(run, "CANCELLING");
  EXPECT_EQ(result["status"], "REJECT");
  EXPECT_EQ(result["state"]["type"], "CANCELLED");
  EXPECT_EQ(result["details"]["reason"], "Scheduled flow run has no infrastructure to terminate.");
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "CANCELLED");

  std::string with_pid = fake_.createFlowRun(deployment_id_, Json::object(), 60s);
  fake_.updateFlowRun(with_pid, Json{{"infrastructure_pid", "42"}});
  EXPECT_EQ(fake_.setState(with_pid, "CANCELLING")["status"], "ACCEPT");
  EXPECT_EQ(fake_.flowRun(with_pid)["state_type"], "CANCELLING");
}

TEST_F(FakePrefectTest, DuplicateTransitionIdIsRejectedWithTheCurrentState) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  std::string transition = "6f1d7d3c-9a1e-4e55-9b55-3a1f1f1f1f1f";
  auto first = setState(run, "PENDING", "", false, transition);
  EXPECT_EQ(first.json["status"], "ACCEPT");
  auto retry = setState(run, "PENDING", "", false, transition);
  EXPECT_EQ(retry.status, 200);
  EXPECT_EQ(retry.json["status"], "REJECT");
  EXPECT_EQ(retry.json["details"]["reason"], "This run has already made this state transition.");
  EXPECT_EQ(retry.json["state"]["id"], first.json["state"]["id"]);
  EXPECT_EQ(fake_.stateHistory(run).size(), 2u);
}

TEST_F(FakePrefectTest, DeploymentConcurrencyEnqueuesTheSecondClaim) {
  seedDeployment(1);
  std::string a = fake_.createFlowRun(deployment_id_, Json::object(), -2s);
  std::string b = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  auto first = setState(a, "PENDING");
  EXPECT_EQ(first.json["status"], "ACCEPT");
  EXPECT_TRUE(first.json["state"]["state_details"]["deployment_concurrency_lease_id"].is_string());
  auto second = setState(b, "PENDING");
  EXPECT_EQ(second.status, 201);
  EXPECT_EQ(second.json["status"], "REJECT");
  EXPECT_EQ(second.json["details"]["reason"], "Deployment concurrency limit reached.");
  EXPECT_EQ(second.json["state"]["type"], "SCHEDULED");
  EXPECT_EQ(second.json["state"]["name"], "AwaitingConcurrencySlot");
  auto retry_at = parsePrefectTime(text(second.json["state"]["state_details"]["scheduled_time"]));
  ASSERT_TRUE(retry_at);
  EXPECT_GT(*retry_at, std::chrono::system_clock::now() + 20s);
  EXPECT_EQ(fake_.flowRun(b)["next_scheduled_start_time"],
            second.json["state"]["state_details"]["scheduled_time"]);
  EXPECT_EQ(fake_.deployment(deployment_id_)["global_concurrency_limit"]["active_slots"], 1);

  // The lease follows the run to Submitting and RUNNING; the slot frees on a final state.
  auto submitting = setState(a, "PENDING", "Submitting");
  EXPECT_EQ(submitting.json["state"]["state_details"]["deployment_concurrency_lease_id"],
            first.json["state"]["state_details"]["deployment_concurrency_lease_id"]);
  setState(a, "RUNNING");
  EXPECT_EQ(setState(b, "PENDING").json["status"], "REJECT");
  setState(a, "COMPLETED");
  EXPECT_EQ(setState(b, "PENDING").json["status"], "ACCEPT");
}

TEST_F(FakePrefectTest, DeploymentConcurrencyCancelNewAndOldClients) {
  seedDeployment(1, "CANCEL_NEW");
  std::string a = fake_.createFlowRun(deployment_id_, Json::object(), -2s);
  std::string b = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(a, "PENDING");
  auto cancelled = setState(b, "PENDING");
  EXPECT_EQ(cancelled.json["status"], "REJECT");
  EXPECT_EQ(cancelled.json["state"]["type"], "CANCELLED");
  EXPECT_EQ(cancelled.json["state"]["message"], "Deployment concurrency limit reached.");

  // Clients 3.0.0-3.0.3 manage deployment concurrency themselves: the server skips the rule.
  std::string c = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  auto headers = defaultHeaders();
  headers["User-Agent"] = "prefect/3.0.2 (API 0.8.4)";
  Json body = {{"state", {{"type", "PENDING"}}}};
  EXPECT_EQ(call("POST", "/flow_runs/" + c + "/set_state", body, headers).json["status"], "ACCEPT");

  fake_.updateDeployment(deployment_id_, Json{{"concurrency_limit", 0}});
  std::string d = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  auto zero = setState(d, "PENDING");
  EXPECT_EQ(zero.json["status"], "ABORT");
  EXPECT_NE(text(zero.json["details"]["reason"]).find("limit is 0"), std::string::npos);
}

TEST_F(FakePrefectTest, ClaimAbortsWhenTheDeploymentWasDeleted) {
  seedDeployment(1);
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  fake_.deleteDeployment(deployment_id_);
  EXPECT_EQ(call("GET", "/deployments/" + deployment_id_).status, 404);
  auto claim = setState(run, "PENDING");
  EXPECT_EQ(claim.json["status"], "ABORT");
  EXPECT_EQ(claim.json["details"]["reason"], "Deployment not found.");
}

TEST_F(FakePrefectTest, FailedRunsWithRetriesAreRescheduled) {
  seedDeployment();
  FlowRunSpec spec;
  spec.deployment_id = deployment_id_;
  spec.retries = 1;
  std::string run = fake_.createFlowRun(spec);
  setState(run, "PENDING");
  setState(run, "RUNNING");
  auto failed = setState(run, "FAILED");
  EXPECT_EQ(failed.json["status"], "REJECT");
  EXPECT_EQ(failed.json["state"]["name"], "AwaitingRetry");
  EXPECT_EQ(fake_.flowRun(run)["empirical_policy"]["retry_type"], "in_process");
  EXPECT_EQ(call("POST", "/work_pools/pool/get_scheduled_flow_runs", Json::object()).json.size(),
            0u)
      << "in-process retries are not handed to workers";
  setState(run, "RUNNING");
  EXPECT_EQ(setState(run, "FAILED").json["status"], "ACCEPT");
}

TEST_F(FakePrefectTest, StateCreateIsExtraForbid) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  auto with_id = call("POST", "/flow_runs/" + run + "/set_state",
                      Json{{"state", {{"type", "PENDING"}, {"id", run}}}});
  EXPECT_EQ(with_id.status, 422);
  EXPECT_EQ(with_id.json["exception_detail"][0]["loc"], Json::array({"body", "state", "id"}));
  EXPECT_EQ(call("POST", "/flow_runs/" + run + "/set_state",
                 Json{{"state", {{"type", "PENDING"}, {"timestamp", "2026-01-01T00:00:00Z"}}}})
                .status,
            422);
  EXPECT_EQ(call("POST", "/flow_runs/" + run + "/set_state", Json{{"state", {{"type", "pending"}}}})
                .status,
            422);
  EXPECT_EQ(call("POST", "/flow_runs/" + run + "/set_state", Json{{"force", false}}).status, 422);
  auto bad_transition =
      call("POST", "/flow_runs/" + run + "/set_state",
           Json{{"state", {{"type", "PENDING"}, {"state_details", {{"transition_id", "abc"}}}}}});
  EXPECT_EQ(bad_transition.status, 422);
  // Unknown state_details keys are ignored; only the state itself is strict.
  EXPECT_EQ(call("POST", "/flow_runs/" + run + "/set_state",
                 Json{{"state", {{"type", "PENDING"}, {"state_details", {{"future_key", 1}}}}},
                      {"extra_root_key", true}})
                .json["status"],
            "ACCEPT");
  std::string unknown = "00000000-0000-4000-8000-000000000000";
  auto missing = setState(unknown, "PENDING");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.json["exception_message"], "Flow run with id " + unknown + " not found");
  EXPECT_EQ(
      call("POST", "/flow_runs/not-a-uuid/set_state", Json{{"state", {{"type", "PENDING"}}}}).json,
      Json({{"detail", "Not Found"}}));
}

TEST_F(FakePrefectTest, InjectedOrchestrationAnswersAsTold) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  fake_.injectOrchestration(
      run,
      Json{{"status", "WAIT"},
           {"details", {{"type", "wait_details"}, {"delay_seconds", 7}, {"reason", "because"}}}});
  fake_.injectOrchestration(run, Json{{"status", "ABORT"}});
  fake_.injectOrchestration(
      run, Json{{"status", "REJECT"}, {"state", {{"type", "SCHEDULED"}, {"name", "Later"}}}});
  auto wait = setState(run, "PENDING");
  EXPECT_EQ(wait.json["status"], "WAIT");
  EXPECT_EQ(wait.json["details"]["delay_seconds"], 7);
  EXPECT_EQ(wait.json["state"]["type"], "SCHEDULED");
  auto abort = setState(run, "PENDING");
  EXPECT_EQ(abort.json["status"], "ABORT");
  EXPECT_EQ(abort.json["details"]["type"], "abort_details");
  auto reject = setState(run, "PENDING");
  EXPECT_EQ(reject.status, 201);
  EXPECT_EQ(reject.json["state"]["name"], "Later");
  EXPECT_EQ(setState(run, "PENDING").json["status"], "ACCEPT") << "back to the rules";
}

// ---- Flow run updates, filters ---------------------------------------------------------------

TEST_F(FakePrefectTest, PatchFlowRunIsStrictAboutTypesAndKeys) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  EXPECT_EQ(call("PATCH", "/flow_runs/" + run, Json{{"infrastructure_pid", "12345"}}).status, 204);
  EXPECT_EQ(fake_.flowRun(run)["infrastructure_pid"], "12345");
  auto integer = call("PATCH", "/flow_runs/" + run, Json{{"infrastructure_pid", 12345}});
  EXPECT_EQ(integer.status, 422);
  EXPECT_EQ(integer.json["exception_detail"][0]["type"], "string_type");
  EXPECT_EQ(call("PATCH", "/flow_runs/" + run, Json{{"worker_name", "w"}}).status, 422);
  EXPECT_EQ(call("PATCH", "/flow_runs/00000000-0000-4000-8000-000000000000",
                 Json{{"infrastructure_pid", "1"}})
                .json,
            Json({{"detail", "Flow run not found"}}));

  EXPECT_EQ(call("PATCH", "/flow_runs/" + run + "/labels",
                 Json{{"prefect.worker.name", "w1"}, {"prefect.work-pool.name", "pool"}})
                .status,
            204);
  Json labels = fake_.flowRun(run)["labels"];
  EXPECT_EQ(labels["prefect.worker.name"], "w1");
  EXPECT_EQ(labels["prefect.deployment.id"], deployment_id_) << "merged, not replaced";

  auto read = call("GET", "/flow_runs/" + run);
  EXPECT_EQ(read.status, 200);
  EXPECT_EQ(read.json["state"]["type"], "SCHEDULED") << "read_flow_run loads the state";
  EXPECT_EQ(read.json["work_pool_name"], "pool");
  EXPECT_EQ(read.json["job_variables"], Json::object());
  EXPECT_EQ(call("GET", "/flow_runs/00000000-0000-4000-8000-000000000000").json,
            Json({{"detail", "Flow run not found"}}));
}

TEST_F(FakePrefectTest, FilterFlowRunsLikeTheCancellationObserver) {
  seedDeployment();
  std::string a = fake_.createFlowRun(deployment_id_, Json::object(), -3s);
  std::string b = fake_.createFlowRun(deployment_id_, Json::object(), -2s);
  std::string c = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  fake_.updateFlowRun(a, Json{{"infrastructure_pid", "1"}});
  fake_.updateFlowRun(b, Json{{"infrastructure_pid", "2"}});
  fake_.setState(a, "CANCELLING");
  fake_.setState(b, "CANCELLING");

  auto reply =
      call("POST", "/flow_runs/filter",
           Json{{"flow_runs",
                 {{"id", {{"any_", {a, c}}}}, {"state", {{"type", {{"any_", {"CANCELLING"}}}}}}}},
                {"limit", 200},
                {"offset", 0}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  ASSERT_EQ(reply.json.size(), 1u);
  EXPECT_EQ(reply.json[0]["id"], a);
  EXPECT_EQ(reply.json[0]["state"]["type"], "CANCELLING");

  auto by_pool =
      call("POST", "/flow_runs/filter",
           Json{{"flow_runs",
                 {{"id", {{"not_any_", {a}}}}, {"state", {{"type", {{"any_", {"CANCELLING"}}}}}}}},
                {"work_pools", {{"name", {{"any_", {"pool"}}}}}}});
  ASSERT_EQ(by_pool.json.size(), 1u);
  EXPECT_EQ(by_pool.json[0]["id"], b);
  EXPECT_EQ(
      call("POST", "/flow_runs/filter", Json{{"work_pools", {{"name", {{"any_", {"other"}}}}}}})
          .json.size(),
      0u);
  auto legacy =
      call("POST", "/flow_runs/filter",
           Json{{"flow_runs",
                 {{"state",
                   {{"type", {{"any_", {"CANCELLED"}}}}, {"name", {{"any_", {"Cancelling"}}}}}}}}});
  EXPECT_EQ(legacy.json.size(), 0u);
  auto by_name = call("POST", "/flow_runs/filter",
                      Json{{"flow_runs", {{"state", {{"name", {{"any_", {"Scheduled"}}}}}}}}});
  ASSERT_EQ(by_name.json.size(), 1u);
  EXPECT_EQ(by_name.json[0]["id"], c);
  auto either =
      call("POST", "/flow_runs/filter",
           Json{{"flow_runs",
                 {{"operator", "or_"}, {"id", {{"any_", {c}}}}, {"infrastructure_pid", nullptr}}}});
  EXPECT_EQ(either.status, 422) << "infrastructure_pid is not a FlowRunFilter field";

  auto paged = call("POST", "/flow_runs/filter",
                    Json{{"sort", "EXPECTED_START_TIME_ASC"}, {"limit", 2}, {"offset", 1}});
  ASSERT_EQ(paged.json.size(), 2u);
  EXPECT_EQ(paged.json[0]["id"], b);
  EXPECT_EQ(paged.json[1]["id"], c);
  EXPECT_EQ(call("POST", "/flow_runs/filter", Json{{"limit", 500}}).status, 422);
  EXPECT_EQ(call("POST", "/flow_runs/filter", Json{{"sort", "RANDOM"}}).status, 422);
  auto unknown =
      call("POST", "/flow_runs/filter", Json{{"flow_runs", {{"bogus", Json::object()}}}});
  EXPECT_EQ(unknown.status, 422);
  EXPECT_EQ(unknown.json["exception_detail"][0]["loc"],
            Json::array({"body", "flow_runs", "bogus"}));
  EXPECT_EQ(call("POST", "/flow_runs/filter",
                 Json{{"flow_runs", {{"state", {{"type", {{"any_", {"DONE"}}}}}}}}})
                .status,
            422);
  EXPECT_EQ(
      call("POST", "/flow_runs/filter", Json{{"flow_runs", {{"id", {{"any_", {"x"}}}}}}}).status,
      422);
}

// ---- Reads used by the worker, logs, events --------------------------------------------------

TEST_F(FakePrefectTest, DeploymentFlowBlockAndVariableReads) {
  seedDeployment();
  auto deployment = call("GET", "/deployments/" + deployment_id_);
  ASSERT_EQ(deployment.status, 200);
  EXPECT_EQ(deployment.json["job_variables"], Json({{"env", {{"A", "1"}}}}));
  EXPECT_EQ(deployment.json["work_pool_name"], "pool");
  EXPECT_EQ(call("GET", "/deployments/name/flow/dep").json["id"], deployment_id_);
  EXPECT_EQ(call("GET", "/deployments/name/flow/nope").status, 404);
  auto flow = call("GET", "/flows/" + flow_id_);
  EXPECT_EQ(flow.json["name"], "flow");
  EXPECT_EQ(call("GET", "/flows/00000000-0000-4000-8000-000000000000").json,
            Json({{"detail", "Flow not found"}}));

  std::string block =
      fake_.createBlockDocument("secret", "token", Json{{"value", "s3cr3t"}}, {"value"});
  EXPECT_EQ(call("GET", "/block_documents/" + block).json["data"]["value"], "********");
  EXPECT_EQ(
      call("GET", "/block_documents/" + block + "?include_secrets=true").json["data"]["value"],
      "s3cr3t");
  auto by_name =
      call("GET", "/block_types/slug/secret/block_documents/name/token?include_secrets=true");
  EXPECT_EQ(by_name.json["data"]["value"], "s3cr3t");
  EXPECT_EQ(call("GET", "/block_types/slug/secret/block_documents/name/other").json,
            Json({{"detail", "Block document not found"}}));

  fake_.createVariable("image", "python:3.12");
  EXPECT_EQ(call("GET", "/variables/name/image").json["value"], "python:3.12");
  EXPECT_EQ(call("GET", "/variables/name/none").json, Json({{"detail", "Variable not found."}}));
}

TEST_F(FakePrefectTest, LogsAreLogCreateWithExtraForbid) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  Json log = {{"name", "prefect.flow_runs.worker"},
              {"level", 20},
              {"message", "Worker 'w' submitting flow run"},
              {"timestamp", "2026-08-21T16:27:44.001+00:00"},
              {"flow_run_id", run},
              {"task_run_id", nullptr}};
  auto created = call("POST", "/logs/", Json::array({log}));
  EXPECT_EQ(created.status, 201);
  auto logs = fake_.logsFor(run);
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0]["message"], "Worker 'w' submitting flow run");
  EXPECT_EQ(logs[0]["timestamp"], "2026-08-21T16:27:44.001000Z");

  Json with_worker = log;
  with_worker["worker_id"] = nullptr;
  auto rejected = call("POST", "/logs/", Json::array({with_worker}));
  EXPECT_EQ(rejected.status, 422);
  EXPECT_EQ(rejected.json["exception_detail"][0]["loc"], Json::array({"body", 0, "worker_id"}));
  Json no_time = log;
  no_time.erase("timestamp");
  EXPECT_EQ(call("POST", "/logs/", Json::array({no_time})).status, 422);
  EXPECT_EQ(call("POST", "/logs/", log).status, 422) << "the body is a list";
  EXPECT_EQ(call("POST", "/logs", Json::array({log})).status, 307);
  EXPECT_EQ(fake_.logs().size(), 1u);
}

TEST_F(FakePrefectTest, EventsAreStored) {
  Json event = {{"id", "6f1d7d3c-9a1e-4e55-9b55-3a1f1f1f1f1f"},
                {"occurred", "2026-08-21T16:27:44Z"},
                {"event", "prefect.worker.started"},
                {"resource", {{"prefect.resource.id", "prefect.worker.process.w"}}},
                {"related", Json::array()},
                {"payload", Json::object()}};
  EXPECT_EQ(call("POST", "/events", Json::array({event})).status, 204);
  ASSERT_EQ(fake_.events().size(), 1u);
  EXPECT_EQ(fake_.events()[0]["event"], "prefect.worker.started");
  Json bad = event;
  bad["resource"] = Json::object();
  EXPECT_EQ(call("POST", "/events", Json::array({bad})).status, 422);
}

// ---- Faults and waiting ----------------------------------------------------------------------

TEST_F(FakePrefectTest, FailNextAnswersTheInjectedStatusThenRecovers) {
  fake_.createWorkPool("pool", "process");
  fake_.failNext("GET", "/work_pools/.*", 503, 2, "", 1.5);
  auto first = call("GET", "/work_pools/pool");
  EXPECT_EQ(first.status, 503);
  EXPECT_EQ(first.headers["Retry-After"], "1.5");
  EXPECT_EQ(call("POST", "/work_pools/pool/workers/heartbeat", Json{{"name", "w"}}).status, 204)
      << "other methods and paths are not affected";
  EXPECT_EQ(call("GET", "/work_pools/pool").status, 503);
  EXPECT_EQ(call("GET", "/work_pools/pool").status, 200);
}

TEST_F(FakePrefectTest, DropNextClosesWithoutHandling) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  fake_.dropNext("POST", "/flow_runs/.*/set_state");
  auto dropped = setState(run, "PENDING");
  EXPECT_TRUE(dropped.dropped);
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "SCHEDULED") << "a dropped request does nothing";
  EXPECT_EQ(fake_.requests().back().status, 0);
  EXPECT_EQ(setState(run, "PENDING").json["status"], "ACCEPT");
}

TEST(FakePrefectFaults, DelayNextAnswersLaterWithoutBlockingOthers) {
  auto fake = std::make_unique<FakePrefect>();
  fake->createWorkPool("pool", "process");
  std::string flow = fake->createFlow("flow");
  std::string run = fake->createFlowRun(fake->createDeployment(flow, "dep", "pool"));
  fake->delayNext("POST", "/flow_runs/.*/set_state", 1h);
  uint16_t port = fake->port();
  auto slow = std::async(std::launch::async, [port, run] {
    return send(port, "POST", "/api/flow_runs/" + run + "/set_state",
                Json{{"state", {{"type", "PENDING"}}}}.dump(), defaultHeaders());
  });
  ASSERT_TRUE(fake->waitUntil(
      [](FakePrefect& f) { return f.countRequests("POST", "/flow_runs/.*/set_state") == 1; }, 60s));
  // The request was handled at once; only its answer waits, and others are served meanwhile.
  EXPECT_EQ(fake->flowRun(run)["state_type"], "PENDING");
  EXPECT_EQ(send(port, "GET", "/api/health", std::nullopt, {}).status, 200);
  EXPECT_EQ(slow.wait_for(0s), std::future_status::timeout);
  fake.reset();
  EXPECT_TRUE(slow.get().dropped) << "a delayed answer is never sent once the fake is gone";
}

TEST_F(FakePrefectTest, DelayedAnswerArrives) {
  fake_.delayNext("GET", "/health", 20ms);
  auto reply = call("GET", "/health");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.json, Json(true));
}

TEST_F(FakePrefectTest, ReorderNextHoldsAnAnswerUntilTheNextOneIsAnswered) {
  fake_.createWorkPool("pool", "process");
  fake_.reorderNext("POST", "/work_pools/pool/workers/heartbeat");
  auto first = std::async(std::launch::async, [&] {
    return call("POST", "/work_pools/pool/workers/heartbeat", Json{{"name", "first"}});
  });
  ASSERT_TRUE(fake_.waitUntil([](FakePrefect& f) { return f.heartbeats().size() == 1; }, 60s));
  EXPECT_EQ(first.wait_for(0s), std::future_status::timeout);
  auto second = call("POST", "/work_pools/pool/workers/heartbeat", Json{{"name", "second"}});
  EXPECT_EQ(second.status, 204);
  ASSERT_EQ(first.wait_for(60s), std::future_status::ready) << "the held answer was released";
  EXPECT_EQ(first.get().status, 204);
  EXPECT_EQ(fake_.heartbeats()[0]["name"], "first");
  EXPECT_EQ(call("POST", "/work_pools/pool/workers/heartbeat", Json{{"name", "third"}}).status, 204)
      << "the rule is used up";
}

TEST_F(FakePrefectTest, MaintenanceModeAnswers503WithTheHeader) {
  fake_.setMaintenance(true, 2);
  auto reply = call("GET", "/health");
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.headers["Prefect-Maintenance"], "true");
  EXPECT_EQ(reply.headers["Retry-After"], "2");
  fake_.setMaintenance(false);
  EXPECT_EQ(call("GET", "/health").status, 200);
}

TEST_F(FakePrefectTest, WaitUntilWakesOnRequestsAndTimesOut) {
  fake_.createWorkPool("pool", "process");
  EXPECT_FALSE(fake_.waitUntil([](FakePrefect& f) { return !f.heartbeats().empty(); }, 20ms));
  std::thread client([this] {
    call("POST", "/work_pools/pool/workers/heartbeat", Json{{"name", "w"}});
  });
  EXPECT_TRUE(fake_.waitUntil([](FakePrefect& f) { return !f.heartbeats().empty(); }, 60s));
  client.join();
}

TEST(FakePrefectTime, FormatsAndParsesLikeTheServer) {
  auto time = parsePrefectTime("2026-08-21T16:27:43.123456Z");
  ASSERT_TRUE(time);
  EXPECT_EQ(formatPrefectTime(*time), "2026-08-21T16:27:43.123456Z");
  EXPECT_EQ(formatPrefectTime(*parsePrefectTime("2026-08-21 18:27:43.123456+02:00")),
            "2026-08-21T16:27:43.123456Z");
  EXPECT_EQ(formatPrefectTime(*parsePrefectTime("2026-08-21T16:27:43")),
            "2026-08-21T16:27:43.000000Z");
  EXPECT_FALSE(parsePrefectTime("2026-02-30T00:00:00Z"));
  EXPECT_FALSE(parsePrefectTime("yesterday"));
}

// ---- The fake engine ---------------------------------------------------------------------------

// Runs tests/fakes/fake_engine.py for `run` and returns its wait status.
int runFakeEngine(const FakePrefect& fake, const std::string& run, const std::string& mode,
                  const std::vector<std::string>& extra_env = {}) {
  std::string script = sourcePath("tests/fakes/fake_engine.py").string();
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string variable = *entry;
    if (variable.rfind("PREFECT", 0) != 0 && variable.rfind("FAKE_ENGINE", 0) != 0) {
      env.push_back(variable);
    }
  }
  env.push_back("PREFECT__FLOW_RUN_ID=" + run);
  env.push_back("PREFECT_API_URL=" + fake.apiUrl());
  env.push_back("FAKE_ENGINE_MODE=" + mode);
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp;
  for (auto& entry : env) {
    envp.push_back(entry.data());
  }
  envp.push_back(nullptr);
  std::string python = "python3";
  std::vector<char*> argv = {python.data(), script.data(), nullptr};
  pid_t pid = 0;
  if (posix_spawnp(&pid, "python3", nullptr, nullptr, argv.data(), envp.data()) != 0) {
    ADD_FAILURE() << "cannot start python3";
    return -1;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST_F(FakePrefectTest, FakeEngineRunsTheStatesOfARealEngine) {
  seedDeployment();
  std::string run = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(run, "PENDING");
  fake_.injectOrchestration(
      run, Json{{"status", "WAIT"},
                {"details", {{"type", "wait_details"}, {"delay_seconds", 0}, {"reason", "test"}}}});
  int status = runFakeEngine(fake_, run, "complete");
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(fake_.flowRun(run)["state_type"], "COMPLETED");
  EXPECT_EQ(fake_.countRequests("POST", "/flow_runs/.*/set_state"), 4)
      << "PENDING, WAIT, RUNNING, COMPLETED";
  EXPECT_EQ(fake_.logsFor(run).size(), 1u);
  EXPECT_EQ(fake_.userAgents().back(), "prefect/3.8.8 (API 0.8.4)");

  std::string failing = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(failing, "PENDING");
  status = runFakeEngine(fake_, failing, "fail");
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_EQ(fake_.flowRun(failing)["state_type"], "FAILED");

  std::string exiting = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  setState(exiting, "PENDING");
  status = runFakeEngine(fake_, exiting, "exit:3");
  EXPECT_EQ(WEXITSTATUS(status), 3);
  EXPECT_EQ(fake_.flowRun(exiting)["state_type"], "RUNNING");

  // Transient answers are retried like Prefect's client does; the pid file comes first.
  TempDir dir;
  std::string pid_file = (dir.path() / "pid").string();
  std::string retried = fake_.createFlowRun(deployment_id_, Json::object(), -1s);
  fake_.failNext("POST", "/flow_runs/.*/set_state", 503, 2, "", 0);
  status = runFakeEngine(fake_, retried, "sleep-exit:0:4", {"FAKE_ENGINE_PID_FILE=" + pid_file});
  EXPECT_EQ(WEXITSTATUS(status), 4);
  EXPECT_EQ(fake_.flowRun(retried)["state_type"], "RUNNING");
  EXPECT_GT(std::stoi(readFile(pid_file)), 0);
}

TEST(FakeEngine, DumpsItsEnvironmentAndUsesBasicAuth) {
  FakePrefectOptions options;
  options.auth_string = "u:p";
  options.csrf_enabled = true;
  FakePrefect fake(options);
  fake.createWorkPool("pool", "process");
  std::string flow = fake.createFlow("flow");
  std::string deployment = fake.createDeployment(flow, "dep", "pool");
  std::string run = fake.createFlowRun(deployment, Json::object(), -1s);
  TempDir dir;
  std::string path = (dir.path() / "env.json").string();
  int status =
      runFakeEngine(fake, run, "env-dump:" + path, {"PREFECT_API_AUTH_STRING=u:p", "EXTRA=1"});
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  Json env = Json::parse(readFile(path));
  EXPECT_EQ(env["EXTRA"], "1");
  EXPECT_EQ(env["PREFECT__FLOW_RUN_ID"], run);
  EXPECT_EQ(fake.flowRun(run)["state_type"], "COMPLETED");
}

}  // namespace
}  // namespace poolworker::testing
