// Tests of the poolworker-run program on its own, as the process backend starts it.

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_support.h"

namespace poolworker::backends::process {
namespace {

namespace fs = std::filesystem;
using poolworker::testing::binPath;
using poolworker::testing::readFile;
using poolworker::testing::TempDir;

struct Shim {
  pid_t pid = 0;
  int out = -1;     // read end of the shim's stdout
  int err = -1;     // read end of the shim's stderr
  int report = -1;  // read end of the report pipe
};

Shim spawnShim(const std::vector<std::string>& options, const std::vector<std::string>& command) {
  int out[2];
  int err[2];
  int report[2];
  EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
  EXPECT_EQ(::pipe2(err, O_CLOEXEC), 0);
  EXPECT_EQ(::pipe2(report, O_CLOEXEC), 0);
  std::vector<std::string> args = {binPath("poolworker-run").string(), "--report-fd", "3"};
  args.insert(args.end(), options.begin(), options.end());
  args.emplace_back("--");
  args.insert(args.end(), command.begin(), command.end());
  std::vector<char*> argv;
  for (auto& arg : args) {
    argv.push_back(arg.data());
  }
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  posix_spawn_file_actions_adddup2(&actions, report[1], 3);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
  Shim shim;
  EXPECT_EQ(posix_spawn(&shim.pid, argv[0], &actions, &attributes, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(out[1]);
  ::close(err[1]);
  ::close(report[1]);
  shim.out = out[0];
  shim.err = err[0];
  shim.report = report[0];
  return shim;
}

std::string readAll(int fd) {
  std::string text;
  char buffer[4096];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      text.append(buffer, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  return text;
}

std::string readLine(int fd) {
  std::string line;
  char c = 0;
  while (::read(fd, &c, 1) == 1 && c != '\n') {
    line.push_back(c);
  }
  return line;
}

int waitShim(Shim& shim) {
  for (int* fd : {&shim.out, &shim.err, &shim.report}) {
    if (*fd >= 0) {
      ::close(*fd);
      *fd = -1;
    }
  }
  int status = 0;
  EXPECT_EQ(::waitpid(shim.pid, &status, 0), shim.pid);
  EXPECT_TRUE(WIFEXITED(status)) << "the shim was killed by signal " << WTERMSIG(status);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(RunShim, ForwardsOutputAndRecordsTheExitStatus) {
  TempDir dir;
  const fs::path status = dir.path() / "run.status";
  Shim shim =
      spawnShim({"--status-file", status.string()}, {"sh", "-c", "echo out; echo err >&2; exit 3"});
  const std::string report = readLine(shim.report);
  EXPECT_EQ(report.rfind("ok ", 0), 0u) << report;
  EXPECT_EQ(readAll(shim.out), "out\n");
  EXPECT_EQ(readAll(shim.err), "err\n");
  EXPECT_EQ(waitShim(shim), 3);
  EXPECT_EQ(readFile(status), "{\"exit_code\": 3}\n");
  EXPECT_FALSE(fs::exists(status.string() + ".tmp"));
}

TEST(RunShim, RecordsSignalDeathsAsNegativeCodes) {
  TempDir dir;
  const fs::path status = dir.path() / "run.status";
  Shim shim = spawnShim({"--status-file", status.string()}, {"sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(waitShim(shim), 128 + SIGTERM);
  EXPECT_EQ(readFile(status), "{\"exit_code\": -15}\n");
}

TEST(RunShim, ReportsAnExecFailureAndRunsNothing) {
  TempDir dir;
  const fs::path status = dir.path() / "run.status";
  Shim shim =
      spawnShim({"--status-file", status.string(), "--program", "/nonexistent/prog"}, {"prog"});
  EXPECT_EQ(readLine(shim.report), "error exec " + std::to_string(ENOENT));
  EXPECT_EQ(waitShim(shim), 127);
  EXPECT_FALSE(fs::exists(status));
}

TEST(RunShim, ReportsAWorkingDirectoryItCannotEnter) {
  TempDir dir;
  Shim shim = spawnShim({"--status-file", (dir.path() / "s.status").string(), "--cwd",
                         (dir.path() / "missing").string()},
                        {"true"});
  EXPECT_EQ(readLine(shim.report), "error chdir " + std::to_string(ENOENT));
  EXPECT_NE(waitShim(shim), 0);
}

TEST(RunShim, KeepsTheFlowAliveWhenTheReaderGoesAway) {
  TempDir dir;
  const fs::path status = dir.path() / "run.status";
  const fs::path flag = dir.path() / "go";
  Shim shim = spawnShim({"--status-file", status.string()},
                        {"sh", "-c",
                         "echo first; while [ ! -e '" + flag.string() +
                             "' ]; do sleep 0.02; done; i=0; while [ $i -lt 5000 ]; do "
                             "echo line $i; echo line $i >&2; i=$((i+1)); done; exit 4"});
  EXPECT_EQ(readLine(shim.out), "first");
  // The worker dies: both of its read ends close while the flow still has much to write.
  ::close(shim.out);
  shim.out = -1;
  ::close(shim.err);
  shim.err = -1;
  std::ofstream(flag) << "go";
  EXPECT_EQ(waitShim(shim), 4);
  EXPECT_EQ(readFile(status), "{\"exit_code\": 4}\n");
}

TEST(RunShim, IgnoresSigtermSentToItAlone) {
  TempDir dir;
  const fs::path status = dir.path() / "run.status";
  const fs::path flag = dir.path() / "go";
  Shim shim = spawnShim(
      {"--status-file", status.string()},
      {"sh", "-c",
       "echo ready; while [ ! -e '" + flag.string() + "' ]; do sleep 0.02; done; exit 0"});
  EXPECT_EQ(readLine(shim.out), "ready");
  ASSERT_EQ(::kill(shim.pid, SIGTERM), 0);
  ASSERT_EQ(::kill(shim.pid, SIGHUP), 0);
  ASSERT_EQ(::kill(shim.pid, SIGINT), 0);
  std::ofstream(flag) << "go";
  EXPECT_EQ(waitShim(shim), 0);
  EXPECT_EQ(readFile(status), "{\"exit_code\": 0}\n");
}

TEST(RunShim, RejectsAMissingStatusFile) {
  Shim shim = spawnShim({}, {"true"});
  EXPECT_EQ(readAll(shim.err).find("--status-file is required") != std::string::npos, true);
  EXPECT_EQ(waitShim(shim), 125);
}

}  // namespace
}  // namespace poolworker::backends::process
