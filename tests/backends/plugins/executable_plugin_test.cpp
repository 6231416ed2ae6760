// Executable plugins: the protocol (requests, answers, exit codes, stderr), the deadline, and
// plugins that crash, hang or answer nonsense; the example script-process runs real processes.

#include "backends/plugins/executable_plugin.h"

#include <fstream>

#include <boost/asio/io_context.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include "tests/backends/plugins/plugin_test_support.h"
#include "worker/async.h"

namespace poolworker::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// A shell plugin whose `info` is valid and whose other commands run `body` (with $1 the
// command, the request on stdin).
constexpr char kInfo[] =
    R"(if [ "$1" = info ]; then
  echo '{"protocol": 1, "name": "sh-test", "version": "0.1", "description": "test",
         "default_base_job_template": {"job_configuration": {}, "variables": {}}}'
  exit 0
fi
)";

class ExecutablePlugin : public ::testing::Test {
 protected:
  BackendPtr create(const std::filesystem::path& path, Json options = Json::object()) {
    auto factory = backends::plugins::loadExecutablePlugin(io_, path.string(), 30s);
    EXPECT_TRUE(factory.ok()) << factory.error().message;
    if (!factory) {
      return nullptr;
    }
    factories_.push_back(std::move(factory).value());
    BackendContext context;
    context.executor = &executor_;
    context.worker_name = "test-worker";
    context.state_directory = state_.path().string();
    context.options = std::move(options);
    context.worker_log = worker_log_;
    auto backend = factories_.back()->create(context);
    EXPECT_TRUE(backend.ok()) << backend.error().message;
    return backend ? std::move(backend).value() : nullptr;
  }

  BackendPtr shellPlugin(const std::string& body, Json options = Json::object()) {
    const auto path = dir_.path() / "sh-test";
    std::ofstream out(path);
    out << "#!/bin/sh\n" << kInfo << body << "\n";
    out.close();
    ::chmod(path.c_str(), 0755);
    return create(path, std::move(options));
  }

  static StartRequest request(const std::string& command, Json env = Json::object()) {
    StartRequest r;
    r.run.flow_run_id = "run-" + std::to_string(++counter_);
    r.configuration = {{"command", command}, {"env", env}};
    return r;
  }

  Result<RunHandle> start(Backend& backend, const StartRequest& r) {
    auto out = runToEnd<RunHandle>(
        io_, [&](Callback<RunHandle> done) { backend.start(r, log_, std::move(done)); });
    return out ? std::move(*out) : Result<RunHandle>(makeError(ErrorKind::Internal, "no answer"));
  }

  Result<Outcome> wait(Backend& backend, const RunHandle& handle) {
    auto out = runToEnd<Outcome>(
        io_, [&](Callback<Outcome> done) { backend.wait(handle, log_, std::move(done)); });
    return out ? std::move(*out) : Result<Outcome>(makeError(ErrorKind::Internal, "no answer"));
  }

  static inline int counter_ = 0;
  boost::asio::io_context io_;
  AsioExecutor executor_{io_};
  TempDir state_;
  PluginDir dir_;
  std::vector<BackendFactoryPtr> factories_;
  std::shared_ptr<RecordingLog> log_ = std::make_shared<RecordingLog>();
  std::shared_ptr<RecordingLog> worker_log_ = std::make_shared<RecordingLog>();
};

TEST_F(ExecutablePlugin, ScriptProcessRunsACommandToItsExitCodeAndRecoversIt) {
  auto backend = create(scriptPlugin("script-process"), {{"poll_interval_seconds", 0.1}});
  ASSERT_NE(backend, nullptr);
  auto handle = start(*backend, request("test \"$MARK\" = yes && exit 5", {{"MARK", "yes"}}));
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->backend, "script-process");
  EXPECT_THAT(log_->messages(), HasSubstr("script-process: started process"));
  auto outcome = wait(*backend, *handle);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 5);

  auto recovered = runToEnd<Recovery>(
      io_, [&](Callback<Recovery> done) { backend->recover(*handle, log_, std::move(done)); });
  ASSERT_TRUE(recovered && recovered->ok());
  EXPECT_FALSE((*recovered)->running);
  EXPECT_EQ((*recovered)->outcome.exit_code, 5);
  backend->shutdown();
}

TEST_F(ExecutablePlugin, ScriptProcessKillEndsARunningRun) {
  auto backend = create(scriptPlugin("script-process"), {{"poll_interval_seconds", 0.1}});
  ASSERT_NE(backend, nullptr);
  auto handle = start(*backend, request("sleep 60"));
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto killed = runToEnd<void>(
      io_, [&](Callback<void> done) { backend->kill(*handle, 2s, std::move(done)); });
  ASSERT_TRUE(killed && killed->ok()) << (killed ? killed->error().message : "no answer");
  auto outcome = wait(*backend, *handle);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  // The wrapper shell outlives the SIGTERM and records how the command ended: 128 + 15.
  EXPECT_EQ(outcome->exit_code, 128 + SIGTERM);
  backend->shutdown();
}

TEST_F(ExecutablePlugin, ProtocolExitCodesBecomeErrorKindsWithThePluginsMessage) {
  auto backend = shellPlugin(R"(cat > /dev/null
echo 'ERROR: the cluster said no' >&2
echo '{"message": "queue gpu is full"}'
exit 81)");
  ASSERT_NE(backend, nullptr);
  auto result = start(*backend, request("true"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind, ErrorKind::InfrastructureFailed);
  EXPECT_EQ(result.error().message, "queue gpu is full");
  EXPECT_THAT(log_->messages(), HasSubstr("the cluster said no"));
}

TEST_F(ExecutablePlugin, InvalidConfigurationTakesTheLastStderrLineWithoutAJsonMessage) {
  auto backend = shellPlugin("cat > /dev/null; echo \"no partition named 'x'\" >&2; exit 82");
  ASSERT_NE(backend, nullptr);
  auto result = start(*backend, request("true"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(result.error().message, "no partition named 'x'");
}

TEST_F(ExecutablePlugin, AnExitCodeOutsideTheProtocolIsABugOfThePlugin) {
  auto backend = shellPlugin("echo 'Traceback: oops' >&2; exit 1");
  ASSERT_NE(backend, nullptr);
  auto result = start(*backend, request("true"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind, ErrorKind::Internal);
  EXPECT_EQ(result.error().message,
            "backend plugin 'sh-test' failed in `start` with exit status 1, which is not one of "
            "the protocol's (a bug in the plugin); its last stderr line: Traceback: oops");
}

TEST_F(ExecutablePlugin, ACrashingPluginFailsTheCallNamingTheSignal) {
  auto backend = shellPlugin("kill -SEGV $$");
  ASSERT_NE(backend, nullptr);
  auto result = start(*backend, request("true"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind, ErrorKind::Internal);
  EXPECT_THAT(result.error().message,
              HasSubstr("backend plugin 'sh-test' crashed in `start`: killed by signal 11"));
}

TEST_F(ExecutablePlugin, AHungPluginIsKilledAtItsDeadline) {
  auto backend = shellPlugin("echo 'about to hang' >&2; sleep 60", {{"call_timeout_seconds", 0.5}});
  ASSERT_NE(backend, nullptr);
  auto result = start(*backend, request("true"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind, ErrorKind::Internal);
  EXPECT_EQ(result.error().message,
            "backend plugin 'sh-test' did not answer `start` within 0.5 s; poolworker killed it; "
            "its last stderr line: about to hang");
}

TEST_F(ExecutablePlugin, AnAnswerThatIsNotAHandleIsRefused) {
  auto backend = shellPlugin("cat > /dev/null; echo '{\"data\": {}}'");
  ASSERT_NE(backend, nullptr);
  auto result = start(*backend, request("true"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().message,
            "backend plugin 'sh-test''s `start` answer: 'infrastructure_pid' must be a non-empty "
            "string");
}

TEST_F(ExecutablePlugin, TheRequestCarriesTheRunTheConfigurationAndTheOptions) {
  const auto capture = state_.path() / "request.json";
  auto backend =
      shellPlugin("cat > '" + capture.string() +
                      "'; echo '{\"infrastructure_pid\": \"h:1\", \"data\": {\"n\": 1}}'",
                  {{"colour", "red"}});
  ASSERT_NE(backend, nullptr);
  StartRequest r = request("python3 -m prefect.engine", {{"A", "b"}});
  r.run.flow_run_name = "crimson-otter";
  auto handle = start(*backend, r);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->data, (Json{{"n", 1}}));
  Json sent = Json::parse(readFile(capture));
  EXPECT_EQ(sent["protocol"], 1);
  EXPECT_EQ(sent["command"], "start");
  EXPECT_EQ(sent["worker_name"], "test-worker");
  EXPECT_EQ(sent["state_directory"], state_.path().string());
  EXPECT_EQ(sent["options"]["colour"], "red");
  EXPECT_EQ(sent["run"]["flow_run_name"], "crimson-otter");
  EXPECT_EQ(sent["configuration"]["env"]["A"], "b");
}

TEST_F(ExecutablePlugin, AWaitThatKeepsCrashingFailsTheRunAfterThreeTries) {
  auto backend = shellPlugin(R"(case "$1" in
  wait) kill -SEGV $$ ;;
esac)",
                             {{"poll_interval_seconds", 0.05}});
  ASSERT_NE(backend, nullptr);
  RunHandle handle;
  handle.backend = "sh-test";
  handle.infrastructure_pid = "h:1";
  auto outcome = wait(*backend, handle);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_FALSE(outcome->exit_code.has_value());
  EXPECT_THAT(outcome->detail,
              HasSubstr("poolworker stopped following the run after 3 failed calls of `wait`: "
                        "backend plugin 'sh-test' crashed in `wait`: killed by signal 11"));
}

TEST_F(ExecutablePlugin, OptionsOfTheProtocolAreCheckedAndListed) {
  const auto path = dir_.path() / "sh-test";
  {
    std::ofstream out(path);
    out << "#!/bin/sh\n" << kInfo;
  }
  ::chmod(path.c_str(), 0755);
  auto factory = backends::plugins::loadExecutablePlugin(io_, path.string(), 30s);
  ASSERT_TRUE(factory.ok()) << factory.error().message;
  std::vector<std::string> keys;
  for (const auto& option : (*factory)->info().options) {
    keys.push_back(option.key);
  }
  EXPECT_THAT(keys, ::testing::ElementsAre("call_timeout_seconds", "poll_interval_seconds"));
  BackendContext context;
  context.executor = &executor_;
  context.worker_log = worker_log_;
  context.options = {{"call_timeout_seconds", "soon"}};
  auto backend = (*factory)->create(context);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.error().message,
            "backends.sh-test.call_timeout_seconds must be a number of seconds greater than 0, "
            "not \"soon\"");
}

}  // namespace
}  // namespace poolworker::testing
