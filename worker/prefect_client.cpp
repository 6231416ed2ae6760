#include "worker/prefect_client.h"

#include <cstdlib>
#include <ctime>
#include <random>

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>

#include "backends/common/http_client.h"
#include "worker/version.h"

namespace poolworker::prefect {
namespace {

constexpr const char* kApiVersion = "0.8.4";

// Connections to the API at once, and kept open for reuse. The worker's calls come in bursts
// (a poll, then a claim, reads and a PATCH per each of hundreds of runs): a bounded set of
// reused connections serves them without a connection, and for Prefect Cloud a TLS handshake,
// per request, and does not open hundreds of connections to the server at once.
constexpr std::size_t kMaxConnections = 16;
constexpr std::size_t kIdleConnections = kMaxConnections;

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

// The proxy for `host`, from the environment as Prefect's client (httpx) reads it.
std::optional<std::string> proxyFor(const std::string& url, const std::string& host_name) {
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
  std::string host = lowerCopy(host_name);
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

// Parses a proxy URL, http://[user:password@]host[:port].
std::optional<backends::common::HttpEndpoint::Proxy> parseProxy(const std::string& url) {
  std::string rest = url;
  if (auto scheme = rest.find("://"); scheme != std::string::npos) {
    rest = rest.substr(scheme + 3);
  }
  rest = rest.substr(0, rest.find('/'));
  std::string authorization;
  if (auto at = rest.rfind('@'); at != std::string::npos) {
    authorization = "Basic " + base64(rest.substr(0, at));
    rest = rest.substr(at + 1);
  }
  auto parsed = backends::common::parseHttpEndpoint("http://" + rest);
  if (!parsed) {
    return std::nullopt;
  }
  return backends::common::HttpEndpoint::Proxy{parsed->host, parsed->port, authorization};
}

}  // namespace

struct PrefectClient::RawResponse {
  int status = 0;
  std::string body;
  std::optional<double> retry_after;
  bool maintenance = false;
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
    : io_(io), settings_(std::move(settings)), user_agent_(std::move(user_agent)) {
  // The URL is scheme://authority/base-path; requests go to base-path + the endpoint's path.
  const std::string& url = settings_.url;
  const auto scheme_end = url.find("://");
  if (scheme_end != std::string::npos) {
    const auto path_start = url.find('/', scheme_end + 3);
    std::string origin = url.substr(0, path_start);
    base_path_ = path_start == std::string::npos ? "" : url.substr(path_start);
    while (!base_path_.empty() && base_path_.back() == '/') {
      base_path_.pop_back();
    }
    backends::common::TlsSettings tls;
    tls.verify = !settings_.tls_insecure_skip_verify;
    tls.ca_file = settings_.ssl_cert_file;
    auto endpoint = backends::common::parseHttpEndpoint(origin, tls);
    if (endpoint) {
      if (auto proxy = proxyFor(url, endpoint->host)) {
        endpoint->proxy = parseProxy(*proxy);
      }
    }
    if (endpoint && endpoint->transport == backends::common::HttpEndpoint::Transport::Tcp &&
        origin.rfind("tcp://", 0) != 0) {
      backends::common::HttpClientOptions options;
      options.service_name = "the Prefect API";
      options.user_agent = user_agent_;
      options.max_buffered_body = 512U * 1024U * 1024U;
      options.max_idle_connections = kIdleConnections;
      options.max_connections = kMaxConnections;
      http_ = std::make_unique<backends::common::HttpClient>(io_, std::move(endpoint).value(),
                                                             std::move(options));
    }
  }
  // An unusable URL is reported by the first call, with the URL in the message.
  csrf_enabled_ = settings_.csrf_support_enabled && !settings_.isCloud();
  csrf_client_ = newUuid();
}

PrefectClient::~PrefectClient() { cancelAll(); }

void PrefectClient::setWorkerIdentity(std::string name, std::string id) {
  worker_name_ = std::move(name);
  worker_id_ = std::move(id);
}

void PrefectClient::cancelAll() {
  cancelled_ = true;
  if (http_) {
    http_->cancelAll();
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
  if (cancelled_) {
    co_return makeError(ErrorKind::Cancelled, "the worker is stopping");
  }
  const std::string name = endpoint.empty() ? path : endpoint;
  backends::common::HttpRequest request;
  request.method = methodName(method);
  request.target = base_path_ + path;
  auto& headers = request.headers;
  for (const auto& [header, value] : settings_.custom_headers.items()) {
    std::string lname = lowerCopy(header);
    if (lname == "user-agent" || lname == "prefect-csrf-token" || lname == "prefect-csrf-client" ||
        lname == "content-type") {
      continue;
    }
    headers.emplace_back(header, value.is_string() ? value.get<std::string>() : value.dump());
  }
  headers.emplace_back("X-PREFECT-API-VERSION", kApiVersion);
  if (!settings_.auth_string.empty()) {
    headers.emplace_back("Authorization", "Basic " + base64(settings_.auth_string.reveal()));
  } else if (!settings_.key.empty()) {
    headers.emplace_back("Authorization", "Bearer " + settings_.key.reveal());
  }
  if (!worker_name_.empty()) {
    headers.emplace_back("X-Prefect-Worker-Name", worker_name_);
  }
  if (!worker_id_.empty()) {
    headers.emplace_back("X-Prefect-Worker-Id", worker_id_);
  }
  if (isMutating(method) && csrf_enabled_ && !csrf_token_.empty()) {
    headers.emplace_back("Prefect-Csrf-Token", csrf_token_);
    headers.emplace_back("Prefect-Csrf-Client", csrf_client_);
  }
  request.content_type = "application/json";
  if (body) {
    request.body = *body;
  }
  request.timeout = std::chrono::milliseconds(
      static_cast<long long>(std::max(0.0, settings_.request_timeout_seconds) * 1000));
  auto started = std::chrono::steady_clock::now();
  const char* verb = methodName(method);
  // A write that failed on a reused idle connection is sent again at once by the HTTP client:
  // the server never saw it. Counted apart, so that metrics show resends, not failures.
  request.on_resent = [this, verb, name, started] {
    if (observer_) {
      observer_(verb, name, kNotSent,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
  };

  auto* http = http_.get();
  auto operation =
      awaitCallback<RawResponse>([http, request = std::move(request)](auto done) mutable {
        http->request(
            std::move(request), [done](Result<backends::common::HttpResponse> answer) mutable {
              if (!answer) {
                done(std::move(answer).error());
                return;
              }
              RawResponse raw;
              raw.status = answer->status;
              if (auto retry_after = answer->header("Retry-After"); !retry_after.empty()) {
                try {
                  raw.retry_after = std::stod(retry_after);
                } catch (const std::exception&) {
                }
              }
              raw.maintenance = lowerCopy(answer->header("Prefect-Maintenance")) == "true";
              raw.body = std::move(answer->body);
              done(std::move(raw));
            });
      });
  auto result = co_await std::move(operation);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (observer_) {
    observer_(verb, name, result ? result->status : 0, seconds);
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
  // One fetch at a time: calls that need the token meanwhile wait for the same answer (a
  // second fetch would replace the token the first one got).
  if (!csrf_fetch_ || csrf_fetch_->done()) {
    csrf_fetch_ = std::make_shared<Started<Result<void>>>(io_, fetchCsrfToken());
  }
  auto fetch = csrf_fetch_;
  co_return co_await fetch->get();
}

void PrefectClient::prefetchCsrfToken() {
  if (csrf_enabled_ && csrf_token_.empty() && !csrf_fetch_) {
    csrf_fetch_ = std::make_shared<Started<Result<void>>>(io_, fetchCsrfToken());
  }
}

asio::awaitable<Result<void>> PrefectClient::fetchCsrfToken() {
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
      // A connection error before anything ever worked means a wrong URL: fail fast.
      bool retryable = options.retry && has_succeeded_ && attempt < max_retries;
      if (!retryable) {
        co_return makeError(ErrorKind::Transient, what + ": " + err.message);
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
