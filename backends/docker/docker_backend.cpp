#include "backends/docker/docker_backend.h"

#include <algorithm>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>  // Boost 1.74's Asio uses std::exchange without including it.
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "backends/docker/create_body.h"
#include "backends/docker/engine_client.h"
#include "backends/docker/job_config.h"
#include "backends/docker/log_stream.h"
#include "backends/docker/naming.h"
#include "backends/docker/pull_stream.h"

namespace poolworker::backends::docker {

namespace asio = boost::asio;
using common::HttpCall;
using common::HttpResponse;
using common::StreamHandlers;
using common::urlEncode;

namespace {

// How long the output stream may lag behind the exit code before it is given up.
constexpr std::chrono::seconds kOutputGrace{10};
constexpr std::chrono::seconds kFirstBackoff{1};
constexpr std::chrono::seconds kMaxBackoff{30};
// Taken names are retried as <name>-1 ... <name>-N; more means something else is wrong.
constexpr int kMaxNameAttempts = 100;

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

Error infrastructure(std::string message) {
  return makeError(ErrorKind::InfrastructureFailed, std::move(message));
}

Error cancelled() { return makeError(ErrorKind::Cancelled, "the Docker backend was shut down"); }

std::string shortId(const std::string& id) { return id.substr(0, 12); }

// An image reference in a path: docker-py quotes it with '/' and ':' kept.
std::string pathEncode(const std::string& value) {
  std::string out;
  size_t start = 0;
  while (start <= value.size()) {
    const auto next = value.find_first_of("/:", start);
    out += urlEncode(value.substr(start, next - start));
    if (next == std::string::npos) {
      break;
    }
    out.push_back(value[next]);
    start = next + 1;
  }
  return out;
}

bool isSuccess(int status) { return status >= 200 && status < 300; }

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

/// What a handle says about its container.
struct ContainerRef {
  std::string id;
  std::string name;
  std::string engine;
  bool auto_remove = false;
  bool stream_output = true;
  bool tty = false;

  std::string display() const { return "'" + (name.empty() ? shortId(id) : name) + "'"; }
};

Json handleData(const ContainerRef& ref) {
  Json data = Json::object();
  data["container_id"] = ref.id;
  data["engine"] = ref.engine;
  data["name"] = ref.name;
  data["auto_remove"] = ref.auto_remove;
  data["stream_output"] = ref.stream_output;
  data["tty"] = ref.tty;
  return data;
}

/// Reads a handle of a container on the engine at `engine_url` (this backend's engine).
Result<ContainerRef> parseHandle(const RunHandle& handle, const std::string& engine_url) {
  ContainerRef ref;
  const Json& data = handle.data;
  if (data.is_object()) {
    const auto text = [&](const char* key) {
      const auto it = data.find(key);
      return it != data.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    const auto flag = [&](const char* key, bool fallback) {
      const auto it = data.find(key);
      return it != data.end() && it->is_boolean() ? it->get<bool>() : fallback;
    };
    ref.id = text("container_id");
    ref.name = text("name");
    ref.engine = text("engine");
    ref.auto_remove = flag("auto_remove", false);
    ref.stream_output = flag("stream_output", true);
    ref.tty = flag("tty", false);
  }
  if (ref.id.empty()) {
    // A handle written by Prefect's own worker has only the pid.
    ref.id = splitInfrastructurePid(handle.infrastructure_pid).second;
  }
  if (ref.id.empty() || ref.id.find('/') != std::string::npos ||
      ref.id.find('?') != std::string::npos) {
    return invalid("Docker run handle: no container id in its data or in infrastructure_pid '" +
                   handle.infrastructure_pid + "'");
  }
  if (!ref.engine.empty() && ref.engine != engine_url) {
    return makeError(ErrorKind::NotFound, "the run's container " + ref.display() +
                                              " is on the Docker engine at " + ref.engine +
                                              ", but this worker uses the engine at " + engine_url);
  }
  return ref;
}

/// How a container ended, from the `State` of an inspect.
Outcome outcomeFromState(const Json& state) {
  Outcome outcome;
  if (!state.is_object()) {
    return outcome;
  }
  if (const auto code = state.find("ExitCode"); code != state.end() && code->is_number_integer()) {
    outcome.exit_code = code->get<int>();
  }
  std::string detail;
  if (const auto oom = state.find("OOMKilled");
      oom != state.end() && oom->is_boolean() && oom->get<bool>()) {
    detail = "The container was killed because it ran out of memory (OOMKilled).";
  }
  if (const auto error = state.find("Error");
      error != state.end() && error->is_string() && !error->get<std::string>().empty()) {
    detail += (detail.empty() ? "" : " ") + std::string("Docker: ") + error->get<std::string>();
  }
  outcome.detail = detail;
  return outcome;
}

std::string statusOf(const Json& inspect) {
  const auto state = inspect.find("State");
  if (state == inspect.end() || !state->is_object()) {
    return {};
  }
  const auto status = state->find("Status");
  return status != state->end() && status->is_string() ? status->get<std::string>() : "";
}

bool isRunningStatus(const std::string& status) {
  return status == "running" || status == "paused" || status == "restarting";
}

/// One container the backend follows: its wait, its output and who waits for its end.
struct Watch {
  ContainerRef ref;
  std::shared_ptr<LogSink> log;
  std::shared_ptr<HttpCall> wait_call;
  std::shared_ptr<HttpCall> output_call;
  std::string wait_body;
  LogStreamDecoder decoder;
  std::optional<Result<Outcome>> result;
  bool output_open = false;
  bool output_reopened = false;
  bool abandoned = false;
  bool warned_drop = false;
  std::chrono::seconds backoff = kFirstBackoff;
  std::vector<Callback<Outcome>> waiters;
  std::unique_ptr<asio::steady_timer> timer;
  std::unique_ptr<asio::steady_timer> output_timer;

  void say(LogLevel level, const std::string& message) const {
    if (log) {
      log->log(level, message);
    }
  }
};

/// The state of one `start` as it goes through its steps.
struct StartOp {
  StartRequest request;
  std::shared_ptr<LogSink> log;
  Callback<RunHandle> done;
  ContainerPlan plan;
  int attempt = 0;
  std::string container_id;
  std::string name;
  std::size_t next_network = 0;
  std::shared_ptr<Watch> watch;
  bool finished = false;

  void say(LogLevel level, const std::string& message) const {
    if (log) {
      log->log(level, message);
    }
  }
};

}  // namespace

class DockerBackend::Core : public std::enable_shared_from_this<DockerBackend::Core> {
 public:
  Core(asio::io_context& io, Executor& executor, DockerBackendSettings settings)
      : io_(io),
        executor_(executor),
        settings_(std::move(settings)),
        engine_(std::make_shared<EngineClient>(
            io, settings_.endpoint,
            EngineClientOptions{settings_.timeout, settings_.api_version})) {}

  // ---- start ---------------------------------------------------------------------------------

  void start(const StartRequest& request, std::shared_ptr<LogSink> log, Callback<RunHandle> done) {
    auto op = std::make_shared<StartOp>();
    op->request = request;
    op->log = std::move(log);
    op->done = std::move(done);
    if (shut_down_) {
      return post([this, self = shared_from_this(), op] { finishStart(op, cancelled()); });
    }
    auto job = parseJobConfiguration(request.configuration, settings_.working_directory);
    if (!job) {
      return post(
          [this, self = shared_from_this(), op, error = job.error()] { finishStart(op, error); });
    }
    engine_->negotiate([this, self = shared_from_this(), op,
                        job = std::move(job).value()](Result<EngineVersion> engine) {
      if (!engine) {
        return finishStart(op, engine.error());
      }
      auto plan = planContainer(job, op->request.run, facts());
      if (!plan) {
        return finishStart(op, plan.error());
      }
      op->plan = std::move(plan).value();
      for (const auto& warning : op->plan.warnings) {
        op->say(LogLevel::Warning, warning);
      }
      checkNetwork(op, 0);
    });
  }

  /// Every network of the job must exist: the engine itself would only say so at the start, as
  /// "network x not found", after the container was created (and before 20.10 not at all).
  void checkNetwork(const std::shared_ptr<StartOp>& op, std::size_t index) {
    if (index >= op->plan.networks.size()) {
      return ensureImage(op);
    }
    const std::string network = op->plan.networks[index];
    engine_->request(
        "GET", "/networks/" + urlEncode(network), std::nullopt,
        [this, self = shared_from_this(), op, index, network](Result<HttpResponse> answer) {
          if (!answer) {
            return finishStart(op, answer.error());
          }
          if (answer->status == 404) {
            return finishStart(
                op, invalid("Docker network '" + network +
                            "' does not exist (Docker: " + engineMessage(*answer) + ")"));
          }
          if (!isSuccess(answer->status)) {
            return finishStart(
                op, engineError(*answer, "looking up the Docker network '" + network + "' failed"));
          }
          checkNetwork(op, index + 1);
        });
  }

  void ensureImage(const std::shared_ptr<StartOp>& op) {
    switch (op->plan.pull_policy) {
      case PullPolicy::Never:
        return create(op);
      case PullPolicy::Always:
      case PullPolicy::IfPossible:
        return pull(op);
      case PullPolicy::IfNotPresent:
        break;
    }
    imagePresent(op->plan.image, [this, self = shared_from_this(), op](Result<bool> present) {
      if (!present) {
        return finishStart(op, present.error());
      }
      if (*present) {
        return create(op);
      }
      op->say(LogLevel::Debug, "Could not find Docker image locally: " + op->plan.image);
      pull(op);
    });
  }

  void imagePresent(const std::string& image, std::function<void(Result<bool>)> done) {
    engine_->request(
        "GET", "/images/" + pathEncode(image) + "/json", std::nullopt,
        [image, done = std::move(done)](Result<HttpResponse> answer) {
          if (!answer) {
            return done(answer.error());
          }
          if (answer->status == 404) {
            return done(false);
          }
          if (!isSuccess(answer->status)) {
            return done(engineError(*answer, "looking up the Docker image '" + image + "' failed"));
          }
          done(true);
        });
  }

  void pull(const std::shared_ptr<StartOp>& op) {
    const auto& credentials = op->plan.registry_credentials;
    if (!credentials) {
      return pullImage(op);
    }
    const auto key = std::make_pair(credentials->registry_url, credentials->username);
    if (!credentials->reauth && logged_in_.count(key) != 0) {
      return pullImage(op);
    }
    op->say(LogLevel::Info, "Logging into Docker registry...");
    engine_->request("POST", "/auth", authConfigOf(*credentials),
                     [this, self = shared_from_this(), op, key](Result<HttpResponse> answer) {
                       if (answer && isSuccess(answer->status)) {
                         logged_in_.insert(key);
                         return pullImage(op);
                       }
                       Error error = answer ? engineError(*answer, "") : answer.error();
                       if (answer) {
                         error.kind = answer->status >= 500 ? ErrorKind::InfrastructureFailed
                                                            : ErrorKind::Unauthorized;
                         error.message = "logging in to the Docker registry '" + key.first +
                                         "' as '" + key.second +
                                         "' failed: " + engineMessage(*answer);
                       }
                       pullFailed(op, error);
                     });
  }

  std::vector<std::pair<std::string, std::string>> pullHeaders(const ContainerPlan& plan) const {
    std::optional<Json> auth;
    if (plan.registry_credentials) {
      auth = authConfigOf(*plan.registry_credentials);
    } else if (!settings_.docker_config.empty()) {
      std::ifstream in(settings_.docker_config);
      if (in) {
        std::ostringstream text;
        text << in.rdbuf();
        auth = authFromDockerConfig(Json::parse(text.str(), nullptr, false),
                                    registryOf(plan.image_ref.repository));
      }
    }
    if (!auth) {
      return {};
    }
    return {{"X-Registry-Auth", encodeRegistryAuth(*auth)}};
  }

  void pullImage(const std::shared_ptr<StartOp>& op) {
    op->say(LogLevel::Info, "Pulling image '" + op->plan.image + "'...");
    const ImageRef& ref = op->plan.image_ref;
    const std::string path = "/images/create?fromImage=" + urlEncode(ref.repository) +
                             "&tag=" + urlEncode(ref.tag.empty() ? "latest" : ref.tag);
    auto parser = std::make_shared<PullStreamParser>(op->plan.image);
    auto failure = std::make_shared<std::optional<Error>>();
    auto call = std::make_shared<std::shared_ptr<HttpCall>>();
    StreamHandlers handlers;
    handlers.on_data = [parser, failure, call](std::string_view data) {
      if (failure->has_value()) {
        return;
      }
      if (auto fed = parser->feed(data); !fed) {
        *failure = fed.error();
        if (*call) {
          (*call)->cancel();
        }
      }
    };
    handlers.on_done = [this, self = shared_from_this(), op, parser,
                        failure](Result<HttpResponse> answer) {
      if (failure->has_value()) {
        return pullFailed(op, **failure);
      }
      if (!answer) {
        return pullFailed(op, answer.error());
      }
      if (!isSuccess(answer->status)) {
        Error error = engineError(*answer, "Docker pull failed for " + op->plan.image);
        if (error.kind == ErrorKind::NotFound || error.kind == ErrorKind::InvalidConfiguration) {
          error.kind = ErrorKind::InfrastructureFailed;
        }
        return pullFailed(op, error);
      }
      if (auto finished = parser->finish(); !finished) {
        return pullFailed(op, finished.error());
      }
      if (!parser->lastStatus().empty()) {
        op->say(LogLevel::Info, parser->lastStatus());
      }
      create(op);
    };
    *call = engine_->stream("POST", path, std::nullopt, std::move(handlers), pullHeaders(op->plan));
  }

  void pullFailed(const std::shared_ptr<StartOp>& op, const Error& error) {
    if (op->plan.pull_policy != PullPolicy::IfPossible || error.kind == ErrorKind::Cancelled) {
      return finishStart(op, error);
    }
    op->say(LogLevel::Warning, "Could not pull the image '" + op->plan.image +
                                   "'; the image pull policy is 'IfPossible', so a local image "
                                   "is used if there is one. Pulling failed with: " +
                                   error.message);
    imagePresent(
        op->plan.image, [this, self = shared_from_this(), op, error](Result<bool> present) {
          if (present && *present) {
            return create(op);
          }
          const std::string local =
              present ? "No such image: " + op->plan.image : present.error().message;
          finishStart(op, infrastructure("Docker image '" + op->plan.image +
                                         "' could neither be pulled nor found locally. Pull: " +
                                         error.message + ". Local: " + local +
                                         ". The image pull policy 'IfPossible' fell back to a "
                                         "local image, but there is none."));
        });
  }

  void create(const std::shared_ptr<StartOp>& op) {
    const auto& base = op->plan.name;
    op->name = !base              ? std::string()
               : op->attempt == 0 ? *base
                                  : *base + "-" + std::to_string(op->attempt);
    std::string path = "/containers/create";
    std::string separator = "?";
    if (!op->name.empty()) {
      path += separator + "name=" + urlEncode(op->name);
      separator = "&";
    }
    if (op->plan.platform) {
      path += separator + "platform=" + urlEncode(*op->plan.platform);
    }
    if (op->attempt == 0) {
      op->say(LogLevel::Info, "Creating Docker container " +
                                  (op->name.empty() ? std::string("with auto-generated name")
                                                    : "'" + op->name + "'") +
                                  "...");
    }
    engine_->request(
        "POST", path, op->plan.body,
        [this, self = shared_from_this(), op](Result<HttpResponse> answer) {
          if (!answer) {
            return finishStart(op, answer.error());
          }
          if (answer->status == 409 && contains(engineMessage(*answer), "container name") &&
              !op->name.empty() && op->attempt < kMaxNameAttempts) {
            op->say(LogLevel::Info,
                    "Docker container name '" + op->name + "' already exists; retrying...");
            ++op->attempt;
            return create(op);
          }
          if (!isSuccess(answer->status)) {
            return finishStart(op, createError(*op, *answer));
          }
          const Json body = Json::parse(answer->body, nullptr, false);
          const auto id = body.is_object() ? body.find("Id") : body.end();
          if (!body.is_object() || id == body.end() || !id->is_string() ||
              id->get<std::string>().empty()) {
            return finishStart(op, makeError(ErrorKind::Internal,
                                             "the Docker engine created a container but did not "
                                             "say its id"));
          }
          op->container_id = id->get<std::string>();
          if (const auto warnings = body.find("Warnings");
              warnings != body.end() && warnings->is_array()) {
            for (const auto& warning : *warnings) {
              if (warning.is_string() && !warning.get<std::string>().empty()) {
                op->say(LogLevel::Warning, "Docker: " + warning.get<std::string>());
              }
            }
          }
          op->say(LogLevel::Info, "Docker container " + display(*op) + " created successfully.");
          connectNext(op);
        });
  }

  Error createError(const StartOp& op, const HttpResponse& answer) const {
    const std::string message = engineMessage(answer);
    if (answer.status == 404 && contains(message, "No such image")) {
      if (op.plan.pull_policy == PullPolicy::Never) {
        return infrastructure("Docker image '" + op.plan.image +
                              "' is not present on the Docker engine and the image pull policy "
                              "is 'Never', so it was not pulled (Docker: " +
                              message + ")");
      }
      return infrastructure("Docker image '" + op.plan.image +
                            "' is not present on the Docker engine (Docker: " + message + ")");
    }
    if (answer.status == 404 && contains(message, "network")) {
      return invalid("Docker network '" +
                     (op.plan.networks.empty() ? std::string() : op.plan.networks.front()) +
                     "' does not exist (Docker: " + message + ")");
    }
    Error error = engineError(answer, "creating the Docker container failed");
    if (error.kind == ErrorKind::NotFound) {
      error.kind = ErrorKind::InfrastructureFailed;
    }
    return error;
  }

  std::string display(const StartOp& op) const {
    return "'" + (op.name.empty() ? shortId(op.container_id) : op.name) + "'";
  }

  void connectNext(const std::shared_ptr<StartOp>& op) {
    if (op->next_network >= op->plan.extra_networks.size()) {
      return registerWait(op);
    }
    const std::string network = op->plan.extra_networks[op->next_network++];
    engine_->request(
        "POST", "/networks/" + urlEncode(network) + "/connect",
        Json{{"Container", op->container_id}},
        [this, self = shared_from_this(), op, network](Result<HttpResponse> answer) {
          if (!answer) {
            return finishStart(op, answer.error());
          }
          if (answer->status == 404) {
            return finishStart(
                op, invalid("Docker network '" + network +
                            "' does not exist (Docker: " + engineMessage(*answer) + ")"));
          }
          if (!isSuccess(answer->status)) {
            return finishStart(op, engineError(*answer,
                                               "connecting the container to the Docker "
                                               "network '" +
                                                   network + "' failed"));
          }
          connectNext(op);
        });
  }

  void registerWait(const std::shared_ptr<StartOp>& op) {
    auto watch = std::make_shared<Watch>();
    watch->ref.id = op->container_id;
    watch->ref.name = op->name;
    watch->ref.engine = settings_.endpoint.url;
    watch->ref.auto_remove = op->plan.auto_remove;
    watch->ref.stream_output = op->plan.stream_output;
    watch->ref.tty = op->plan.tty;
    watch->decoder = LogStreamDecoder(op->plan.tty);
    watch->log = op->log;
    op->watch = watch;
    watches_[watch->ref.id] = watch;
    // Registered before the start, the wait sees the exit even of a container that the engine
    // removes (auto_remove) the moment it ends.
    issueWait(watch, "next-exit", [this, self = shared_from_this(), op](Result<void> registered) {
      if (!registered) {
        return finishStart(op, registered.error());
      }
      if (!op->plan.stream_output) {
        return startContainer(op);
      }
      openOutput(op->watch, true, [this, self, op](Result<void> attached) {
        if (!attached) {
          return finishStart(op, attached.error());
        }
        startContainer(op);
      });
    });
  }

  void startContainer(const std::shared_ptr<StartOp>& op) {
    engine_->request(
        "POST", "/containers/" + op->container_id + "/start", std::nullopt,
        [this, self = shared_from_this(), op](Result<HttpResponse> answer) {
          if (!answer) {
            return finishStart(op, answer.error());
          }
          if (!isSuccess(answer->status) && answer->status != 304) {
            const std::string message = engineMessage(*answer);
            if (answer->status == 404 && message.rfind("network ", 0) == 0 &&
                contains(message, " not found")) {
              // A network removed between the check and the start.
              return finishStart(
                  op, invalid("Docker " + message.substr(0, message.rfind(" not found")) +
                              " does not exist (Docker: " + message + ")"));
            }
            Error error =
                engineError(*answer, "starting the Docker container " + display(*op) + " failed");
            if (error.kind == ErrorKind::NotFound) {
              error.kind = ErrorKind::InfrastructureFailed;
            }
            return finishStart(op, error);
          }
          op->say(LogLevel::Info, "Docker container " + display(*op) + " has status 'running'");
          RunHandle handle;
          handle.backend = "docker";
          handle.infrastructure_pid = infrastructurePid(
              dockerBaseUrl(settings_.endpoint.url, settings_.endpoint.tls.enabled),
              op->container_id);
          handle.data = handleData(op->watch->ref);
          finishStart(op, std::move(handle));
        });
  }

  void finishStart(const std::shared_ptr<StartOp>& op, Result<RunHandle> result) {
    if (op->finished) {
      return;
    }
    op->finished = true;
    auto done = std::move(op->done);
    if (result) {
      return done(std::move(result));
    }
    Error error = std::move(result).error();
    if (op->container_id.empty() || shut_down_) {
      return done(error);
    }
    // Nothing of a failed start may stay behind.
    if (op->watch) {
      abandon(op->watch);
    }
    const std::string what = display(*op);
    engine_->request(
        "DELETE", "/containers/" + op->container_id + "?force=1&v=1", std::nullopt,
        [op, what, error, done = std::move(done)](Result<HttpResponse> answer) mutable {
          if (!answer || (!isSuccess(answer->status) && answer->status != 404)) {
            op->say(LogLevel::Warning,
                    "Could not remove the Docker container " + what + " after a failed start: " +
                        (answer ? engineMessage(*answer) : answer.error().message));
          }
          done(error);
        });
  }

  // ---- following a container ---------------------------------------------------------------

  void issueWait(const std::shared_ptr<Watch>& watch, const std::string& condition,
                 std::function<void(Result<void>)> registered) {
    watch->wait_body.clear();
    auto pending = std::make_shared<std::function<void(Result<void>)>>(std::move(registered));
    StreamHandlers handlers;
    handlers.on_head = [watch, pending](const HttpResponse&) {
      watch->backoff = kFirstBackoff;
      if (*pending) {
        auto callback = std::move(*pending);
        *pending = nullptr;
        callback(success());
      }
    };
    handlers.on_data = [watch](std::string_view data) {
      if (watch->wait_body.size() < 64 * 1024) {
        watch->wait_body.append(data);
      }
    };
    handlers.on_done = [this, self = shared_from_this(), watch,
                        pending](Result<HttpResponse> answer) {
      watch->wait_call.reset();
      if (watch->abandoned) {
        return;
      }
      if (*pending) {
        // Never registered: the caller decides.
        auto callback = std::move(*pending);
        *pending = nullptr;
        if (!answer) {
          return callback(answer.error());
        }
        if (answer->status == 404) {
          return callback(
              makeError(ErrorKind::NotFound,
                        "the Docker container " + watch->ref.display() + " no longer exists"));
        }
        return callback(engineError(
            *answer, "waiting for the Docker container " + watch->ref.display() + " failed"));
      }
      if (!answer) {
        if (answer.error().kind == ErrorKind::Cancelled) {
          return settle(watch, answer.error());
        }
        if (!watch->warned_drop) {
          watch->warned_drop = true;
          watch->say(LogLevel::Warning, "Lost the connection waiting for the Docker container " +
                                            watch->ref.display() + " (" + answer.error().message +
                                            "); reconnecting");
        }
        return scheduleRecheck(watch);
      }
      const Json body = Json::parse(watch->wait_body, nullptr, false);
      const auto code = body.is_object() ? body.find("StatusCode") : body.end();
      if (!body.is_object() || code == body.end() || !code->is_number_integer()) {
        return scheduleRecheck(watch);
      }
      Outcome outcome;
      outcome.exit_code = code->get<int>();
      if (const auto error = body.find("Error"); error != body.end() && error->is_object()) {
        if (const auto message = error->find("Message"); message != error->end() &&
                                                         message->is_string() &&
                                                         !message->get<std::string>().empty()) {
          outcome.detail = "Docker: " + message->get<std::string>();
        }
      }
      watch->say(LogLevel::Info, "Docker container " + watch->ref.display() +
                                     " has status 'exited' (exit code " +
                                     std::to_string(*outcome.exit_code) + ")");
      settle(watch, std::move(outcome));
    };
    watch->wait_call =
        engine_->stream("POST", "/containers/" + watch->ref.id + "/wait?condition=" + condition,
                        std::nullopt, std::move(handlers));
  }

  /// Opens the output stream: an attach before the container starts (nothing is missed), or
  /// the log stream from now on for a container that already runs.
  void openOutput(const std::shared_ptr<Watch>& watch, bool attach,
                  std::function<void(Result<void>)> opened) {
    auto pending = std::make_shared<std::function<void(Result<void>)>>(std::move(opened));
    watch->output_open = true;
    StreamHandlers handlers;
    handlers.on_head = [pending](const HttpResponse&) {
      if (*pending) {
        auto callback = std::move(*pending);
        *pending = nullptr;
        callback(success());
      }
    };
    handlers.on_data = [watch](std::string_view data) {
      watch->decoder.feed(data, [&watch](OutputStream stream, std::string_view piece) {
        if (watch->log) {
          watch->log->output(piece, stream == OutputStream::Stderr);
        }
      });
    };
    handlers.on_done = [this, self = shared_from_this(), watch, pending,
                        attach](Result<HttpResponse> answer) {
      watch->output_call.reset();
      watch->output_open = false;
      if (watch->abandoned) {
        return;
      }
      if (*pending) {
        auto callback = std::move(*pending);
        *pending = nullptr;
        if (attach) {
          if (!answer) {
            return callback(answer.error());
          }
          return callback(engineError(
              *answer, "attaching to the Docker container " + watch->ref.display() + " failed"));
        }
        callback(success());
      }
      if (!answer) {
        if (answer.error().kind != ErrorKind::Cancelled && !watch->result) {
          watch->say(LogLevel::Warning, "The output stream of the Docker container " +
                                            watch->ref.display() + " broke (" +
                                            answer.error().message + "); reconnecting");
          return scheduleOutputReopen(watch);
        }
      } else if (!isSuccess(answer->status)) {
        const std::string message = engineMessage(*answer);
        if (answer->status == 404 || contains(message, "marked for removal")) {
          watch->say(LogLevel::Warning, "Docker container " + watch->ref.display() +
                                            " was removed before its output could be read. "
                                            "Output will not be streamed.");
        } else {
          watch->say(LogLevel::Warning, "Could not stream the output of the Docker container " +
                                            watch->ref.display() + ": " + message);
        }
      }
      maybeComplete(watch);
    };
    const std::string path =
        attach ? "/containers/" + watch->ref.id + "/attach?stream=1&stdout=1&stderr=1"
               : "/containers/" + watch->ref.id +
                     "/logs?stdout=1&stderr=1&follow=1&timestamps=0&tail=0";
    watch->output_call =
        engine_->stream(attach ? "POST" : "GET", path, std::nullopt, std::move(handlers));
  }

  void scheduleOutputReopen(const std::shared_ptr<Watch>& watch) {
    if (shut_down_) {
      return maybeComplete(watch);
    }
    watch->output_open = true;  // The output is not finished while a reopen is pending.
    watch->output_timer = std::make_unique<asio::steady_timer>(io_, kFirstBackoff);
    watch->output_timer->async_wait(
        [this, self = shared_from_this(), watch](const boost::system::error_code& ec) {
          if (ec || watch->abandoned) {
            return;
          }
          if (watch->result) {
            watch->output_open = false;
            return maybeComplete(watch);
          }
          watch->decoder = LogStreamDecoder(watch->ref.tty);
          openOutput(watch, false, nullptr);
        });
  }

  void scheduleRecheck(const std::shared_ptr<Watch>& watch) {
    if (shut_down_) {
      return settle(watch, cancelled());
    }
    const auto delay = watch->backoff;
    watch->backoff = std::min(kMaxBackoff, watch->backoff * 2);
    watch->timer = std::make_unique<asio::steady_timer>(io_, delay);
    watch->timer->async_wait(
        [this, self = shared_from_this(), watch](const boost::system::error_code& ec) {
          if (ec || watch->abandoned) {
            return;
          }
          recheck(watch);
        });
  }

  /// After a broken wait: is the container still there, and how is it?
  void recheck(const std::shared_ptr<Watch>& watch) {
    engine_->request(
        "GET", "/containers/" + watch->ref.id + "/json", std::nullopt,
        [this, self = shared_from_this(), watch](Result<HttpResponse> answer) {
          if (watch->abandoned) {
            return;
          }
          if (!answer) {
            if (answer.error().kind == ErrorKind::Cancelled) {
              return settle(watch, answer.error());
            }
            return scheduleRecheck(watch);
          }
          if (answer->status == 404) {
            return settle(watch, goneOutcome(watch->ref));
          }
          if (!isSuccess(answer->status)) {
            if (answer->status >= 500) {
              return scheduleRecheck(watch);
            }
            return settle(watch, engineError(*answer, "inspecting the Docker container " +
                                                          watch->ref.display() + " failed"));
          }
          const Json inspect = Json::parse(answer->body, nullptr, false);
          if (!inspect.is_object()) {
            return scheduleRecheck(watch);
          }
          if (isRunningStatus(statusOf(inspect))) {
            return issueWait(watch, "not-running", nullptr);
          }
          Outcome outcome = outcomeFromState(inspect["State"]);
          watch->say(
              LogLevel::Info,
              "Docker container " + watch->ref.display() + " has status '" + statusOf(inspect) +
                  "'" +
                  (outcome.exit_code ? " (exit code " + std::to_string(*outcome.exit_code) + ")"
                                     : std::string()));
          settle(watch, std::move(outcome));
        });
  }

  static Outcome goneOutcome(const ContainerRef& ref) {
    Outcome outcome;
    outcome.detail = "The Docker container " + ref.display() + " was removed" +
                     (ref.auto_remove ? " by the engine (auto_remove)" : "") +
                     " before its exit code could be read; the exit code is unknown.";
    return outcome;
  }

  void settle(const std::shared_ptr<Watch>& watch, Result<Outcome> result) {
    if (watch->result) {
      return;
    }
    watch->result = std::move(result);
    if (watch->timer) {
      watch->timer->cancel();
    }
    if (watch->output_open && watch->output_call) {
      // The output normally ends with the container; do not wait on it forever.
      watch->output_timer = std::make_unique<asio::steady_timer>(io_, kOutputGrace);
      watch->output_timer->async_wait([watch](const boost::system::error_code& ec) {
        if (!ec && watch->output_call) {
          watch->output_call->cancel();
        }
      });
    } else if (watch->output_open && !watch->output_call) {
      // A reopen was pending: there is nothing more to read.
      watch->output_open = false;
      if (watch->output_timer) {
        watch->output_timer->cancel();
      }
    }
    maybeComplete(watch);
  }

  void maybeComplete(const std::shared_ptr<Watch>& watch) {
    if (!watch->result || watch->output_open || watch->waiters.empty()) {
      return;
    }
    if (watch->output_timer) {
      watch->output_timer->cancel();
    }
    auto waiters = std::move(watch->waiters);
    watch->waiters.clear();
    if (auto it = watches_.find(watch->ref.id); it != watches_.end() && it->second == watch) {
      watches_.erase(it);
    }
    for (auto& waiter : waiters) {
      waiter(*watch->result);
    }
  }

  void abandon(const std::shared_ptr<Watch>& watch) {
    watch->abandoned = true;
    if (watch->wait_call) {
      watch->wait_call->cancel();
    }
    if (watch->output_call) {
      watch->output_call->cancel();
    }
    if (watch->timer) {
      watch->timer->cancel();
    }
    if (watch->output_timer) {
      watch->output_timer->cancel();
    }
    if (auto it = watches_.find(watch->ref.id); it != watches_.end() && it->second == watch) {
      watches_.erase(it);
    }
  }

  // ---- the other operations ------------------------------------------------------------------

  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Outcome> done) {
    if (shut_down_) {
      return post([done = std::move(done)] { done(cancelled()); });
    }
    auto ref = parseHandle(handle, settings_.endpoint.url);
    if (!ref) {
      return post([done = std::move(done), error = ref.error()] { done(error); });
    }
    if (auto it = watches_.find(ref->id); it != watches_.end()) {
      auto watch = it->second;
      if (log) {
        watch->log = std::move(log);
      }
      watch->waiters.push_back(std::move(done));
      // Settled already (a fast container): complete on the next turn, never inline.
      return post([this, self = shared_from_this(), watch] { maybeComplete(watch); });
    }
    auto watch = std::make_shared<Watch>();
    watch->ref = std::move(ref).value();
    watch->log = std::move(log);
    watch->decoder = LogStreamDecoder(watch->ref.tty);
    watch->waiters.push_back(std::move(done));
    watches_[watch->ref.id] = watch;
    issueWait(watch, "not-running", [this, self = shared_from_this(), watch](Result<void> ok) {
      if (ok || watch->abandoned) {
        return;
      }
      if (ok.error().kind == ErrorKind::NotFound) {
        return settle(watch, goneOutcome(watch->ref));
      }
      if (ok.error().kind == ErrorKind::Cancelled) {
        return settle(watch, ok.error());
      }
      if (ok.error().kind == ErrorKind::Transient) {
        return scheduleRecheck(watch);
      }
      settle(watch, ok.error());
    });
    if (watch->ref.stream_output) {
      openOutput(watch, false, nullptr);
    }
  }

  void kill(const RunHandle& handle, std::chrono::milliseconds grace, Callback<void> done) {
    if (shut_down_) {
      return post([done = std::move(done)] { done(cancelled()); });
    }
    auto ref = parseHandle(handle, settings_.endpoint.url);
    if (!ref) {
      return post([done = std::move(done), error = ref.error()] { done(error); });
    }
    const long long seconds = std::max<long long>(0, (grace.count() + 999) / 1000);
    const std::string what = ref->display();
    engine_->request(
        "POST", "/containers/" + ref->id + "/stop?t=" + std::to_string(seconds), std::nullopt,
        [what, done = std::move(done)](Result<HttpResponse> answer) {
          if (!answer) {
            return done(answer.error());
          }
          // 304: already stopped; 404: already gone. Both are what a kill wants.
          if (isSuccess(answer->status) || answer->status == 304 || answer->status == 404) {
            return done(success());
          }
          done(engineError(*answer, "stopping the Docker container " + what + " failed"));
        },
        grace + settings_.timeout);
  }

  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Recovery> done) {
    if (shut_down_) {
      return post([done = std::move(done)] { done(cancelled()); });
    }
    auto ref = parseHandle(handle, settings_.endpoint.url);
    if (!ref) {
      return post([done = std::move(done), error = ref.error()] { done(error); });
    }
    engine_->request(
        "GET", "/containers/" + ref->id + "/json", std::nullopt,
        [container = *ref, log, done = std::move(done)](Result<HttpResponse> answer) {
          if (!answer) {
            return done(answer.error());
          }
          if (answer->status == 404) {
            std::string message =
                "the Docker container " + container.display() + " no longer exists";
            if (container.auto_remove) {
              message +=
                  "; it was created with auto_remove, so it has most likely exited and been "
                  "removed by the engine, and its exit code is unknown";
            }
            return done(makeError(ErrorKind::NotFound, message, 404));
          }
          if (!isSuccess(answer->status)) {
            return done(engineError(
                *answer, "inspecting the Docker container " + container.display() + " failed"));
          }
          const Json inspect = Json::parse(answer->body, nullptr, false);
          if (!inspect.is_object()) {
            return done(
                makeError(ErrorKind::Internal, "the Docker engine's description of the container " +
                                                   container.display() + " is not JSON"));
          }
          const std::string status = statusOf(inspect);
          Recovery recovery;
          if (isRunningStatus(status)) {
            recovery.running = true;
            if (log) {
              log->log(LogLevel::Info, "Re-attached to the Docker container " +
                                           container.display() + " (status '" + status + "')");
            }
            return done(recovery);
          }
          if (status == "created") {
            recovery.outcome.detail =
                "The Docker container " + container.display() + " was created but never started.";
            return done(recovery);
          }
          recovery.outcome = outcomeFromState(inspect["State"]);
          done(recovery);
        });
  }

  void check(Callback<void> done) {
    if (shut_down_) {
      return post([done = std::move(done)] { done(cancelled()); });
    }
    engine_->ping([this, self = shared_from_this(), done = std::move(done)](Result<void> pong) {
      if (!pong) {
        return done(pong);
      }
      engine_->negotiate([done](Result<EngineVersion> engine) {
        if (!engine) {
          return done(engine.error());
        }
        done(success());
      });
    });
  }

  Result<Json> preview(const StartRequest& request) {
    auto job = parseJobConfiguration(request.configuration, settings_.working_directory);
    if (!job) {
      return job.error();
    }
    auto plan = planContainer(*job, request.run, facts());
    if (!plan) {
      return plan.error();
    }
    return previewOf(*plan);
  }

  void shutdown() {
    if (shut_down_) {
      return;
    }
    shut_down_ = true;
    engine_->shutdown();
    auto watches = std::move(watches_);
    watches_.clear();
    for (auto& [id, watch] : watches) {
      (void)id;
      auto waiters = std::move(watch->waiters);
      watch->waiters.clear();
      abandon(watch);
      for (auto& waiter : waiters) {
        post([waiter = std::move(waiter)] { waiter(cancelled()); });
      }
    }
  }

 private:
  EngineFacts facts() const {
    EngineFacts facts;
    if (!engine_->apiVersion().empty()) {
      facts.api_version = engine_->apiVersion();
    }
    if (engine_->engine() && !engine_->engine()->version.empty()) {
      facts.engine_version = engine_->engine()->version;
    }
    return facts;
  }

  void post(std::function<void()> task) { executor_.post(std::move(task)); }

  asio::io_context& io_;
  Executor& executor_;
  DockerBackendSettings settings_;
  std::shared_ptr<EngineClient> engine_;
  std::unordered_map<std::string, std::shared_ptr<Watch>> watches_;
  std::set<std::pair<std::string, std::string>> logged_in_;
  bool shut_down_ = false;
};

DockerBackend::DockerBackend(asio::io_context& io, Executor& executor,
                             DockerBackendSettings settings)
    : core_(std::make_shared<Core>(io, executor, std::move(settings))) {}

DockerBackend::~DockerBackend() { core_->shutdown(); }

void DockerBackend::start(const StartRequest& request, std::shared_ptr<LogSink> log,
                          Callback<RunHandle> done) {
  core_->start(request, std::move(log), std::move(done));
}

void DockerBackend::wait(const RunHandle& handle, std::shared_ptr<LogSink> log,
                         Callback<Outcome> done) {
  core_->wait(handle, std::move(log), std::move(done));
}

void DockerBackend::kill(const RunHandle& handle, std::chrono::milliseconds grace,
                         Callback<void> done) {
  core_->kill(handle, grace, std::move(done));
}

void DockerBackend::recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
                            Callback<Recovery> done) {
  core_->recover(handle, std::move(log), std::move(done));
}

void DockerBackend::check(Callback<void> done) { core_->check(std::move(done)); }

Result<Json> DockerBackend::preview(const StartRequest& request) { return core_->preview(request); }

void DockerBackend::shutdown() { core_->shutdown(); }

}  // namespace poolworker::backends::docker
