// The real worker loop (Prefect client, process backend, journal) against the in-process fake
// Prefect API, which can fail, delay and reorder calls.

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <fstream>
#include <regex>
#include <set>

#include <gtest/gtest.h>
#include <signal.h>

#include "tests/worker/worker_harness.h"
#include "worker/exit_codes.h"

namespace poolworker::testing {
namespace {

using namespace std::chrono_literals;

constexpr auto kLong = std::chrono::seconds(60);

std::string stateTypeOf(const Json& flow_run) {
  if (flow_run.contains("state") && flow_run["state"].is_object()) {
    return flow_run["state"].value("type", "");
  }
  return flow_run.value("state_type", "");
}

std::string stateMessageOf(const Json& flow_run) {
  if (flow_run.contains("state") && flow_run["state"].is_object() &&
      flow_run["state"]["message"].is_string()) {
    return flow_run["state"]["message"].get<std::string>();
  }
  return {};
}

bool isFinal(const std::string& type) {
  return type == "COMPLETED" || type == "FAILED" || type == "CRASHED" || type == "CANCELLED";
}

class WorkerIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_id_ = api_.createWorkPool("pool", "process");
    flow_id_ = api_.createFlow("my-flow");
  }

  // A deployment whose runs execute the fake engine in `mode`.
  std::string deployment(const std::string& mode, Json extra_vars = Json::object()) {
    Json vars = {{"command", fakeEngineCommand()}, {"env", {{"FAKE_ENGINE_MODE", mode}}}};
    for (const auto& [k, v] : extra_vars.items()) {
      vars[k] = v;
    }
    return api_.createDeployment(flow_id_, "dep-" + std::to_string(++deployments_), "pool",
                                 "default", vars);
  }

  bool waitFinal(const std::string& id, std::chrono::milliseconds timeout = kLong) {
    return api_.waitUntil([&](FakePrefect& api) { return isFinal(stateTypeOf(api.flowRun(id))); },
                          timeout);
  }

  bool waitState(const std::string& id, const std::string& type,
                 std::chrono::milliseconds timeout = kLong) {
    return api_.waitUntil([&](FakePrefect& api) { return stateTypeOf(api.flowRun(id)) == type; },
                          timeout);
  }

  int acceptedPendingClaims(const std::string& id) {
    int n = 0;
    for (const auto& s : api_.stateHistory(id)) {
      if (s.value("type", "") == "PENDING" && s.value("name", "") == "Pending") {
        ++n;
      }
    }
    return n;
  }

  bool logsContain(const std::string& id, const std::string& needle) {
    for (const auto& log : api_.logsFor(id)) {
      if (log.value("message", "").find(needle) != std::string::npos) {
        return true;
      }
    }
    return false;
  }

  FakePrefect api_;
  std::string pool_id_;
  std::string flow_id_;
  int deployments_ = 0;
};

TEST_F(WorkerIntegration, RunCompletesWithPidLabelsAndLogs) {
  std::string run = api_.createFlowRun(deployment("complete"));
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  Json fr = api_.flowRun(run);
  EXPECT_EQ(stateTypeOf(fr), "COMPLETED");
  EXPECT_TRUE(fr["infrastructure_pid"].is_string());
  EXPECT_NE(fr["infrastructure_pid"].get<std::string>().find(':'), std::string::npos);
  std::vector<std::string> names;
  for (const auto& s : api_.stateHistory(run)) {
    names.push_back(s.value("name", ""));
  }
  ASSERT_GE(names.size(), 4u);
  EXPECT_EQ(names[0], "Scheduled");
  EXPECT_EQ(names[1], "Pending");
  EXPECT_EQ(names[2], "Submitting");
  EXPECT_TRUE(api_.waitUntil(
      [&](FakePrefect&) { return logsContain(run, "submitting flow run '" + run + "'"); }, kLong));
  EXPECT_TRUE(api_.waitUntil([&](FakePrefect&) { return !api_.heartbeats().empty(); }, kLong));
  EXPECT_TRUE(api_.heartbeats().front()["heartbeat_interval_seconds"].is_number_integer());
}

TEST_F(WorkerIntegration, NonZeroExitIsCrashedWithTheCode) {
  std::string run = api_.createFlowRun(deployment("exit:3"));
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  Json fr = api_.flowRun(run);
  EXPECT_EQ(stateTypeOf(fr), "CRASHED");
  EXPECT_NE(stateMessageOf(fr).find("status code 3"), std::string::npos) << stateMessageOf(fr);
}

TEST_F(WorkerIntegration, FailedFlowStaysFailed) {
  std::string run = api_.createFlowRun(deployment("fail"));
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "FAILED");
}

TEST_F(WorkerIntegration, CreatesMissingPoolWithDefaultTemplateAndHeartbeats) {
  WorkerHarness worker(api_, {.pool = "new-pool"});
  ASSERT_TRUE(api_.waitUntil(
      [](FakePrefect& api) {
        Json pool = api.workPool("new-pool");
        return pool.is_object() && pool.contains("base_job_template") &&
               pool["base_job_template"].contains("job_configuration");
      },
      kLong));
  Json pool = api_.workPool("new-pool");
  EXPECT_EQ(pool["type"], "process");
  EXPECT_EQ(pool["base_job_template"]["job_configuration"]["command"], "{{ command }}");
}

TEST_F(WorkerIntegration, EmptyTemplateIsFilledWithTheDefault) {
  api_.createWorkPool("empty", "process");
  WorkerHarness worker(api_, {.pool = "empty"});
  ASSERT_TRUE(api_.waitUntil(
      [](FakePrefect& api) {
        return api.workPool("empty")["base_job_template"].contains("variables");
      },
      kLong));
}

TEST_F(WorkerIntegration, TwoWorkersStartEveryRunExactlyOnce) {
  std::string dep = deployment("complete");
  std::vector<std::string> runs;
  for (int i = 0; i < 30; ++i) {
    runs.push_back(api_.createFlowRun(dep));
  }
  {
    WorkerHarness a(api_, {.name = "worker-a"});
    WorkerHarness b(api_, {.name = "worker-b"});
    for (const auto& run : runs) {
      ASSERT_TRUE(waitFinal(run)) << run;
    }
    EXPECT_EQ(a.metric("runs_started_total") + b.metric("runs_started_total"), 30);
  }
  for (const auto& run : runs) {
    EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
    EXPECT_EQ(acceptedPendingClaims(run), 1) << run;
  }
}

TEST_F(WorkerIntegration, AbortAndRejectAreObeyed) {
  std::string dep = deployment("complete");
  std::string aborted = api_.createFlowRun(dep);
  std::string rejected = api_.createFlowRun(dep);
  api_.injectOrchestration(aborted, {{"status", "ABORT"},
                                     {"details", {{"type", "abort_details"}, {"reason", "nope"}}},
                                     {"state", nullptr}});
  api_.injectOrchestration(
      rejected, {{"status", "REJECT"},
                 {"details", {{"type", "reject_details"}, {"reason", "later"}}},
                 {"state", {{"type", "SCHEDULED"}, {"name", "AwaitingConcurrencySlot"}}}});
  WorkerHarness worker(api_, {});
  // Refused once, then claimed on a later poll like any scheduled run.
  ASSERT_TRUE(waitFinal(aborted));
  ASSERT_TRUE(waitFinal(rejected));
  EXPECT_EQ(stateTypeOf(api_.flowRun(aborted)), "COMPLETED");
  EXPECT_EQ(stateTypeOf(api_.flowRun(rejected)), "COMPLETED");
  EXPECT_GE(worker.metric("claims_lost_total", {{"reason", "abort"}}), 1);
  EXPECT_GE(worker.metric("claims_lost_total", {{"reason", "reject"}}), 1);
  EXPECT_EQ(worker.metric("runs_started_total"), 2);
}

TEST_F(WorkerIntegration, ServerErrorBurstsAreRetriedAndSurvived) {
  std::string dep = deployment("complete");
  api_.failNext("POST", ".*/get_scheduled_flow_runs", 503, 6);
  api_.failNext("POST", "/flow_runs/.*/set_state", 502, 3);
  api_.failNext("GET", "/deployments/.*", 500, 2);
  api_.failNext("PATCH", "/flow_runs/[^/]*", 503, 2);
  std::string run = api_.createFlowRun(dep);
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  EXPECT_EQ(acceptedPendingClaims(run), 1);
  EXPECT_FALSE(worker.exitCode().has_value());
}

TEST_F(WorkerIntegration, SlowAndReorderedServer) {
  std::string dep = deployment("complete");
  api_.delayNext("*", ".*", 300ms, 40);
  api_.reorderNext("POST", "/flow_runs/.*/set_state", 4);
  std::vector<std::string> runs = {api_.createFlowRun(dep), api_.createFlowRun(dep),
                                   api_.createFlowRun(dep)};
  WorkerHarness worker(api_, {});
  for (const auto& run : runs) {
    ASSERT_TRUE(waitFinal(run));
    EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
    EXPECT_EQ(acceptedPendingClaims(run), 1);
  }
}

TEST_F(WorkerIntegration, DroppedConnectionsDuringClaimDoNotDoubleStart) {
  std::string dep = deployment("complete");
  api_.dropNext("POST", "/flow_runs/.*/set_state", 2);
  std::string run = api_.createFlowRun(dep);
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  EXPECT_EQ(acceptedPendingClaims(run), 1);
  EXPECT_EQ(worker.metric("runs_started_total"), 1);
}

TEST_F(WorkerIntegration, CancellingARunningFlowKillsItAndEndsCancelled) {
  TempDir dir;
  std::string pid_file = (dir.path() / "pid").string();
  std::string run = api_.createFlowRun(deployment(
      "sleep:120",
      {{"env", {{"FAKE_ENGINE_MODE", "sleep:120"}, {"FAKE_ENGINE_PID_FILE", pid_file}}}}));
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitState(run, "RUNNING"));
  ASSERT_TRUE(
      api_.waitUntil([&](FakePrefect&) { return std::filesystem::exists(pid_file); }, kLong));
  int pid = std::stoi(readFile(pid_file));
  api_.setState(run, "CANCELLING");
  ASSERT_TRUE(waitFinal(run));
  Json fr = api_.flowRun(run);
  EXPECT_EQ(stateTypeOf(fr), "CANCELLED");
  EXPECT_NE(stateMessageOf(fr).find("cancelled"), std::string::npos);
  EXPECT_TRUE(api_.waitUntil([&](FakePrefect&) { return ::kill(pid, 0) != 0; }, kLong))
      << "the flow's process is still alive";
  for (const auto& s : api_.stateHistory(run)) {
    EXPECT_NE(s.value("type", ""), "CRASHED") << "a cancelled run must not be reported crashed";
  }
}

TEST_F(WorkerIntegration, CancelledWhilePendingNeverStarts) {
  TempDir dir;
  std::string marker = (dir.path() / "started").string();
  std::string run = api_.createFlowRun(deployment(
      "complete", {{"env", {{"FAKE_ENGINE_MODE", "complete"}, {"FAKE_ENGINE_PID_FILE", marker}}}}));
  // Hold the Submitting proposal long enough for a user to cancel the claimed run.
  api_.delayNext("POST", "/flow_runs/.*/set_state", 0ms, 1);
  api_.delayNext("POST", "/flow_runs/.*/set_state", 1500ms, 1);
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitState(run, "PENDING"));
  api_.setState(run, "CANCELLING");
  ASSERT_TRUE(waitFinal(run));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "CANCELLED");
  std::this_thread::sleep_for(1s);  // a started process would have written its marker by now
  EXPECT_FALSE(std::filesystem::exists(marker)) << "a cancelled pending run was started";
  EXPECT_EQ(worker.metric("runs_started_total"), 0);
}

TEST_F(WorkerIntegration, LimitCapsRunsInFlight) {
  std::string dep = deployment("sleep:1");
  std::vector<std::string> runs;
  for (int i = 0; i < 6; ++i) {
    runs.push_back(api_.createFlowRun(dep));
  }
  WorkerHarness worker(api_, {.limit = 2});
  for (const auto& run : runs) {
    ASSERT_TRUE(waitFinal(run));
  }
  // From the server's history: at no time were more than 2 runs between claim and final state.
  std::vector<std::pair<std::string, int>> edges;
  for (const auto& run : runs) {
    EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
    for (const auto& s : api_.stateHistory(run)) {
      if (s.value("name", "") == "Pending") {
        edges.emplace_back(s.value("timestamp", ""), +1);
      } else if (isFinal(s.value("type", ""))) {
        edges.emplace_back(s.value("timestamp", ""), -1);
      }
    }
  }
  std::sort(edges.begin(), edges.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second < b.second;
  });
  int in_flight = 0;
  int most = 0;
  for (const auto& [time, delta] : edges) {
    in_flight += delta;
    most = std::max(most, in_flight);
  }
  EXPECT_LE(most, 2);
  EXPECT_EQ(most, 2);
}

TEST_F(WorkerIntegration, MaxStartingBoundsTheRunsBeingStartedAtOnce) {
  std::string dep = deployment("complete");
  std::vector<std::string> runs;
  for (int i = 0; i < 8; ++i) {
    runs.push_back(api_.createFlowRun(dep));
  }
  WorkerHarness worker(api_, {.max_starting = 2});
  for (const auto& run : runs) {
    ASSERT_TRUE(waitFinal(run));
    EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  }
  // In the order the server received them: a run is being started from its Submitting proposal
  // until its infrastructure_pid is set.
  int starting = 0;
  int most = 0;
  int submitted = 0;
  for (const auto& request : api_.requests()) {
    const Json body = request.json();
    if (request.method == "POST" && request.path.ends_with("/set_state") &&
        body.value("state", Json::object()).value("name", "") == "Submitting") {
      ++starting;
      ++submitted;
    } else if (request.method == "PATCH" && body.is_object() &&
               body.contains("infrastructure_pid")) {
      --starting;
    }
    most = std::max(most, starting);
  }
  EXPECT_EQ(submitted, 8);
  EXPECT_GE(most, 1);
  EXPECT_LE(most, 2);
}

TEST_F(WorkerIntegration, RunOnceExitsAfterItsRunsFinish) {
  std::string dep = deployment("sleep:1");
  std::vector<std::string> runs = {api_.createFlowRun(dep), api_.createFlowRun(dep)};
  WorkerHarness worker(api_, {.run_once = true});
  ASSERT_TRUE(worker.waitForExit(kLong));
  EXPECT_EQ(worker.exitCode(), exit_codes::kOk);
  for (const auto& run : runs) {
    EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  }
}

TEST_F(WorkerIntegration, BadJobVariableCrashesOnlyThatRun) {
  std::string bad =
      api_.createFlowRun(deployment("complete", {{"working_dir", "/nonexistent/poolworker-dir"}}));
  std::string good = api_.createFlowRun(deployment("complete"));
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(bad));
  ASSERT_TRUE(waitFinal(good));
  Json fr = api_.flowRun(bad);
  EXPECT_EQ(stateTypeOf(fr), "CRASHED");
  EXPECT_NE(stateMessageOf(fr).find("/nonexistent/poolworker-dir"), std::string::npos)
      << stateMessageOf(fr);
  EXPECT_TRUE(api_.waitUntil(
      [&](FakePrefect&) { return logsContain(bad, "/nonexistent/poolworker-dir"); }, kLong));
  EXPECT_EQ(stateTypeOf(api_.flowRun(good)), "COMPLETED");
  EXPECT_FALSE(worker.exitCode().has_value());
}

TEST_F(WorkerIntegration, TemplatePlaceholderForUndeclaredVariableCrashesTheRun) {
  Json tmpl = Json::parse(readFile(sourcePath("templates/process.json")));
  tmpl["job_configuration"]["command"] = "{{ command }} {{ not_declared }}";
  api_.createWorkPool("odd", "process", tmpl);
  std::string dep = api_.createDeployment(flow_id_, "odd-dep", "odd", "default",
                                          {{"command", fakeEngineCommand()}});
  std::string run = api_.createFlowRun(dep);
  WorkerHarness worker(api_, {.pool = "odd"});
  ASSERT_TRUE(waitFinal(run));
  // The undeclared placeholder renders empty, as in Prefect, and the run still works.
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
}

TEST_F(WorkerIntegration, MissingInterpreterCrashesTheRunWithAClearMessage) {
  std::string run = api_.createFlowRun(
      deployment("complete", {{"command", "no-such-interpreter-xyz -m prefect.engine"}}));
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  Json fr = api_.flowRun(run);
  EXPECT_EQ(stateTypeOf(fr), "CRASHED");
  EXPECT_NE(stateMessageOf(fr).find("no-such-interpreter-xyz"), std::string::npos)
      << stateMessageOf(fr);
}

TEST_F(WorkerIntegration, DeletedDeploymentCancelsTheRun) {
  std::string dep = deployment("complete");
  std::string run = api_.createFlowRun(dep);
  api_.deleteDeployment(dep);
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(waitFinal(run));
  Json fr = api_.flowRun(run);
  EXPECT_EQ(stateTypeOf(fr), "CANCELLED");
  EXPECT_NE(stateMessageOf(fr).find("no longer exists"), std::string::npos);
}

TEST_F(WorkerIntegration, WrongApiUrlEndsTheWorkerWithOneMessage) {
  WorkerHarness worker(api_, {.api_url = "http://127.0.0.1:1/api"});
  ASSERT_TRUE(worker.waitForExit(kLong));
  EXPECT_EQ(worker.exitCode(), exit_codes::kStartupFailure);
}

TEST_F(WorkerIntegration, RestartedWorkerReattachesToARunningFlow) {
  TempDir state;
  std::string run = api_.createFlowRun(deployment("sleep:3"));
  double started_first = 0;
  {
    WorkerHarness first(api_, {.state_dir = state.path().string()});
    ASSERT_TRUE(waitState(run, "RUNNING"));
    started_first = first.metric("runs_started_total");
    // Leaving: the flow keeps running without a worker.
  }
  EXPECT_EQ(started_first, 1);
  EXPECT_FALSE(isFinal(stateTypeOf(api_.flowRun(run))));
  WorkerHarness second(api_, {.state_dir = state.path().string()});
  ASSERT_TRUE(waitFinal(run));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  EXPECT_EQ(acceptedPendingClaims(run), 1);
  EXPECT_TRUE(api_.waitUntil(
      [&](FakePrefect&) {
        return second.metric("recovery_total", {{"outcome", "reattached"}}) == 1;
      },
      kLong));
  EXPECT_EQ(second.metric("runs_started_total"), 0);
}

TEST_F(WorkerIntegration, RunThatCrashedWhileNoWorkerWatchedIsReportedWithItsCode) {
  TempDir state;
  std::string run = api_.createFlowRun(deployment("sleep-exit:2:3"));
  {
    WorkerHarness first(api_, {.state_dir = state.path().string()});
    ASSERT_TRUE(waitState(run, "RUNNING"));
  }
  std::this_thread::sleep_for(3s);  // the flow exits 3 while no worker runs
  WorkerHarness second(api_, {.state_dir = state.path().string()});
  ASSERT_TRUE(waitFinal(run));
  Json fr = api_.flowRun(run);
  EXPECT_EQ(stateTypeOf(fr), "CRASHED");
  EXPECT_NE(stateMessageOf(fr).find("status code 3"), std::string::npos) << stateMessageOf(fr);
}

TEST_F(WorkerIntegration, FlowThatExitsByItselfWhileCancellingEndsCancelled) {
  // The engine stops on its own when it sees CANCELLING, before the worker's cancellation poll
  // (made slow here) gets to it; the server refuses CRASHED from CANCELLING.
  std::string run = api_.createFlowRun(deployment("sleep-exit:2:1"));
  WorkerHarness worker(api_, {.cancellation_poll_seconds = 600});
  ASSERT_TRUE(waitState(run, "RUNNING"));
  api_.setState(run, "CANCELLING");
  ASSERT_TRUE(waitFinal(run));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "CANCELLED");
}

TEST_F(WorkerIntegration, StalePollAnswerNeverRestartsAFinishedRun) {
  // The server accepts PENDING again from a COMPLETED run without a persisted result. A worker
  // whose poll answer went stale (a slow deployment read here) while another worker ran the
  // flow to COMPLETED must not claim it again.
  std::string run = api_.createFlowRun(deployment("complete"));
  api_.delayNext("GET", "/deployments/.*", 2500ms);
  WorkerHarness worker(api_, {});
  std::this_thread::sleep_for(600ms);
  api_.setState(run, "PENDING");
  api_.setState(run, "RUNNING");
  api_.setState(run, "COMPLETED");
  std::this_thread::sleep_for(4s);
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  EXPECT_EQ(acceptedPendingClaims(run), 1) << "the finished run was claimed again";
  EXPECT_EQ(worker.metric("runs_started_total"), 0);
}

TEST_F(WorkerIntegration, AClaimAcceptedAfterAnotherWorkerFinishedTheRunRestoresItsEnd) {
  // The poll answer is fresh, but the run is finished by another worker while this worker reads
  // the deployment; its claim then reaches a COMPLETED run and the server accepts it. The worker
  // must notice from the run's history, put COMPLETED back and not run the flow again.
  std::string run = api_.createFlowRun(deployment("complete"));
  api_.delayNext("GET", "/deployments/.*", 600ms);
  WorkerHarness worker(api_, {});
  ASSERT_TRUE(api_.waitUntil(
      [](FakePrefect& api) { return api.countRequests("GET", "/deployments/.*") > 0; }, kLong));
  api_.setState(run, "PENDING");
  api_.setState(run, "RUNNING");
  api_.setState(run, "COMPLETED");
  ASSERT_TRUE(api_.waitUntil([&](FakePrefect&) { return acceptedPendingClaims(run) == 2; }, kLong))
      << "the claim on the finished run was not accepted: the test no longer tests anything";
  ASSERT_TRUE(waitState(run, "COMPLETED"));
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "COMPLETED");
  EXPECT_EQ(worker.metric("runs_started_total"), 0);
  EXPECT_EQ(worker.metric("claims_lost_total", {{"reason", "finished"}}), 1);
}

TEST_F(WorkerIntegration, SecondStopSignalCancelsRunningFlows) {
  std::string run = api_.createFlowRun(deployment("sleep:120"));
  // Still draining when the second signal comes, as under systemd's stop timeout: without a
  // drain time the worker may already have left its runs behind before the second stop.
  HarnessOptions options;
  options.drain_seconds = 60;
  WorkerHarness worker(api_, options);
  ASSERT_TRUE(waitState(run, "RUNNING"));
  worker.stop(StopMode::Drain);
  worker.stop(StopMode::Cancel);
  ASSERT_TRUE(worker.waitForExit(kLong));
  ASSERT_TRUE(waitFinal(run, 5s));
  EXPECT_EQ(stateTypeOf(api_.flowRun(run)), "CANCELLED");
}

}  // namespace
}  // namespace poolworker::testing
