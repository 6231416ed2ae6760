// Shared-library plugins through the C ABI: the example simple-process plugin runs, stops and
// recovers real processes; a plugin that throws gets error codes, not a crash.

#include "backends/plugins/library_plugin.h"

#include <boost/asio/io_context.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include "tests/backends/plugins/plugin_test_support.h"
#include "worker/async.h"

namespace poolworker::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

class LibraryPlugin : public ::testing::Test {
 protected:
  BackendPtr create(const std::string& plugin) {
    auto factory = backends::plugins::loadLibraryPlugin(io_, builtPlugin(plugin).string());
    EXPECT_TRUE(factory.ok()) << factory.error().message;
    if (!factory) {
      return nullptr;
    }
    factories_.push_back(std::move(factory).value());
    BackendContext context;
    context.executor = &executor_;
    context.worker_name = "test-worker";
    context.state_directory = (state_.path() / plugin).string();
    context.options = Json::object();
    context.worker_log = worker_log_;
    auto backend = factories_.back()->create(context);
    EXPECT_TRUE(backend.ok()) << backend.error().message;
    return backend ? std::move(backend).value() : nullptr;
  }

  static StartRequest request(const std::string& command, Json env = Json::object()) {
    StartRequest r;
    r.run.flow_run_id = "run-" + std::to_string(++counter_);
    r.configuration = {{"command", command}, {"env", env}, {"stream_output", true}};
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
  std::vector<BackendFactoryPtr> factories_;
  std::shared_ptr<RecordingLog> log_ = std::make_shared<RecordingLog>();
  std::shared_ptr<RecordingLog> worker_log_ = std::make_shared<RecordingLog>();
};

TEST_F(LibraryPlugin, SimpleProcessRunsAFlowCommandToItsExitCodeAndStreamsItsOutput) {
  auto backend = create("simple-process");
  ASSERT_NE(backend, nullptr);
  auto handle = start(*backend, request("echo \"hello $GREETING\"; exit 3", {{"GREETING", "you"}}));
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->backend, "simple-process");
  EXPECT_NE(handle->infrastructure_pid.find(':'), std::string::npos);
  auto outcome = wait(*backend, *handle);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 3);
  EXPECT_THAT(log_->output(), HasSubstr("hello you"));
  EXPECT_THAT(log_->messages(), HasSubstr("simple-process: started process"));
  backend->shutdown();
}

TEST_F(LibraryPlugin, SimpleProcessKillStopsTheRunAndAnotherInstanceRecoversIt) {
  auto first = create("simple-process");
  ASSERT_NE(first, nullptr);
  auto sleeper = start(*first, request("sleep 60"));
  ASSERT_TRUE(sleeper.ok()) << sleeper.error().message;
  auto ended = start(*first, request("exit 7"));
  ASSERT_TRUE(ended.ok()) << ended.error().message;
  ASSERT_EQ(wait(*first, *ended)->exit_code, 7);

  // A second instance (a restarted worker) finds the running run and the ended one.
  auto second = create("simple-process");
  ASSERT_NE(second, nullptr);
  auto running = runToEnd<Recovery>(
      io_, [&](Callback<Recovery> done) { second->recover(*sleeper, log_, std::move(done)); });
  ASSERT_TRUE(running && running->ok()) << (running ? running->error().message : "no answer");
  EXPECT_TRUE((*running)->running);
  auto finished = runToEnd<Recovery>(
      io_, [&](Callback<Recovery> done) { second->recover(*ended, log_, std::move(done)); });
  ASSERT_TRUE(finished && finished->ok());
  EXPECT_FALSE((*finished)->running);
  EXPECT_EQ((*finished)->outcome.exit_code, 7);

  auto killed = runToEnd<void>(
      io_, [&](Callback<void> done) { second->kill(*sleeper, 2s, std::move(done)); });
  ASSERT_TRUE(killed && killed->ok());
  // The wrapper shell outlives the SIGTERM and records how the command ended: 128 + 15.
  auto outcome = wait(*first, *sleeper);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 128 + SIGTERM);
  first->shutdown();
  second->shutdown();
}

TEST_F(LibraryPlugin, ExceptionsOfAPluginBecomeErrorsAndTheNextRunWorks) {
  auto backend = create("throwing-process");
  ASSERT_NE(backend, nullptr);
  auto thrown = start(*backend, request("exit 0", {{"POOLWORKER_TEST_FAULT", "throw"}}));
  ASSERT_FALSE(thrown.ok());
  EXPECT_EQ(thrown.error().kind, ErrorKind::Internal);
  EXPECT_EQ(thrown.error().message,
            "backend plugin 'throwing-process' threw in start: deliberate failure of the "
            "throwing test plugin");

  auto preview = backend->preview(request("exit 0"));
  ASSERT_FALSE(preview.ok());
  EXPECT_EQ(preview.error().kind, ErrorKind::Internal);
  EXPECT_THAT(preview.error().message, HasSubstr("threw in preview: preview is broken on purpose"));

  auto next = start(*backend, request("exit 0"));
  ASSERT_TRUE(next.ok()) << next.error().message;
  EXPECT_EQ(wait(*backend, *next)->exit_code, 0);
  backend->shutdown();
}

TEST_F(LibraryPlugin, InvalidConfigurationIsReportedWithItsKind) {
  auto backend = create("simple-process");
  ASSERT_NE(backend, nullptr);
  StartRequest bad = request("exit 0");
  bad.configuration["working_dir"] = "/nonexistent/dir";
  auto result = start(*backend, bad);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(result.error().message, "working_dir '/nonexistent/dir' is not a directory");
  auto preview = backend->preview(request("python3 -m prefect.engine"));
  ASSERT_TRUE(preview.ok()) << preview.error().message;
  EXPECT_EQ((*preview)["argv"][4], "python3 -m prefect.engine");
}

TEST_F(LibraryPlugin, CreateFailuresOfACPluginCarryItsMessageAndKind) {
  auto factory = backends::plugins::loadLibraryPlugin(io_, builtPlugin("c-good").string());
  ASSERT_TRUE(factory.ok()) << factory.error().message;
  BackendContext context;
  context.executor = &executor_;
  context.worker_log = worker_log_;
  auto backend = (*factory)->create(context);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.error().kind, ErrorKind::Unsupported);
  EXPECT_EQ(backend.error().message, "the C fixture creates no instances");
}

}  // namespace
}  // namespace poolworker::testing
