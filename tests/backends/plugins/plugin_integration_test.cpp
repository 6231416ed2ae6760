// The real worker loop with backend plugins (both example plugins, and faulty ones) against the
// in-process fake Prefect API: runs end in the right states, faults of a plugin crash one run
// with a clear message and the worker runs the next one, a restarted worker re-attaches.

// Designated initializers leave the other options at their defaults, on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <gtest/gtest.h>

#include "tests/backends/plugins/plugin_test_support.h"
#include "tests/worker/worker_harness.h"

namespace poolworker::testing {
namespace {

using namespace std::chrono_literals;

constexpr auto kLong = std::chrono::seconds(90);

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

// One test per plugin kind: the same scenarios for the shared library and the executable.
class PluginWorker : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    plugins_.add(builtPlugin("simple-process"));
    plugins_.add(builtPlugin("throwing-process"));
    plugins_.add(scriptPlugin("script-process"));
    plugins_.add(scriptPlugin("faulty-script"));
    flow_id_ = api_.createFlow("my-flow");
  }

  HarnessOptions options(const std::string& type, const std::string& state_dir = "") {
    HarnessOptions o;
    o.type = type;
    o.pool = "pool-" + type;
    o.state_dir = state_dir;
    o.plugin_dirs = {plugins_.path().string()};
    o.backend_options = {
        {"script-process", {{"poll_interval_seconds", 0.2}}},
        {"faulty-script", {{"poll_interval_seconds", 0.2}, {"call_timeout_seconds", 2}}}};
    return o;
  }

  std::string run(const std::string& type, const std::string& mode, Json env = Json::object()) {
    if (!pools_.contains(type)) {
      pools_[type] = api_.createWorkPool("pool-" + type, type);
    }
    env["FAKE_ENGINE_MODE"] = mode;
    Json vars = {{"command", fakeEngineCommand()}, {"env", env}};
    const std::string deployment = api_.createDeployment(
        flow_id_, "dep-" + std::to_string(++deployments_), "pool-" + type, "default", vars);
    return api_.createFlowRun(deployment);
  }

  bool waitFinal(const std::string& id) {
    return api_.waitUntil([&](FakePrefect& api) { return isFinal(stateTypeOf(api.flowRun(id))); },
                          kLong);
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
  PluginDir plugins_;
  std::string flow_id_;
  std::map<std::string, std::string> pools_;
  int deployments_ = 0;
};

TEST_P(PluginWorker, RunsCompleteAndANonZeroExitCrashesWithTheCode) {
  const std::string type = GetParam();
  const std::string completes = run(type, "complete");
  const std::string exits = run(type, "exit:3");
  WorkerHarness worker(api_, options(type));
  ASSERT_TRUE(worker.pluginReport().refused.empty()) << worker.pluginReport().refused[0];
  ASSERT_TRUE(waitFinal(completes));
  ASSERT_TRUE(waitFinal(exits));
  EXPECT_EQ(stateTypeOf(api_.flowRun(completes)), "COMPLETED");
  EXPECT_EQ(stateTypeOf(api_.flowRun(exits)), "CRASHED");
  EXPECT_NE(stateMessageOf(api_.flowRun(exits)).find("status code 3"), std::string::npos)
      << stateMessageOf(api_.flowRun(exits));
  EXPECT_NE(api_.flowRun(completes).value("infrastructure_pid", "").find(':'), std::string::npos);
  // The pool was created with the plugin's own default template.
  EXPECT_EQ(worker.metric("runs_started_total"), 2);
}

TEST_P(PluginWorker, ARestartedWorkerReattachesToARunningFlow) {
  const std::string type = GetParam();
  TempDir state;
  const std::string id = run(type, "sleep:3");
  {
    WorkerHarness first(api_, options(type, state.path().string()));
    ASSERT_TRUE(api_.waitUntil(
        [&](FakePrefect& api) { return stateTypeOf(api.flowRun(id)) == "RUNNING"; }, kLong));
  }
  EXPECT_FALSE(isFinal(stateTypeOf(api_.flowRun(id))));
  WorkerHarness second(api_, options(type, state.path().string()));
  ASSERT_TRUE(waitFinal(id));
  EXPECT_EQ(stateTypeOf(api_.flowRun(id)), "COMPLETED");
  EXPECT_TRUE(api_.waitUntil(
      [&](FakePrefect&) {
        return second.metric("recovery_total", {{"outcome", "reattached"}}) == 1;
      },
      kLong));
  EXPECT_EQ(second.metric("runs_started_total"), 0);
}

TEST_P(PluginWorker, CancellingARunningFlowKillsItThroughThePlugin) {
  const std::string type = GetParam();
  const std::string id = run(type, "sleep:60");
  WorkerHarness worker(api_, options(type));
  ASSERT_TRUE(api_.waitUntil(
      [&](FakePrefect& api) { return stateTypeOf(api.flowRun(id)) == "RUNNING"; }, kLong));
  api_.setState(id, "CANCELLING");
  ASSERT_TRUE(waitFinal(id));
  EXPECT_EQ(stateTypeOf(api_.flowRun(id)), "CANCELLED");
}

INSTANTIATE_TEST_SUITE_P(BothKinds, PluginWorker,
                         ::testing::Values("simple-process", "script-process"),
                         [](const auto& param_info) {
                           return param_info.param == "simple-process"
                                      ? std::string("SharedLibrary")
                                      : std::string("Executable");
                         });

class FaultyPluginWorker : public PluginWorker {};

TEST_F(FaultyPluginWorker, AThrowingPluginCrashesOneRunWithItsMessageAndRunsTheNext) {
  const std::string thrown =
      run("throwing-process", "complete", {{"POOLWORKER_TEST_FAULT", "throw"}});
  WorkerHarness worker(api_, options("throwing-process", ""));
  ASSERT_TRUE(waitFinal(thrown));
  EXPECT_EQ(stateTypeOf(api_.flowRun(thrown)), "CRASHED");
  EXPECT_NE(stateMessageOf(api_.flowRun(thrown))
                .find("backend plugin 'throwing-process' threw in start: deliberate failure"),
            std::string::npos)
      << stateMessageOf(api_.flowRun(thrown));
  const std::string next = run("throwing-process", "complete");
  ASSERT_TRUE(waitFinal(next));
  EXPECT_EQ(stateTypeOf(api_.flowRun(next)), "COMPLETED");
}

TEST_F(FaultyPluginWorker, ACrashingOrHangingExecutableCrashesOneRunAndTheWorkerGoesOn) {
  const std::string crash = run("faulty-script", "complete", {{"POOLWORKER_TEST_FAULT", "crash"}});
  const std::string hang = run("faulty-script", "complete", {{"POOLWORKER_TEST_FAULT", "hang"}});
  WorkerHarness worker(api_, options("faulty-script", ""));
  ASSERT_TRUE(waitFinal(crash));
  ASSERT_TRUE(waitFinal(hang));
  EXPECT_EQ(stateTypeOf(api_.flowRun(crash)), "CRASHED");
  EXPECT_NE(stateMessageOf(api_.flowRun(crash))
                .find("backend plugin 'faulty-script' crashed in `start`: killed by signal 11"),
            std::string::npos)
      << stateMessageOf(api_.flowRun(crash));
  EXPECT_EQ(stateTypeOf(api_.flowRun(hang)), "CRASHED");
  EXPECT_NE(stateMessageOf(api_.flowRun(hang))
                .find("backend plugin 'faulty-script' did not answer `start` within 2 s; "
                      "poolworker killed it"),
            std::string::npos)
      << stateMessageOf(api_.flowRun(hang));
  EXPECT_TRUE(logsContain(hang, "faulty-script: about to hang"));
  const std::string next = run("faulty-script", "complete");
  ASSERT_TRUE(waitFinal(next));
  EXPECT_EQ(stateTypeOf(api_.flowRun(next)), "COMPLETED");
}

}  // namespace
}  // namespace poolworker::testing
