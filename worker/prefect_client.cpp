#include "worker/prefect_client.h"

#include <cstdlib>
#include <ctime>
#include <random>

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <cpprest/base_uri.h>
#include <cpprest/http_client.h>
#include <cpprest/uri_builder.h>

#include "worker/version.h"

namespace poolworker::prefect {
namespace {

constexpr const char* kApiVersion = "0.8.4";

// cpprestsdk reuses a pooled keep-alive connection that the server closed while it was idle
// (uvicorn closes them after 5 s); the request then fails while it is being written, before the
// server saw any of it.
bool neverSent(const Error& err) {
  return err.kind == ErrorKind::Transient &&
         err.message.find("Failed to write request") != std::string::npos;
}

const char* methodName(Method m) {
  switch (m) {
    case Method::Get:
      return "GET";
    case Method::Post:
      return "POST";
    case Method::Patch:
      return "PATCH";
    case Method::Delete:
      return "DELETE";
  }
  return "GET";
}

bool isMutating(Method m) { return m != Method::Get; }

std::string base64(const std::string& in) {
  static constexpr char kTable[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  while (i + 2 < in.size()) {
    auto n = (static_cast<unsigned char>(in[i]) << 16) |
             (static_cast<unsigned char>(in[i + 1]) << 8) | static_cast<unsigned char>(in[i + 2]);
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += kTable[(n >> 6) & 63];
    out += kTable[n & 63];
    i += 3;
  }
  if (i + 1 == in.size()) {
    auto n = static_cast<unsigned char>(in[i]) << 16;
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    auto n =
        (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += kTable[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

// A short, readable description of an error body: FastAPI's `detail` (string or list of
// validation errors) or the server's `exception_message`. Pydantic's `input` echo is left out:
// it could repeat what we sent.
std::string describeErrorBody(const std::string& raw) {
  Json body = Json::parse(raw, nullptr, false);
  if (body.is_object()) {
    if (auto it = body.find("detail"); it != body.end()) {
      if (it->is_string()) {
        return it->get<std::string>();
      }
      if (it->is_array()) {
        std::string out;
        for (const auto& item : *it) {
          if (!out.empty()) {
            out += "; ";
          }
          if (item.is_object()) {
            std::string loc;
            if (auto l = item.find("loc"); l != item.end() && l->is_array()) {
              for (const auto& part : *l) {
                if (!loc.empty()) {
                  loc += ".";
                }
                loc += part.is_string() ? part.get<std::string>() : part.dump();
              }
            }
            std::string msg = item.value("msg", "");
            out += loc.empty() ? msg : loc + ": " + msg;
          } else {
            out += item.dump();
          }
        }
        return out;
      }
    }
    if (auto it = body.find("exception_message"); it != body.end() && it->is_string()) {
      return it->get<std::string>();
    }
  }
  std::string text = raw.substr(0, 300);
  return text.size() < raw.size() ? text + "..." : text;
}

ErrorKind kindForStatus(int status) {
  if (status == 401 || status == 403) {
    return ErrorKind::Unauthorized;
  }
  if (status == 404) {
    return ErrorKind::NotFound;
  }
  if (status == 400 || status == 422) {
    return ErrorKind::InvalidConfiguration;
  }
  if (status >= 500 || status == 408 || status == 429) {
    return ErrorKind::Transient;
  }
  return ErrorKind::Internal;
}

std::string lowerCopy(std::string s) {
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::optional<std::string> proxyFor(const std::string& url) {
  bool https = url.rfind("https://", 0) == 0;
  const char* names[] = {https ? "HTTPS_PROXY" : "HTTP_PROXY", https ? "https_proxy" : "http_proxy",
                         "ALL_PROXY", "all_proxy"};
  std::string proxy;
  for (const char* name : names) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') {
      proxy = v;
      break;
    }
  }
  if (proxy.empty()) {
    return std::nullopt;
  }
  web::uri target(utility::conversions::to_string_t(url));
  std::string host = lowerCopy(target.host());
  if (host == "localhost" || host == "127.0.0.1" || host == "::1") {
    return std::nullopt;
  }
  const char* no_proxy = std::getenv("NO_PROXY");
  if (no_proxy == nullptr) {
    no_proxy = std::getenv("no_proxy");
  }
  if (no_proxy != nullptr) {
    std::string list = no_proxy;
    size_t start = 0;
    while (start <= list.size()) {
      size_t end = list.find(',', start);
      std::string entry =
          lowerCopy(list.substr(start, end == std::string::npos ? end : end - start));
      entry.erase(0, entry.find_first_not_of(" ."));
      entry.erase(entry.find_last_not_of(' ') + 1);
      if (entry == "*" || (!entry.empty() && (host == entry || (host.size() > entry.size() &&
                                                                host.ends_with("." + entry))))) {
        return std::nullopt;
      }
      if (end == std::string::npos) {
        break;
      }
      start = end + 1;
    }
  }
  return proxy;
}

}  // namespace

struct PrefectClient::RawResponse {
  int status = 0;
  std::string body;
  std::optional<double> retry_after;
  bool maintenance = false;
};

// State shared with cpprestsdk's threads: lets the destructor wait until no callback of ours
// can still run, and cancels what is in flight.
struct PrefectClient::Shared {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  bool cancelled = false;
  pplx::cancellation_token_source cancel_source;
};

std::string OrchestrationResult::stateType() const {
  return state.is_object() ? state.value("type", "") : "";
}

std::string OrchestrationResult::stateName() const {
  return state.is_object() ? state.value("name", "") : "";
}

std::string newUuid() {
  static thread_local boost::uuids::random_generator generator;
  return boost::uuids::to_string(generator());
}

std::string formatTimestamp(std::chrono::system_clock::time_point time) {
  auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(time.time_since_epoch()).count();
  std::time_t seconds = static_cast<std::time_t>(micros / 1000000);
  long frac = static_cast<long>(micros % 1000000);
  if (frac < 0) {
    frac += 1000000;
    seconds -= 1;
  }
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[96];
  std::snprintf(out, sizeof(out), "%s.%06ld+00:00", buf, frac);
  return out;
}

std::string encodePathSegment(const std::string& segment) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : segment) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

Json makeState(const std::string& type, const std::string& name, const std::string& message,
               const std::string& flow_run_id) {
  Json state = Json::object();
  state["type"] = type;
  state["name"] = name;
  state["message"] = message.empty() ? Json(nullptr) : Json(message);
  state["data"] = nullptr;
  state["state_details"] = {{"flow_run_id", flow_run_id}, {"transition_id", newUuid()}};
  return state;
}

PrefectClient::PrefectClient(asio::io_context& io, ApiSettings settings, std::string user_agent)
    : io_(io),
      settings_(std::move(settings)),
      user_agent_(std::move(user_agent)),
      shared_(std::make_shared<Shared>()) {
  web::http::client::http_client_config config;
  config.set_timeout(
      std::chrono::microseconds(static_cast<long long>(settings_.request_timeout_seconds * 1e6)));
  config.set_validate_certificates(!settings_.tls_insecure_skip_verify);
  if (!settings_.ssl_cert_file.empty()) {
    std::string path = settings_.ssl_cert_file;
    config.set_ssl_context_callback([path](boost::asio::ssl::context& ctx) {
      boost::system::error_code ignored;
      ctx.load_verify_file(path, ignored);
    });
  }
  if (auto proxy = proxyFor(settings_.url)) {
    config.set_proxy(web::web_proxy(web::uri(utility::conversions::to_string_t(*proxy))));
  }
  try {
    http_ = std::make_unique<web::http::client::http_client>(
        utility::conversions::to_string_t(settings_.url + "/"), config);
  } catch (const std::exception&) {
    // An unusable URL is reported by the first call, with the URL in the message.
  }
  csrf_enabled_ = settings_.csrf_support_enabled && !settings_.isCloud();
  csrf_client_ = newUuid();
}

PrefectClient::~PrefectClient() {
  cancelAll();
  std::unique_lock lock(shared_->mu);
  // cpprestsdk completes cancelled requests promptly; the bound only guards against a hang.
  shared_->cv.wait_for(lock, std::chrono::seconds(10), [this] { return shared_->in_flight == 0; });
}

void PrefectClient::setWorkerIdentity(std::string name, std::string id) {
  worker_name_ = std::move(name);
  worker_id_ = std::move(id);
}

void PrefectClient::cancelAll() {
  std::lock_guard lock(shared_->mu);
  if (!shared_->cancelled) {
    shared_->cancelled = true;
    shared_->cancel_source.cancel();
  }
}

std::chrono::milliseconds PrefectClient::retryDelay(int attempt,
                                                    const RawResponse* response) const {
  static thread_local std::mt19937 rng{std::random_device{}()};
  double jitter = std::max(0.0, settings_.retry_jitter_factor);
  double seconds = 0;
  if (response != nullptr && response->retry_after) {
    std::uniform_real_distribution<double> up(0.0, jitter);
    seconds = *response->retry_after * (1.0 + up(rng));
  } else {
    double base = settings_.retry_base_seconds * std::pow(2.0, attempt);
    std::uniform_real_distribution<double> around(-jitter, jitter);
    seconds = base * (1.0 + around(rng));
  }
  return std::chrono::milliseconds(static_cast<long long>(std::max(0.0, seconds) * 1000));
}

asio::awaitable<Result<PrefectClient::RawResponse>> PrefectClient::sendOnce(
    Method method, const std::string& path, const std::optional<std::string>& body,
    const std::string& endpoint) {
  if (!http_) {
    co_return makeError(ErrorKind::InvalidConfiguration,
                        "PREFECT_API_URL '" + settings_.url + "' is not a valid URL");
  }
  {
    std::lock_guard lock(shared_->mu);
    if (shared_->cancelled) {
      co_return makeError(ErrorKind::Cancelled, "the worker is stopping");
    }
  }
  web::http::http_request request(utility::conversions::to_string_t(methodName(method)));
  // The base URI ends in '/', so the path is appended without its leading slash.
  request.set_request_uri(utility::conversions::to_string_t(path.substr(1)));
  auto& headers = request.headers();
  for (const auto& [name, value] : settings_.custom_headers.items()) {
    std::string lname = lowerCopy(name);
    if (lname == "user-agent" || lname == "prefect-csrf-token" || lname == "prefect-csrf-client") {
      continue;
    }
    headers.add(name, value.is_string() ? value.get<std::string>() : value.dump());
  }
  headers.set_content_type("application/json");
  headers.add("User-Agent", user_agent_);
  headers.add("X-PREFECT-API-VERSION", kApiVersion);
  if (!settings_.auth_string.empty()) {
    headers.add("Authorization", "Basic " + base64(settings_.auth_string.reveal()));
  } else if (!settings_.key.empty()) {
    headers.add("Authorization", "Bearer " + settings_.key.reveal());
  }
  if (!worker_name_.empty()) {
    headers.add("X-Prefect-Worker-Name", worker_name_);
  }
  if (!worker_id_.empty()) {
    headers.add("X-Prefect-Worker-Id", worker_id_);
  }
  if (isMutating(method) && csrf_enabled_ && !csrf_token_.empty()) {
    headers.add("Prefect-Csrf-Token", csrf_token_);
    headers.add("Prefect-Csrf-Client", csrf_client_);
  }
  if (body) {
    request.set_body(*body, "application/json");
  }

  auto shared = shared_;
  auto* http = http_.get();
  auto started = std::chrono::steady_clock::now();
  auto operation = awaitCallback<RawResponse>([shared, http, request](auto done) mutable {
    pplx::cancellation_token token = pplx::cancellation_token::none();
    {
      std::lock_guard lock(shared->mu);
      if (shared->cancelled) {
        done(makeError(ErrorKind::Cancelled, "the worker is stopping"));
        return;
      }
      ++shared->in_flight;
      token = shared->cancel_source.get_token();
    }
    auto finish = [shared, done](Result<RawResponse> r) mutable {
      done(std::move(r));
      std::lock_guard lock(shared->mu);
      --shared->in_flight;
      shared->cv.notify_all();
    };
    try {
      http->request(request, token)
          .then([](web::http::http_response response) {
            auto raw = std::make_shared<RawResponse>();
            raw->status = response.status_code();
            const auto& h = response.headers();
            if (auto it = h.find("Retry-After"); it != h.end()) {
              try {
                raw->retry_after = std::stod(it->second);
              } catch (const std::exception&) {
              }
            }
            if (auto it = h.find("Prefect-Maintenance"); it != h.end()) {
              raw->maintenance = lowerCopy(it->second) == "true";
            }
            return response.extract_utf8string(true).then([raw](std::string text) {
              raw->body = std::move(text);
              return *raw;
            });
          })
          .then([finish](pplx::task<RawResponse> task) mutable {
            try {
              finish(task.get());
            } catch (const pplx::task_canceled&) {
              finish(makeError(ErrorKind::Cancelled, "the worker is stopping"));
            } catch (const std::exception& e) {
              finish(makeError(ErrorKind::Transient, e.what()));
            }
          });
    } catch (const std::exception& e) {
      finish(makeError(ErrorKind::Transient, e.what()));
    }
  });
  auto result = co_await std::move(operation);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (observer_) {
    int status = result ? result->status : (neverSent(result.error()) ? kNotSent : 0);
    observer_(methodName(method), endpoint.empty() ? path : endpoint, status, seconds);
  }
  co_return result;
}

asio::awaitable<Result<void>> PrefectClient::ensureCsrfToken() {
  if (!csrf_enabled_) {
    co_return success();
  }
  if (!csrf_token_.empty() && std::chrono::system_clock::now() < csrf_expiration_) {
    co_return success();
  }
  auto response = co_await sendOnce(Method::Get, "/csrf-token?client=" + csrf_client_, std::nullopt,
                                    "/csrf-token");
  if (!response) {
    co_return response.error();
  }
  if (response->status == 404 ||
      (response->status == 422 &&
       response->body.find("CSRF protection is disabled") != std::string::npos)) {
    csrf_enabled_ = false;
    co_return success();
  }
  if (response->status != 200) {
    co_return makeError(kindForStatus(response->status),
                        "GET /csrf-token answered " + std::to_string(response->status) + ": " +
                            describeErrorBody(response->body),
                        response->status);
  }
  Json body = Json::parse(response->body, nullptr, false);
  if (!body.is_object() || !body.contains("token")) {
    co_return makeError(ErrorKind::Internal, "GET /csrf-token: unexpected answer");
  }
  csrf_token_ = body["token"].get<std::string>();
  // Refresh a little early; an unparsable expiration means "ask again next time".
  csrf_expiration_ = std::chrono::system_clock::now() + std::chrono::minutes(5);
  co_return success();
}

asio::awaitable<Result<Json>> PrefectClient::call(Method method, const std::string& path,
                                                  std::optional<Json> body, CallOptions options) {
  std::optional<std::string> text;
  if (body) {
    text = body->dump();
  }
  const int max_retries = options.max_retries.value_or(settings_.max_retries);
  int attempt = 0;
  bool csrf_retried = false;
  bool write_retried = false;
  for (;;) {
    if (isMutating(method)) {
      if (auto csrf = co_await ensureCsrfToken(); !csrf) {
        if (csrf.error().kind != ErrorKind::Transient || !options.retry || attempt >= max_retries) {
          co_return csrf.error();
        }
        ++attempt;
        co_await sleepFor(retryDelay(attempt, nullptr));
        continue;
      }
    }
    auto response = co_await sendOnce(method, path, text, options.endpoint);
    std::string what = std::string(methodName(method)) + " " + settings_.url + path;
    if (!response) {
      const Error& err = response.error();
      if (err.kind != ErrorKind::Transient) {
        co_return err;
      }
      // A pooled keep-alive connection that the server closed while idle (uvicorn does after
      // 5 s) fails while the request is being written: the server never saw it, so sending it
      // again at once on a fresh connection is safe, even for a claim.
      if (!write_retried && neverSent(err)) {
        write_retried = true;
        continue;
      }
      // A connection error before anything ever worked means a wrong URL: fail fast.
      bool retryable = options.retry && has_succeeded_ && attempt < max_retries;
      if (!retryable) {
        co_return makeError(ErrorKind::Transient,
                            "cannot reach the Prefect API (" + what + "): " + err.message);
      }
      ++attempt;
      co_await sleepFor(retryDelay(attempt, nullptr));
      continue;
    }
    has_succeeded_ = true;
    const RawResponse& raw = *response;
    if (raw.status == 403 && !csrf_retried && csrf_enabled_ &&
        raw.body.find("Invalid CSRF token") != std::string::npos) {
      csrf_token_.clear();
      csrf_retried = true;
      continue;
    }
    if (raw.status < 400) {
      if (raw.body.empty()) {
        co_return Json(nullptr);
      }
      Json parsed = Json::parse(raw.body, nullptr, false);
      if (parsed.is_discarded()) {
        // Heartbeats on Cloud answer with a bare UUID; callers that care read it as text.
        co_return Json(raw.body);
      }
      co_return parsed;
    }
    bool retry_status =
        raw.status == 408 || raw.status == 429 || raw.status == 502 || raw.status == 503 ||
        std::find(settings_.retry_extra_codes.begin(), settings_.retry_extra_codes.end(),
                  raw.status) != settings_.retry_extra_codes.end();
    if (options.retry && raw.maintenance) {
      co_await sleepFor(retryDelay(1, &raw));
      continue;
    }
    if (options.retry && retry_status && attempt < max_retries) {
      ++attempt;
      co_await sleepFor(retryDelay(attempt, &raw));
      continue;
    }
    co_return makeError(
        kindForStatus(raw.status),
        what + " answered " + std::to_string(raw.status) + ": " + describeErrorBody(raw.body),
        raw.status);
  }
}

asio::awaitable<Result<Json>> PrefectClient::health() {
  co_return co_await call(Method::Get, "/health", std::nullopt, CallOptions("/health", false, 0));
}

asio::awaitable<Result<Json>> PrefectClient::readWorkPool(const std::string& name) {
  co_return co_await call(Method::Get, "/work_pools/" + encodePathSegment(name), std::nullopt,
                          CallOptions("/work_pools/{name}"));
}

asio::awaitable<Result<Json>> PrefectClient::createWorkPool(
    const std::string& name, const std::string& type,
    const std::optional<Json>& base_job_template) {
  Json body = {{"name", name}, {"type", type}};
  if (base_job_template) {
    body["base_job_template"] = *base_job_template;
  }
  co_return co_await call(Method::Post, "/work_pools/", body, CallOptions("/work_pools/"));
}

asio::awaitable<Result<Json>> PrefectClient::updateWorkPoolTemplate(const std::string& name,
                                                                    const Json& base_job_template) {
  Json body = Json::object();
  body["base_job_template"] = base_job_template;
  co_return co_await call(Method::Patch, "/work_pools/" + encodePathSegment(name), body,
                          CallOptions("/work_pools/{name}"));
}

asio::awaitable<Result<Json>> PrefectClient::heartbeat(const std::string& pool,
                                                       const std::string& worker_name,
                                                       int heartbeat_interval_seconds) {
  Json body = {{"name", worker_name}, {"heartbeat_interval_seconds", heartbeat_interval_seconds}};
  co_return co_await call(Method::Post,
                          "/work_pools/" + encodePathSegment(pool) + "/workers/heartbeat", body,
                          CallOptions("/work_pools/{name}/workers/heartbeat"));
}

asio::awaitable<Result<Json>> PrefectClient::getScheduledFlowRuns(
    const std::string& pool, const std::vector<std::string>& queues,
    std::chrono::system_clock::time_point before) {
  Json body = {{"work_queue_names", queues}, {"scheduled_before", formatTimestamp(before)}};
  co_return co_await call(Method::Post,
                          "/work_pools/" + encodePathSegment(pool) + "/get_scheduled_flow_runs",
                          body, CallOptions("/work_pools/{name}/get_scheduled_flow_runs"));
}

asio::awaitable<Result<Json>> PrefectClient::readFlowRun(const std::string& id) {
  co_return co_await call(Method::Get, "/flow_runs/" + encodePathSegment(id), std::nullopt,
                          CallOptions("/flow_runs/{id}"));
}

asio::awaitable<Result<Json>> PrefectClient::readFlowRunStates(const std::string& id) {
  co_return co_await call(Method::Get, "/flow_run_states/?flow_run_id=" + encodePathSegment(id),
                          std::nullopt, CallOptions("/flow_run_states/"));
}

asio::awaitable<Result<Json>> PrefectClient::readDeployment(const std::string& id) {
  co_return co_await call(Method::Get, "/deployments/" + encodePathSegment(id), std::nullopt,
                          CallOptions("/deployments/{id}"));
}

asio::awaitable<Result<Json>> PrefectClient::readDeploymentByName(
    const std::string& flow_name, const std::string& deployment_name) {
  co_return co_await call(Method::Get,
                          "/deployments/name/" + encodePathSegment(flow_name) + "/" +
                              encodePathSegment(deployment_name),
                          std::nullopt, CallOptions("/deployments/name/{flow}/{deployment}"));
}

asio::awaitable<Result<Json>> PrefectClient::readFlow(const std::string& id) {
  co_return co_await call(Method::Get, "/flows/" + encodePathSegment(id), std::nullopt,
                          CallOptions("/flows/{id}"));
}

asio::awaitable<Result<OrchestrationResult>> PrefectClient::setFlowRunState(const std::string& id,
                                                                            const Json& state,
                                                                            bool force,
                                                                            bool retry) {
  Json body = {{"state", state}, {"force", force}};
  auto answer = co_await call(Method::Post, "/flow_runs/" + encodePathSegment(id) + "/set_state",
                              body, CallOptions("/flow_runs/{id}/set_state", retry));
  if (!answer) {
    co_return std::move(answer).error();
  }
  const Json& j = *answer;
  if (!j.is_object() || !j.contains("status")) {
    co_return makeError(ErrorKind::Internal,
                        "POST /flow_runs/" + id + "/set_state: unexpected answer " + j.dump());
  }
  OrchestrationResult result;
  result.status = j["status"].is_string() ? j["status"].get<std::string>() : "";
  if (auto d = j.find("details"); d != j.end() && d->is_object()) {
    if (auto r = d->find("reason"); r != d->end() && r->is_string()) {
      result.reason = r->get<std::string>();
    }
    if (auto w = d->find("delay_seconds"); w != d->end() && w->is_number()) {
      result.delay_seconds = w->get<double>();
    }
  }
  result.state = j.value("state", Json(nullptr));
  co_return result;
}

asio::awaitable<Result<Json>> PrefectClient::setInfrastructurePid(const std::string& id,
                                                                  const std::string& pid) {
  Json body = Json::object();
  body["infrastructure_pid"] = pid;
  co_return co_await call(Method::Patch, "/flow_runs/" + encodePathSegment(id), body,
                          CallOptions("/flow_runs/{id}"));
}

asio::awaitable<Result<Json>> PrefectClient::updateFlowRunLabels(const std::string& id,
                                                                 const Json& labels) {
  co_return co_await call(Method::Patch, "/flow_runs/" + encodePathSegment(id) + "/labels", labels,
                          CallOptions("/flow_runs/{id}/labels"));
}

asio::awaitable<Result<Json>> PrefectClient::filterFlowRuns(const Json& filter) {
  co_return co_await call(Method::Post, "/flow_runs/filter", filter,
                          CallOptions("/flow_runs/filter"));
}

asio::awaitable<Result<Json>> PrefectClient::createLogs(const Json& logs) {
  co_return co_await call(Method::Post, "/logs/", logs, CallOptions("/logs/"));
}

asio::awaitable<Result<Json>> PrefectClient::emitEvents(const Json& events) {
  co_return co_await call(Method::Post, "/events", events, CallOptions("/events"));
}

asio::awaitable<Result<Json>> PrefectClient::readBlockDocument(const std::string& id) {
  co_return co_await call(Method::Get,
                          "/block_documents/" + encodePathSegment(id) + "?include_secrets=true",
                          std::nullopt, CallOptions("/block_documents/{id}"));
}

asio::awaitable<Result<Json>> PrefectClient::readBlockDocumentByName(const std::string& type_slug,
                                                                     const std::string& name) {
  co_return co_await call(
      Method::Get,
      "/block_types/slug/" + encodePathSegment(type_slug) + "/block_documents/name/" +
          encodePathSegment(name) + "?include_secrets=true",
      std::nullopt, CallOptions("/block_types/slug/{slug}/block_documents/name/{name}"));
}

asio::awaitable<Result<Json>> PrefectClient::readVariable(const std::string& name) {
  co_return co_await call(Method::Get, "/variables/name/" + encodePathSegment(name), std::nullopt,
                          CallOptions("/variables/name/{name}"));
}

}  // namespace poolworker::prefect
