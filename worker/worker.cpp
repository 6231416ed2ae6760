#include "worker/worker.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <random>
#include <sstream>

#include "worker/exit_codes.h"
#include "worker/health_server.h"
#include "worker/log_shipper.h"
#include "worker/run_preparation.h"

namespace poolworker {
namespace {

using Clock = std::chrono::steady_clock;

std::string str(const Json& obj, const char* key) {
  if (!obj.is_object()) {
    return {};
  }
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool isTerminal(const std::string& type) {
  return type == "COMPLETED" || type == "FAILED" || type == "CANCELLED" || type == "CRASHED";
}

std::string stateType(const Json& flow_run) {
  if (flow_run.contains("state") && flow_run["state"].is_object()) {
    return str(flow_run["state"], "type");
  }
  return str(flow_run, "state_type");
}

std::string transitionIdOf(const Json& state) {
  if (!state.is_object() || !state.contains("state_details") ||
      !state["state_details"].is_object()) {
    return {};
  }
  return str(state["state_details"], "transition_id");
}

// A key that orders the ISO 8601 UTC timestamps Prefect writes ("2026-01-02T03:04:05.678Z",
// "...:05Z" or "...+00:00"): the seconds, then the fraction padded to microseconds.
std::string timestampKey(const std::string& iso) {
  if (iso.size() < 19) {
    return iso;
  }
  std::string key = iso.substr(0, 19);
  std::string fraction;
  if (iso.size() > 19 && iso[19] == '.') {
    for (std::size_t i = 20; i < iso.size() && std::isdigit(static_cast<unsigned char>(iso[i]));
         ++i) {
      fraction += iso[i];
    }
  }
  fraction.resize(9, '0');
  return key + "." + fraction;
}

// "process" → "ProcessWorker", "my-batch" → "MyBatchWorker": the class-like name Prefect's
// workers use in their default names.
std::string workerClassName(const std::string& type) {
  std::string out;
  bool upper = true;
  for (char c : type) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
      upper = false;
    } else {
      upper = true;
    }
  }
  return out + "Worker";
}

std::string slugify(const std::string& text) {
  std::string out;
  bool dash = false;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      if (dash && !out.empty()) {
        out += '-';
      }
      dash = false;
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      dash = true;
    }
  }
  return out;
}

class WorkerLogSink final : public LogSink {
 public:
  void log(LogLevel level, std::string_view message) override { logger_.log(level, message); }
  void output(std::string_view chunk, bool is_stderr) override {
    std::fwrite(chunk.data(), 1, chunk.size(), is_stderr ? stderr : stdout);
  }

 private:
  logging::Logger logger_{"backend"};
};

Result<Json> checkBackendOptions(const BackendInfo& info, const Json& given) {
  Json out = Json::object();
  if (!given.is_null() && !given.is_object()) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "backends." + info.name + " must be a mapping of options");
  }
  if (given.is_object()) {
    for (const auto& [key, value] : given.items()) {
      auto spec = std::find_if(info.options.begin(), info.options.end(),
                               [&](const OptionSpec& o) { return o.key == key; });
      if (spec == info.options.end()) {
        std::string known;
        for (const auto& o : info.options) {
          known += (known.empty() ? "" : ", ") + o.key;
        }
        return makeError(ErrorKind::InvalidConfiguration,
                         "backends." + info.name + "." + key +
                             ": unknown option (known: " + (known.empty() ? "none" : known) + ")");
      }
      out[key] = value;
    }
  }
  for (const auto& spec : info.options) {
    if (!out.contains(spec.key) && !spec.default_value.is_null()) {
      out[spec.key] = spec.default_value;
    }
  }
  return out;
}

}  // namespace

Worker::Worker(asio::io_context& io, Settings settings, prefect::PrefectClient& client,
               backends::BackendRegistry& registry, Metrics& metrics)
    : io_(io),
      settings_(std::move(settings)),
      client_(client),
      registry_(registry),
      metrics_(metrics),
      executor_(io),
      starting_(settings_.max_starting) {
  using T = Metrics::Type;
  metrics_.describe("runs_claimed_total", T::Counter, "Flow runs this worker claimed.");
  metrics_.describe("runs_started_total", T::Counter, "Flow runs whose infrastructure started.");
  metrics_.describe("runs_finished_total", T::Counter,
                    "Flow runs settled, by outcome (completed, crashed, cancelled, ...).");
  metrics_.describe("claims_lost_total", T::Counter,
                    "Claims the server refused (another worker won, or a limit applied).");
  metrics_.describe("recovery_total", T::Counter,
                    "Journalled runs settled at start-up, by outcome.");
  metrics_.describe("api_requests_total", T::Counter,
                    "Requests to the Prefect API by method, endpoint and status.");
  metrics_.describe("api_requests_resent_total", T::Counter,
                    "Requests resent at once because a pooled connection had been closed by "
                    "the server before they were sent.");
  metrics_.describe("api_request_duration_seconds", T::Histogram,
                    "Duration of requests to the Prefect API.");
  metrics_.gaugeFunction("runs_in_flight", "Flow runs held by this worker now.",
                         [this] { return static_cast<double>(runs_.size()); });
  metrics_.gaugeFunction("limit_slots", "The --limit of this worker (0 when unlimited).",
                         [this] { return static_cast<double>(settings_.limit.value_or(0)); });
  metrics_.gaugeFunction(
      "runs_waiting_to_start",
      "Claimed flow runs waiting for one of the worker.max_starting slots to be started.",
      [this] { return static_cast<double>(starting_.waiting()); });
  metrics_.gaugeFunction("poll_age_seconds", "Seconds since the last successful poll.",
                         [this] { return secondsSinceLastPoll(); });
  metrics_.gaugeFunction("heartbeat_age_seconds", "Seconds since the last successful heartbeat.",
                         [this] { return secondsSinceLastHeartbeat(); });
  metrics_.gaugeFunction("ready", "1 when the API answered and the backend checked out.",
                         [this] { return ready_ ? 1.0 : 0.0; });
  client_.setObserver(
      [this](const char* method, const std::string& endpoint, int status, double seconds) {
        if (status == prefect::kNotSent) {
          metrics_.inc("api_requests_resent_total", {{"method", method}, {"endpoint", endpoint}});
          return;
        }
        Labels labels = {
            {"method", method}, {"endpoint", endpoint}, {"status", std::to_string(status)}};
        metrics_.inc("api_requests_total", labels);
        metrics_.observe("api_request_duration_seconds", {{"endpoint", endpoint}}, seconds);
      });
  last_polled_ = Clock::now();
}

Worker::~Worker() = default;

double Worker::secondsSinceLastPoll() const {
  return std::chrono::duration<double>(Clock::now() - last_polled_).count();
}

double Worker::secondsSinceLastHeartbeat() const {
  if (!last_heartbeat_) {
    return -1;
  }
  return std::chrono::duration<double>(Clock::now() - *last_heartbeat_).count();
}

double Worker::jittered(double seconds) {
  static thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_real_distribution<double> factor(0.8, 1.2);
  return seconds * factor(rng);
}

void Worker::requestStop(StopMode mode) {
  if (stop_mode_ && (*stop_mode_ == StopMode::Cancel || mode == StopMode::Drain)) {
    return;
  }
  stop_mode_ = mode;
  stopping_ = true;
  wakeStopWaiters();
}

void Worker::wakeStopWaiters() {
  if (stop_timer_) {
    stop_timer_->cancel();
  }
  if (runs_changed_) {
    runs_changed_->cancel();
  }
}

std::shared_ptr<LogSink> Worker::makeRunLog(const std::string& flow_run_id) {
  return std::make_shared<RunLogSink>(flow_run_id, shipper_.get());
}

void Worker::journal(const std::shared_ptr<RunState>& run, RunPhase phase) {
  if (!journal_) {
    return;
  }
  JournalEntry entry;
  entry.flow_run_id = run->id;
  entry.flow_run_name = run->name;
  entry.phase = phase;
  entry.transition_id = run->transition_id;
  entry.backend = type_;
  entry.handle = run->handle;
  entry.cancelling = run->killing;
  if (auto written = journal_->write(std::move(entry)); !written) {
    log_.error("could not journal the run: " + written.error().message, run->id);
  }
}

void Worker::releaseRun(const std::shared_ptr<RunState>& run, const char* outcome) {
  auto it = runs_.find(run->id);
  if (it == runs_.end() || it->second != run) {
    return;
  }
  runs_.erase(it);
  slots_in_use_ = static_cast<int>(runs_.size());
  if (journal_) {
    if (auto removed = journal_->remove(run->id); !removed) {
      log_.warn(removed.error().message, run->id);
    }
  }
  if (outcome != nullptr) {
    metrics_.inc("runs_finished_total", {{"outcome", outcome}});
  }
  if (runs_changed_) {
    runs_changed_->cancel();
  }
}

// ---- Start-up ------------------------------------------------------------------------------

asio::awaitable<int> Worker::run() {
  stop_timer_ = std::make_unique<asio::steady_timer>(io_, Clock::time_point::max());
  runs_changed_ = std::make_unique<asio::steady_timer>(io_, Clock::time_point::max());
  shipper_ = std::make_unique<ApiLogShipper>(io_, client_, metrics_);

  auto started = co_await startup();
  if (!started) {
    log_.error(started.error().message);
    if (backend_) {
      backend_->shutdown();
    }
    co_return exit_codes::kStartupFailure;
  }
  shipper_->start();
  asio::co_spawn(io_, syncLoop(), asio::detached);
  asio::co_spawn(io_, cancellationLoop(), asio::detached);
  if (settings_.run_once) {
    co_await pollOnce();
    while (!runs_.empty() && !stopping_) {
      boost::system::error_code ignored;
      runs_changed_->expires_at(Clock::time_point::max());
      co_await runs_changed_->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    if (!stopping_) {
      stop_mode_ = StopMode::Drain;
      stopping_ = true;
    }
  } else {
    asio::co_spawn(io_, pollLoop(), asio::detached);
    while (!stopping_) {
      boost::system::error_code ignored;
      stop_timer_->expires_at(Clock::time_point::max());
      co_await stop_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
  }
  co_await shutdown();
  co_return exit_codes::kOk;
}

asio::awaitable<Result<void>> Worker::startup() {
  if (settings_.api.url.empty()) {
    co_return makeError(ErrorKind::InvalidConfiguration,
                        "PREFECT_API_URL must be set to start a worker, e.g. "
                        "PREFECT_API_URL=http://127.0.0.1:4200/api");
  }
  if (settings_.api.url.rfind("http://", 0) != 0 && settings_.api.url.rfind("https://", 0) != 0) {
    co_return makeError(
        ErrorKind::InvalidConfiguration,
        "PREFECT_API_URL '" + settings_.api.url + "' must start with http:// or https://");
  }

  // What the first poll needs is asked for at once, beside the health check: the pool (for its
  // type) and the CSRF token. Their answers count only once the health check passed.
  type_ = source_ != nullptr ? source_->backendType() : settings_.type;
  std::optional<Started<Result<Json>>> first_pool_read;
  if (type_.empty()) {
    first_pool_read.emplace(io_, client_.readWorkPool(settings_.pool));
  }
  client_.prefetchCsrfToken();

  // The API must answer as a Prefect server before anything else: a wrong URL or an unreachable
  // host ends the worker with one clear message, while a server that answers with errors is
  // waited for.
  for (int attempt = 0;; ++attempt) {
    auto health = co_await client_.health();
    if (health) {
      break;
    }
    const Error& err = health.error();
    if (err.kind == ErrorKind::Cancelled) {
      co_return err;
    }
    if (err.http_status == 0) {
      co_return makeError(ErrorKind::InvalidConfiguration,
                          "cannot reach the Prefect API at " + settings_.api.url + ": " +
                              err.message +
                              ". Check PREFECT_API_URL and that the server is running.");
    }
    if (err.http_status == 404) {
      co_return makeError(ErrorKind::InvalidConfiguration,
                          "PREFECT_API_URL '" + settings_.api.url +
                              "' does not look like a Prefect API: GET /health answered 404. "
                              "A self-hosted server's API URL ends in /api.");
    }
    if (err.kind == ErrorKind::Unauthorized) {
      co_return makeError(ErrorKind::Unauthorized,
                          "the Prefect API at " + settings_.api.url +
                              " refused the credentials (HTTP " + std::to_string(err.http_status) +
                              "). Check PREFECT_API_KEY or PREFECT_API_AUTH_STRING.");
    }
    log_.warn("Unable to reach the Prefect API while starting up (" + err.message +
              "); the worker will keep attempting to connect");
    co_await sleepFor(std::chrono::milliseconds(
        static_cast<long long>(1000 * std::min(30.0, std::pow(2.0, attempt)))));
    if (stopping_) {
      co_return makeError(ErrorKind::Cancelled, "stopped before the API answered");
    }
  }

  // The worker type: the flag, else the pool's type, else "process" for a pool to be created.
  if (type_.empty()) {
    for (int attempt = 0;; ++attempt) {
      Result<Json> pool = makeError(ErrorKind::Internal, "not read");
      if (attempt == 0 && first_pool_read) {
        pool = co_await first_pool_read->get();
      } else {
        pool = co_await client_.readWorkPool(settings_.pool);
      }
      if (pool) {
        type_ = str(*pool, "type");
        // The first sync uses this answer instead of asking again a moment later.
        startup_pool_ = std::move(pool).value();
        break;
      }
      if (pool.error().kind == ErrorKind::NotFound) {
        log_.warn("Work pool '" + settings_.pool +
                  "' does not exist; it will be created with type 'process'. Use --type to "
                  "choose another.");
        type_ = "process";
        break;
      }
      if (pool.error().kind == ErrorKind::Unauthorized) {
        co_return makeError(ErrorKind::Unauthorized,
                            "the Prefect API refused the credentials: " + pool.error().message +
                                ". Check PREFECT_API_KEY or PREFECT_API_AUTH_STRING.");
      }
      if (!pool.error().retryable()) {
        co_return pool.error();
      }
      log_.warn("could not read work pool '" + settings_.pool + "': " + pool.error().message);
      co_await sleepFor(std::chrono::seconds(std::min(30, 1 << std::min(attempt, 5))));
    }
  }
  if (type_ == "prefect-agent" || type_.ends_with(":push") || type_.ends_with(":managed")) {
    co_return makeError(ErrorKind::InvalidConfiguration, "work pool '" + settings_.pool +
                                                             "' is of type '" + type_ +
                                                             "', which is not served by workers");
  }
  BackendFactory* factory = registry_.find(type_);
  if (factory == nullptr) {
    co_return makeError(ErrorKind::InvalidConfiguration,
                        "no backend for worker type '" + type_ + "' (work pool '" + settings_.pool +
                            "'); available: " + registry_.names() + ". See `poolworker backends`.");
  }
  if (settings_.backend_options.is_object()) {
    for (const auto& [backend_name, options] : settings_.backend_options.items()) {
      BackendFactory* other = registry_.find(backend_name);
      if (other == nullptr) {
        co_return makeError(ErrorKind::InvalidConfiguration,
                            "backends." + backend_name +
                                ": no such backend (available: " + registry_.names() + ")");
      }
      if (auto checked = checkBackendOptions(other->info(), options); !checked) {
        co_return checked.error();
      }
    }
  }
  auto options =
      checkBackendOptions(factory->info(), settings_.backend_options.value(type_, Json()));
  if (!options) {
    co_return options.error();
  }

  name_ =
      settings_.name.empty() ? workerClassName(type_) + " " + prefect::newUuid() : settings_.name;
  client_.setWorkerIdentity(name_, "");

  default_template_ = factory->defaultBaseJobTemplate();
  if (!settings_.base_job_template_path.empty()) {
    std::ifstream in(settings_.base_job_template_path);
    if (!in) {
      co_return makeError(
          ErrorKind::InvalidConfiguration,
          "--base-job-template: cannot read '" + settings_.base_job_template_path + "'");
    }
    std::stringstream ss;
    ss << in.rdbuf();
    Json parsed = Json::parse(ss.str(), nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) {
      co_return makeError(
          ErrorKind::InvalidConfiguration,
          "--base-job-template: '" + settings_.base_job_template_path + "' is not a JSON object");
    }
    if (!parsed.empty() &&
        (!parsed.contains("job_configuration") || !parsed.contains("variables"))) {
      co_return makeError(ErrorKind::InvalidConfiguration,
                          "--base-job-template: '" + settings_.base_job_template_path +
                              "' must contain 'job_configuration' and 'variables'");
    }
    default_template_ = std::move(parsed);
  }

  auto journal = Journal::open(settings_.state_dir, settings_.pool);
  if (!journal) {
    co_return journal.error();
  }
  journal_ = std::move(journal).value();
  log_.debug("journal: " + journal_->directory());

  BackendContext context;
  context.executor = &executor_;
  context.worker_name = name_;
  context.state_directory = journal_->backendDirectory(type_);
  context.options = *options;
  context.worker_log = std::make_shared<WorkerLogSink>();
  auto backend = factory->create(context);
  if (!backend) {
    co_return makeError(backend.error().kind,
                        "backend '" + type_ + "' could not start: " + backend.error().message);
  }
  backend_ = std::move(backend).value();

  auto synced = co_await syncOnce(true);
  if (!synced) {
    if (!synced.error().retryable()) {
      co_return synced.error();
    }
    log_.warn("Unable to reach the Prefect API while starting up (" + synced.error().message +
              "); the worker will keep attempting to connect");
  }

  auto checked_op =
      awaitCallback<void>([this](Callback<void> done) { backend_->check(std::move(done)); });
  auto checked = co_await std::move(checked_op);
  if (!checked) {
    log_.warn("backend '" + type_ + "' is not ready: " + checked.error().message);
  }
  ready_ = checked.ok() && synced_;

  if (settings_.with_healthcheck) {
    health_ = std::make_unique<HealthServer>(io_, *this, metrics_, settings_.query_seconds);
    if (auto listening = health_->listen(settings_.webserver_host,
                                         static_cast<uint16_t>(settings_.webserver_port));
        !listening) {
      co_return listening.error();
    }
  }

  co_await recoverRuns();

  started_event_id_ = prefect::newUuid();
  emitEvent("prefect.worker.started", nullptr);
  log_.info("Worker '" + name_ + "' started!");
  if (on_started_) {
    on_started_();
  }
  co_return success();
}

// ---- Sync and heartbeat ---------------------------------------------------------------------

asio::awaitable<Result<void>> Worker::syncOnce(bool at_startup) {
  if (source_ != nullptr) {
    auto synced = co_await source_->sync(at_startup);
    api_healthy_ = synced.ok() || !synced.error().retryable();
    if (synced) {
      last_heartbeat_ = Clock::now();
      synced_ = true;
    }
    co_return synced;
  }
  Result<Json> pool = makeError(ErrorKind::Internal, "not read");
  if (at_startup && startup_pool_) {
    pool = std::move(*startup_pool_);
    startup_pool_.reset();
  } else {
    pool = co_await client_.readWorkPool(settings_.pool);
  }
  if (!pool && pool.error().kind == ErrorKind::NotFound) {
    if (!settings_.create_pool_if_not_found) {
      log_.warn("Work pool '" + settings_.pool + "' not found!");
      co_return success();
    }
    std::optional<Json> tmpl;
    if (!settings_.base_job_template_path.empty()) {
      tmpl = default_template_;
    }
    auto created = co_await client_.createWorkPool(settings_.pool, type_, tmpl);
    if (created) {
      log_.info("Work pool '" + settings_.pool + "' created.");
      pool = std::move(created);
    } else if (created.error().http_status == 409) {
      pool = co_await client_.readWorkPool(settings_.pool);
    } else {
      co_return makeError(
          created.error().kind,
          "work pool '" + settings_.pool + "' could not be created: " + created.error().message,
          created.error().http_status);
    }
  }
  if (!pool) {
    api_healthy_ = false;
    co_return pool.error();
  }
  Json snapshot = std::move(pool).value();
  if (!snapshot.contains("base_job_template") || !snapshot["base_job_template"].is_object() ||
      snapshot["base_job_template"].empty()) {
    auto patched = co_await client_.updateWorkPoolTemplate(settings_.pool, default_template_);
    if (!patched) {
      log_.warn("could not install the default base job template on work pool '" + settings_.pool +
                "': " + patched.error().message);
    } else {
      log_.info("Installed the default '" + type_ + "' base job template on work pool '" +
                settings_.pool + "'.");
    }
    snapshot["base_job_template"] = default_template_;
  }
  std::string pool_type = str(snapshot, "type");
  if (!pool_type.empty() && pool_type != type_ && (at_startup || str(pool_, "type") != pool_type)) {
    log_.warn("Worker type mismatch! This worker process expects type '" + type_ +
              "' but received '" + pool_type + "' from the server. Unexpected behavior may occur.");
  }
  pool_ = std::move(snapshot);

  if (at_startup) {
    // The first poll needs the pool, not the heartbeat's answer: the heartbeat goes beside it,
    // and a failed one is retried by the sync loop as any later one.
    synced_ = true;
    api_healthy_ = true;
    asio::co_spawn(io_, firstHeartbeat(), asio::detached);
    co_return success();
  }
  co_return co_await heartbeat();
}

asio::awaitable<void> Worker::firstHeartbeat() {
  auto beat = co_await heartbeat();
  if (!beat && beat.error().kind != ErrorKind::Cancelled) {
    log_.warn("the first heartbeat to work pool '" + settings_.pool +
              "' failed: " + beat.error().message);
  }
}

asio::awaitable<Result<void>> Worker::heartbeat() {
  auto beat = co_await client_.heartbeat(settings_.pool, name_,
                                         static_cast<int>(settings_.heartbeat_seconds));
  if (!beat) {
    if (beat.error().retryable()) {
      api_healthy_ = false;
    }
    co_return beat.error();
  }
  last_heartbeat_ = Clock::now();
  api_healthy_ = true;
  synced_ = true;
  co_return success();
}

asio::awaitable<void> Worker::syncLoop() {
  int failures = 0;
  while (!stopping_) {
    co_await sleepFor(std::chrono::milliseconds(
        static_cast<long long>(1000 * jittered(settings_.heartbeat_seconds))));
    if (stopping_) {
      break;
    }
    auto synced = co_await syncOnce(false);
    if (synced) {
      if (failures > 0) {
        log_.info("the Prefect API answers again");
      }
      failures = 0;
      if (!ready_) {
        auto checked_op =
            awaitCallback<void>([this](Callback<void> done) { backend_->check(std::move(done)); });
        auto checked = co_await std::move(checked_op);
        ready_ = checked.ok();
      }
      continue;
    }
    ++failures;
    if (failures == 1 || failures % 10 == 0) {
      log_.warn("sync with work pool '" + settings_.pool + "' failed (" + std::to_string(failures) +
                " in a row): " + synced.error().message);
    }
  }
}

// ---- Polling and submission ----------------------------------------------------------------

asio::awaitable<void> Worker::pollLoop() {
  while (!stopping_) {
    co_await pollOnce();
    if (stopping_) {
      break;
    }
    co_await sleepFor(std::chrono::milliseconds(
        static_cast<long long>(1000 * jittered(settings_.query_seconds))));
  }
}

asio::awaitable<void> Worker::pollOnce() {
  if (!synced_) {
    // Keeps /health green while the API is unreachable at start-up, as Prefect's worker does.
    last_polled_ = Clock::now();
    co_return;
  }
  auto before = std::chrono::system_clock::now() +
                std::chrono::milliseconds(
                    static_cast<long long>(1000 * std::floor(settings_.prefetch_seconds)));
  Result<Json> scheduled = makeError(ErrorKind::Internal, "not polled");
  if (source_ != nullptr) {
    scheduled = co_await source_->scheduledRuns(before);
  } else {
    scheduled =
        co_await client_.getScheduledFlowRuns(settings_.pool, settings_.work_queues, before);
  }
  if (!scheduled) {
    const std::string polled =
        source_ != nullptr ? "the served deployments" : "work pool '" + settings_.pool + "'";
    if (scheduled.error().kind == ErrorKind::NotFound) {
      log_.warn("polling " + polled + " found nothing to poll: " + scheduled.error().message);
      last_polled_ = Clock::now();
    } else {
      log_.warn("polling " + polled + " failed: " + scheduled.error().message);
    }
    co_return;
  }
  last_polled_ = Clock::now();
  if (!scheduled->is_array()) {
    co_return;
  }
  for (const auto& item : *scheduled) {
    if (stopping_) {
      break;
    }
    const Json& flow_run = item.contains("flow_run") ? item["flow_run"] : item;
    std::string id = str(flow_run, "id");
    if (id.empty() || runs_.contains(id)) {
      continue;
    }
    if (settings_.limit && static_cast<int>(runs_.size()) >= *settings_.limit) {
      log_.info("Flow run limit reached; " + std::to_string(runs_.size()) +
                " flow runs in progress.");
      break;
    }
    if (source_ != nullptr) {
      const std::string deployment_id = str(flow_run, "deployment_id");
      if (auto limit = source_->limitFor(deployment_id)) {
        auto held = std::count_if(runs_.begin(), runs_.end(), [&](const auto& kv) {
          return str(kv.second->flow_run, "deployment_id") == deployment_id;
        });
        if (held >= *limit) {
          log_.debug("deployment " + deployment_id +
                         " is at its concurrency limit; run stays "
                         "scheduled",
                     id);
          continue;
        }
      }
    }
    auto run = std::make_shared<RunState>();
    run->id = id;
    run->name = str(flow_run, "name");
    run->flow_run = flow_run;
    run->log = makeRunLog(id);
    run->started = Clock::now();
    runs_[id] = run;
    slots_in_use_ = static_cast<int>(runs_.size());
    asio::co_spawn(io_, submitRun(run), asio::detached);
  }
}

asio::awaitable<Result<Json>> Worker::cachedDeployment(const std::string& id) {
  // Many runs of one deployment arrive together; one read serves them for a few seconds, and
  // the runs that ask while it is under way wait for it rather than send their own.
  auto now = Clock::now();
  if (auto it = deployment_cache_.find(id);
      it != deployment_cache_.end() && now - it->second.first < std::chrono::seconds(5)) {
    co_return it->second.second;
  }
  if (auto pending = deployment_reads_.find(id); pending != deployment_reads_.end()) {
    auto read = pending->second;
    boost::system::error_code ignored;
    co_await read->done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    co_return *read->result;
  }
  auto read = std::make_shared<SharedRead>(io_);
  deployment_reads_[id] = read;
  auto deployment = co_await client_.readDeployment(id);
  if (deployment) {
    if (deployment_cache_.size() > 1000) {
      deployment_cache_.clear();
    }
    deployment_cache_[id] = {now, *deployment};
  }
  read->result = deployment;
  deployment_reads_.erase(id);
  read->done.cancel();
  co_return deployment;
}

asio::awaitable<Result<Json>> Worker::cachedFlow(const std::string& id) {
  auto now = Clock::now();
  if (auto it = flow_cache_.find(id);
      it != flow_cache_.end() && now - it->second.first < std::chrono::seconds(60)) {
    co_return it->second.second;
  }
  auto flow = co_await client_.readFlow(id);
  if (flow) {
    if (flow_cache_.size() > 1000) {
      flow_cache_.clear();
    }
    flow_cache_[id] = {now, *flow};
  }
  co_return flow;
}

asio::awaitable<Result<prefect::OrchestrationResult>> Worker::propose(const std::string& id,
                                                                      const Json& state, bool force,
                                                                      bool retry) {
  for (;;) {
    auto result = co_await client_.setFlowRunState(id, state, force, retry);
    if (!result || result->status != "WAIT") {
      co_return result;
    }
    double delay = std::clamp(result->delay_seconds, 0.0, 3600.0);
    co_await sleepFor(std::chrono::milliseconds(static_cast<long long>(delay * 1000)));
  }
}

// How old a poll answer may be when a run is claimed from it without reading the run again.
constexpr auto kFreshPollAnswer = std::chrono::seconds(1);

asio::awaitable<void> Worker::submitRun(std::shared_ptr<RunState> run) {
  // Each step in a frame of its own: what the claim and the start read is freed before the
  // supervision, which lasts as long as the run.
  auto claim = claimRun(run);
  const bool claimed = co_await std::move(claim);
  if (claimed) {
    co_await continueClaimedRun(std::move(run));
  }
}

asio::awaitable<bool> Worker::claimRun(std::shared_ptr<RunState> run) {
  const std::string deployment_id = str(run->flow_run, "deployment_id");
  if (!deployment_id.empty()) {
    auto read = co_await cachedDeployment(deployment_id);
    if (!read) {
      if (read.error().kind == ErrorKind::NotFound) {
        run->log->log(LogLevel::Warning,
                      "Deployment " + deployment_id + " no longer exists, cancelled run.");
        co_await markCancelled(run,
                               "Deployment " + deployment_id + " no longer exists, cancelled run.");
        releaseRun(run, "cancelled");
      } else {
        log_.warn("could not read deployment " + deployment_id + ": " + read.error().message +
                      "; the run stays scheduled",
                  run->id);
        releaseRun(run, nullptr);
      }
      co_return false;
    }
  }

  // The server accepts PENDING again from a COMPLETED run that has no persisted result, so a
  // claim built on a stale poll answer could start a run that another worker has already
  // finished. Claim only a run that is still SCHEDULED, and never retry a claim later: a
  // claim that fails leaves the run to the next poll, which sees its state afresh.
  if (Clock::now() - run->started > kFreshPollAnswer) {
    auto current = co_await client_.readFlowRun(run->id);
    if (!current || stateType(*current) != "SCHEDULED") {
      log_.debug("not claiming flow run '" + run->id + "': it is no longer SCHEDULED", run->id);
      metrics_.inc("claims_lost_total", {{"reason", "stale"}});
      releaseRun(run, nullptr);
      co_return false;
    }
  }

  // Claim: propose PENDING. The transition id is journalled first, so that after a crash the
  // next worker can tell whether the PENDING state it finds is our claim.
  Json pending = prefect::makeState("PENDING", "Pending", "", run->id);
  run->transition_id = transitionIdOf(pending);
  journal(run, RunPhase::Claiming);
  auto claim = co_await propose(run->id, pending, false, /*retry=*/false);
  if (!claim) {
    // The answer was lost; the server may have accepted. Its state tells.
    auto current = co_await client_.readFlowRun(run->id);
    bool ours = current && stateType(*current) == "PENDING" &&
                transitionIdOf(current->value("state", Json())) == run->transition_id;
    if (!ours) {
      log_.warn("could not claim the run: " + claim.error().message, run->id);
      releaseRun(run, nullptr);
      co_return false;
    }
  } else if (claim->status == "ABORT") {
    log_.debug("Aborted submission of flow run '" + run->id +
                   "'. Server sent an abort signal: " + claim->reason,
               run->id);
    metrics_.inc("claims_lost_total", {{"reason", "abort"}});
    releaseRun(run, nullptr);
    co_return false;
  } else if (claim->status != "ACCEPT" || claim->stateType() != "PENDING") {
    bool ours =
        claim->stateType() == "PENDING" && transitionIdOf(claim->state) == run->transition_id;
    if (!ours) {
      log_.info("Aborted submission of flow run '" + run->id +
                    "': server returned a non-pending state '" +
                    (claim->stateName().empty() ? claim->stateType() : claim->stateName()) + "'" +
                    (claim->reason.empty() ? "" : " (" + claim->reason + ")"),
                run->id);
      metrics_.inc("claims_lost_total", {{"reason", "reject"}});
      releaseRun(run, nullptr);
      co_return false;
    }
  }
  run->claimed = true;
  journal(run, RunPhase::Claimed);
  metrics_.inc("runs_claimed_total");
  run->log->log(LogLevel::Info, "Worker '" + name_ + "' submitting flow run '" + run->id + "'");
  co_return true;
}

asio::awaitable<std::optional<Json>> Worker::finishedBeforeOurClaim(std::shared_ptr<RunState> run) {
  auto history = co_await client_.readFlowRunStates(run->id);
  if (!history || !history->is_array()) {
    // Without the history the check above (our claim is the current state) stands alone.
    co_return std::nullopt;
  }
  // Our claim is the current state, so every other state was written before it: the newest of
  // them is the state our claim replaced. The history's order cannot tell, because a state's
  // timestamp is taken when the server receives the proposal, and a claim held up by a busy
  // database is written seconds later, after states with newer timestamps.
  const Json* replaced = nullptr;
  std::string replaced_at;
  for (const Json& state : *history) {
    if (!state.is_object() || transitionIdOf(state) == run->transition_id) {
      continue;
    }
    std::string at = timestampKey(str(state, "timestamp"));
    if (!replaced || at > replaced_at) {
      replaced = &state;
      replaced_at = std::move(at);
    }
  }
  if (replaced) {
    const std::string type = str(*replaced, "type");
    if (type == "COMPLETED" || type == "FAILED" || type == "CRASHED") {
      co_return *replaced;
    }
  }
  co_return std::nullopt;
}

asio::awaitable<void> Worker::continueClaimedRun(std::shared_ptr<RunState> run) {
  auto start = startClaimedRun(run);
  const bool started = co_await std::move(start);
  if (started) {
    co_await superviseRun(std::move(run));
  }
}

asio::awaitable<void> Worker::releaseUnstarted(std::shared_ptr<RunState> run) {
  auto reschedule = prefect::makeState("SCHEDULED", "Scheduled",
                                       "Released by a stopping worker before it started.", run->id);
  co_await propose(run->id, reschedule, true);
  releaseRun(run, nullptr);
}

asio::awaitable<bool> Worker::startClaimedRun(std::shared_ptr<RunState> run) {
  // A burst of claimed runs is prepared and started a few at a time: all at once, their
  // answers, templates and requests would peak the heap at many times what the started runs
  // keep, and the backend's API would take the whole burst at once.
  const bool queued = starting_.full();
  auto slot = co_await starting_.acquire();
  if (queued && stopping_) {
    co_await releaseUnstarted(run);
    co_return false;
  }
  const std::string deployment_id = str(run->flow_run, "deployment_id");
  Json deployment;
  if (!deployment_id.empty()) {
    auto read = co_await cachedDeployment(deployment_id);
    if (read) {
      deployment = std::move(read).value();
    } else if (read.error().kind == ErrorKind::NotFound) {
      co_await markCancelled(run,
                             "Deployment " + deployment_id + " no longer exists, cancelled run.");
      releaseRun(run, "cancelled");
      co_return false;
    } else {
      std::string message = "Failed to submit flow run to infrastructure: deployment " +
                            deployment_id + " could not be read: " + read.error().message;
      run->log->log(LogLevel::Error, message);
      co_await proposeCrashed(run, message);
      releaseRun(run, "crashed");
      co_return false;
    }
  }
  Json flow;
  if (std::string flow_id = str(run->flow_run, "flow_id"); !flow_id.empty()) {
    auto read = co_await cachedFlow(flow_id);
    if (read) {
      flow = std::move(read).value();
    }
  }

  PreparationContext ctx;
  ctx.pool = source_ != nullptr ? source_->preparationPool() : pool_;
  ctx.flow_run = run->flow_run;
  ctx.deployment = source_ != nullptr ? source_->preparedDeployment(deployment) : deployment;
  ctx.flow = flow;
  ctx.worker_name = name_;
  ctx.worker_id = worker_id_;
  ctx.settings_env = settings_.prefect_settings;
  ctx.api_url = settings_.api.url;
  auto prepared = co_await prepareRun(client_, ctx);
  if (!prepared) {
    std::string message = "Failed to submit flow run to infrastructure: " +
                          std::string(prepared.error().kind == ErrorKind::InvalidConfiguration
                                          ? "invalid job configuration: "
                                          : "") +
                          prepared.error().message;
    run->log->log(LogLevel::Error, "Failed to submit flow run '" + run->name +
                                       "' to infrastructure: " + prepared.error().message);
    co_await proposeCrashed(run, message);
    releaseRun(run, "crashed");
    co_return false;
  }

  Json labels = {{"prefect.worker.name", name_}, {"prefect.worker.type", type_}};
  if (source_ == nullptr) {
    labels["prefect.work-pool.name"] = settings_.pool;
    labels["prefect.work-pool.id"] = str(pool_, "id");
  }
  asio::co_spawn(
      io_,
      [this, id = run->id, labels]() -> asio::awaitable<void> {
        auto updated = co_await client_.updateFlowRunLabels(id, labels);
        if (!updated && updated.error().kind != ErrorKind::NotFound) {
          log_.debug("could not label the run: " + updated.error().message, id);
        }
      },
      asio::detached);

  // Prefect's server on SQLite can accept two concurrent claims of one run (nothing locks the
  // row), and it accepts the named PENDING state below from a PENDING or a finished run. So go
  // on only while the run's current state is still this worker's own claim: of two accepted
  // claims only the later one is current, so exactly one worker passes.
  if (auto current = co_await client_.readFlowRun(run->id); current) {
    const Json state = current->value("state", Json());
    const std::string type = stateType(*current);
    const bool our_claim =
        type == "PENDING" && (transitionIdOf(state) == run->transition_id ||
                              (run->recovered && str(state, "name") == "Submitting"));
    if (type == "CANCELLING" || type == "CANCELLED") {
      run->cancel_requested = true;
    } else if (!our_claim) {
      log_.info("Not starting flow run '" + run->id + "': another worker's claim of it won (" +
                    (type.empty() ? std::string("no state") : type) + ")",
                run->id);
      metrics_.inc("claims_lost_total", {{"reason", "race"}});
      releaseRun(run, nullptr);
      co_return false;
    } else if (auto ended = co_await finishedBeforeOurClaim(run); ended) {
      // The server accepts PENDING from a finished run without a persisted result, so a claim
      // that reached it after another worker had already run the flow to its end was accepted.
      // Put the run back in the state it ended in instead of running it a second time.
      const std::string ended_type = str(*ended, "type");
      log_.info("Not starting flow run '" + run->id + "': it had already ended " + ended_type +
                    " when this worker's claim reached the server; restoring that state",
                run->id);
      Json restore =
          prefect::makeState(ended_type, str(*ended, "name"), str(*ended, "message"), run->id);
      restore["data"] = ended->value("data", Json());
      co_await propose(run->id, restore, true);
      metrics_.inc("claims_lost_total", {{"reason", "finished"}});
      releaseRun(run, nullptr);
      co_return false;
    }
  }

  // Submitting tells the UI the run is being started, and its answer tells us whether the run
  // was cancelled while we prepared it.
  auto submitting =
      co_await propose(run->id, prefect::makeState("PENDING", "Submitting", "", run->id), false);
  if (submitting && submitting->status != "ACCEPT") {
    std::string type = submitting->stateType();
    if (type.empty() || type == "PENDING") {
      auto current = co_await client_.readFlowRun(run->id);
      if (current) {
        type = stateType(*current);
      }
    }
    if (type == "CANCELLING" || type == "CANCELLED") {
      run->cancel_requested = true;
    } else if (!type.empty() && type != "PENDING") {
      run->log->log(LogLevel::Warning,
                    "Not starting flow run '" + run->name + "': it is now in state " + type);
      releaseRun(run, nullptr);
      co_return false;
    }
  }
  if (run->cancel_requested) {
    run->log->log(LogLevel::Info,
                  "Flow run '" + run->name + "' was cancelled before it started; not starting it.");
    co_await markCancelled(run, "Flow run was cancelled before it started.");
    releaseRun(run, "cancelled");
    co_return false;
  }
  if (stopping_ && stop_mode_ == StopMode::Cancel) {
    co_await releaseUnstarted(run);
    co_return false;
  }

  {
    auto handle_op = awaitCallback<RunHandle>(
        [this, request = std::move(prepared->request), sink = run->log](Callback<RunHandle> done) {
          backend_->start(request, sink, std::move(done));
        });
    auto handle = co_await std::move(handle_op);
    if (!handle) {
      run->log->log(LogLevel::Error, "Failed to submit flow run '" + run->name +
                                         "' to infrastructure: " + handle.error().message);
      co_await proposeCrashed(
          run, "Failed to submit flow run to infrastructure: " + handle.error().message);
      releaseRun(run, "crashed");
      co_return false;
    }
    run->handle = std::move(handle).value();
  }
  // This frame lives as long as the run: keep nothing of the preparation (the pool's template,
  // the deployment, the rendered configuration), and of the flow run only what events name.
  deployment = Json();
  flow = Json();
  ctx = PreparationContext{};
  prepared = PreparedRun{};
  run->flow_run = Json{{"deployment_id", run->flow_run.value("deployment_id", Json())},
                       {"flow_id", run->flow_run.value("flow_id", Json())}};
  journal(run, RunPhase::Started);
  metrics_.inc("runs_started_total");
  auto pid = co_await client_.setInfrastructurePid(run->id, run->handle->infrastructure_pid);
  if (!pid) {
    run->log->log(LogLevel::Warning,
                  "An error occurred while setting the `infrastructure_pid` on flow run '" +
                      run->id + "': " + pid.error().message +
                      ". The flow run will not be cancellable.");
  }
  slot.reset();
  run->log->log(LogLevel::Info, "Flow run '" + run->name + "' submitted to infrastructure (" +
                                    run->handle->infrastructure_pid + ")");
  emitEvent("prefect.worker.submitted-flow-run", run);
  if (run->cancel_requested && !run->killing) {
    asio::co_spawn(io_, cancelRun(run), asio::detached);
  }
  co_return true;
}

asio::awaitable<void> Worker::superviseRun(std::shared_ptr<RunState> run) {
  // Thousands of runs wait here for hours, so this frame holds the wait and nothing else: GCC
  // gives every local and temporary of a coroutine its own slot for the frame's whole life, and
  // with what follows the outcome inline the frame was several times larger. The handle is read
  // from the run, not copied into the frame: the backend copies what it keeps.
  auto outcome_op = awaitCallback<Outcome>([this, run](Callback<Outcome> done) {
    backend_->wait(*run->handle, run->log, std::move(done));
  });
  auto outcome = co_await std::move(outcome_op);
  auto settle = settleRun(std::move(run), std::move(outcome));
  co_await std::move(settle);
}

asio::awaitable<void> Worker::settleRun(std::shared_ptr<RunState> run, Result<Outcome> outcome) {
  if (!outcome) {
    if (outcome.error().kind == ErrorKind::Cancelled) {
      co_return;  // The worker is stopping; the journal keeps the run for the next one.
    }
    run->log->log(LogLevel::Error, "Lost track of flow run '" + run->name +
                                       "' infrastructure: " + outcome.error().message +
                                       ". Its final state is left to the flow run itself.");
    releaseRun(run, "lost");
    co_return;
  }
  Json extra = {{"prefect.infrastructure.identifier", run->handle->infrastructure_pid}};
  if (outcome->exit_code) {
    extra["prefect.infrastructure.status-code"] = std::to_string(*outcome->exit_code);
  }
  if (run->killing) {
    co_await markCancelled(run, run->stop_cancel
                                    ? "Flow run was cancelled because its worker was stopped."
                                    : "Flow run was cancelled successfully.");
    emitEvent("prefect.worker.executed-flow-run", run, extra);
    releaseRun(run, "cancelled");
    co_return;
  }
  if (outcome->succeeded()) {
    emitEvent("prefect.worker.executed-flow-run", run, extra);
    releaseRun(run, "completed");
    co_return;
  }
  // A flow cancelled before this worker's cancellation poll saw it exits by itself (the engine
  // stops on CANCELLING). The server refuses CRASHED from CANCELLING, so the run would stay
  // CANCELLING for ever; finish the cancellation instead, as Prefect's worker does.
  if (auto current = co_await client_.readFlowRun(run->id);
      current && stateType(*current) == "CANCELLING") {
    run->log->log(LogLevel::Info, "Flow run '" + run->name +
                                      "' infrastructure exited while the run was being "
                                      "cancelled; marking it cancelled.");
    co_await markCancelled(run, "Flow run was cancelled successfully.");
    emitEvent("prefect.worker.executed-flow-run", run, extra);
    releaseRun(run, "cancelled");
    co_return;
  }
  std::string message;
  if (outcome->exit_code) {
    int code = *outcome->exit_code;
    message = "Flow run infrastructure exited with non-zero status code " + std::to_string(code) +
              ". " + exit_codes::explain(code);
    run->log->log(exit_codes::isQuiet(code) ? LogLevel::Info : LogLevel::Error,
                  "Flow run '" + run->name + "' infrastructure exited with status code " +
                      std::to_string(code) + ". " + exit_codes::resolution(code));
  } else {
    message = "Flow run infrastructure ended without an exit code.";
    run->log->log(LogLevel::Error,
                  "Flow run '" + run->name + "' infrastructure ended: " +
                      (outcome->detail.empty() ? "no exit code" : outcome->detail));
  }
  if (!outcome->detail.empty()) {
    message += " " + outcome->detail;
  }
  co_await proposeCrashed(run, message);
  emitEvent("prefect.worker.executed-flow-run", run, extra);
  releaseRun(run, "crashed");
}

asio::awaitable<void> Worker::proposeCrashed(const std::shared_ptr<RunState>& run,
                                             const std::string& message) {
  auto result =
      co_await propose(run->id, prefect::makeState("CRASHED", "Crashed", message, run->id), false);
  if (!result) {
    if (result.error().kind != ErrorKind::NotFound) {
      log_.error("could not report the run as crashed: " + result.error().message, run->id);
    }
    co_return;
  }
  if (result->status == "ACCEPT") {
    run->log->log(LogLevel::Info, "Reported flow run '" + run->id + "' as crashed: " + message);
  }
}

asio::awaitable<void> Worker::markCancelled(const std::shared_ptr<RunState>& run,
                                            const std::string& message) {
  Json current;
  if (auto read = co_await client_.readFlowRun(run->id); read) {
    current = read->value("state", Json());
    if (str(current, "type") == "CANCELLED") {
      co_return;
    }
  }
  Json state = prefect::makeState("CANCELLED", "Cancelled", message, run->id);
  if (current.is_object() && current.contains("state_details") &&
      current["state_details"].is_object()) {
    Json details = current["state_details"];
    details["transition_id"] = state["state_details"]["transition_id"];
    details["flow_run_id"] = run->id;
    state["state_details"] = details;
  }
  auto result = co_await propose(run->id, state, true);
  if (result) {
    co_return;
  }
  auto reread = co_await client_.readFlowRun(run->id);
  if (reread && isTerminal(stateType(*reread))) {
    co_return;
  }
  co_await proposeCrashed(run,
                          "Flow run process exited after a cancellation request, but the "
                          "worker could not record the Cancelled state: " +
                              result.error().message);
}

// ---- Cancellation ---------------------------------------------------------------------------

asio::awaitable<void> Worker::cancellationLoop() {
  for (;;) {
    co_await sleepFor(std::chrono::milliseconds(
        static_cast<long long>(1000 * jittered(settings_.cancellation_poll_seconds))));
    co_await checkCancellations();
  }
}

asio::awaitable<void> Worker::checkCancellations() {
  std::vector<std::string> ids;
  for (const auto& [id, run] : runs_) {
    if (run->claimed && !run->cancel_requested) {
      ids.push_back(id);
    }
  }
  for (size_t start = 0; start < ids.size(); start += 200) {
    Json chunk = Json::array();
    for (size_t i = start; i < std::min(ids.size(), start + 200); ++i) {
      chunk.push_back(ids[i]);
    }
    Json filter = {{"flow_runs",
                    {{"id", {{"any_", chunk}}},
                     {"state", {{"type", {{"any_", {"CANCELLING", "CANCELLED"}}}}}}}},
                   {"limit", 200},
                   {"offset", 0}};
    auto found = co_await client_.filterFlowRuns(filter);
    if (!found) {
      log_.debug("cancellation check failed: " + found.error().message);
      co_return;
    }
    if (!found->is_array()) {
      continue;
    }
    for (const auto& fr : *found) {
      auto it = runs_.find(str(fr, "id"));
      if (it == runs_.end() || it->second->cancel_requested) {
        continue;
      }
      auto run = it->second;
      run->cancel_requested = true;
      run->log->log(LogLevel::Info, "Flow run '" + run->name + "' is " + stateType(fr) +
                                        "; stopping its infrastructure.");
      if (run->handle && !run->killing) {
        asio::co_spawn(io_, cancelRun(run), asio::detached);
      }
    }
  }
}

asio::awaitable<void> Worker::cancelRun(std::shared_ptr<RunState> run) {
  if (!run->handle || run->killing) {
    co_return;
  }
  run->killing = true;
  journal(run, RunPhase::Started);
  auto grace =
      std::chrono::milliseconds(static_cast<long long>(settings_.kill_grace_seconds * 1000));
  auto killed_op = awaitCallback<void>([this, handle = *run->handle, grace](Callback<void> done) {
    backend_->kill(handle, grace, std::move(done));
  });
  auto killed = co_await std::move(killed_op);
  if (!killed) {
    run->log->log(LogLevel::Error, "Could not stop flow run '" + run->name +
                                       "' infrastructure: " + killed.error().message);
    run->killing = false;
    run->cancel_requested = false;  // The next check tries again.
  }
}

// ---- Recovery ------------------------------------------------------------------------------

asio::awaitable<void> Worker::recoverRuns() {
  std::vector<std::string> problems;
  auto entries = journal_->load(&problems);
  for (const auto& problem : problems) {
    log_.warn(problem);
  }
  if (entries.empty()) {
    co_return;
  }
  log_.info("Settling " + std::to_string(entries.size()) +
            " run(s) journalled by an earlier worker process");
  for (auto& entry : entries) {
    if (entry.backend != type_) {
      log_.warn("journalled run of backend '" + entry.backend + "' cannot be settled by a '" +
                    type_ + "' worker; leaving it",
                entry.flow_run_id);
      continue;
    }
    auto run = std::make_shared<RunState>();
    run->id = entry.flow_run_id;
    run->name = entry.flow_run_name;
    run->transition_id = entry.transition_id;
    run->recovered = true;
    run->log = makeRunLog(run->id);
    run->started = Clock::now();
    runs_[run->id] = run;
    slots_in_use_ = static_cast<int>(runs_.size());
    asio::co_spawn(io_, settleJournalEntry(std::move(entry)), asio::detached);
  }
}

asio::awaitable<void> Worker::settleJournalEntry(JournalEntry entry) {
  auto run = runs_.at(entry.flow_run_id);
  Result<Json> flow_run = makeError(ErrorKind::Transient, "not read yet");
  for (int attempt = 0; attempt < 30 && !stopping_; ++attempt) {
    flow_run = co_await client_.readFlowRun(run->id);
    if (flow_run || !flow_run.error().retryable()) {
      break;
    }
    co_await sleepFor(std::chrono::seconds(std::min(30, 1 << std::min(attempt, 5))));
  }
  if (!flow_run && flow_run.error().kind == ErrorKind::NotFound) {
    log_.info("journalled run no longer exists in Prefect; forgetting it", run->id);
    metrics_.inc("recovery_total", {{"outcome", "deleted"}});
    releaseRun(run, nullptr);
    co_return;
  }
  if (!flow_run) {
    // Unknown for now: keep the journal entry for the next worker start.
    log_.warn("could not read journalled run: " + flow_run.error().message, run->id);
    runs_.erase(run->id);
    slots_in_use_ = static_cast<int>(runs_.size());
    co_return;
  }
  run->flow_run = *flow_run;
  run->name = str(*flow_run, "name");
  const std::string type = stateType(*flow_run);
  const Json state = flow_run->value("state", Json());

  if (entry.phase != RunPhase::Started || !entry.handle) {
    bool ours = type == "PENDING" &&
                (transitionIdOf(state) == entry.transition_id ||
                 (entry.phase == RunPhase::Claimed && str(state, "name") == "Submitting"));
    if (!ours || str(*flow_run, "infrastructure_pid") != "") {
      metrics_.inc("recovery_total", {{"outcome", "not_ours"}});
      releaseRun(run, nullptr);
      co_return;
    }
    run->claimed = true;
    metrics_.inc("recovery_total", {{"outcome", "resumed"}});
    run->log->log(LogLevel::Info,
                  "Resuming the submission of flow run '" + run->name +
                      "', claimed by an earlier worker process that stopped before starting it.");
    co_await continueClaimedRun(run);
    co_return;
  }

  run->claimed = true;
  run->handle = entry.handle;
  run->killing = false;
  auto recovered_op = awaitCallback<Recovery>(
      [this, handle = *entry.handle, sink = run->log](Callback<Recovery> done) {
        backend_->recover(handle, sink, std::move(done));
      });
  auto recovered = co_await std::move(recovered_op);
  if (recovered && recovered->running) {
    metrics_.inc("recovery_total", {{"outcome", "reattached"}});
    run->log->log(LogLevel::Info, "Worker '" + name_ + "' re-attached to flow run '" + run->name +
                                      "' (" + entry.handle->infrastructure_pid + ")");
    if (type == "CANCELLING" || type == "CANCELLED" || entry.cancelling) {
      run->cancel_requested = true;
      asio::co_spawn(io_, cancelRun(run), asio::detached);
    }
    co_await superviseRun(run);
    co_return;
  }
  Outcome outcome = recovered ? recovered->outcome
                              : Outcome{std::nullopt, "its infrastructure could not be found (" +
                                                          recovered.error().message + ")"};
  if (isTerminal(type)) {
    metrics_.inc("recovery_total", {{"outcome", "finished"}});
    log_.info("journalled run ended while no worker was watching; it is " + type, run->id);
    releaseRun(run, nullptr);
    co_return;
  }
  if (type == "CANCELLING" || entry.cancelling) {
    metrics_.inc("recovery_total", {{"outcome", "cancelled"}});
    co_await markCancelled(run,
                           "Flow run was cancelled; its infrastructure ended while no worker "
                           "was watching.");
    releaseRun(run, "cancelled");
    co_return;
  }
  metrics_.inc("recovery_total", {{"outcome", "crashed"}});
  std::string message;
  if (outcome.exit_code && *outcome.exit_code != 0) {
    message = "Flow run infrastructure exited with non-zero status code " +
              std::to_string(*outcome.exit_code) + " while no worker was watching. " +
              exit_codes::explain(*outcome.exit_code);
  } else if (outcome.exit_code) {
    message =
        "The flow run's infrastructure exited while no worker was watching, but the run "
        "is still " +
        type + "; the worker lost it.";
  } else {
    message =
        "The worker lost this flow run: its infrastructure ended while no worker was "
        "watching" +
        (outcome.detail.empty() ? std::string(".") : ": " + outcome.detail);
  }
  run->log->log(LogLevel::Error, message);
  co_await proposeCrashed(run, message);
  releaseRun(run, "crashed");
}

// ---- Events ---------------------------------------------------------------------------------

void Worker::emitEvent(const std::string& event, const std::shared_ptr<RunState>& run,
                       const Json& extra_flow_run_labels) {
  Json resource = {{"prefect.resource.id", "prefect.worker." + type_ + "." + slugify(name_)},
                   {"prefect.resource.name", name_},
                   {"prefect.version", kPrefectCompatVersion},
                   {"prefect.worker-type", type_}};
  Json related = Json::array();
  if (run) {
    const Json& fr = run->flow_run;
    if (std::string dep = str(fr, "deployment_id"); !dep.empty()) {
      related.push_back({{"prefect.resource.id", "prefect.deployment." + dep},
                         {"prefect.resource.role", "deployment"}});
    }
    if (std::string flow = str(fr, "flow_id"); !flow.empty()) {
      related.push_back(
          {{"prefect.resource.id", "prefect.flow." + flow}, {"prefect.resource.role", "flow"}});
    }
    Json flow_run = {{"prefect.resource.id", "prefect.flow-run." + run->id},
                     {"prefect.resource.role", "flow-run"},
                     {"prefect.resource.name", run->name}};
    for (const auto& [key, value] : extra_flow_run_labels.items()) {
      flow_run[key] = value;
    }
    related.push_back(flow_run);
  }
  if (pool_.is_object()) {
    related.push_back({{"prefect.resource.id", "prefect.work-pool." + str(pool_, "id")},
                       {"prefect.resource.role", "work-pool"},
                       {"prefect.resource.name", settings_.pool}});
  }
  Json body = {{"id", prefect::newUuid()},
               {"occurred", prefect::formatTimestamp(std::chrono::system_clock::now())},
               {"event", event},
               {"resource", resource},
               {"related", related},
               {"payload", Json::object()},
               {"follows", nullptr}};
  if (event == "prefect.worker.started") {
    body["id"] = started_event_id_;
  } else if (event == "prefect.worker.stopped" && !started_event_id_.empty()) {
    body["follows"] = started_event_id_;
  }
  shipper_->event(std::move(body));
}

// ---- Stopping -------------------------------------------------------------------------------

asio::awaitable<void> Worker::shutdown() {
  const StopMode mode = stop_mode_.value_or(StopMode::Drain);
  auto in_flight_started = [this] {
    size_t n = 0;
    for (const auto& [id, run] : runs_) {
      n += run->handle ? 1 : 0;
    }
    return n;
  };
  if (!settings_.run_once) {
    log_.info(std::string("Stopping: claiming no new flow runs; ") + std::to_string(runs_.size()) +
              " in flight" +
              (mode == StopMode::Cancel ? ", cancelling them." : ", leaving them running."));
  }
  auto deadline = Clock::now() +
                  std::chrono::milliseconds(static_cast<long long>(settings_.drain_seconds * 1000));
  // Submissions in progress end first (started, or released), whatever the mode.
  auto submissions_deadline = Clock::now() + std::chrono::seconds(15);
  for (;;) {
    bool submitting =
        std::any_of(runs_.begin(), runs_.end(), [](const auto& kv) { return !kv.second->handle; });
    StopMode current = stop_mode_.value_or(StopMode::Drain);
    if (current == StopMode::Cancel) {
      for (const auto& [id, run] : runs_) {
        if (run->handle && !run->killing) {
          run->stop_cancel = true;
          asio::co_spawn(io_, cancelRun(run), asio::detached);
        }
      }
      deadline = Clock::now() + std::chrono::milliseconds(static_cast<long long>(
                                    (settings_.kill_grace_seconds + 15) * 1000));
    }
    bool waiting_for_runs = !runs_.empty() && Clock::now() < deadline;
    bool waiting_for_submissions = submitting && Clock::now() < submissions_deadline;
    if (!waiting_for_runs && !waiting_for_submissions) {
      break;
    }
    runs_changed_->expires_after(std::chrono::milliseconds(200));
    boost::system::error_code ignored;
    co_await runs_changed_->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (size_t left = in_flight_started(); left > 0) {
    log_.info(std::to_string(left) +
              " flow run(s) keep running; the next worker started with "
              "this state directory (" +
              (journal_ ? journal_->directory() : "") + ") will follow them.");
  }
  if (source_ != nullptr) {
    co_await source_->stop();
  }
  emitEvent("prefect.worker.stopped", nullptr);
  // Last logs and events get a few seconds to reach Prefect; a server that is down does not
  // hold the stop up.
  auto flushed = std::make_shared<bool>(false);
  asio::co_spawn(
      io_,
      [this, flushed]() -> asio::awaitable<void> {
        co_await shipper_->flush();
        *flushed = true;
        runs_changed_->cancel();
      },
      asio::detached);
  auto flush_deadline = Clock::now() + std::chrono::seconds(5);
  while (!*flushed && Clock::now() < flush_deadline) {
    runs_changed_->expires_after(std::chrono::milliseconds(100));
    boost::system::error_code ignored;
    co_await runs_changed_->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  client_.cancelAll();
  if (backend_) {
    backend_->shutdown();
  }
  if (health_) {
    health_->stop();
  }
  log_.info("Worker '" + name_ + "' stopped!");
}

}  // namespace poolworker
