// poolworker-run: the run shim of the process backend.
//
//   poolworker-run --status-file PATH [--report-fd N] [--cwd DIR] [--program PATH]
//                  [--inherit-output] -- COMMAND [ARG...]
//
// The worker starts one shim per flow run, as the leader of a new session and process group.
// The shim runs COMMAND in that group, forwards its output, and records its exit status in
// PATH as {"exit_code": N} (signal deaths as -signo, as Prefect reports them), so that a worker
// that restarted meanwhile still learns how the run ended. It exists so that the flow process
// never depends on the worker: no pipe to the worker can break it, and the worker's death does
// not signal it.
//
// The shim copies the command's stdout and stderr through pipes of its own to its own stdout and
// stderr; once those break (the worker died) it keeps reading and drops the bytes. With
// --inherit-output the command writes straight to the shim's stdout and stderr instead (the
// worker passes /dev/null when it does not stream output). --program names the file to execute
// (default: COMMAND looked up on PATH); --cwd is entered before anything runs.
//
// The environment of the shim is the command's environment; nothing secret is passed in argv.
// On --report-fd the shim writes one line once the command was executed: "ok <pid>", or
// "error <stage> <errno>" when it could not be (stage: chdir, exec, setup); the shim then exits
// without running anything.

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

// Exit codes of the shim itself when it could not run the command, as env(1) and shells use.
constexpr int kShimFailed = 125;
constexpr int kCannotExecute = 126;
constexpr int kNotFound = 127;

constexpr size_t kChunkSize = 65536;

int child_exit_pipe_write = -1;

void onChildExit(int /*signo*/) {
  const int saved = errno;
  const char byte = 0;
  // A full pipe already holds a wake-up, so a failed write loses nothing.
  if (write(child_exit_pipe_write, &byte, 1) < 0) {
  }
  errno = saved;
}

struct Options {
  std::string status_file;
  int report_fd = -1;
  std::string cwd;
  std::string program;
  bool inherit_output = false;
  std::vector<char*> command;
};

void usage(const char* message) {
  std::fprintf(stderr,
               "poolworker-run: %s\n"
               "usage: poolworker-run --status-file PATH [--report-fd N] [--cwd DIR] "
               "[--program PATH] [--inherit-output] -- COMMAND [ARG...]\n",
               message);
}

bool parseOptions(int argc, char** argv, Options& options) {
  int i = 1;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--inherit-output") {
      options.inherit_output = true;
      continue;
    }
    if (i + 1 >= argc) {
      usage(("option '" + arg + "' needs a value").c_str());
      return false;
    }
    const std::string value = argv[++i];
    if (arg == "--status-file") {
      options.status_file = value;
    } else if (arg == "--report-fd") {
      char* end = nullptr;
      const long fd = std::strtol(value.c_str(), &end, 10);
      if (end == value.c_str() || *end != '\0' || fd < 0 || fd > 1 << 20) {
        usage(("invalid --report-fd '" + value + "'").c_str());
        return false;
      }
      options.report_fd = static_cast<int>(fd);
    } else if (arg == "--cwd") {
      options.cwd = value;
    } else if (arg == "--program") {
      options.program = value;
    } else {
      usage(("unknown option '" + arg + "'").c_str());
      return false;
    }
  }
  if (options.status_file.empty()) {
    usage("--status-file is required");
    return false;
  }
  for (; i < argc; ++i) {
    options.command.push_back(argv[i]);
  }
  if (options.command.empty()) {
    usage("no command given");
    return false;
  }
  options.command.push_back(nullptr);
  return true;
}

void report(int fd, const std::string& line) {
  if (fd < 0) {
    return;
  }
  const std::string text = line + "\n";
  // The worker may be gone already; the run goes on regardless.
  while (write(fd, text.data(), text.size()) < 0 && errno == EINTR) {
  }
}

void reportError(int fd, const char* stage, int error) {
  report(fd, std::string("error ") + stage + " " + std::to_string(error));
}

// Writes everything, or returns false once the reader went away (EPIPE) or the write failed.
bool writeAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

struct Forward {
  int from = -1;  // read end of the child's pipe
  int to = -1;    // our own stdout or stderr
  bool sink_ok = true;
};

// Copies what is available from one pipe. Returns false at end of file or on a read error.
bool pump(Forward& forward, std::vector<char>& buffer) {
  const ssize_t n = read(forward.from, buffer.data(), buffer.size());
  if (n > 0) {
    if (forward.sink_ok && !writeAll(forward.to, buffer.data(), static_cast<size_t>(n))) {
      // The worker died or closed its end: keep draining so that the flow never blocks or
      // sees a broken pipe, and drop the bytes.
      forward.sink_ok = false;
    }
    return true;
  }
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
    return true;
  }
  return false;
}

void closeForward(Forward& forward) {
  if (forward.from >= 0) {
    close(forward.from);
    forward.from = -1;
  }
}

// Reads what is left in a pipe without waiting for writers that escaped the process group.
void drain(Forward& forward, std::vector<char>& buffer) {
  if (forward.from < 0) {
    return;
  }
  const int flags = fcntl(forward.from, F_GETFL);
  if (flags >= 0) {
    fcntl(forward.from, F_SETFL, flags | O_NONBLOCK);
  }
  while (true) {
    const ssize_t n = read(forward.from, buffer.data(), buffer.size());
    if (n > 0) {
      if (forward.sink_ok && !writeAll(forward.to, buffer.data(), static_cast<size_t>(n))) {
        forward.sink_ok = false;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    break;
  }
  closeForward(forward);
}

bool writeStatus(const std::string& path, int exit_code) {
  const std::string temp = path + ".tmp";
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return false;
  }
  const std::string text = "{\"exit_code\": " + std::to_string(exit_code) + "}\n";
  const bool written = writeAll(fd, text.data(), text.size()) && fsync(fd) == 0;
  const bool closed = close(fd) == 0;
  if (!written || !closed || rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    unlink(temp.c_str());
    errno = error;
    return false;
  }
  return true;
}

// Reaps the shim's ended children; true while any child is still alive. The shim is the
// subreaper of everything the flow started, so no child left means nothing of the flow is left.
bool descendantsAlive() {
  for (;;) {
    int status = 0;
    const pid_t reaped = waitpid(-1, &status, WNOHANG);
    if (reaped > 0) {
      continue;
    }
    if (reaped < 0 && errno == EINTR) {
      continue;
    }
    return reaped == 0;
  }
}

// Sends SIGKILL to every other process of our process group. A group signal would kill the
// shim too, so members are found in /proc. Returns true when any was found.
bool killGroupMembers(pid_t group, pid_t self) {
  DIR* proc = opendir("/proc");
  if (proc == nullptr) {
    return false;
  }
  bool found = false;
  while (const dirent* entry = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || pid <= 0 || pid == self) {
      continue;
    }
    const std::string stat_path = std::string("/proc/") + entry->d_name + "/stat";
    const int fd = open(stat_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      continue;
    }
    char buffer[1024];
    const ssize_t n = read(fd, buffer, sizeof(buffer) - 1);
    close(fd);
    if (n <= 0) {
      continue;
    }
    buffer[n] = '\0';
    // The command name may contain spaces and parentheses; the fields follow the last ')'.
    const char* paren = std::strrchr(buffer, ')');
    char state = 0;
    long parent = 0;
    long process_group = 0;
    if (paren == nullptr ||
        std::sscanf(paren + 1, " %c %ld %ld", &state, &parent, &process_group) != 3) {
      continue;
    }
    if (process_group == group && state != 'Z' && state != 'X') {
      kill(static_cast<pid_t>(pid), SIGKILL);
      found = true;
    }
  }
  closedir(proc);
  return found;
}

[[noreturn]] void runChild(const Options& options, int exec_error_write, const int out_write,
                           const int err_write) {
  for (const int signo : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD}) {
    signal(signo, SIG_DFL);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (out_write >= 0) {
    dup2(out_write, STDOUT_FILENO);
    dup2(err_write, STDERR_FILENO);
  }
  if (options.program.empty()) {
    execvp(options.command[0], options.command.data());
  } else {
    execve(options.program.c_str(), options.command.data(), environ);
  }
  const int error = errno;
  if (write(exec_error_write, &error, sizeof(error)) < 0) {
  }
  _exit(kNotFound);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parseOptions(argc, argv, options)) {
    return kShimFailed;
  }
  if (options.report_fd >= 0) {
    fcntl(options.report_fd, F_SETFD, FD_CLOEXEC);
  }

  // The worker starts the shim as a session leader. Started any other way, it leads a session of
  // its own too, so that cleaning up the group below never reaches its caller.
  if (getpgrp() != getpid()) {
    setsid();
  }

  // Orphans of the flow (a daemon it forked, a shell's background job) are re-parented to the
  // shim instead of init, so that at the end the shim knows without reading /proc whether any
  // process of the flow is left.
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

  // Signals to the group are meant for the flow: the shim must stay to record its end.
  for (const int signo : {SIGPIPE, SIGTERM, SIGINT, SIGHUP}) {
    signal(signo, SIG_IGN);
  }

  if (!options.cwd.empty() && chdir(options.cwd.c_str()) != 0) {
    reportError(options.report_fd, "chdir", errno);
    return kShimFailed;
  }

  int child_exit[2];
  int exec_error[2];
  int out_pipe[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};
  if (pipe2(child_exit, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(exec_error, O_CLOEXEC) != 0 ||
      (!options.inherit_output &&
       (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0))) {
    reportError(options.report_fd, "setup", errno);
    return kShimFailed;
  }
  child_exit_pipe_write = child_exit[1];
  struct sigaction action {};
  action.sa_handler = onChildExit;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &action, nullptr);

  const pid_t child = fork();
  if (child < 0) {
    reportError(options.report_fd, "setup", errno);
    return kShimFailed;
  }
  if (child == 0) {
    runChild(options, exec_error[1], out_pipe[1], err_pipe[1]);
  }
  close(exec_error[1]);
  if (!options.inherit_output) {
    close(out_pipe[1]);
    close(err_pipe[1]);
  }

  int exec_errno = 0;
  ssize_t got = 0;
  do {
    got = read(exec_error[0], &exec_errno, sizeof(exec_errno));
  } while (got < 0 && errno == EINTR);
  close(exec_error[0]);
  if (got == static_cast<ssize_t>(sizeof(exec_errno))) {
    int ignored = 0;
    while (waitpid(child, &ignored, 0) < 0 && errno == EINTR) {
    }
    reportError(options.report_fd, "exec", exec_errno);
    return exec_errno == ENOENT ? kNotFound : kCannotExecute;
  }
  report(options.report_fd, "ok " + std::to_string(child));
  if (options.report_fd >= 0) {
    close(options.report_fd);
  }

  std::vector<char> buffer(kChunkSize);
  Forward forwards[2];
  if (!options.inherit_output) {
    forwards[0] = Forward{out_pipe[0], STDOUT_FILENO, true};
    forwards[1] = Forward{err_pipe[0], STDERR_FILENO, true};
  }

  int status = 0;
  bool running = true;
  while (running) {
    pollfd fds[3];
    nfds_t count = 0;
    fds[count++] = pollfd{child_exit[0], POLLIN, 0};
    for (const auto& forward : forwards) {
      if (forward.from >= 0) {
        fds[count++] = pollfd{forward.from, POLLIN, 0};
      }
    }
    if (poll(fds, count, -1) < 0) {
      if (errno == EINTR) {
        continue;
      }
      // Cannot watch any more: stop forwarding and just wait for the child below.
      break;
    }
    for (nfds_t k = 1; k < count; ++k) {
      if ((fds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        continue;
      }
      for (auto& forward : forwards) {
        if (forward.from == fds[k].fd && !pump(forward, buffer)) {
          closeForward(forward);
        }
      }
    }
    if ((fds[0].revents & POLLIN) != 0) {
      char sink[64];
      while (read(child_exit[0], sink, sizeof(sink)) > 0) {
      }
    }
    // Orphans re-parented to the shim are reaped here too, so that they do not pile up as
    // zombies during a long flow.
    pid_t reaped = 0;
    int reaped_status = 0;
    while ((reaped = waitpid(-1, &reaped_status, WNOHANG)) > 0) {
      if (reaped == child) {
        status = reaped_status;
        running = false;
      }
    }
    if (reaped < 0 && errno == ECHILD) {
      running = false;
    }
  }

  while (running) {
    const pid_t reaped = waitpid(child, &status, 0);
    if (reaped == child || (reaped < 0 && errno != EINTR)) {
      running = false;
    }
  }

  const int exit_code = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
  if (!writeStatus(options.status_file, exit_code)) {
    std::fprintf(stderr, "poolworker-run: cannot write the exit status to '%s': %s\n",
                 options.status_file.c_str(), std::strerror(errno));
  }

  // Nothing the flow started may outlive it in its group.
  const pid_t self = getpid();
  const pid_t group = getpgrp();
  for (int round = 0;
       group == self && round < 10 && descendantsAlive() && killGroupMembers(group, self);
       ++round) {
    sched_yield();
  }
  descendantsAlive();
  for (auto& forward : forwards) {
    drain(forward, buffer);
  }
  return exit_code >= 0 ? exit_code : 128 - exit_code;
}
