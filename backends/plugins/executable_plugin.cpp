#include "backends/plugins/executable_plugin.h"

#include <cmath>
#include <memory>
#include <set>

#include <boost/asio/io_context.hpp>
#include <string.h>

#include <poolworker/plugin_json.h>

#include "backends/plugins/plugin_call.h"
#include "backends/plugins/plugin_names.h"

namespace poolworker::backends::plugins {
namespace {

namespace asio = boost::asio;
using std::chrono::milliseconds;

// Polls of `wait` that fail because of the plugin itself (a crash, a hang, a bad answer) in a
// row before poolworker gives up on the run and fails it.
constexpr int kMaxFailedPolls = 3;
constexpr double kDefaultCallTimeoutSeconds = 60;
constexpr double kDefaultPollIntervalSeconds = 2;

struct Description {
  std::string path;
  std::string name;
  std::string version;
  std::string description;
  Json default_template;
  std::vector<OptionSpec> options;  // the plugin's own and the generic ones
};

std::string seconds(milliseconds ms) {
  const double s = static_cast<double>(ms.count()) / 1000.0;
  char text[32];
  std::snprintf(text, sizeof text, "%g s", s);
  return text;
}

std::string label(const Description& d) { return "backend plugin '" + d.name + "'"; }

std::string stderrTail(const CallResult& r) {
  return r.last_stderr.empty() ? "" : "; its last stderr line: " + r.last_stderr;
}

ErrorKind kindOfExit(int code) {
  switch (code) {
    case exit_code::kRunFailed:
      return ErrorKind::RunFailed;
    case exit_code::kInfrastructureFailed:
      return ErrorKind::InfrastructureFailed;
    case exit_code::kInvalidConfiguration:
      return ErrorKind::InvalidConfiguration;
    case exit_code::kTransient:
      return ErrorKind::Transient;
    case exit_code::kNotFound:
      return ErrorKind::NotFound;
    case exit_code::kUnsupported:
      return ErrorKind::Unsupported;
    default:
      return ErrorKind::Internal;
  }
}

// Turns a finished call into its JSON answer or an error that says whose fault it was.
Result<Json> interpret(const std::string& who, const std::string& command, milliseconds deadline,
                       const CallResult& r) {
  if (!r.spawn_error.empty()) {
    return makeError(ErrorKind::Internal, who + ": " + r.spawn_error);
  }
  if (r.timed_out) {
    return makeError(ErrorKind::Internal, who + " did not answer `" + command + "` within " +
                                              seconds(deadline) + "; poolworker killed it" +
                                              stderrTail(r));
  }
  if (r.signal != 0) {
    return makeError(ErrorKind::Internal, who + " crashed in `" + command + "`: killed by signal " +
                                              std::to_string(r.signal) + " (" +
                                              ::strsignal(r.signal) + ")" + stderrTail(r));
  }
  const int code = r.exit_code.value_or(-1);
  if (code == exit_code::kOk) {
    std::string_view out = r.out;
    if (out.find_first_not_of(" \t\r\n") == std::string_view::npos) {
      return Json::object();
    }
    Json parsed = Json::parse(out.begin(), out.end(), nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) {
      return makeError(ErrorKind::Internal,
                       who + " answered `" + command + "` with something that is not a JSON " +
                           "object: '" + std::string(out.substr(0, 200)) + "'" + stderrTail(r));
    }
    return parsed;
  }
  const ErrorKind kind = kindOfExit(code);
  if (kind == ErrorKind::Internal) {
    return makeError(ErrorKind::Internal,
                     who + " failed in `" + command + "` with exit status " + std::to_string(code) +
                         ", which is not one of the protocol's (a bug in the plugin)" +
                         stderrTail(r));
  }
  std::string message;
  Json parsed = Json::parse(r.out, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object() && parsed.contains("message") &&
      parsed["message"].is_string()) {
    message = parsed["message"].get<std::string>();
  } else if (!r.last_stderr.empty()) {
    message = r.last_stderr;
  } else {
    message = who + " failed in `" + command + "` (" + errorKindName(kind) + ") without a message";
  }
  return makeError(kind, message);
}

// "ERROR: text" and the like choose the level of a stderr line; anything else is information.
void logStderrLine(LogSink& sink, std::string_view line) {
  static const std::pair<std::string_view, LogLevel> kPrefixes[] = {{"DEBUG:", LogLevel::Debug},
                                                                    {"INFO:", LogLevel::Info},
                                                                    {"WARNING:", LogLevel::Warning},
                                                                    {"ERROR:", LogLevel::Error}};
  for (const auto& [prefix, level] : kPrefixes) {
    if (line.substr(0, prefix.size()) == prefix) {
      std::string_view rest = line.substr(prefix.size());
      while (!rest.empty() && rest.front() == ' ') {
        rest.remove_prefix(1);
      }
      sink.log(level, rest);
      return;
    }
  }
  if (!line.empty()) {
    sink.log(LogLevel::Info, line);
  }
}

Result<double> positiveSeconds(const Json& options, const char* key, double fallback) {
  auto it = options.find(key);
  if (it == options.end() || it->is_null()) {
    return fallback;
  }
  double value = 0;
  if (it->is_number()) {
    value = it->get<double>();
  } else if (it->is_string()) {
    try {
      size_t used = 0;
      const std::string text = it->get<std::string>();
      value = std::stod(text, &used);
      if (used != text.size()) {
        value = 0;
      }
    } catch (const std::exception&) {
      value = 0;
    }
  }
  if (!(value > 0) || !std::isfinite(value)) {
    return makeError(
        ErrorKind::InvalidConfiguration,
        std::string(key) + " must be a number of seconds greater than 0, not " + it->dump());
  }
  return value;
}

class ExecutableBackend;

// Shared by the backend and its calls in flight, which may outlive it.
struct Core : std::enable_shared_from_this<Core> {
  struct Waiter {
    RunHandle handle;
    std::shared_ptr<LogSink> log;
    Callback<Outcome> done;
    int failures = 0;
    std::unique_ptr<Timer> timer;
  };

  Core(asio::io_context& io_context, std::shared_ptr<const Description> desc)
      : io(io_context), description(std::move(desc)) {}

  // One call of the plugin; `done` gets its answer or the error.
  void call(const std::string& command, Json request, std::shared_ptr<LogSink> log,
            milliseconds deadline, std::function<void(Result<Json>)> done) {
    Json body = {{"protocol", kExecutableProtocolVersion},
                 {"command", command},
                 {"worker_name", worker_name},
                 {"state_directory", state_directory},
                 {"options", options}};
    for (auto& [key, value] : request.items()) {
      body[key] = std::move(value);
    }
    const std::string who = label(*description);
    runPluginCall(
        io, description->path, command, body.dump(), deadline,
        [log](std::string_view line) { logStderrLine(*log, line); },
        [who, command, deadline, done = std::move(done)](CallResult result) {
          done(interpret(who, command, deadline, result));
        });
  }

  void poll(const std::shared_ptr<Waiter>& waiter) {
    auto self = shared_from_this();
    call("wait", Json{{"handle", plugin::toJson(waiter->handle)}}, waiter->log, call_timeout,
         [self, waiter](Result<Json> answer) { self->onPoll(waiter, std::move(answer)); });
  }

  void onPoll(const std::shared_ptr<Waiter>& waiter, Result<Json> answer) {
    if (stopped || !waiters.contains(waiter)) {
      return;
    }
    if (answer) {
      auto running = answer->find("running");
      if (running != answer->end() && running->is_boolean() && running->get<bool>()) {
        waiter->failures = 0;
        schedulePoll(waiter);
        return;
      }
      auto outcome = plugin::outcomeFromJson(*answer, label(*description) + "'s `wait` answer");
      if (outcome && running != answer->end() && running->is_boolean()) {
        finishWait(waiter, std::move(outcome).value());
        return;
      }
      answer = outcome ? makeError(ErrorKind::Internal,
                                   label(*description) +
                                       "'s `wait` answer must have 'running': true or false")
                       : Result<Json>(std::move(outcome).error());
    }
    const Error& error = answer.error();
    if (error.kind == ErrorKind::Transient) {
      waiter->log->log(LogLevel::Warning, error.message + " (will ask again)");
      schedulePoll(waiter);
      return;
    }
    if (error.kind != ErrorKind::Internal) {
      finishWait(waiter, Result<Outcome>(error));
      return;
    }
    ++waiter->failures;
    waiter->log->log(LogLevel::Warning, error.message);
    if (waiter->failures < kMaxFailedPolls) {
      schedulePoll(waiter);
      return;
    }
    Outcome outcome;
    outcome.detail = "poolworker stopped following the run after " +
                     std::to_string(kMaxFailedPolls) + " failed calls of `wait`: " + error.message;
    finishWait(waiter, outcome);
  }

  void schedulePoll(const std::shared_ptr<Waiter>& waiter) {
    std::weak_ptr<Core> weak = shared_from_this();
    std::weak_ptr<Waiter> weak_waiter = waiter;
    waiter->timer = executor->schedule(poll_interval, [weak, weak_waiter] {
      auto self = weak.lock();
      auto w = weak_waiter.lock();
      if (self && w && !self->stopped) {
        self->poll(w);
      }
    });
  }

  void finishWait(const std::shared_ptr<Waiter>& waiter, Result<Outcome> outcome) {
    waiters.erase(waiter);
    auto done = std::move(waiter->done);
    done(std::move(outcome));
  }

  void shutdown() {
    stopped = true;
    for (const auto& waiter : std::exchange(waiters, {})) {
      waiter->timer.reset();
      waiter->done(makeError(ErrorKind::Cancelled, "the worker is stopping"));
    }
  }

  asio::io_context& io;
  std::shared_ptr<const Description> description;
  Executor* executor = nullptr;
  std::shared_ptr<LogSink> worker_log;
  std::string worker_name;
  std::string state_directory;
  Json options = Json::object();
  milliseconds call_timeout{60000};
  milliseconds poll_interval{2000};
  std::set<std::shared_ptr<Waiter>> waiters;
  bool stopped = false;
};

class ExecutableBackend final : public Backend {
 public:
  explicit ExecutableBackend(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  ~ExecutableBackend() override { core_->shutdown(); }
  ExecutableBackend(const ExecutableBackend&) = delete;
  ExecutableBackend& operator=(const ExecutableBackend&) = delete;

  void start(const StartRequest& request, std::shared_ptr<LogSink> log,
             Callback<RunHandle> done) override {
    const std::string name = core_->description->name;
    const std::string who = label(*core_->description);
    core_->call("start", plugin::toJson(request), std::move(log), core_->call_timeout,
                [name, who, done = std::move(done)](Result<Json> answer) {
                  if (!answer) {
                    done(std::move(answer).error());
                    return;
                  }
                  auto handle = plugin::runHandleFromJson(*answer, who + "'s `start` answer");
                  if (handle) {
                    handle->backend = name;
                  }
                  done(std::move(handle));
                });
  }

  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log,
            Callback<Outcome> done) override {
    auto waiter = std::make_shared<Core::Waiter>();
    waiter->handle = handle;
    waiter->log = std::move(log);
    waiter->done = std::move(done);
    core_->waiters.insert(waiter);
    core_->poll(waiter);
  }

  void kill(const RunHandle& handle, milliseconds grace, Callback<void> done) override {
    Json request = {{"handle", plugin::toJson(handle)},
                    {"grace_seconds", static_cast<double>(grace.count()) / 1000.0}};
    core_->call("kill", std::move(request), core_->worker_log, core_->call_timeout + grace,
                [done = std::move(done)](Result<Json> answer) {
                  if (!answer) {
                    done(std::move(answer).error());
                    return;
                  }
                  done(success());
                });
  }

  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
               Callback<Recovery> done) override {
    const std::string who = label(*core_->description);
    core_->call("recover", Json{{"handle", plugin::toJson(handle)}}, std::move(log),
                core_->call_timeout, [who, done = std::move(done)](Result<Json> answer) {
                  if (!answer) {
                    done(std::move(answer).error());
                    return;
                  }
                  done(plugin::recoveryFromJson(*answer, who + "'s `recover` answer"));
                });
  }

  void check(Callback<void> done) override {
    core_->call("check", Json::object(), core_->worker_log, core_->call_timeout,
                [done = std::move(done)](Result<Json> answer) {
                  // A plugin with nothing to check may answer "unsupported".
                  if (!answer && answer.error().kind != ErrorKind::Unsupported) {
                    done(std::move(answer).error());
                    return;
                  }
                  done(success());
                });
  }

  Result<Json> preview(const StartRequest& request) override {
    Json body = plugin::toJson(request);
    body["protocol"] = kExecutableProtocolVersion;
    body["command"] = "preview";
    body["worker_name"] = core_->worker_name;
    body["state_directory"] = core_->state_directory;
    body["options"] = core_->options;
    auto log = core_->worker_log;
    CallResult result =
        runPluginCallSync(core_->description->path, "preview", body.dump(), core_->call_timeout,
                          [log](std::string_view line) { logStderrLine(*log, line); });
    return interpret(label(*core_->description), "preview", core_->call_timeout, result);
  }

  void shutdown() override { core_->shutdown(); }

 private:
  std::shared_ptr<Core> core_;
};

class ExecutableFactory final : public BackendFactory {
 public:
  ExecutableFactory(asio::io_context& io, std::shared_ptr<const Description> description)
      : io_(io), description_(std::move(description)) {}

  BackendInfo info() const override {
    BackendInfo info;
    info.name = description_->name;
    info.version = description_->version;
    info.origin = description_->path;
    info.description = description_->description;
    info.options = description_->options;
    return info;
  }

  Json defaultBaseJobTemplate() const override { return description_->default_template; }

  Result<BackendPtr> create(const BackendContext& context) override {
    if (context.executor == nullptr) {
      return makeError(ErrorKind::InvalidConfiguration,
                       label(*description_) + " needs an executor");
    }
    auto core = std::make_shared<Core>(io_, description_);
    core->executor = context.executor;
    core->worker_log = context.worker_log;
    if (!core->worker_log) {
      return makeError(ErrorKind::InvalidConfiguration,
                       label(*description_) + " needs the worker's log");
    }
    core->worker_name = context.worker_name;
    core->state_directory = context.state_directory;
    core->options = context.options.is_object() ? context.options : Json::object();
    const std::string prefix = "backends." + description_->name + ".";
    auto timeout = positiveSeconds(core->options, kCallTimeoutOption, kDefaultCallTimeoutSeconds);
    if (!timeout) {
      return makeError(ErrorKind::InvalidConfiguration, prefix + timeout.error().message);
    }
    auto interval =
        positiveSeconds(core->options, kPollIntervalOption, kDefaultPollIntervalSeconds);
    if (!interval) {
      return makeError(ErrorKind::InvalidConfiguration, prefix + interval.error().message);
    }
    core->call_timeout = milliseconds(static_cast<long long>(*timeout * 1000));
    core->poll_interval = milliseconds(static_cast<long long>(*interval * 1000));
    return BackendPtr(std::make_unique<ExecutableBackend>(std::move(core)));
  }

 private:
  asio::io_context& io_;
  std::shared_ptr<const Description> description_;
};

Error refuse(const std::string& message) {
  return makeError(ErrorKind::InvalidConfiguration, message);
}

}  // namespace

Result<BackendFactoryPtr> loadExecutablePlugin(asio::io_context& io, const std::string& path,
                                               milliseconds info_timeout) {
  const std::string who = "executable plugin " + path;
  std::string stderr_text;
  CallResult result =
      runPluginCallSync(path, "info", "", info_timeout, [&stderr_text](std::string_view line) {
        if (stderr_text.size() < 2000) {
          stderr_text.append(line).append("\n");
        }
      });
  auto answer = interpret(who, "info", info_timeout, result);
  if (!answer) {
    return refuse(answer.error().message);
  }
  const Json& info = *answer;
  auto protocol = info.find("protocol");
  if (protocol == info.end() || !protocol->is_number_integer()) {
    return refuse(who + ": its `info` answer has no integer 'protocol'");
  }
  if (protocol->get<int>() != kExecutableProtocolVersion) {
    return refuse(who + " speaks protocol " + std::to_string(protocol->get<int>()) +
                  "; this poolworker speaks protocol " +
                  std::to_string(kExecutableProtocolVersion));
  }
  auto description = std::make_shared<Description>();
  description->path = path;
  description->name = info.value("name", Json()).is_string() ? info["name"].get<std::string>() : "";
  if (auto valid = checkBackendName(description->name); !valid) {
    return refuse(who + ": " + valid.error().message);
  }
  description->version = info.contains("version") && info["version"].is_string()
                             ? info["version"].get<std::string>()
                             : "";
  if (description->version.empty()) {
    return refuse(who + ": its `info` answer has no 'version' string");
  }
  description->description = info.contains("description") && info["description"].is_string()
                                 ? info["description"].get<std::string>()
                                 : "";
  auto tmpl = info.find("default_base_job_template");
  if (tmpl == info.end() || !tmpl->is_object() || !tmpl->contains("job_configuration") ||
      !tmpl->contains("variables") || !(*tmpl)["job_configuration"].is_object() ||
      !(*tmpl)["variables"].is_object()) {
    return refuse(who + ": 'default_base_job_template' must be an object with the objects " +
                  "'job_configuration' and 'variables'");
  }
  description->default_template = *tmpl;
  auto options = plugin::optionsFromJson(info.value("options", Json()), who);
  if (!options) {
    return refuse(options.error().message);
  }
  description->options = std::move(options).value();
  auto has = [&](const char* key) {
    for (const auto& option : description->options) {
      if (option.key == key) {
        return true;
      }
    }
    return false;
  };
  if (!has(kCallTimeoutOption)) {
    description->options.push_back(
        OptionSpec{kCallTimeoutOption, "number", kDefaultCallTimeoutSeconds,
                   "Seconds one call of the plugin may take before poolworker kills it (a "
                   "`kill` call gets the run's grace period on top)."});
  }
  if (!has(kPollIntervalOption)) {
    description->options.push_back(
        OptionSpec{kPollIntervalOption, "number", kDefaultPollIntervalSeconds,
                   "Seconds between two `wait` calls while a run is running."});
  }
  return BackendFactoryPtr(std::make_unique<ExecutableFactory>(io, std::move(description)));
}

}  // namespace poolworker::backends::plugins
