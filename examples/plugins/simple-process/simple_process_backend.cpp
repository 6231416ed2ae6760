#include "simple_process_backend.h"

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;  // NOLINT(readability-identifier-naming)

namespace simple_process {
namespace {

using poolworker::Error;
using poolworker::ErrorKind;
using poolworker::Json;
using poolworker::makeError;

// The flow's command runs in an inner shell; the outer one records its exit status in a file
// (written then renamed, so a reader never sees half of it). The outer shell outlives a SIGTERM
// or SIGINT to the group: it passes the signal on and waits until the flow has finished
// reacting to it (reporting its own state to Prefect), so the run ends only after the flow.
constexpr char kWrapper[] =
    "sh -c \"$1\" & child=$!\n"
    "trap 'kill -TERM \"$child\" 2>/dev/null' TERM\n"
    "trap 'kill -INT \"$child\" 2>/dev/null' INT\n"
    "while :; do wait \"$child\"; code=$?; kill -0 \"$child\" 2>/dev/null || break; done\n"
    "printf '%s\\n' \"$code\" > \"$2.tmp\" && mv -f \"$2.tmp\" \"$2\"\n"
    "exit $code\n";

struct ProcStat {
  char state = '?';
  std::string start_time;
};

// Fields 3 (state) and 22 (start time) of /proc/<pid>/stat; nothing when there is no process.
std::optional<ProcStat> procStat(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!in || !std::getline(in, text)) {
    return std::nullopt;
  }
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) {
    return std::nullopt;
  }
  std::istringstream fields(text.substr(paren + 2));
  std::vector<std::string> values;
  std::string value;
  while (fields >> value) {
    values.push_back(value);
  }
  if (values.size() < 20) {
    return std::nullopt;
  }
  return ProcStat{values[0].empty() ? '?' : values[0][0], values[19]};
}

// True while the process that started at `start_time` runs (a zombie has ended).
bool running(int pid, const std::string& start_time) {
  auto stat = procStat(pid);
  return stat && stat->start_time == start_time && stat->state != 'Z' && stat->state != 'X';
}

std::optional<int> readStatus(const std::string& path) {
  std::ifstream in(path);
  int code = 0;
  if (in >> code) {
    return code;
  }
  return std::nullopt;
}

std::string hostname() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

struct Plan {
  std::vector<std::string> argv;
  Json env = Json::object();
  std::optional<std::string> working_dir;
  bool stream_output = true;
};

poolworker::Result<Plan> plan(const poolworker::StartRequest& request, const Settings& settings,
                              const std::string& status_file) {
  const Json& config = request.configuration;
  Plan out;
  // exec: the engine replaces the inner shell, so that a signal reaches it alone and the
  // wrapper waits for the engine itself.
  std::string command = "exec " + settings.python + " -m prefect.engine";
  if (auto it = config.find("command"); it != config.end() && !it->is_null()) {
    if (!it->is_string()) {
      return makeError(ErrorKind::InvalidConfiguration, "'command' must be a string or null");
    }
    if (!it->get<std::string>().empty()) {
      command = it->get<std::string>();
    }
  }
  if (auto it = config.find("env"); it != config.end() && it->is_object()) {
    for (const auto& [key, value] : it->items()) {
      if (value.is_string()) {
        out.env[key] = value;
      }
    }
  }
  if (auto it = config.find("working_dir");
      it != config.end() && it->is_string() && !it->get<std::string>().empty()) {
    struct stat info {};
    if (::stat(it->get<std::string>().c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
      return makeError(ErrorKind::InvalidConfiguration,
                       "working_dir '" + it->get<std::string>() + "' is not a directory");
    }
    out.working_dir = it->get<std::string>();
  }
  if (auto it = config.find("stream_output"); it != config.end() && it->is_boolean()) {
    out.stream_output = it->get<bool>();
  }
  out.argv = {"/bin/sh", "-c", kWrapper, "simple-process", command, status_file};
  return out;
}

}  // namespace

struct SimpleProcessBackend::Watch {
  int pid = 0;
  std::string start_time;
  std::string status_file;
  std::string output_file;
  bool stream_output = true;
  std::streamoff offset = 0;
  std::shared_ptr<poolworker::LogSink> log;
  poolworker::Callback<poolworker::Outcome> done;
};

struct SimpleProcessBackend::Stop {
  int pid = 0;
  std::string start_time;
  std::chrono::steady_clock::time_point deadline;
  std::vector<poolworker::Callback<void>> done;
};

SimpleProcessBackend::SimpleProcessBackend(poolworker::Executor& executor, Settings settings)
    : executor_(executor), settings_(std::move(settings)) {}

SimpleProcessBackend::~SimpleProcessBackend() { timer_.reset(); }

void SimpleProcessBackend::start(const poolworker::StartRequest& request,
                                 std::shared_ptr<poolworker::LogSink> log,
                                 poolworker::Callback<poolworker::RunHandle> done) {
  const std::string runs = settings_.state_directory + "/runs";
  ::mkdir(settings_.state_directory.c_str(), 0700);
  ::mkdir(runs.c_str(), 0700);
  const std::string id =
      request.run.flow_run_id.empty() ? std::to_string(::getpid()) : request.run.flow_run_id;
  const std::string status_file = runs + "/" + id + ".status";
  const std::string output_file = runs + "/" + id + ".out";
  ::unlink(status_file.c_str());
  auto planned = plan(request, settings_, status_file);
  if (!planned) {
    done(planned.error());
    return;
  }
  std::string working_dir;
  if (planned->working_dir) {
    working_dir = *planned->working_dir;
  } else {
    char temp[] = "/tmp/simple-process-XXXXXX";
    if (::mkdtemp(temp) == nullptr) {
      done(makeError(ErrorKind::InfrastructureFailed,
                     std::string("cannot create a working directory: ") + std::strerror(errno)));
      return;
    }
    working_dir = temp;
  }
  // The worker's environment, then the job's.
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text = *entry;
    const size_t eq = text.find('=');
    if (eq != std::string::npos) {
      env[text.substr(0, eq)] = text.substr(eq + 1);
    }
  }
  for (const auto& [key, value] : planned->env.items()) {
    env[key] = value.get<std::string>();
  }
  std::vector<std::string> env_text;
  for (const auto& [key, value] : env) {
    env_text.push_back(key + "=" + value);
  }
  std::vector<char*> envp;
  for (auto& text : env_text) {
    envp.push_back(text.data());
  }
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (auto& arg : planned->argv) {
    argv.push_back(arg.data());
  }
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attributes;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attributes);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output_file.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawn_file_actions_addchdir_np(&actions, working_dir.c_str());
  sigset_t none;
  sigemptyset(&none);
  sigset_t all;
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &all);
  // A session of its own: the run outlives the worker, and its process group is killed whole.
  posix_spawnattr_setflags(
      &attributes,
      static_cast<short>(POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF));
  pid_t pid = -1;
  const int error = ::posix_spawn(&pid, argv[0], &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (error != 0) {
    done(makeError(ErrorKind::InfrastructureFailed,
                   std::string("cannot start /bin/sh: ") + std::strerror(error)));
    return;
  }
  children_[pid] = true;
  auto stat = procStat(pid);
  poolworker::RunHandle handle;
  handle.infrastructure_pid = hostname() + ":" + std::to_string(pid);
  handle.data = {{"pid", pid},
                 {"start_time", stat ? stat->start_time : ""},
                 {"status_file", status_file},
                 {"output_file", output_file},
                 {"stream_output", planned->stream_output}};
  log->log(poolworker::LogLevel::Info,
           "simple-process: started process " + std::to_string(pid) + " in " + working_dir);
  done(std::move(handle));
}

void SimpleProcessBackend::wait(const poolworker::RunHandle& handle,
                                std::shared_ptr<poolworker::LogSink> log,
                                poolworker::Callback<poolworker::Outcome> done) {
  const Json& data = handle.data;
  if (!data.is_object() || !data.contains("pid") || !data["pid"].is_number_integer()) {
    done(makeError(ErrorKind::NotFound, "the run handle has no pid"));
    return;
  }
  auto watch = std::make_shared<Watch>();
  watch->pid = data["pid"].get<int>();
  watch->start_time = data.value("start_time", "");
  watch->status_file = data.value("status_file", "");
  watch->output_file = data.value("output_file", "");
  watch->stream_output = data.value("stream_output", true);
  watch->log = std::move(log);
  watch->done = std::move(done);
  watches_[watch->pid] = watch;
  arm();
}

void SimpleProcessBackend::kill(const poolworker::RunHandle& handle,
                                std::chrono::milliseconds grace, poolworker::Callback<void> done) {
  const int pid = handle.data.value("pid", 0);
  const std::string start_time = handle.data.value("start_time", "");
  if (pid <= 0 || !running(pid, start_time)) {
    done(poolworker::success());
    return;
  }
  auto& stop = stops_[pid];
  if (!stop) {
    stop = std::make_shared<Stop>();
    stop->pid = pid;
    stop->start_time = start_time;
    stop->deadline = std::chrono::steady_clock::now() + grace;
    ::kill(-pid, SIGTERM);
  }
  stop->done.push_back(std::move(done));
  arm();
}

void SimpleProcessBackend::recover(const poolworker::RunHandle& handle,
                                   std::shared_ptr<poolworker::LogSink> log,
                                   poolworker::Callback<poolworker::Recovery> done) {
  const int pid = handle.data.value("pid", 0);
  poolworker::Recovery recovery;
  if (pid > 0 && running(pid, handle.data.value("start_time", ""))) {
    log->log(poolworker::LogLevel::Info,
             "simple-process: process " + std::to_string(pid) + " still runs; following it");
    recovery.running = true;
    done(recovery);
    return;
  }
  auto code = readStatus(handle.data.value("status_file", ""));
  if (!code) {
    done(makeError(ErrorKind::NotFound,
                   "process " + std::to_string(pid) + " is gone and left no exit status"));
    return;
  }
  recovery.outcome.exit_code = code;
  done(recovery);
}

poolworker::Result<Json> SimpleProcessBackend::preview(const poolworker::StartRequest& request) {
  auto planned = plan(request, settings_, settings_.state_directory + "/runs/<id>.status");
  if (!planned) {
    return planned.error();
  }
  return Json{{"argv", planned->argv},
              {"env", planned->env},
              {"working_dir", planned->working_dir ? Json(*planned->working_dir) : Json()},
              {"stream_output", planned->stream_output}};
}

void SimpleProcessBackend::shutdown() {
  stopped_ = true;
  timer_.reset();
  auto watches = std::exchange(watches_, {});
  auto stops = std::exchange(stops_, {});
  for (auto& [pid, watch] : watches) {
    watch->done(makeError(ErrorKind::Cancelled, "the backend is shutting down"));
  }
  for (auto& [pid, stop] : stops) {
    for (auto& done : stop->done) {
      done(makeError(ErrorKind::Cancelled, "the backend is shutting down"));
    }
  }
}

void SimpleProcessBackend::arm() {
  if (stopped_ || timer_ || (watches_.empty() && stops_.empty())) {
    return;
  }
  timer_ = executor_.schedule(settings_.poll_interval, [this] {
    timer_.reset();
    tick();
    arm();
  });
}

void SimpleProcessBackend::tick() {
  for (auto it = watches_.begin(); it != watches_.end();) {
    Watch& watch = *it->second;
    if (watch.stream_output && !watch.output_file.empty()) {
      std::ifstream in(watch.output_file, std::ios::binary);
      if (in.seekg(watch.offset)) {
        std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (!chunk.empty()) {
          watch.offset += static_cast<std::streamoff>(chunk.size());
          watch.log->output(chunk, false);
        }
      }
    }
    std::optional<int> code;
    bool ended = false;
    if (children_.contains(watch.pid)) {
      int status = 0;
      if (::waitpid(watch.pid, &status, WNOHANG) == watch.pid) {
        ended = true;
        children_.erase(watch.pid);
        code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
    } else {
      ended = !running(watch.pid, watch.start_time);
      if (ended) {
        code = readStatus(watch.status_file);
      }
    }
    if (!ended) {
      ++it;
      continue;
    }
    poolworker::Outcome outcome;
    outcome.exit_code = code;
    if (!code) {
      outcome.detail = "the process ended without recording its exit status";
    }
    auto done = std::move(watch.done);
    it = watches_.erase(it);
    done(outcome);
  }
  const auto now = std::chrono::steady_clock::now();
  for (auto it = stops_.begin(); it != stops_.end();) {
    Stop& stop = *it->second;
    const bool gone = !running(stop.pid, stop.start_time);
    if (!gone && now < stop.deadline) {
      ++it;
      continue;
    }
    if (!gone) {
      ::kill(-stop.pid, SIGKILL);
    }
    auto callbacks = std::move(stop.done);
    it = stops_.erase(it);
    for (auto& done : callbacks) {
      done(poolworker::success());
    }
  }
}

const char* defaultTemplate() {
  return R"({
  "job_configuration": {
    "command": "{{ command }}",
    "env": "{{ env }}",
    "labels": "{{ labels }}",
    "name": "{{ name }}",
    "stream_output": "{{ stream_output }}",
    "working_dir": "{{ working_dir }}"
  },
  "variables": {
    "type": "object",
    "properties": {
      "name": {"title": "Name", "default": null, "anyOf": [{"type": "string"}, {"type": "null"}],
               "description": "A name for the run's process (informational)."},
      "env": {"title": "Environment Variables", "type": "object",
              "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "null"}]},
              "description": "Extra environment variables of the flow run's process."},
      "labels": {"title": "Labels", "type": "object",
                 "additionalProperties": {"type": "string"},
                 "description": "Labels of the run (informational for local processes)."},
      "command": {"title": "Command", "default": null,
                  "anyOf": [{"type": "string"}, {"type": "null"}],
                  "description": "Shell command of the flow run; empty: python3 -m prefect.engine."},
      "stream_output": {"title": "Stream Output", "default": true, "type": "boolean",
                        "description": "Copy the process's output to the worker's output."},
      "working_dir": {"title": "Working Directory", "default": null,
                      "anyOf": [{"type": "string", "format": "path"}, {"type": "null"}],
                      "description": "Directory the process starts in; empty: a new temporary one."}
    }
  }
})";
}

}  // namespace simple_process
