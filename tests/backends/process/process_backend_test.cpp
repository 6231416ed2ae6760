#include "backends/process/process_backend.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends/process/factory.h"
#include "backends/process/proc_info.h"
#include "tests/backends/process/process_test_support.h"
#include "tests/test_support.h"

namespace poolworker::backends::process {
namespace {

namespace fs = std::filesystem;
using poolworker::testing::await;
using poolworker::testing::binPath;
using poolworker::testing::RecordingSink;
using poolworker::testing::runUntil;
using poolworker::testing::TempDir;
using poolworker::testing::TestExecutor;

constexpr std::chrono::milliseconds kLongGrace{600000};

Json configuration(const std::string& command) {
  return Json{{"command", command}, {"env", Json::object()}, {"labels", Json::object()},
              {"name", "test-run"}, {"stream_output", true}, {"working_dir", nullptr}};
}

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

bool processGone(pid_t pid) {
  const auto stat = readProcStat(pid);
  return !stat || stat->ended();
}

// Waits until a process that is not our child has ended, through a pidfd.
void awaitProcessGone(pid_t pid) {
  const int fd = openPidfd(pid);
  if (fd < 0) {
    return;  // already gone
  }
  pollfd event{fd, POLLIN, 0};
  EXPECT_EQ(::poll(&event, 1, 120000), 1) << "process " << pid << " is still running";
  ::close(fd);
}

class ProcessBackendTest : public ::testing::Test {
 protected:
  ProcessBackendTest() : executor_(io_) {}

  void SetUp() override { backend_ = makeBackend(); }

  void TearDown() override {
    if (backend_) {
      backend_->shutdown();
    }
    backend_.reset();
    // Lets the cancelled watches' handlers run, so that nothing is left behind.
    io_.restart();
    io_.poll();
  }

  BackendPtr makeBackend(const Json& options = Json::object()) {
    auto factory = makeFactory(io_);
    BackendContext context;
    context.executor = &executor_;
    context.worker_name = "test-worker";
    context.state_directory = (state_.path() / "state").string();
    context.options = Json{{"python", "python3"}, {"shim_path", binPath("poolworker-run")}};
    context.options.update(options);
    auto backend = factory->create(context);
    EXPECT_TRUE(backend.ok()) << backend.error().message;
    return backend.ok() ? std::move(backend).value() : nullptr;
  }

  StartRequest request(Json config) {
    StartRequest start;
    start.run.flow_run_id = "6f0c6c2e-2d4c-4a55-9a0e-4a9d1f7b0c11";
    start.run.flow_run_name = "crimson-otter";
    start.configuration = std::move(config);
    return start;
  }

  Result<RunHandle> start(Backend& backend, Json config, std::shared_ptr<LogSink> sink) {
    return await<RunHandle>(io_, [&](Callback<RunHandle> done) {
      backend.start(request(std::move(config)), sink, std::move(done));
    });
  }

  Result<Outcome> wait(Backend& backend, const RunHandle& handle,
                       std::shared_ptr<LogSink> sink = nullptr) {
    return await<Outcome>(
        io_, [&](Callback<Outcome> done) { backend.wait(handle, sink, std::move(done)); });
  }

  Result<Outcome> run(Json config, std::shared_ptr<RecordingSink> sink = nullptr) {
    if (!sink) {
      sink = std::make_shared<RecordingSink>();
    }
    auto handle = start(*backend_, std::move(config), sink);
    if (!handle) {
      return std::move(handle).error();
    }
    return wait(*backend_, *handle, sink);
  }

  Result<void> kill(Backend& backend, const RunHandle& handle, std::chrono::milliseconds grace) {
    return await<void>(io_,
                       [&](Callback<void> done) { backend.kill(handle, grace, std::move(done)); });
  }

  Result<Recovery> recover(Backend& backend, const RunHandle& handle) {
    return await<Recovery>(io_, [&](Callback<Recovery> done) {
      backend.recover(handle, std::make_shared<RecordingSink>(), std::move(done));
    });
  }

  void awaitOutput(const RecordingSink& sink, const std::string& text) {
    runUntil(io_, [&] { return sink.out().find(text) != std::string::npos; });
  }

  boost::asio::io_context io_;
  TestExecutor executor_;
  TempDir state_;
  BackendPtr backend_;
};

// Points TMPDIR at a directory of the test while it lives.
class ScopedTmpdir {
 public:
  explicit ScopedTmpdir(const fs::path& path) {
    if (const char* old = std::getenv("TMPDIR")) {
      old_ = old;
    }
    ::setenv("TMPDIR", path.c_str(), 1);
  }
  ~ScopedTmpdir() {
    if (old_) {
      ::setenv("TMPDIR", old_->c_str(), 1);
    } else {
      ::unsetenv("TMPDIR");
    }
  }
  ScopedTmpdir(const ScopedTmpdir&) = delete;
  ScopedTmpdir& operator=(const ScopedTmpdir&) = delete;

 private:
  std::optional<std::string> old_;
};

TEST_F(ProcessBackendTest, ReportsExitCodes) {
  for (const auto& [command, code] :
       std::vector<std::pair<std::string, int>>{{"sh -c 'exit 0'", 0},
                                                {"sh -c 'exit 3'", 3},
                                                {"sh -c 'kill -KILL $$'", -9},
                                                {"sh -c 'kill -TERM $$'", -15}}) {
    SCOPED_TRACE(command);
    auto outcome = run(configuration(command));
    ASSERT_TRUE(outcome.ok()) << outcome.error().message;
    ASSERT_TRUE(outcome->exit_code.has_value());
    EXPECT_EQ(*outcome->exit_code, code);
    EXPECT_EQ(outcome->detail, "");
  }
}

TEST_F(ProcessBackendTest, HandleIdentifiesTheShim) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend_, configuration("sh -c 'echo $PPID'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->backend, "process");
  const pid_t pid = handle->data["pid"].get<pid_t>();
  EXPECT_EQ(handle->infrastructure_pid, hostName() + ":" + std::to_string(pid));
  EXPECT_EQ(handle->data["hostname"], hostName());
  EXPECT_EQ(handle->data["boot_id"], readBootId());
  EXPECT_TRUE(handle->data["start_time"].is_number_unsigned());
  const std::string status_file = handle->data["status_file"].get<std::string>();
  EXPECT_EQ(fs::path(status_file).parent_path(), state_.path() / "state");

  // The handle survives a JSON round trip, as it does through the journal.
  RunHandle reloaded = *handle;
  reloaded.data = Json::parse(handle->data.dump());
  auto outcome = wait(*backend_, reloaded, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  // The flow is the shim's child, and the shim leads the process group.
  EXPECT_EQ(sink->out(), std::to_string(pid) + "\n");
  EXPECT_FALSE(fs::exists(status_file));
}

TEST_F(ProcessBackendTest, CommandNotFoundFailsTheStart) {
  auto handle = start(*backend_, configuration("pythn3-not-installed -m prefect.engine"),
                      std::make_shared<RecordingSink>());
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(handle.error().message, "command 'pythn3-not-installed' not found on PATH");
}

TEST_F(ProcessBackendTest, ExecFailuresAreReportedByTheShim) {
  TempDir work;
  TempDir tmp;
  ScopedTmpdir scoped(tmp.path());
  // Executable bits but no '#!' line: only execve itself can tell.
  const fs::path garbage = work.path() / "garbage";
  std::ofstream(garbage) << "\x7f\x01\x02 not a program\n";
  fs::permissions(garbage, fs::perms::owner_all);
  const fs::path plain = work.path() / "plain.sh";
  std::ofstream(plain) << "#!/bin/sh\nexit 0\n";
  const fs::path bad_interpreter = work.path() / "bad-interpreter";
  std::ofstream(bad_interpreter) << "#!/nonexistent/interpreter\n";
  fs::permissions(bad_interpreter, fs::perms::owner_all);

  struct Case {
    std::string command;
    std::string message;
  };
  for (const auto& c : std::vector<Case>{
           {quoted(garbage), "command '" + garbage.string() +
                                 "' is not a program this system can run (a script needs a "
                                 "'#!' line)"},
           {quoted(plain), "command '" + plain.string() + "' is not executable"},
           {quoted(bad_interpreter),
            "command '" + bad_interpreter.string() +
                "' could not be executed: the interpreter named on its '#!' line does not exist"},
           {quoted(work.path()), "command '" + work.path().string() + "' is a directory"},
           {"./missing.sh",
            "command '" + (work.path() / "missing.sh").string() + "' does not exist"},
       }) {
    SCOPED_TRACE(c.command);
    Json config = configuration(c.command);
    config["working_dir"] = work.path().string();
    auto handle = start(*backend_, config, std::make_shared<RecordingSink>());
    ASSERT_FALSE(handle.ok());
    EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_EQ(handle.error().message, c.message);
  }
  // Failed starts leave no status file and no temporary directory behind.
  EXPECT_TRUE(fs::is_empty(state_.path() / "state"));
  auto handle = start(*backend_, configuration(quoted(garbage)), nullptr);
  ASSERT_FALSE(handle.ok());
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

TEST_F(ProcessBackendTest, InterpreterOfTheDefaultCommandMustExist) {
  auto backend = makeBackend(Json{{"python", "/nonexistent/bin/python"}});
  auto handle = start(*backend, configuration(""), nullptr);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(handle.error().message,
            "interpreter '/nonexistent/bin/python' does not exist (set the process backend's "
            "'python' option, or give the deployment a 'command')");
  backend->shutdown();
}

TEST_F(ProcessBackendTest, DefaultCommandRunsTheEngineModuleWithTheConfiguredPython) {
  TempDir bin;
  const fs::path fake = bin.path() / "fake-python";
  std::ofstream(fake) << "#!/bin/sh\necho \"args: $*\"\n";
  fs::permissions(fake, fs::perms::owner_all);
  auto backend = makeBackend(Json{{"python", "fake-python"}});
  Json config = configuration("");
  config["command"] = nullptr;
  config["env"] = Json{{"PATH", bin.path().string() + ":/usr/bin:/bin"}};
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend, config, sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*backend, *handle, sink);
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(outcome->exit_code, 0);
  EXPECT_EQ(sink->out(), "args: -m prefect.engine\n");
  backend->shutdown();
}

TEST_F(ProcessBackendTest, UnclosedQuoteIsAnInvalidConfiguration) {
  auto handle = start(*backend_, configuration("sh -c 'echo"), nullptr);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(handle.error().message, "job configuration 'command': no closing quotation");
}

TEST_F(ProcessBackendTest, MissingWorkingDirIsAnInvalidConfiguration) {
  TempDir base;
  const fs::path missing = base.path() / "does-not-exist";
  Json config = configuration("true");
  config["working_dir"] = missing.string();
  auto handle = start(*backend_, config, nullptr);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(handle.error().message,
            "job configuration 'working_dir': directory '" + missing.string() + "' does not exist");
}

TEST_F(ProcessBackendTest, RunsInTheGivenWorkingDir) {
  TempDir work;
  Json config = configuration("sh -c 'pwd; touch made-here'");
  config["working_dir"] = work.path().string();
  auto sink = std::make_shared<RecordingSink>();
  auto outcome = run(config, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  EXPECT_EQ(sink->out(), fs::canonical(work.path()).string() + "\n");
  EXPECT_TRUE(fs::exists(work.path() / "made-here"));
}

TEST_F(ProcessBackendTest, TemporaryWorkingDirIsRemovedAfterTheRun) {
  TempDir tmp;
  ScopedTmpdir scoped(tmp.path());
  auto sink = std::make_shared<RecordingSink>();
  auto outcome = run(configuration("sh -c 'pwd; mkdir -p sub/dir; echo x > sub/dir/file'"), sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  std::string dir = sink->out();
  ASSERT_FALSE(dir.empty());
  dir.pop_back();
  EXPECT_EQ(fs::path(dir).parent_path(), fs::canonical(tmp.path()));
  EXPECT_EQ(fs::path(dir).filename().string().substr(0, 3), "tmp");
  EXPECT_TRUE(dir.size() > 7 && dir.substr(dir.size() - 7) == "prefect") << dir;
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

TEST_F(ProcessBackendTest, EnvironmentIsTheWorkersOverlaidWithTheConfiguration) {
  ::setenv("POOLWORKER_TEST_FROM_WORKER", "worker value", 1);
  ::setenv("POOLWORKER_TEST_OVERRIDDEN", "worker", 1);
  ::setenv("POOLWORKER_TEST_REMOVED", "worker", 1);
  Json config = configuration(
      "sh -c 'printf \"%s|%s|%s|%s\" \"$POOLWORKER_TEST_FROM_WORKER\" "
      "\"$POOLWORKER_TEST_OVERRIDDEN\" \"${POOLWORKER_TEST_REMOVED-unset}\" "
      "\"$PREFECT__FLOW_RUN_ID\"'");
  config["env"] = Json{{"POOLWORKER_TEST_OVERRIDDEN", "job's value with spaces"},
                       {"POOLWORKER_TEST_REMOVED", nullptr},
                       {"PREFECT__FLOW_RUN_ID", "6f0c6c2e"}};
  auto sink = std::make_shared<RecordingSink>();
  auto outcome = run(config, sink);
  ::unsetenv("POOLWORKER_TEST_FROM_WORKER");
  ::unsetenv("POOLWORKER_TEST_OVERRIDDEN");
  ::unsetenv("POOLWORKER_TEST_REMOVED");
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(sink->out(), "worker value|job's value with spaces|unset|6f0c6c2e");
}

TEST_F(ProcessBackendTest, StreamsStdoutAndStderrSeparately) {
  auto sink = std::make_shared<RecordingSink>();
  auto outcome = run(configuration("sh -c 'echo to-out; echo to-err >&2; exit 2'"), sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 2);
  EXPECT_EQ(sink->out(), "to-out\n");
  EXPECT_EQ(sink->err(), "to-err\n");
}

TEST_F(ProcessBackendTest, OutputIsDrainedBeforeWaitCompletes) {
  auto sink = std::make_shared<RecordingSink>();
  // Several times the pipe buffers, ending right as the process exits.
  auto outcome =
      run(configuration("sh -c 'head -c 3000000 /dev/zero | tr \"\\\\0\" x; echo end'"), sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  EXPECT_EQ(sink->out(), std::string(3000000, 'x') + "end\n");
}

TEST_F(ProcessBackendTest, StreamOutputOffDiscardsOutput) {
  for (const Json& flag : {Json(false), Json("off"), Json("No"), Json(0)}) {
    SCOPED_TRACE(flag.dump());
    Json config = configuration("sh -c 'echo hidden; echo hidden >&2'");
    config["stream_output"] = flag;
    auto sink = std::make_shared<RecordingSink>();
    auto outcome = run(config, sink);
    ASSERT_TRUE(outcome.ok()) << outcome.error().message;
    EXPECT_EQ(outcome->exit_code, 0);
    EXPECT_EQ(sink->out(), "");
    EXPECT_EQ(sink->err(), "");
  }
  Json config = configuration("sh -c 'echo shown'");
  config["stream_output"] = "YES";
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(run(config, sink).ok());
  EXPECT_EQ(sink->out(), "shown\n");
}

TEST_F(ProcessBackendTest, InvalidStreamOutputNamesTheField) {
  Json config = configuration("true");
  config["stream_output"] = "maybe";
  auto handle = start(*backend_, config, nullptr);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(handle.error().message,
            "job configuration 'stream_output' must be a boolean, not \"maybe\"");
}

TEST_F(ProcessBackendTest, KillSendsSigkillAfterGraceToAFlowThatIgnoresSigterm) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend_,
                      configuration("sh -c 'trap \"\" TERM; echo ready; "
                                    "while :; do sleep 1; done'"),
                      sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  awaitOutput(*sink, "ready");
  std::optional<Result<Outcome>> outcome;
  backend_->wait(*handle, sink,
                 [&](Result<Outcome> result) { outcome.emplace(std::move(result)); });
  auto killed = kill(*backend_, *handle, std::chrono::milliseconds(100));
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  runUntil(io_, [&] { return outcome.has_value(); });
  ASSERT_TRUE(outcome->ok());
  // SIGKILL reached the whole group, shim included, so the shim's own end is reported.
  EXPECT_EQ((*outcome)->exit_code, -9);
}

TEST_F(ProcessBackendTest, KillCompletesWhenTheFlowExitsOnSigterm) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend_, configuration("sh -c 'echo ready; sleep 600'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  awaitOutput(*sink, "ready");
  // With a grace of ten minutes, only the flow's exit can complete the kill.
  auto killed = kill(*backend_, *handle, kLongGrace);
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  auto outcome = wait(*backend_, *handle, sink);
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(outcome->exit_code, -15);
  // Killing what is already gone succeeds.
  EXPECT_TRUE(kill(*backend_, *handle, kLongGrace).ok());
}

TEST_F(ProcessBackendTest, KillReachesGrandchildrenInTheGroup) {
  TempDir work;
  Json config = configuration("sh -c 'sleep 600 & echo $! > child.pid; echo ready; wait'");
  config["working_dir"] = work.path().string();
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend_, config, sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  awaitOutput(*sink, "ready");
  const pid_t grandchild = std::stoi(poolworker::testing::readFile(work.path() / "child.pid"));
  ASSERT_FALSE(processGone(grandchild));
  ASSERT_TRUE(kill(*backend_, *handle, kLongGrace).ok());
  auto outcome = wait(*backend_, *handle, sink);
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(outcome->exit_code, -15);
  awaitProcessGone(grandchild);
}

TEST_F(ProcessBackendTest, ProcessesLeftInTheGroupAreKilledWhenTheFlowEnds) {
  TempDir work;
  Json config = configuration(
      "sh -c 'trap \"\" TERM; (trap \"\" TERM; exec sleep 600) & echo $! > child.pid'");
  config["working_dir"] = work.path().string();
  auto outcome = run(config);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  const pid_t grandchild = std::stoi(poolworker::testing::readFile(work.path() / "child.pid"));
  awaitProcessGone(grandchild);
}

TEST_F(ProcessBackendTest, KillRefusesARecycledPid) {
  // A process of its own session stands for whatever reused the run's pid.
  pid_t other = 0;
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
  char sleep_path[] = "/bin/sleep";
  char seconds[] = "600";
  char* argv[] = {sleep_path, seconds, nullptr};
  ASSERT_EQ(posix_spawn(&other, sleep_path, nullptr, &attributes, argv, environ), 0);
  posix_spawnattr_destroy(&attributes);
  const auto stat = readProcStat(other);
  ASSERT_TRUE(stat.has_value());

  RunHandle handle;
  handle.backend = "process";
  handle.infrastructure_pid = hostName() + ":" + std::to_string(other);
  handle.data = Json{{"pid", other},
                     {"start_time", stat->start_time + 1},
                     {"boot_id", readBootId()},
                     {"hostname", hostName()},
                     {"status_file", (state_.path() / "none.status").string()},
                     {"temp_dir", nullptr}};
  EXPECT_TRUE(kill(*backend_, handle, std::chrono::milliseconds(0)).ok());
  auto recovered = recover(*backend_, handle);
  ASSERT_TRUE(recovered.ok());
  EXPECT_FALSE(recovered->running);
  EXPECT_FALSE(recovered->outcome.exit_code.has_value());

  // The other process was not touched.
  int status = 0;
  EXPECT_EQ(::waitpid(other, &status, WNOHANG), 0);
  ::kill(other, SIGKILL);
  ::waitpid(other, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

TEST_F(ProcessBackendTest, HandlesOfAnotherHostAreRefused) {
  auto handle = start(*backend_, configuration("true"), nullptr);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  RunHandle foreign = *handle;
  foreign.data["hostname"] = "some-other-host";
  auto recovered = recover(*backend_, foreign);
  ASSERT_FALSE(recovered.ok());
  EXPECT_EQ(recovered.error().kind, ErrorKind::NotFound);
  EXPECT_EQ(recovered.error().message,
            "run was started on host 'some-other-host', but this "
            "worker runs on host '" +
                hostName() + "'");
  auto killed = kill(*backend_, foreign, std::chrono::milliseconds(0));
  ASSERT_FALSE(killed.ok());
  EXPECT_EQ(killed.error().kind, ErrorKind::NotFound);
  ASSERT_TRUE(wait(*backend_, *handle).ok());
}

TEST_F(ProcessBackendTest, HandlesFromAnEarlierBootAreGone) {
  auto handle = start(*backend_, configuration("true"), nullptr);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(wait(*backend_, *handle).ok());
  RunHandle old = *handle;
  old.data["boot_id"] = "00000000-0000-0000-0000-000000000000";
  auto killed = kill(*backend_, old, std::chrono::milliseconds(0));
  ASSERT_FALSE(killed.ok());
  EXPECT_EQ(killed.error().kind, ErrorKind::NotFound);
  EXPECT_NE(killed.error().message.find("started before this machine last booted"),
            std::string::npos);
  auto recovered = recover(*backend_, old);
  ASSERT_TRUE(recovered.ok()) << recovered.error().message;
  EXPECT_FALSE(recovered->running);
  EXPECT_FALSE(recovered->outcome.exit_code.has_value());
}

TEST_F(ProcessBackendTest, MalformedHandlesAreRejected) {
  for (const Json& data : {Json::array(), Json{{"pid", "12"}}, Json{{"pid", -4}}, Json{{"pid", 12}},
                           Json{{"pid", 12}, {"start_time", 5}}}) {
    SCOPED_TRACE(data.dump());
    RunHandle handle{"process", "host:12", data};
    auto recovered = recover(*backend_, handle);
    ASSERT_FALSE(recovered.ok());
    EXPECT_EQ(recovered.error().kind, ErrorKind::InvalidConfiguration);
  }
}

TEST_F(ProcessBackendTest, RecoversARunThatIsStillRunning) {
  TempDir work;
  TempDir tmp;
  ScopedTmpdir scoped(tmp.path());
  const fs::path flag = work.path() / "go";
  auto sink = std::make_shared<RecordingSink>();
  // After the worker went away the flow keeps writing: nothing may break it.
  auto handle = start(*backend_,
                      configuration("sh -c 'echo ready; while [ ! -e " + quoted(flag) +
                                    " ]; do echo waiting; sleep 0.02; done; "
                                    "i=0; while [ $i -lt 2000 ]; do echo line $i; "
                                    "i=$((i+1)); done; exit 7'"),
                      sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  awaitOutput(*sink, "ready");
  std::optional<Result<Outcome>> first_wait;
  backend_->wait(*handle, sink,
                 [&](Result<Outcome> result) { first_wait.emplace(std::move(result)); });

  // The worker goes away: its backend is destroyed, and with it the read ends of the pipes.
  backend_.reset();
  runUntil(io_, [&] { return first_wait.has_value(); });
  ASSERT_FALSE(first_wait->ok());
  EXPECT_EQ(first_wait->error().kind, ErrorKind::Cancelled);

  RunHandle journalled = *handle;
  journalled.data = Json::parse(handle->data.dump());
  auto next = makeBackend();
  auto recovered = recover(*next, journalled);
  ASSERT_TRUE(recovered.ok()) << recovered.error().message;
  EXPECT_TRUE(recovered->running);

  std::ofstream(flag) << "go";
  auto outcome = wait(*next, journalled);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 7);
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  EXPECT_TRUE(fs::is_empty(state_.path() / "state"));
  next->shutdown();
}

TEST_F(ProcessBackendTest, RecoversARunThatEndedWhileNoWorkerWatched) {
  TempDir tmp;
  ScopedTmpdir scoped(tmp.path());
  auto handle = start(*backend_, configuration("sh -c 'exit 5'"), nullptr);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  backend_.reset();
  const std::string status_file = handle->data["status_file"];
  const pid_t pid = handle->data["pid"];
  // The shim has recorded the exit and ended; nobody reaped it yet.
  runUntil(io_, [&] {
    const auto stat = readProcStat(pid);
    return fs::exists(status_file) && stat && stat->ended();
  });

  auto next = makeBackend();
  auto recovered = recover(*next, *handle);
  ASSERT_TRUE(recovered.ok()) << recovered.error().message;
  EXPECT_FALSE(recovered->running);
  EXPECT_EQ(recovered->outcome.exit_code, 5);
  EXPECT_FALSE(fs::exists(status_file));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  EXPECT_TRUE(processGone(pid));
  next->shutdown();
}

TEST_F(ProcessBackendTest, RecoveryWithoutAStatusFileSaysSo) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend_, configuration("sh -c 'echo ready; sleep 600'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  awaitOutput(*sink, "ready");
  backend_.reset();
  // Someone kills the whole group, shim included, and the shim's parent reaps it.
  const pid_t pid = handle->data["pid"];
  ASSERT_EQ(::kill(-pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);

  auto next = makeBackend();
  auto recovered = recover(*next, *handle);
  ASSERT_TRUE(recovered.ok()) << recovered.error().message;
  EXPECT_FALSE(recovered->running);
  EXPECT_FALSE(recovered->outcome.exit_code.has_value());
  EXPECT_EQ(recovered->outcome.detail,
            "the run's process ended while no worker was watching and its exit status was not "
            "recorded");
  next->shutdown();
}

TEST_F(ProcessBackendTest, RunsManyShortRunsAtOnce) {
  constexpr int kRuns = 200;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  std::vector<std::optional<Result<Outcome>>> outcomes(kRuns);
  int started = 0;
  for (int i = 0; i < kRuns; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    backend_->start(
        request(configuration("sh -c 'echo run $0; exit $(($0 % 4))' " + std::to_string(i))),
        sinks.back(), [&, i](Result<RunHandle> handle) {
          ++started;
          if (!handle) {
            outcomes[i].emplace(std::move(handle).error());
            return;
          }
          backend_->wait(*handle, sinks[i], [&, i](Result<Outcome> outcome) {
            outcomes[i].emplace(std::move(outcome));
          });
        });
  }
  runUntil(io_, [&] {
    return std::all_of(outcomes.begin(), outcomes.end(),
                       [](const auto& outcome) { return outcome.has_value(); });
  });
  EXPECT_EQ(started, kRuns);
  for (int i = 0; i < kRuns; ++i) {
    ASSERT_TRUE(outcomes[i].has_value());
    ASSERT_TRUE(outcomes[i]->ok()) << outcomes[i]->error().message;
    EXPECT_EQ((*outcomes[i])->exit_code, i % 4);
    EXPECT_EQ(sinks[i]->out(), "run " + std::to_string(i) + "\n");
  }
  EXPECT_TRUE(fs::is_empty(state_.path() / "state"));
}

TEST_F(ProcessBackendTest, ShutdownCancelsPendingWaitsButLeavesRunsAlone) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(*backend_, configuration("sh -c 'echo ready; sleep 600'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  awaitOutput(*sink, "ready");
  auto outcome = await<Outcome>(io_, [&](Callback<Outcome> done) {
    backend_->wait(*handle, sink, std::move(done));
    backend_->shutdown();
  });
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().kind, ErrorKind::Cancelled);
  const pid_t pid = handle->data["pid"];
  EXPECT_FALSE(processGone(pid));
  auto next = makeBackend();
  ASSERT_TRUE(kill(*next, *handle, std::chrono::milliseconds(0)).ok());
  auto ended = wait(*next, *handle);
  ASSERT_TRUE(ended.ok());
  EXPECT_TRUE(ended->exit_code == -15 || ended->exit_code == -9);
  next->shutdown();
}

TEST_F(ProcessBackendTest, PreviewShowsWhatStartWouldRun) {
  TempDir work;
  Json config = configuration("prefect flow-run execute 'a b'");
  config["env"] = Json{{"B", "2"}, {"A", "1"}, {"GONE", nullptr}};
  config["working_dir"] = work.path().string();
  config["stream_output"] = "off";
  auto preview = backend_->preview(request(config));
  ASSERT_TRUE(preview.ok()) << preview.error().message;
  EXPECT_EQ(*preview, (Json{{"argv", {"prefect", "flow-run", "execute", "a b"}},
                            {"env", {{"A", "1"}, {"B", "2"}}},
                            {"working_dir", work.path().string()},
                            {"stream_output", false}}));
  EXPECT_TRUE(fs::is_empty(work.path()));

  config = configuration("");
  auto fallback = backend_->preview(request(config));
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ((*fallback)["argv"], (Json{"python3", "-m", "prefect.engine"}));
  EXPECT_TRUE((*fallback)["working_dir"].is_null());

  config["working_dir"] = (work.path() / "missing").string();
  auto invalid = backend_->preview(request(config));
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(invalid.error().kind, ErrorKind::InvalidConfiguration);
}

TEST_F(ProcessBackendTest, CheckFindsTheShim) {
  EXPECT_TRUE(
      await<void>(io_, [&](Callback<void> done) { backend_->check(std::move(done)); }).ok());
  auto missing = makeBackend(Json{{"shim_path", "/nonexistent/poolworker-run"}});
  auto checked = await<void>(io_, [&](Callback<void> done) { missing->check(std::move(done)); });
  ASSERT_FALSE(checked.ok());
  EXPECT_EQ(checked.error().kind, ErrorKind::InfrastructureFailed);
  EXPECT_NE(checked.error().message.find("'/nonexistent/poolworker-run' does not exist"),
            std::string::npos)
      << checked.error().message;
  missing->shutdown();
}

}  // namespace
}  // namespace poolworker::backends::process
