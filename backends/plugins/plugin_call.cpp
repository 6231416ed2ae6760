#include "backends/plugins/plugin_call.h"

#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;  // NOLINT(readability-identifier-naming)

namespace poolworker::backends::plugins {
namespace {

namespace asio = boost::asio;
using Descriptor = asio::posix::stream_descriptor;

// Once the program has exited, a descendant that inherited its stdout may hold the pipe open
// for ever; the answer is taken as complete after this long.
constexpr auto kDrainAfterExit = std::chrono::milliseconds(500);

struct Pipe {
  int read = -1;
  int write = -1;
};

bool makePipe(Pipe& pipe) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return false;
  }
  pipe.read = fds[0];
  pipe.write = fds[1];
  return true;
}

void closeFd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

class Call : public std::enable_shared_from_this<Call> {
 public:
  Call(asio::io_context& io, std::function<void(std::string_view)> on_stderr,
       std::function<void(CallResult)> done)
      : io_(io),
        out_(io),
        err_(io),
        in_(io),
        exit_(io),
        deadline_(io),
        drain_(io),
        on_stderr_(std::move(on_stderr)),
        done_(std::move(done)) {}

  void start(const std::string& program, const std::string& command, std::string input,
             std::chrono::milliseconds deadline) {
    input_ = std::move(input);
    Pipe in;
    Pipe out;
    Pipe err;
    if (!makePipe(in) || !makePipe(out) || !makePipe(err)) {
      const std::string why = std::strerror(errno);
      for (int* fd : {&in.read, &in.write, &out.read, &out.write, &err.read, &err.write}) {
        closeFd(*fd);
      }
      fail("cannot create pipes: " + why);
      return;
    }
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attributes);
    posix_spawn_file_actions_adddup2(&actions, in.read, STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out.write, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, err.write, STDERR_FILENO);
    sigset_t none;
    sigemptyset(&none);
    sigset_t all;
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setsigdefault(&attributes, &all);
    posix_spawnattr_setflags(
        &attributes,
        static_cast<short>(POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF));
    std::vector<std::string> args = {program, command};
    std::vector<char*> argv;
    for (auto& arg : args) {
      argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int spawned =
        ::posix_spawn(&pid, program.c_str(), &actions, &attributes, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    closeFd(in.read);
    closeFd(out.write);
    closeFd(err.write);
    if (spawned != 0) {
      closeFd(in.write);
      closeFd(out.read);
      closeFd(err.read);
      fail("cannot run '" + program + "': " + std::strerror(spawned));
      return;
    }
    pid_ = pid;
    in_.assign(in.write);
    out_.assign(out.read);
    err_.assign(err.read);
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd >= 0) {
      exit_.assign(pidfd);
    }
    auto self = shared_from_this();
    deadline_.expires_after(deadline);
    deadline_.async_wait([self](const boost::system::error_code& ec) {
      if (!ec && !self->exited_) {
        self->result_.timed_out = true;
        ::kill(-self->pid_, SIGKILL);
      }
    });
    asio::async_write(in_, asio::buffer(input_),
                      [self](const boost::system::error_code&, std::size_t) {
                        // A plugin that exits without reading its request is not an error here;
                        // its exit status tells.
                        boost::system::error_code ignored;
                        self->in_.close(ignored);
                      });
    readOut();
    readErr();
    watchExit();
  }

 private:
  void fail(std::string message) {
    result_.spawn_error = std::move(message);
    auto self = shared_from_this();
    asio::post(io_, [self] { self->finish(); });
  }

  void readOut() {
    auto self = shared_from_this();
    out_.async_read_some(asio::buffer(out_buffer_),
                         [self](const boost::system::error_code& ec, std::size_t n) {
                           self->result_.out.append(self->out_buffer_.data(), n);
                           if (ec) {
                             self->out_done_ = true;
                             self->maybeFinish();
                             return;
                           }
                           self->readOut();
                         });
  }

  void readErr() {
    auto self = shared_from_this();
    err_.async_read_some(asio::buffer(err_buffer_),
                         [self](const boost::system::error_code& ec, std::size_t n) {
                           self->err_pending_.append(self->err_buffer_.data(), n);
                           self->flushStderr(ec.failed());
                           if (ec) {
                             self->err_done_ = true;
                             self->maybeFinish();
                             return;
                           }
                           self->readErr();
                         });
  }

  void flushStderr(bool all) {
    size_t newline;
    while ((newline = err_pending_.find('\n')) != std::string::npos) {
      line(err_pending_.substr(0, newline));
      err_pending_.erase(0, newline + 1);
    }
    if (all && !err_pending_.empty()) {
      line(err_pending_);
      err_pending_.clear();
    }
  }

  void line(std::string text) {
    if (!text.empty() && text.back() == '\r') {
      text.pop_back();
    }
    if (text.find_first_not_of(" \t") != std::string::npos) {
      result_.last_stderr = text;
    }
    if (on_stderr_) {
      on_stderr_(text);
    }
  }

  void watchExit() {
    auto self = shared_from_this();
    if (!exit_.is_open()) {
      // No pidfd (an old kernel): poll for the exit instead.
      drain_.expires_after(std::chrono::milliseconds(50));
      drain_.async_wait([self](const boost::system::error_code& ec) {
        if (!ec) {
          self->reap() ? self->onExit() : self->watchExit();
        }
      });
      return;
    }
    exit_.async_wait(Descriptor::wait_read, [self](const boost::system::error_code& ec) {
      if (ec == asio::error::operation_aborted) {
        return;
      }
      self->reap();
      self->onExit();
    });
  }

  bool reap() {
    int status = 0;
    pid_t got = ::waitpid(pid_, &status, WNOHANG);
    if (got != pid_) {
      return false;
    }
    if (WIFEXITED(status)) {
      result_.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      result_.signal = WTERMSIG(status);
    }
    return true;
  }

  void onExit() {
    exited_ = true;
    deadline_.cancel();
    boost::system::error_code ignored;
    exit_.close(ignored);
    auto self = shared_from_this();
    drain_.expires_after(kDrainAfterExit);
    drain_.async_wait([self](const boost::system::error_code& ec) {
      if (!ec) {
        self->out_done_ = true;
        self->err_done_ = true;
        self->maybeFinish();
      }
    });
    maybeFinish();
  }

  void maybeFinish() {
    if (exited_ && out_done_ && err_done_) {
      finish();
    }
  }

  void finish() {
    if (finished_) {
      return;
    }
    finished_ = true;
    boost::system::error_code ignored;
    deadline_.cancel();
    drain_.cancel();
    out_.close(ignored);
    err_.close(ignored);
    in_.close(ignored);
    exit_.close(ignored);
    flushStderr(true);
    auto done = std::move(done_);
    done(std::move(result_));
  }

  asio::io_context& io_;
  Descriptor out_;
  Descriptor err_;
  Descriptor in_;
  Descriptor exit_;
  asio::steady_timer deadline_;
  asio::steady_timer drain_;
  std::function<void(std::string_view)> on_stderr_;
  std::function<void(CallResult)> done_;
  std::string input_;
  std::array<char, 16384> out_buffer_{};
  std::array<char, 4096> err_buffer_{};
  std::string err_pending_;
  CallResult result_;
  pid_t pid_ = -1;
  bool exited_ = false;
  bool out_done_ = false;
  bool err_done_ = false;
  bool finished_ = false;
};

}  // namespace

void runPluginCall(asio::io_context& io, const std::string& program, const std::string& command,
                   std::string input, std::chrono::milliseconds deadline,
                   std::function<void(std::string_view line)> on_stderr,
                   std::function<void(CallResult)> done) {
  // A plugin that exits before reading its whole request must not kill the worker.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { ::signal(SIGPIPE, SIG_IGN); });
  auto call = std::make_shared<Call>(io, std::move(on_stderr), std::move(done));
  call->start(program, command, std::move(input), deadline);
}

CallResult runPluginCallSync(const std::string& program, const std::string& command,
                             std::string input, std::chrono::milliseconds deadline,
                             std::function<void(std::string_view line)> on_stderr) {
  asio::io_context io;
  CallResult out;
  runPluginCall(io, program, command, std::move(input), deadline, std::move(on_stderr),
                [&out](CallResult result) { out = std::move(result); });
  io.run();
  return out;
}

}  // namespace poolworker::backends::plugins
