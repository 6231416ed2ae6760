#include "backends/process/process_backend.h"

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends/process/launch_spec.h"
#include "backends/process/proc_info.h"

namespace poolworker::backends::process {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using Descriptor = asio::posix::stream_descriptor;

constexpr size_t kReadChunk = 65536;
// Reads per wake-up before other runs get a turn; a chatty flow cannot starve the loop.
constexpr int kReadsPerTurn = 16;
constexpr char kStatusSuffix[] = ".status";
constexpr char kLostDetail[] =
    "the run's process ended while no worker was watching and its exit status was not recorded";
// Descriptors handed to the shim are moved above this, clear of the ones the shim expects.
constexpr int kFirstSpareFd = 10;
constexpr int kReportFd = 3;

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

Error infrastructure(std::string message) {
  return makeError(ErrorKind::InfrastructureFailed, std::move(message));
}

Error cancelled() { return makeError(ErrorKind::Cancelled, "the process backend was shut down"); }

std::string errnoText(int error) { return std::strerror(error); }

/// Owns a file descriptor until it is released.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset(other.release());
    }
    return *this;
  }

  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// A pipe whose read end stays in the worker (non-blocking) and whose write end goes to the
/// shim, numbered out of the way of the descriptors the shim's file actions create.
struct Pipe {
  Fd read;
  Fd write;
};

Result<Pipe> makePipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return infrastructure("cannot create a pipe for the run's process: " + errnoText(errno));
  }
  Pipe pipe{Fd(fds[0]), Fd(fds[1])};
  const int flags = ::fcntl(pipe.read.get(), F_GETFL);
  if (flags < 0 || ::fcntl(pipe.read.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return infrastructure("cannot set up a pipe for the run's process: " + errnoText(errno));
  }
  const int moved = ::fcntl(pipe.write.get(), F_DUPFD_CLOEXEC, kFirstSpareFd);
  if (moved < 0) {
    return infrastructure("cannot set up a pipe for the run's process: " + errnoText(errno));
  }
  pipe.write.reset(moved);
  return pipe;
}

/// Hands `fd` to the event loop. On failure (the reactor refused it) the descriptor is closed.
std::unique_ptr<Descriptor> adopt(asio::io_context& io, int fd) noexcept {
  try {
    return std::make_unique<Descriptor>(io, fd);
  } catch (...) {
    ::close(fd);
    return nullptr;
  }
}

/// What a handle's data says about the run's shim.
struct RunId {
  pid_t pid = 0;
  std::uint64_t start_time = 0;
  std::string boot_id;
  std::string hostname;
  std::string status_file;
  std::string temp_dir;
};

Json toJson(const RunId& id) {
  Json data = Json::object();
  data["pid"] = id.pid;
  data["start_time"] = id.start_time;
  data["boot_id"] = id.boot_id;
  data["hostname"] = id.hostname;
  data["status_file"] = id.status_file;
  data["temp_dir"] = id.temp_dir.empty() ? Json() : Json(id.temp_dir);
  return data;
}

Result<RunId> parseHandle(const RunHandle& handle) {
  const Json& data = handle.data;
  if (!data.is_object()) {
    return invalid("process run handle: data must be an object");
  }
  RunId id;
  const auto pid = data.find("pid");
  if (pid == data.end() || !pid->is_number_integer() || pid->get<long long>() <= 0 ||
      pid->get<long long>() > std::numeric_limits<pid_t>::max()) {
    return invalid("process run handle: 'pid' is missing or not a positive integer");
  }
  id.pid = static_cast<pid_t>(pid->get<long long>());
  const auto start_time = data.find("start_time");
  if (start_time == data.end() || !start_time->is_number_unsigned()) {
    return invalid("process run handle: 'start_time' is missing or not an unsigned integer");
  }
  id.start_time = start_time->get<std::uint64_t>();
  for (const auto& [key, target] : {std::pair<const char*, std::string*>{"boot_id", &id.boot_id},
                                    {"hostname", &id.hostname},
                                    {"status_file", &id.status_file},
                                    {"temp_dir", &id.temp_dir}}) {
    const auto it = data.find(key);
    if (it == data.end() || it->is_null()) {
      continue;
    }
    if (!it->is_string()) {
      return invalid(std::string("process run handle: '") + key + "' must be a string");
    }
    *target = it->get<std::string>();
  }
  if (id.hostname.empty()) {
    return invalid("process run handle: 'hostname' is missing");
  }
  return id;
}

std::optional<int> readStatusFile(const std::string& path) {
  if (path.empty()) {
    return std::nullopt;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  const Json status = Json::parse(text.str(), nullptr, false);
  if (!status.is_object()) {
    return std::nullopt;
  }
  const auto code = status.find("exit_code");
  if (code == status.end() || !code->is_number_integer()) {
    return std::nullopt;
  }
  return code->get<int>();
}

bool endsWith(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Runs on the cleaner thread. Names are checked so that a handle read back from disk can never
// make the backend delete anything it did not create.
void removeRunFiles(const std::string& temp_dir, const std::string& status_file) {
  std::error_code ignored;
  if (!temp_dir.empty() && isTempWorkingDirName(temp_dir)) {
    fs::remove_all(temp_dir, ignored);
  }
  if (endsWith(status_file, kStatusSuffix)) {
    fs::remove(status_file, ignored);
    fs::remove(status_file + ".tmp", ignored);
  }
}

std::string safeName(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-' || c == '_';
    out.push_back(plain ? c : '_');
    if (out.size() >= 64) {
      break;
    }
  }
  return out.empty() ? "run" : out;
}

/// Runs blocking file work off the event loop, one task at a time, on a thread started on first
/// use and joined on destruction.
class Cleaner {
 public:
  Cleaner() = default;
  Cleaner(const Cleaner&) = delete;
  Cleaner& operator=(const Cleaner&) = delete;
  ~Cleaner() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  void post(std::function<void()> task) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!thread_.joinable()) {
      try {
        thread_ = std::thread([this] { run(); });
      } catch (const std::system_error&) {
        // No thread to be had: do the work here rather than never.
        lock.unlock();
        task();
        return;
      }
    }
    tasks_.push_back(std::move(task));
    ready_.notify_one();
  }

 private:
  void run() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) {
          return;
        }
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

/// One run this backend follows: started here, or re-found from a handle.
struct Run {
  RunId id;
  std::unique_ptr<Descriptor> pidfd;  // null once the exit was seen (or for an ended run)
  std::unique_ptr<Descriptor> out;    // null unless output is streamed and not yet at its end
  std::unique_ptr<Descriptor> err;
  std::shared_ptr<LogSink> log;
  bool exited = false;
  bool zombie = false;  // ended but not yet reaped when it was re-found
  bool finishing = false;
  std::optional<int> shim_exit;  // the shim's own status, when this process reaped it
  std::vector<Callback<Outcome>> waiters;
  std::vector<std::function<void()>> exit_listeners;
};

/// A kill in progress: SIGTERM was sent, SIGKILL follows after the grace period.
struct KillOp {
  pid_t pid = 0;
  std::uint64_t start_time = 0;
  Callback<void> done;
  std::unique_ptr<Timer> timer;
  std::unique_ptr<Descriptor> pidfd;
  bool finished = false;
};

/// A start waiting for the shim's report that the command was executed.
struct PendingStart {
  std::unique_ptr<Descriptor> report;
  std::string received;
  LaunchSpec spec;
  RunHandle handle;
  std::shared_ptr<Run> run;
  std::shared_ptr<LogSink> log;
  Callback<RunHandle> done;
};

}  // namespace

std::string defaultShimPath() {
  std::error_code error;
  const fs::path exe = fs::read_symlink("/proc/self/exe", error);
  if (error) {
    return "poolworker-run";
  }
  const fs::path beside = exe.parent_path() / "poolworker-run";
  const fs::path installed =
      (exe.parent_path() / ".." / "libexec" / "poolworker" / "poolworker-run").lexically_normal();
  if (!fs::exists(beside, error) && fs::exists(installed, error)) {
    return installed.string();
  }
  return beside.string();
}

class ProcessBackend::Core : public std::enable_shared_from_this<ProcessBackend::Core> {
 public:
  Core(asio::io_context& io, Executor& executor, ProcessBackendSettings settings)
      : io_(io),
        executor_(executor),
        settings_(std::move(settings)),
        hostname_(hostName()),
        boot_id_(readBootId()),
        buffer_(kReadChunk),
        random_(std::random_device{}()) {}

  void start(const StartRequest& request, const std::shared_ptr<LogSink>& log,
             Callback<RunHandle> done) {
    if (shut_down_) {
      complete(std::move(done), Result<RunHandle>(cancelled()));
      return;
    }
    auto spec = buildLaunchSpec(request.configuration, settings_.python, currentEnvironment());
    if (!spec) {
      complete(std::move(done), Result<RunHandle>(std::move(spec).error()));
      return;
    }
    std::string temp_dir;
    if (spec->working_dir.empty()) {
      auto created = createTempWorkingDir();
      if (!created) {
        complete(std::move(done), Result<RunHandle>(std::move(created).error()));
        return;
      }
      temp_dir = *created;
      spec->working_dir = temp_dir;
    }
    auto launched = launch(request, std::move(spec).value(), temp_dir, log, done);
    if (!launched) {
      if (!temp_dir.empty()) {
        ::rmdir(temp_dir.c_str());
      }
      complete(std::move(done), Result<RunHandle>(std::move(launched).error()));
    }
  }

  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Outcome> done) {
    if (shut_down_) {
      complete(std::move(done), Result<Outcome>(cancelled()));
      return;
    }
    auto id = parseHandle(handle);
    if (!id) {
      complete(std::move(done), Result<Outcome>(std::move(id).error()));
      return;
    }
    if (id->hostname != hostname_) {
      complete(std::move(done), Result<Outcome>(otherHost(*id)));
      return;
    }
    auto run = findRun(*id);
    if (!run) {
      run = attach(*id);
    }
    if (log) {
      run->log = std::move(log);
    }
    run->waiters.push_back(std::move(done));
    maybeFinish(run);
  }

  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Recovery> done) {
    if (shut_down_) {
      complete(std::move(done), Result<Recovery>(cancelled()));
      return;
    }
    auto id = parseHandle(handle);
    if (!id) {
      complete(std::move(done), Result<Recovery>(std::move(id).error()));
      return;
    }
    if (id->hostname != hostname_) {
      complete(std::move(done), Result<Recovery>(otherHost(*id)));
      return;
    }
    auto run = findRun(*id);
    if (!run) {
      run = attach(*id);
    }
    if (log) {
      run->log = std::move(log);
    }
    if (!run->exited && !run->zombie) {
      Recovery recovery;
      recovery.running = true;
      complete(std::move(done), Result<Recovery>(recovery));
      return;
    }
    run->waiters.push_back([done = std::move(done)](Result<Outcome> outcome) {
      if (!outcome) {
        done(std::move(outcome).error());
        return;
      }
      Recovery recovery;
      recovery.outcome = std::move(outcome).value();
      done(recovery);
    });
    maybeFinish(run);
  }

  void kill(const RunHandle& handle, std::chrono::milliseconds grace, Callback<void> done) {
    if (shut_down_) {
      complete(std::move(done), Result<void>(cancelled()));
      return;
    }
    auto id = parseHandle(handle);
    if (!id) {
      complete(std::move(done), Result<void>(std::move(id).error()));
      return;
    }
    if (id->hostname != hostname_) {
      complete(std::move(done), Result<void>(otherHost(*id)));
      return;
    }
    if (!sameBoot(*id)) {
      complete(std::move(done),
               Result<void>(makeError(ErrorKind::NotFound,
                                      "process " + std::to_string(id->pid) +
                                          " of the run no longer exists: it was started before "
                                          "this machine last booted")));
      return;
    }
    auto run = findRun(*id);
    if (run && run->exited) {
      complete(std::move(done), success());
      return;
    }
    const auto stat = readProcStat(id->pid);
    if (!stat || stat->start_time != id->start_time || stat->ended()) {
      // Gone, or the pid now belongs to another process: nothing of the run is left to stop.
      complete(std::move(done), success());
      return;
    }
    if (::kill(-id->pid, SIGTERM) != 0) {
      const int error = errno;
      complete(std::move(done), error == ESRCH
                                    ? success()
                                    : Result<void>(infrastructure("cannot signal process group " +
                                                                  std::to_string(id->pid) + ": " +
                                                                  errnoText(error))));
      return;
    }
    auto op = std::make_shared<KillOp>();
    op->pid = id->pid;
    op->start_time = id->start_time;
    op->done = std::move(done);
    kills_.insert(op);
    std::weak_ptr<Core> weak = weak_from_this();
    std::weak_ptr<KillOp> weak_op = op;
    auto on_exit = [weak, weak_op] {
      auto core = weak.lock();
      auto kill_op = weak_op.lock();
      if (core && kill_op) {
        core->finishKill(kill_op, success());
      }
    };
    if (run && run->pidfd) {
      run->exit_listeners.push_back(on_exit);
    } else {
      const int fd = openPidfd(id->pid);
      const auto again = readProcStat(id->pid);
      if (fd < 0 || !again || again->start_time != id->start_time) {
        if (fd >= 0) {
          ::close(fd);
        }
        finishKill(op, success());
        return;
      }
      // Should the loop refuse the pidfd, the timer alone ends the kill.
      op->pidfd = adopt(io_, fd);
    }
    if (op->pidfd) {
      op->pidfd->async_wait(Descriptor::wait_read, [on_exit](const boost::system::error_code& ec) {
        if (ec != asio::error::operation_aborted) {
          on_exit();
        }
      });
    }
    op->timer = executor_.schedule(grace, [weak, weak_op] {
      auto core = weak.lock();
      auto kill_op = weak_op.lock();
      if (core && kill_op && !kill_op->finished) {
        core->forceKill(kill_op);
      }
    });
  }

  void check(Callback<void> done) {
    struct stat info {};
    const std::string& shim = settings_.shim_path;
    const std::string hint =
        " (build or install poolworker-run, or set the process backend's 'shim_path' option)";
    if (::stat(shim.c_str(), &info) != 0) {
      complete(std::move(done),
               Result<void>(infrastructure("run shim '" + shim + "' does not exist" + hint)));
      return;
    }
    if (!S_ISREG(info.st_mode) || ::access(shim.c_str(), X_OK) != 0) {
      complete(std::move(done),
               Result<void>(infrastructure("run shim '" + shim + "' is not executable" + hint)));
      return;
    }
    if (auto ready = ensureStateDirectory(); !ready) {
      complete(std::move(done), std::move(ready));
      return;
    }
    const int probe = openPidfd(::getpid());
    if (probe < 0) {
      complete(std::move(done),
               Result<void>(infrastructure("this kernel cannot watch processes (pidfd_open: " +
                                           errnoText(errno) + "); Linux 5.4 or later is needed")));
      return;
    }
    ::close(probe);
    complete(std::move(done), success());
  }

  Result<Json> preview(const StartRequest& request) const {
    auto spec = buildLaunchSpec(request.configuration, settings_.python, {});
    if (!spec) {
      return std::move(spec).error();
    }
    Json env = Json::object();
    for (const auto& entry : spec->env) {
      const size_t eq = entry.find('=');
      env[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    return Json{{"argv", spec->argv},
                {"env", std::move(env)},
                {"working_dir", spec->working_dir.empty() ? Json() : Json(spec->working_dir)},
                {"stream_output", spec->stream_output}};
  }

  void shutdown() {
    if (shut_down_) {
      return;
    }
    shut_down_ = true;
    boost::system::error_code ignored;
    for (auto& [pid, run] : runs_) {
      for (auto* descriptor : {&run->pidfd, &run->out, &run->err}) {
        if (*descriptor) {
          (*descriptor)->close(ignored);
          descriptor->reset();
        }
      }
      run->exit_listeners.clear();
      for (auto& waiter : std::exchange(run->waiters, {})) {
        complete(std::move(waiter), Result<Outcome>(cancelled()));
      }
    }
    runs_.clear();
    for (const auto& pending : pending_starts_) {
      pending->report->close(ignored);
      complete(std::move(pending->done),
               Result<RunHandle>(makeError(
                   ErrorKind::Cancelled,
                   "the process backend was shut down while the run was starting; its process "
                   "(pid " +
                       std::to_string(pending->run->id.pid) + ") may still be running")));
    }
    pending_starts_.clear();
    for (const auto& op : kills_) {
      op->finished = true;
      if (op->timer) {
        op->timer->cancel();
      }
      if (op->pidfd) {
        op->pidfd->close(ignored);
      }
      complete(std::move(op->done), Result<void>(cancelled()));
    }
    kills_.clear();
  }

 private:
  template <typename T>
  void complete(Callback<T> done, Result<T> result) {
    asio::post(io_, [done = std::move(done), result = std::move(result)]() mutable {
      done(std::move(result));
    });
  }

  Error otherHost(const RunId& id) const {
    return makeError(ErrorKind::NotFound, "run was started on host '" + id.hostname +
                                              "', but this worker runs on host '" + hostname_ +
                                              "'");
  }

  bool sameBoot(const RunId& id) const {
    return id.boot_id.empty() || boot_id_.empty() || id.boot_id == boot_id_;
  }

  Result<void> ensureStateDirectory() {
    std::error_code error;
    fs::create_directories(settings_.state_directory, error);
    if (error) {
      return infrastructure("cannot create the process backend's state directory '" +
                            settings_.state_directory + "': " + error.message());
    }
    return success();
  }

  std::shared_ptr<Run> findRun(const RunId& id) const {
    const auto it = runs_.find(id.pid);
    if (it != runs_.end() && it->second->id.start_time == id.start_time) {
      return it->second;
    }
    return nullptr;
  }

  // Follows the process of a handle this backend instance did not start (or no longer follows).
  // A process that is gone is returned as already exited; its outcome comes from the status file.
  std::shared_ptr<Run> attach(const RunId& id) {
    auto run = std::make_shared<Run>();
    run->id = id;
    const bool pid_free = runs_.find(id.pid) == runs_.end();
    const auto stat = sameBoot(id) ? readProcStat(id.pid) : std::nullopt;
    if (pid_free && stat && stat->start_time == id.start_time) {
      const int fd = openPidfd(id.pid);
      // Checked again once the pidfd pins the process: it may have been replaced in between.
      const auto again = fd >= 0 ? readProcStat(id.pid) : std::nullopt;
      if (again && again->start_time == id.start_time) {
        run->pidfd = adopt(io_, fd);
        if (run->pidfd) {
          run->zombie = again->ended();
          runs_[id.pid] = run;
          watchExit(run);
          return run;
        }
      } else if (fd >= 0) {
        ::close(fd);
      }
    }
    run->exited = true;
    return run;
  }

  Result<void> launch(const StartRequest& request, LaunchSpec spec, const std::string& temp_dir,
                      const std::shared_ptr<LogSink>& log, Callback<RunHandle>& done) {
    if (auto resolved = resolveProgram(spec); !resolved) {
      return resolved;
    }
    if (auto ready = ensureStateDirectory(); !ready) {
      return ready;
    }
    char suffix[17];
    std::snprintf(suffix, sizeof(suffix), "%016llx", static_cast<unsigned long long>(random_()));
    const std::string status_file =
        (fs::path(settings_.state_directory) /
         (safeName(request.run.flow_run_id) + "-" + suffix + kStatusSuffix))
            .string();

    auto report = makePipe();
    if (!report) {
      return std::move(report).error();
    }
    std::optional<Pipe> out;
    std::optional<Pipe> err;
    if (spec.stream_output) {
      auto out_pipe = makePipe();
      auto err_pipe = makePipe();
      if (!out_pipe) {
        return std::move(out_pipe).error();
      }
      if (!err_pipe) {
        return std::move(err_pipe).error();
      }
      out = std::move(out_pipe).value();
      err = std::move(err_pipe).value();
    }

    std::vector<std::string> args = {settings_.shim_path,
                                     "--status-file",
                                     status_file,
                                     "--report-fd",
                                     std::to_string(kReportFd),
                                     "--cwd",
                                     spec.working_dir,
                                     "--program",
                                     spec.program};
    if (!spec.stream_output) {
      args.emplace_back("--inherit-output");
    }
    args.emplace_back("--");
    args.insert(args.end(), spec.argv.begin(), spec.argv.end());
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& arg : args) {
      argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    std::vector<char*> envp;
    envp.reserve(spec.env.size() + 1);
    for (auto& entry : spec.env) {
      envp.push_back(entry.data());
    }
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attributes);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    if (spec.stream_output) {
      posix_spawn_file_actions_adddup2(&actions, out->write.get(), STDOUT_FILENO);
      posix_spawn_file_actions_adddup2(&actions, err->write.get(), STDERR_FILENO);
    } else {
      posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
      posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    }
    posix_spawn_file_actions_adddup2(&actions, report->write.get(), kReportFd);
    // Nothing else of the worker (sockets, journal files) leaks into the run.
    posix_spawn_file_actions_addclosefrom_np(&actions, kReportFd + 1);
    sigset_t none;
    sigset_t all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setsigdefault(&attributes, &all);
    posix_spawnattr_setflags(&attributes,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, settings_.shim_path.c_str(), &actions, &attributes,
                                    argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    report->write.reset();
    if (out) {
      out->write.reset();
      err->write.reset();
    }
    if (spawned != 0) {
      return infrastructure("cannot start the run shim '" + settings_.shim_path +
                            "': " + errnoText(spawned));
    }

    auto run = std::make_shared<Run>();
    run->id = RunId{pid, 0, boot_id_, hostname_, status_file, temp_dir};
    run->log = log;
    const auto stat = readProcStat(pid);
    const int pidfd = openPidfd(pid);
    const int watch_error = errno;
    if (pidfd >= 0) {
      run->pidfd = adopt(io_, pidfd);
    }
    if (out) {
      run->out = adopt(io_, out->read.release());
      run->err = adopt(io_, err->read.release());
    }
    auto report_reader = adopt(io_, report->read.release());
    if (!stat || !run->pidfd || (out && (!run->out || !run->err)) || !report_reader) {
      // Without a way to watch it the run cannot be followed: stop it and report why.
      ::kill(-pid, SIGKILL);
      int ignored = 0;
      while (::waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {
      }
      removeRunFiles({}, status_file);
      return infrastructure(pidfd < 0 ? "cannot watch the run's process (pidfd_open): " +
                                            errnoText(watch_error)
                                      : std::string("cannot watch the run's process"));
    }
    run->id.start_time = stat->start_time;
    runs_[pid] = run;
    watchExit(run);
    watchOutput(run, false);
    watchOutput(run, true);

    auto pending = std::make_shared<PendingStart>();
    pending->report = std::move(report_reader);
    pending->spec = std::move(spec);
    pending->handle.backend = "process";
    pending->handle.infrastructure_pid = hostname_ + ":" + std::to_string(pid);
    pending->handle.data = toJson(run->id);
    pending->run = run;
    pending->log = log;
    pending->done = std::move(done);
    pending_starts_.insert(pending);
    readReport(pending);
    return success();
  }

  void readReport(const std::shared_ptr<PendingStart>& pending) {
    std::weak_ptr<Core> weak = weak_from_this();
    pending->report->async_wait(Descriptor::wait_read,
                                [weak, pending](const boost::system::error_code& ec) {
                                  auto core = weak.lock();
                                  if (core && ec != asio::error::operation_aborted) {
                                    core->onReport(pending);
                                  }
                                });
  }

  void onReport(const std::shared_ptr<PendingStart>& pending) {
    if (pending_starts_.count(pending) == 0) {
      return;
    }
    char chunk[256];
    while (pending->received.find('\n') == std::string::npos && pending->received.size() < 4096) {
      const ssize_t n = ::read(pending->report->native_handle(), chunk, sizeof(chunk));
      if (n > 0) {
        pending->received.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0 && errno == EAGAIN) {
        readReport(pending);
        return;
      }
      break;
    }
    pending_starts_.erase(pending);
    boost::system::error_code ignored;
    pending->report->close(ignored);

    const std::string line = pending->received.substr(0, pending->received.find('\n'));
    if (line.rfind("ok ", 0) == 0) {
      if (pending->log) {
        pending->log->log(LogLevel::Debug,
                          "started process " + std::to_string(pending->run->id.pid) +
                              " in working directory '" + pending->spec.working_dir + "'");
      }
      complete(std::move(pending->done), Result<RunHandle>(std::move(pending->handle)));
      return;
    }
    // The command did not start. The shim exits by itself; once it has, everything the start
    // created is removed and the start fails.
    std::optional<Error> reported = reportedError(line, pending->spec);
    pending->run->waiters.push_back([done = std::move(pending->done), reported,
                                     shim = settings_.shim_path](Result<Outcome> outcome) mutable {
      if (reported) {
        done(*reported);
        return;
      }
      std::string message = "the run shim '" + shim + "' ended before starting the command";
      if (outcome.ok() && outcome->exit_code) {
        message += " (exit code " + std::to_string(*outcome->exit_code) + ")";
      }
      done(infrastructure(message));
    });
    maybeFinish(pending->run);
  }

  static std::optional<Error> reportedError(const std::string& line, const LaunchSpec& spec) {
    std::istringstream words(line);
    std::string word;
    std::string stage;
    int error = 0;
    if (!(words >> word >> stage >> error) || word != "error") {
      return std::nullopt;
    }
    if (stage == "exec") {
      return invalid(describeExecError(spec, error));
    }
    if (stage == "chdir") {
      return invalid("job configuration 'working_dir': cannot enter directory '" +
                     spec.working_dir + "': " + errnoText(error));
    }
    return infrastructure("the run shim could not prepare the command: " + errnoText(error));
  }

  void watchExit(const std::shared_ptr<Run>& run) {
    std::weak_ptr<Core> weak = weak_from_this();
    run->pidfd->async_wait(Descriptor::wait_read, [weak, run](const boost::system::error_code& ec) {
      auto core = weak.lock();
      if (core && ec != asio::error::operation_aborted) {
        core->onExit(run);
      }
    });
  }

  void onExit(const std::shared_ptr<Run>& run) {
    if (run->exited || !run->pidfd) {
      return;
    }
    siginfo_t info{};
    // Reaps the shim when it is this process's child; any other process's parent reaps it.
    if (::waitid(P_PIDFD, static_cast<id_t>(run->pidfd->native_handle()), &info,
                 WEXITED | WNOHANG) == 0 &&
        info.si_pid == run->id.pid) {
      run->shim_exit = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    }
    boost::system::error_code ignored;
    run->pidfd->close(ignored);
    run->pidfd.reset();
    run->exited = true;
    for (auto& listener : std::exchange(run->exit_listeners, {})) {
      listener();
    }
    maybeFinish(run);
  }

  void watchOutput(const std::shared_ptr<Run>& run, bool is_stderr) {
    auto& descriptor = is_stderr ? run->err : run->out;
    if (!descriptor) {
      return;
    }
    std::weak_ptr<Core> weak = weak_from_this();
    descriptor->async_wait(Descriptor::wait_read,
                           [weak, run, is_stderr](const boost::system::error_code& ec) {
                             auto core = weak.lock();
                             if (core && ec != asio::error::operation_aborted) {
                               core->onOutput(run, is_stderr);
                             }
                           });
  }

  void onOutput(const std::shared_ptr<Run>& run, bool is_stderr) {
    auto& descriptor = is_stderr ? run->err : run->out;
    if (!descriptor) {
      return;
    }
    for (int turn = 0; turn < kReadsPerTurn; ++turn) {
      const ssize_t n = ::read(descriptor->native_handle(), buffer_.data(), buffer_.size());
      if (n > 0) {
        if (run->log) {
          run->log->output(std::string_view(buffer_.data(), static_cast<size_t>(n)), is_stderr);
        }
        continue;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0 && errno == EAGAIN) {
        watchOutput(run, is_stderr);
        return;
      }
      boost::system::error_code ignored;
      descriptor->close(ignored);
      descriptor.reset();
      maybeFinish(run);
      return;
    }
    // Still more to read: let other work run first. Edge-triggered readiness would not fire
    // again for data already waiting, so continue by posting rather than waiting.
    std::weak_ptr<Core> weak = weak_from_this();
    asio::post(io_, [weak, run, is_stderr] {
      if (auto core = weak.lock()) {
        core->onOutput(run, is_stderr);
      }
    });
  }

  Outcome outcomeOf(const Run& run) const {
    Outcome outcome;
    if (auto code = readStatusFile(run.id.status_file)) {
      outcome.exit_code = *code;
    } else if (run.shim_exit) {
      outcome.exit_code = *run.shim_exit;
    } else {
      outcome.detail = kLostDetail;
    }
    return outcome;
  }

  void maybeFinish(const std::shared_ptr<Run>& run) {
    if (run->finishing || !run->exited || run->out || run->err || run->waiters.empty()) {
      return;
    }
    run->finishing = true;
    const Outcome outcome = outcomeOf(*run);
    std::weak_ptr<Core> weak = weak_from_this();
    std::function<void()> then = [weak, run, outcome] {
      if (auto core = weak.lock()) {
        core->finish(run, outcome);
      }
    };
    cleaner_.post([temp_dir = run->id.temp_dir, status_file = run->id.status_file, &io = io_,
                   then = std::move(then)]() mutable {
      removeRunFiles(temp_dir, status_file);
      asio::post(io, std::move(then));
    });
  }

  void finish(const std::shared_ptr<Run>& run, const Outcome& outcome) {
    const auto it = runs_.find(run->id.pid);
    if (it != runs_.end() && it->second == run) {
      runs_.erase(it);
    }
    for (auto& waiter : std::exchange(run->waiters, {})) {
      waiter(outcome);
    }
  }

  void forceKill(const std::shared_ptr<KillOp>& op) {
    const auto stat = readProcStat(op->pid);
    if (stat && stat->start_time == op->start_time && !stat->ended() &&
        ::kill(-op->pid, SIGKILL) != 0) {
      const int error = errno;
      if (error != ESRCH) {
        finishKill(op, infrastructure("cannot kill process group " + std::to_string(op->pid) +
                                      ": " + errnoText(error)));
        return;
      }
    }
    finishKill(op, success());
  }

  void finishKill(const std::shared_ptr<KillOp>& op, Result<void> result) {
    if (op->finished) {
      return;
    }
    op->finished = true;
    if (op->timer) {
      op->timer->cancel();
    }
    if (op->pidfd) {
      boost::system::error_code ignored;
      op->pidfd->close(ignored);
    }
    kills_.erase(op);
    // The timer may be the one running this code: release it (with the op) only afterwards.
    asio::post(io_, [op] {});
    complete(std::move(op->done), std::move(result));
  }

  asio::io_context& io_;
  Executor& executor_;
  ProcessBackendSettings settings_;
  std::string hostname_;
  std::string boot_id_;
  std::vector<char> buffer_;
  std::mt19937_64 random_;
  bool shut_down_ = false;
  std::unordered_map<pid_t, std::shared_ptr<Run>> runs_;
  std::set<std::shared_ptr<PendingStart>> pending_starts_;
  std::set<std::shared_ptr<KillOp>> kills_;
  // Last member: destroyed (and joined) first, while everything its tasks use still exists.
  Cleaner cleaner_;
};

ProcessBackend::ProcessBackend(boost::asio::io_context& io, Executor& executor,
                               ProcessBackendSettings settings)
    : core_(std::make_shared<Core>(io, executor, std::move(settings))) {}

ProcessBackend::~ProcessBackend() { core_->shutdown(); }

void ProcessBackend::start(const StartRequest& request, std::shared_ptr<LogSink> log,
                           Callback<RunHandle> done) {
  core_->start(request, log, std::move(done));
}

void ProcessBackend::wait(const RunHandle& handle, std::shared_ptr<LogSink> log,
                          Callback<Outcome> done) {
  core_->wait(handle, std::move(log), std::move(done));
}

void ProcessBackend::kill(const RunHandle& handle, std::chrono::milliseconds grace,
                          Callback<void> done) {
  core_->kill(handle, grace, std::move(done));
}

void ProcessBackend::recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
                             Callback<Recovery> done) {
  core_->recover(handle, std::move(log), std::move(done));
}

void ProcessBackend::check(Callback<void> done) { core_->check(std::move(done)); }

Result<Json> ProcessBackend::preview(const StartRequest& request) {
  return core_->preview(request);
}

void ProcessBackend::shutdown() { core_->shutdown(); }

}  // namespace poolworker::backends::process
