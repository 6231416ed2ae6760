#include "tests/fakes/fake_prefect.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <limits>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "worker/http_server.h"

namespace poolworker::testing {

namespace asio = boost::asio;
using Clock = std::chrono::system_clock;
using TimePoint = Clock::time_point;

namespace {

// ---- Small helpers ------------------------------------------------------------------------

TimePoint now() { return std::chrono::floor<std::chrono::microseconds>(Clock::now()); }

std::string newId() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  std::uniform_int_distribution<uint64_t> distribution;
  uint64_t high = distribution(generator);
  uint64_t low = distribution(generator);
  high = (high & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  low = (low & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;    // RFC 4122 variant
  char text[37];
  std::snprintf(text, sizeof(text), "%08x-%04x-%04x-%04x-%012llx",
                static_cast<unsigned>(high >> 32), static_cast<unsigned>((high >> 16) & 0xFFFF),
                static_cast<unsigned>(high & 0xFFFF), static_cast<unsigned>(low >> 48),
                static_cast<unsigned long long>(low & 0xFFFFFFFFFFFFULL));
  return text;
}

// A uuid in any form pydantic accepts (dashed or not, any case), made canonical.
std::optional<std::string> canonicalUuid(const std::string& text) {
  std::string hex;
  std::string_view view = text;
  if (view.size() == 38 && view.front() == '{' && view.back() == '}') {
    view = view.substr(1, 36);
  }
  if (view.rfind("urn:uuid:", 0) == 0) {
    view = view.substr(9);
  }
  for (char c : view) {
    if (c == '-') {
      continue;
    }
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
    hex.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  if (hex.size() != 32 || (view.size() != 32 && view.size() != 36)) {
    return std::nullopt;
  }
  if (view.size() == 36 &&
      (view[8] != '-' || view[13] != '-' || view[18] != '-' || view[23] != '-')) {
    return std::nullopt;
  }
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
         hex.substr(16, 4) + "-" + hex.substr(20);
}

std::string capitalizeType(const std::string& type) {
  std::string name;
  bool start = true;
  for (char c : type) {
    if (c == '_') {
      name.push_back(' ');
      start = true;
      continue;
    }
    name.push_back(start ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
                         : static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    start = false;
  }
  return name;
}

const std::vector<std::string>& stateTypes() {
  static const std::vector<std::string> kTypes = {"SCHEDULED", "PENDING", "RUNNING",
                                                  "COMPLETED", "FAILED",  "CANCELLED",
                                                  "CRASHED",   "PAUSED",  "CANCELLING"};
  return kTypes;
}

bool isTerminal(const std::string& type) {
  return type == "COMPLETED" || type == "FAILED" || type == "CANCELLED" || type == "CRASHED";
}

std::string randomRunName() {
  static const std::vector<std::string> kAdjectives = {"amber", "brisk", "crimson", "dapper",
                                                       "eager", "fuzzy", "gentle",  "hidden",
                                                       "ivory", "jolly", "keen",    "lucky"};
  static const std::vector<std::string> kAnimals = {"otter", "heron", "lynx",  "marmot",
                                                    "newt",  "okapi", "panda", "quail",
                                                    "raven", "seal",  "tapir", "wombat"};
  thread_local std::mt19937 generator{std::random_device{}()};
  std::uniform_int_distribution<std::size_t> a(0, kAdjectives.size() - 1);
  std::uniform_int_distribution<std::size_t> b(0, kAnimals.size() - 1);
  return kAdjectives[a(generator)] + "-" + kAnimals[b(generator)];
}

std::optional<TimePoint> timeOf(const Json& value) {
  if (!value.is_string()) {
    return std::nullopt;
  }
  return parsePrefectTime(value.get<std::string>());
}

// ---- Request validation, shaped like FastAPI/pydantic errors ------------------------------

// Collects validation errors; the 422 body is Prefect's `validation_exception_handler` shape.
class Errors {
 public:
  void add(Json loc, const std::string& type, const std::string& msg, Json input = nullptr) {
    Json error = Json::object();
    error["type"] = type;
    error["loc"] = std::move(loc);
    error["msg"] = msg;
    error["input"] = std::move(input);
    list_.push_back(std::move(error));
  }
  bool empty() const { return list_.empty(); }
  const Json& list() const { return list_; }

 private:
  Json list_ = Json::array();
};

Json at(Json loc, const std::string& key) {
  loc.push_back(key);
  return loc;
}

Json at(Json loc, std::size_t index) {
  loc.push_back(index);
  return loc;
}

void checkExtra(const Json& object, const std::set<std::string>& allowed, const Json& loc,
                Errors& errors) {
  for (const auto& [key, value] : object.items()) {
    if (!allowed.count(key)) {
      errors.add(at(loc, key), "extra_forbidden", "Extra inputs are not permitted", value);
    }
  }
}

bool checkObject(const Json& value, const Json& loc, Errors& errors) {
  if (!value.is_object()) {
    errors.add(loc, "dict_type", "Input should be a valid dictionary", value);
    return false;
  }
  return true;
}

bool checkString(const Json& value, const Json& loc, Errors& errors, bool nullable) {
  if (value.is_string() || (nullable && value.is_null())) {
    return true;
  }
  errors.add(loc, "string_type", "Input should be a valid string", value);
  return false;
}

// pydantic's lax integer: ints, integral floats, numeric strings and booleans.
std::optional<int64_t> laxInt(const Json& value, const Json& loc, Errors& errors) {
  if (value.is_boolean()) {
    return value.get<bool>() ? 1 : 0;
  }
  if (value.is_number_integer()) {
    return value.get<int64_t>();
  }
  if (value.is_number_float()) {
    double number = value.get<double>();
    if (std::isfinite(number) && std::floor(number) == number) {
      return static_cast<int64_t>(number);
    }
    errors.add(loc, "int_from_float",
               "Input should be a valid integer, got a number with a fractional part", value);
    return std::nullopt;
  }
  if (value.is_string()) {
    std::string text = value.get<std::string>();
    static const std::regex kInteger(R"(^\s*[+-]?\d+\s*$)");
    if (std::regex_match(text, kInteger)) {
      try {
        return std::stoll(text);
      } catch (const std::exception&) {
      }
    }
    errors.add(loc, "int_parsing",
               "Input should be a valid integer, unable to parse string as an integer", value);
    return std::nullopt;
  }
  errors.add(loc, "int_type", "Input should be a valid integer", value);
  return std::nullopt;
}

std::optional<bool> laxBool(const Json& value, const Json& loc, Errors& errors) {
  if (value.is_boolean()) {
    return value.get<bool>();
  }
  if (value.is_number_integer() && (value.get<int64_t>() == 0 || value.get<int64_t>() == 1)) {
    return value.get<int64_t>() == 1;
  }
  if (value.is_string()) {
    std::string text = value.get<std::string>();
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    static const std::set<std::string> kTrue = {"1", "on", "t", "true", "y", "yes"};
    static const std::set<std::string> kFalse = {"0", "off", "f", "false", "n", "no"};
    if (kTrue.count(text)) {
      return true;
    }
    if (kFalse.count(text)) {
      return false;
    }
  }
  errors.add(loc, "bool_parsing", "Input should be a valid boolean, unable to interpret input",
             value);
  return std::nullopt;
}

std::optional<std::string> laxUuid(const Json& value, const Json& loc, Errors& errors) {
  if (!value.is_string()) {
    errors.add(loc, "uuid_type", "UUID input should be a string, bytes or UUID object", value);
    return std::nullopt;
  }
  auto id = canonicalUuid(value.get<std::string>());
  if (!id) {
    errors.add(loc, "uuid_parsing", "Input should be a valid UUID", value);
  }
  return id;
}

std::optional<TimePoint> laxTime(const Json& value, const Json& loc, Errors& errors) {
  if (value.is_string()) {
    if (auto time = parsePrefectTime(value.get<std::string>())) {
      return time;
    }
    errors.add(loc, "datetime_from_date_parsing", "Input should be a valid datetime", value);
    return std::nullopt;
  }
  errors.add(loc, "datetime_type", "Input should be a valid datetime", value);
  return std::nullopt;
}

std::optional<std::vector<std::string>> stringList(const Json& value, const Json& loc,
                                                   Errors& errors) {
  if (!value.is_array()) {
    errors.add(loc, "list_type", "Input should be a valid list", value);
    return std::nullopt;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (checkString(value[i], at(loc, i), errors, false)) {
      out.push_back(value[i].get<std::string>());
    } else {
      ok = false;
    }
  }
  return ok ? std::optional(out) : std::nullopt;
}

// ---- Responses ----------------------------------------------------------------------------

http::Response jsonReply(int status, const Json& body) {
  http::Response response;
  response.status = status;
  response.body = body.dump();
  return response;
}

http::Response detailReply(int status, const std::string& detail) {
  return jsonReply(status, Json{{"detail", detail}});
}

http::Response emptyReply(int status = 204) {
  http::Response response;
  response.status = status;
  return response;
}

http::Response validationReply(const Errors& errors, const Json& body) {
  Json content = Json::object();
  content["exception_message"] = "Invalid request received.";
  content["exception_detail"] = errors.list();
  content["request_body"] = body;
  return jsonReply(422, content);
}

http::Response notImplementedReply(const std::string& what) {
  return jsonReply(500, Json{{"exception_message", "Internal Server Error"},
                             {"fake_prefect", "not implemented by the fake: " + what}});
}

std::string base64Decode(const std::string& text, bool& ok) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t buffer = 0;
  int bits = 0;
  std::size_t padding = 0;
  ok = text.size() % 4 == 0;
  for (char c : text) {
    if (c == '=') {
      ++padding;
      continue;
    }
    std::size_t value = kAlphabet.find(c);
    if (value == std::string::npos || padding > 0) {
      ok = false;
      return {};
    }
    buffer = (buffer << 6) | static_cast<uint32_t>(value);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  if (padding > 2) {
    ok = false;
  }
  return out;
}

}  // namespace

// ---- Public free functions ----------------------------------------------------------------

std::string formatPrefectTime(TimePoint time) {
  auto micros = std::chrono::floor<std::chrono::microseconds>(time);
  auto seconds = std::chrono::floor<std::chrono::seconds>(micros);
  auto fraction = (micros - seconds).count();
  std::time_t t = Clock::to_time_t(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[96];
  std::snprintf(text, sizeof(text), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long>(fraction));
  return text;
}

std::optional<TimePoint> parsePrefectTime(const std::string& text) {
  static const std::regex kPattern(
      R"(^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$)");
  std::smatch match;
  if (!std::regex_match(text, match, kPattern)) {
    return std::nullopt;
  }
  int year = std::stoi(match[1]);
  unsigned month = static_cast<unsigned>(std::stoi(match[2]));
  unsigned day = static_cast<unsigned>(std::stoi(match[3]));
  int hour = std::stoi(match[4]);
  int minute = std::stoi(match[5]);
  int second = match[6].matched ? std::stoi(match[6]) : 0;
  std::chrono::year_month_day date{std::chrono::year{year}, std::chrono::month{month},
                                   std::chrono::day{day}};
  if (!date.ok() || hour > 23 || minute > 59 || second > 59) {
    return std::nullopt;
  }
  std::chrono::microseconds fraction{0};
  if (match[7].matched) {
    std::string digits = match[7].str();
    digits.resize(6, '0');
    fraction = std::chrono::microseconds(std::stol(digits.substr(0, 6)));
  }
  std::chrono::minutes offset{0};
  if (match[8].matched) {
    std::string zone = match[8].str();
    if (zone != "Z" && zone != "z") {
      int sign = zone[0] == '-' ? -1 : 1;
      std::string digits;
      for (char c : zone.substr(1)) {
        if (c != ':') {
          digits.push_back(c);
        }
      }
      int hours = std::stoi(digits.substr(0, 2));
      int minutes = digits.size() > 2 ? std::stoi(digits.substr(2, 2)) : 0;
      offset = std::chrono::minutes(sign * (hours * 60 + minutes));
    }
  }
  auto time = std::chrono::sys_days(date) + std::chrono::hours(hour) +
              std::chrono::minutes(minute) + std::chrono::seconds(second) + fraction - offset;
  return std::chrono::time_point_cast<Clock::duration>(time);
}

Json RecordedRequest::json() const {
  Json parsed = Json::parse(body, nullptr, false);
  return parsed.is_discarded() ? Json(nullptr) : parsed;
}

// ---- The server's state -------------------------------------------------------------------

namespace {

struct RunData {
  Json run;
  std::vector<Json> history;
  uint64_t sequence = 0;
};

struct FaultRule {
  enum class Kind { Fail, Drop, Delay, Reorder };
  int id = 0;
  Kind kind = Kind::Fail;
  std::string method;
  std::regex pattern;
  int remaining = 0;
  int status = 0;
  std::string body;
  std::optional<double> retry_after;
  std::chrono::milliseconds delay{0};
};

struct HeldAnswer {
  int rule_id = 0;
  http::Responder responder;
  http::Response response;
};

struct CsrfToken {
  std::string token;
  TimePoint expiration;
  Json json;
};

// What one request turns into once the lock is released.
struct Outcome {
  http::Response response;
  std::chrono::milliseconds delay{0};
  std::optional<int> hold_rule;
  std::vector<HeldAnswer> release;
};

// What the orchestration rules decided.
struct Decision {
  std::string status = "ACCEPT";
  std::string reason;
  int delay_seconds = 0;
  // For REJECT: the state to write instead (null: keep the current state).
  Json replacement;
  // Changes to the run that only happen when the state is written.
  std::function<void(Json& run)> on_commit;
};

struct Context {
  const http::Request* request = nullptr;
  // The decoded path relative to the API root.
  std::string path;
  // Path parameters of the matched route.
  std::vector<std::string> params;
  // The Prefect client version read from the User-Agent, as the server parses it.
  std::optional<std::string> client_version;
  // False when the request had no body (FastAPI then sees every body field as missing).
  bool body_present = false;
};

const std::set<std::string> kStateDetailsKeys = {
    "flow_run_id",        "task_run_id",        "child_flow_run_id",
    "scheduled_time",     "cache_key",          "cache_expiration",
    "deferred",           "untrackable_result", "pause_timeout",
    "pause_reschedule",   "pause_key",          "run_input_keyset",
    "refresh_cache",      "retriable",          "transition_id",
    "task_parameters_id", "traceparent",        "deployment_concurrency_lease_id"};

Json defaultStateDetails() {
  return Json{{"flow_run_id", nullptr},
              {"task_run_id", nullptr},
              {"child_flow_run_id", nullptr},
              {"scheduled_time", nullptr},
              {"cache_key", nullptr},
              {"cache_expiration", nullptr},
              {"deferred", false},
              {"untrackable_result", false},
              {"pause_timeout", nullptr},
              {"pause_reschedule", false},
              {"pause_key", nullptr},
              {"run_input_keyset", nullptr},
              {"refresh_cache", nullptr},
              {"retriable", nullptr},
              {"transition_id", nullptr},
              {"task_parameters_id", nullptr},
              {"traceparent", nullptr},
              {"deployment_concurrency_lease_id", nullptr}};
}

// A state not yet written: no id or timestamp.
Json makeState(const std::string& type, const std::string& name, const Json& message = nullptr) {
  Json state = Json::object();
  state["id"] = nullptr;
  state["type"] = type;
  state["name"] = name.empty() ? capitalizeType(type) : name;
  state["timestamp"] = nullptr;
  state["message"] = message;
  state["data"] = nullptr;
  state["state_details"] = defaultStateDetails();
  return state;
}

Json defaultPolicy() {
  return Json{{"max_retries", 0},       {"retry_delay_seconds", 0.0},  {"retries", nullptr},
              {"retry_delay", nullptr}, {"pause_keys", Json::array()}, {"resuming", false},
              {"retry_type", nullptr}};
}

// Validates a StateCreate body and returns the state it describes.
Json validateStateCreate(const Json& value, const Json& loc, Errors& errors) {
  if (!checkObject(value, loc, errors)) {
    return nullptr;
  }
  checkExtra(value, {"type", "name", "message", "data", "state_details"}, loc, errors);
  std::string type;
  if (!value.contains("type")) {
    errors.add(at(loc, "type"), "missing", "Field required", value);
  } else if (!value["type"].is_string() ||
             std::find(stateTypes().begin(), stateTypes().end(),
                       value["type"].get<std::string>()) == stateTypes().end()) {
    errors.add(at(loc, "type"), "enum",
               "Input should be 'SCHEDULED', 'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', "
               "'CANCELLED', 'CRASHED', 'PAUSED' or 'CANCELLING'",
               value["type"]);
  } else {
    type = value["type"].get<std::string>();
  }
  std::string name;
  if (value.contains("name") && checkString(value["name"], at(loc, "name"), errors, true) &&
      value["name"].is_string()) {
    name = value["name"].get<std::string>();
  }
  Json message = nullptr;
  if (value.contains("message") &&
      checkString(value["message"], at(loc, "message"), errors, true)) {
    message = value["message"];
  }
  Json state = makeState(type, name, message);
  if (value.contains("data")) {
    state["data"] = value["data"];
  }
  if (value.contains("state_details")) {
    const Json& details = value["state_details"];
    Json details_loc = at(loc, "state_details");
    if (!details.is_object()) {
      errors.add(details_loc, "model_type",
                 "Input should be a valid dictionary or instance of StateDetails", details);
    } else {
      Json& out = state["state_details"];
      for (const auto& [key, item] : details.items()) {
        if (!kStateDetailsKeys.count(key)) {
          continue;  // StateDetails ignores unknown keys.
        }
        Json item_loc = at(details_loc, key);
        if (key == "deferred" || key == "untrackable_result" || key == "pause_reschedule" ||
            key == "refresh_cache" || key == "retriable") {
          if (item.is_null() && key != "untrackable_result" && key != "pause_reschedule") {
            out[key] = nullptr;
          } else if (auto flag = laxBool(item, item_loc, errors)) {
            out[key] = *flag;
          }
        } else if (key == "scheduled_time" || key == "cache_expiration" || key == "pause_timeout") {
          if (item.is_null()) {
            out[key] = nullptr;
          } else if (auto time = laxTime(item, item_loc, errors)) {
            out[key] = formatPrefectTime(*time);
          }
        } else if (key == "cache_key" || key == "pause_key" || key == "traceparent") {
          if (checkString(item, item_loc, errors, true)) {
            out[key] = item;
          }
        } else if (key == "run_input_keyset") {
          if (item.is_null() || checkObject(item, item_loc, errors)) {
            out[key] = item;
          }
        } else if (item.is_null()) {
          out[key] = nullptr;
        } else if (auto id = laxUuid(item, item_loc, errors)) {
          out[key] = *id;
        }
      }
    }
  }
  if (type == "SCHEDULED" && state["state_details"]["scheduled_time"].is_null()) {
    state["state_details"]["scheduled_time"] = formatPrefectTime(now());
  }
  return state;
}

bool hasPersistedResult(const Json& data) {
  return data.is_object() && (!data.contains("type") || data["type"] != "unpersisted");
}

// Python's truthiness of a JSON value (data, dicts).
bool truthy(const Json& value) {
  if (value.is_null()) {
    return false;
  }
  if (value.is_boolean()) {
    return value.get<bool>();
  }
  if (value.is_number()) {
    return value.get<double>() != 0;
  }
  if (value.is_string() || value.is_array() || value.is_object()) {
    return !value.empty();
  }
  return true;
}

std::string jsonString(const Json& value) {
  return value.is_string() ? value.get<std::string>() : std::string();
}

const std::set<std::string> kOldConcurrencyClients = {"3.0.0rc20", "3.0.0", "3.0.1", "3.0.2",
                                                      "3.0.3"};

}  // namespace

struct FakePrefect::Impl {
  explicit Impl(FakePrefectOptions opts) : options(std::move(opts)) {}

  FakePrefectOptions options;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<http::HttpServer> server;
  std::thread thread;
  uint16_t port = 0;

  mutable std::mutex mutex;
  std::condition_variable state_changed;
  uint64_t generation = 0;

  bool maintenance = false;
  std::optional<double> maintenance_retry_after;

  std::map<std::string, Json> pools;            // by name
  std::map<std::string, Json> queues;           // by id
  std::map<std::string, Json> flows;            // by id
  std::map<std::string, Json> deployments;      // by id
  std::map<std::string, RunData> runs;          // by id
  std::map<std::string, Json> workers;          // by "<pool id>/<name>"
  std::map<std::string, Json> block_documents;  // by id
  std::map<std::string, std::vector<std::string>> block_secrets;
  std::map<std::string, Json> variables;  // by name
  std::vector<Json> logs;
  std::vector<Json> events;
  std::vector<Json> heartbeats;
  std::vector<RecordedRequest> requests;
  std::vector<FaultRule> faults;
  int next_rule_id = 1;
  std::vector<HeldAnswer> held;
  std::map<std::string, std::deque<Json>> injected;
  std::map<std::string, CsrfToken> csrf_tokens;
  uint64_t run_sequence = 0;

  void bump() {
    ++generation;
    state_changed.notify_all();
  }

  // ---- Lookups ------------------------------------------------------------------------

  Json* findPool(const std::string& name) {
    auto it = pools.find(name);
    return it == pools.end() ? nullptr : &it->second;
  }

  Json* findPoolById(const std::string& id) {
    for (auto& [name, pool] : pools) {
      if (pool["id"] == id) {
        return &pool;
      }
    }
    return nullptr;
  }

  Json* findQueue(const std::string& pool_name, const std::string& queue_name) {
    Json* pool = findPool(pool_name);
    if (!pool) {
      return nullptr;
    }
    for (auto& [id, queue] : queues) {
      if (queue["work_pool_id"] == (*pool)["id"] && queue["name"] == queue_name) {
        return &queue;
      }
    }
    return nullptr;
  }

  std::vector<Json*> queuesOf(const std::string& pool_id) {
    std::vector<Json*> out;
    for (auto& [id, queue] : queues) {
      if (queue["work_pool_id"] == pool_id) {
        out.push_back(&queue);
      }
    }
    std::sort(out.begin(), out.end(), [](const Json* a, const Json* b) {
      return (*a)["priority"].get<int64_t>() < (*b)["priority"].get<int64_t>();
    });
    return out;
  }

  RunData* findRun(const std::string& id) {
    auto canonical = canonicalUuid(id);
    auto it = runs.find(canonical ? *canonical : id);
    return it == runs.end() ? nullptr : &it->second;
  }

  Json* findDeployment(const std::string& id) {
    auto canonical = canonicalUuid(id);
    auto it = deployments.find(canonical ? *canonical : id);
    return it == deployments.end() ? nullptr : &it->second;
  }

  // ---- Views as the API returns them ----------------------------------------------------

  int64_t activeRunsInQueue(const std::string& queue_id) {
    int64_t count = 0;
    for (const auto& [id, data] : runs) {
      const Json& type = data.run["state_type"];
      if (data.run["work_queue_id"] == queue_id && (type == "RUNNING" || type == "PENDING")) {
        ++count;
      }
    }
    return count;
  }

  int64_t activeRunsInPool(const std::string& pool_id) {
    int64_t count = 0;
    for (Json* queue : queuesOf(pool_id)) {
      count += activeRunsInQueue((*queue)["id"].get<std::string>());
    }
    return count;
  }

  Json poolView(const Json& pool) {
    Json view = pool;
    if (!view["concurrency_limit"].is_null()) {
      view["active_slots"] = activeRunsInPool(view["id"].get<std::string>());
    }
    return view;
  }

  Json queueView(const Json& queue) {
    Json view = queue;
    if (!view["concurrency_limit"].is_null()) {
      view["active_slots"] = activeRunsInQueue(view["id"].get<std::string>());
    }
    return view;
  }

  int64_t deploymentActiveSlots(const std::string& deployment_id, const std::string& except_run) {
    int64_t count = 0;
    for (const auto& [id, data] : runs) {
      const Json& type = data.run["state_type"];
      if (id != except_run && data.run["deployment_id"] == deployment_id &&
          (type == "PENDING" || type == "RUNNING" || type == "CANCELLING")) {
        ++count;
      }
    }
    return count;
  }

  Json deploymentView(const Json& deployment) {
    Json view = deployment;
    if (!view["concurrency_limit"].is_null()) {
      std::string id = view["id"].get<std::string>();
      view["global_concurrency_limit"] = Json{{"id", view["concurrency_limit_id"]},
                                              {"created", view["created"]},
                                              {"updated", view["updated"]},
                                              {"active", true},
                                              {"name", "deployment:" + id},
                                              {"limit", view["concurrency_limit"]},
                                              {"active_slots", deploymentActiveSlots(id, "")},
                                              {"slot_decay_per_second", 0.0}};
    }
    view.erase("concurrency_limit_id");
    return view;
  }

  Json runView(const RunData& data) {
    Json view = data.run;
    if (view["state_type"] == "RUNNING" && view["state"].is_object()) {
      if (auto since = timeOf(view["state"]["timestamp"])) {
        double running = std::chrono::duration<double>(now() - *since).count();
        view["estimated_run_time"] = view["total_run_time"].get<double>() + running;
      }
    }
    return view;
  }

  // ---- Seeding ------------------------------------------------------------------------

  Json newQueue(const Json& pool, const std::string& name, std::optional<int64_t> priority,
                Json concurrency_limit, bool is_paused, const std::string& description) {
    std::string pool_id = pool["id"].get<std::string>();
    if (!priority) {
      std::set<int64_t> taken;
      for (Json* queue : queuesOf(pool_id)) {
        taken.insert((*queue)["priority"].get<int64_t>());
      }
      int64_t candidate = 1;
      while (taken.count(candidate)) {
        ++candidate;
      }
      priority = candidate;
    }
    // Like bulk_update_work_queue_priorities: the new queue takes its place in the order and
    // the queues after it move down only as far as needed to keep priorities unique.
    std::vector<Json*> ordered = queuesOf(pool_id);
    std::size_t position = ordered.size();
    for (std::size_t i = 0; i < ordered.size(); ++i) {
      if ((*ordered[i])["priority"].get<int64_t>() >= *priority) {
        position = i;
        break;
      }
    }
    int64_t last = *priority;
    for (std::size_t i = position; i < ordered.size(); ++i) {
      int64_t current = (*ordered[i])["priority"].get<int64_t>();
      if (current <= last) {
        (*ordered[i])["priority"] = ++last;
      } else {
        last = current;
      }
    }
    std::string stamp = formatPrefectTime(now());
    Json queue = Json::object();
    queue["id"] = newId();
    queue["created"] = stamp;
    queue["updated"] = stamp;
    queue["name"] = name;
    queue["description"] = description;
    queue["is_paused"] = is_paused;
    queue["concurrency_limit"] = std::move(concurrency_limit);
    queue["priority"] = *priority;
    queue["work_pool_id"] = pool_id;
    queue["filter"] = nullptr;
    queue["last_polled"] = nullptr;
    queue["work_pool_name"] = pool["name"];
    queue["status"] = is_paused ? "PAUSED" : "NOT_READY";
    queue["active_slots"] = nullptr;
    queues[queue["id"].get<std::string>()] = queue;
    return queue;
  }

  Json& newPool(const std::string& name, const std::string& type, Json base_job_template,
                Json concurrency_limit, bool is_paused, Json description,
                Json storage_configuration) {
    std::string stamp = formatPrefectTime(now());
    Json pool = Json::object();
    pool["id"] = newId();
    pool["created"] = stamp;
    pool["updated"] = stamp;
    pool["name"] = name;
    pool["description"] = std::move(description);
    pool["type"] = type;
    pool["base_job_template"] = std::move(base_job_template);
    pool["is_paused"] = is_paused;
    pool["concurrency_limit"] = std::move(concurrency_limit);
    pool["status"] =
        type == "prefect-agent" ? Json(nullptr) : Json(is_paused ? "PAUSED" : "NOT_READY");
    pool["default_queue_id"] = nullptr;
    Json storage = Json{{"bundle_upload_step", nullptr},
                        {"bundle_execution_step", nullptr},
                        {"default_result_storage_block_id", nullptr}};
    if (storage_configuration.is_object()) {
      for (const auto& [key, value] : storage_configuration.items()) {
        storage[key] = value;
      }
    }
    pool["storage_configuration"] = storage;
    pool["active_slots"] = nullptr;
    Json& stored = pools[name] = pool;
    Json queue =
        newQueue(stored, "default", std::nullopt, nullptr, false, "The work pool's default queue.");
    stored["default_queue_id"] = queue["id"];
    return stored;
  }

  std::string newFlowRun(const FlowRunSpec& spec) {
    TimePoint created = now();
    std::string stamp = formatPrefectTime(created);
    Json run = Json::object();
    std::string id = newId();
    Json deployment = nullptr;
    std::string flow_id = spec.flow_id;
    if (!spec.deployment_id.empty()) {
      Json* found = findDeployment(spec.deployment_id);
      if (!found) {
        throw std::invalid_argument("fake_prefect: no deployment " + spec.deployment_id);
      }
      deployment = *found;
      flow_id = deployment["flow_id"].get<std::string>();
    } else if (!flows.count(flow_id)) {
      throw std::invalid_argument("fake_prefect: no flow or deployment " + flow_id);
    }
    Json queue = nullptr;
    Json pool = nullptr;
    if (deployment.is_object() && deployment["work_queue_id"].is_string()) {
      queue = queues.at(deployment["work_queue_id"].get<std::string>());
    } else if (!spec.work_pool.empty()) {
      Json* found =
          findQueue(spec.work_pool, spec.work_queue.empty() ? "default" : spec.work_queue);
      if (!found) {
        throw std::invalid_argument("fake_prefect: no queue " + spec.work_pool + "/" +
                                    spec.work_queue);
      }
      queue = *found;
    }
    if (queue.is_object()) {
      pool = *findPoolById(queue["work_pool_id"].get<std::string>());
    }
    Json parameters = deployment.is_object() ? deployment["parameters"] : Json::object();
    for (const auto& [key, value] : spec.parameters.items()) {
      parameters[key] = value;
    }
    Json labels = Json::object();
    labels["prefect.flow.id"] = flow_id;
    if (deployment.is_object()) {
      labels["prefect.deployment.id"] = deployment["id"];
    }
    Json policy = defaultPolicy();
    if (spec.retries) {
      policy["retries"] = *spec.retries;
      policy["max_retries"] = *spec.retries;
    }
    run["id"] = id;
    run["created"] = stamp;
    run["updated"] = stamp;
    run["name"] = spec.name.empty() ? randomRunName() : spec.name;
    run["flow_id"] = flow_id;
    run["state_id"] = nullptr;
    run["deployment_id"] = deployment.is_object() ? deployment["id"] : Json(nullptr);
    run["deployment_version"] = nullptr;
    run["work_queue_id"] = queue.is_object() ? queue["id"] : Json(nullptr);
    run["work_queue_name"] = queue.is_object() ? queue["name"] : Json(nullptr);
    run["flow_version"] = nullptr;
    run["parameters"] = parameters;
    run["idempotency_key"] = nullptr;
    run["context"] = Json::object();
    run["empirical_policy"] = policy;
    run["tags"] = spec.tags;
    run["labels"] = labels;
    run["parent_task_run_id"] = nullptr;
    run["state_type"] = nullptr;
    run["state_name"] = nullptr;
    run["run_count"] = 0;
    run["expected_start_time"] = nullptr;
    run["next_scheduled_start_time"] = nullptr;
    run["start_time"] = nullptr;
    run["end_time"] = nullptr;
    run["total_run_time"] = 0.0;
    run["estimated_run_time"] = 0.0;
    run["estimated_start_time_delta"] = 0.0;
    run["auto_scheduled"] = false;
    run["infrastructure_document_id"] = nullptr;
    run["infrastructure_pid"] = nullptr;
    run["created_by"] = nullptr;
    run["work_pool_id"] = pool.is_object() ? pool["id"] : Json(nullptr);
    run["work_pool_name"] = pool.is_object() ? pool["name"] : Json(nullptr);
    run["state"] = nullptr;
    run["job_variables"] = spec.job_variables;
    RunData& data = runs[id];
    data.run = run;
    data.sequence = ++run_sequence;
    Json state = makeState(spec.state_type, spec.state_name);
    if (spec.state_type == "SCHEDULED") {
      state["state_details"]["scheduled_time"] = formatPrefectTime(created + spec.scheduled_in);
    }
    writeState(data, state, {});
    return id;
  }

  // ---- Orchestration ------------------------------------------------------------------

  // Writes `state` as the run's new state and applies the server's universal transforms.
  Json writeState(RunData& data, Json state, const std::function<void(Json&)>& on_commit) {
    Json& run = data.run;
    const Json initial = run["state"];
    TimePoint stamp = now();
    if (!data.history.empty()) {
      if (auto last = timeOf(data.history.back()["timestamp"]); last && stamp <= *last) {
        stamp = *last + std::chrono::microseconds(1);
      }
    }
    std::string type = state["type"].get<std::string>();
    state["id"] = newId();
    state["timestamp"] = formatPrefectTime(stamp);
    if (!state["name"].is_string()) {
      state["name"] = capitalizeType(type);
    }
    state["state_details"]["flow_run_id"] = run["id"];
    if (type == "SCHEDULED" && state["state_details"]["scheduled_time"].is_null()) {
      state["state_details"]["scheduled_time"] = formatPrefectTime(stamp);
    }
    std::string initial_type = initial.is_object() ? jsonString(initial["type"]) : "";
    // SetEndTime
    if (isTerminal(initial_type) && !isTerminal(type)) {
      run["end_time"] = nullptr;
    }
    if (isTerminal(type) && run["end_time"].is_null()) {
      if (run["start_time"].is_null()) {
        run["start_time"] = state["timestamp"];
      }
      run["end_time"] = state["timestamp"];
    }
    // SetStartTime, IncrementRunTime, IncrementFlowRunCount, RemoveResumingIndicator
    if (type == "RUNNING" && run["start_time"].is_null()) {
      run["start_time"] = state["timestamp"];
    }
    if (initial_type == "RUNNING") {
      if (auto since = timeOf(initial["timestamp"])) {
        run["total_run_time"] = run["total_run_time"].get<double>() +
                                std::chrono::duration<double>(stamp - *since).count();
      }
    }
    Json& policy = run["empirical_policy"];
    if (type == "RUNNING" && !policy["resuming"].get<bool>()) {
      run["run_count"] = run["run_count"].get<int64_t>() + 1;
    }
    if ((type == "RUNNING" || isTerminal(type)) && policy["resuming"].get<bool>()) {
      policy["resuming"] = false;
    }
    // SetExpectedStartTime, SetNextScheduledStartTime
    if (run["expected_start_time"].is_null()) {
      run["expected_start_time"] =
          type == "SCHEDULED" ? state["state_details"]["scheduled_time"] : state["timestamp"];
    }
    if (initial_type == "SCHEDULED") {
      run["next_scheduled_start_time"] = nullptr;
    }
    if (type == "SCHEDULED") {
      run["next_scheduled_start_time"] = state["state_details"]["scheduled_time"];
    }
    // Rules' own changes come last, as their after_transition hooks do.
    if (on_commit) {
      on_commit(run);
    }
    run["state"] = state;
    run["state_id"] = state["id"];
    run["state_type"] = type;
    run["state_name"] = state["name"];
    run["updated"] = state["timestamp"];
    data.history.push_back(state);
    return state;
  }

  std::optional<Decision> coreRules(RunData& data, Json& proposed,
                                    const std::optional<std::string>& client_version) {
    Json& run = data.run;
    const Json& initial = run["state"];
    bool has_initial = initial.is_object();
    std::string from = has_initial ? jsonString(initial["type"]) : "";
    std::string to = proposed["type"].get<std::string>();
    std::string to_name = jsonString(proposed["name"]);
    Json& details = proposed["state_details"];
    auto reject = [](Json replacement, std::string reason) {
      Decision decision;
      decision.status = "REJECT";
      decision.replacement = std::move(replacement);
      decision.reason = std::move(reason);
      return decision;
    };
    auto abort = [](std::string reason) {
      Decision decision;
      decision.status = "ABORT";
      decision.reason = std::move(reason);
      return decision;
    };
    bool has_deployment = run["deployment_id"].is_string();

    // PreserveDeploymentConcurrencyLeaseId
    if (has_initial && !initial["state_details"]["deployment_concurrency_lease_id"].is_null() &&
        details["deployment_concurrency_lease_id"].is_null()) {
      details["deployment_concurrency_lease_id"] =
          initial["state_details"]["deployment_concurrency_lease_id"];
    }
    if (!has_initial) {
      return std::nullopt;
    }
    // PreventDuplicateTransitions
    if (!initial["state_details"]["transition_id"].is_null() &&
        initial["state_details"]["transition_id"] == details["transition_id"]) {
      return reject(nullptr, "This run has already made this state transition.");
    }
    std::vector<std::function<void(Json&)>> commits;
    // HandleFlowTerminalStateTransitions
    if (isTerminal(from)) {
      if (to == "CANCELLING" || to == "PAUSED" || to == "CRASHED") {
        return abort("Run is already in terminal state " + from + ".");
      }
      if (from == "COMPLETED" && !isTerminal(to) && truthy(initial["data"]) &&
          hasPersistedResult(initial["data"])) {
        return reject(nullptr, "Run is already COMPLETED.");
      }
      if (from == "COMPLETED" && to == "COMPLETED" && truthy(initial["data"]) &&
          hasPersistedResult(initial["data"]) && !hasPersistedResult(proposed["data"])) {
        return reject(nullptr,
                      "Cannot overwrite a COMPLETED state that carries persisted result data "
                      "with one that does not.");
      }
      if (to == "SCHEDULED" && !has_deployment) {
        return abort("Cannot reschedule a run without an associated deployment.");
      }
      if (!isTerminal(to)) {
        commits.push_back([to](Json& changed) {
          Json& policy = changed["empirical_policy"];
          policy["resuming"] = false;
          policy["pause_keys"] = Json::array();
          policy["retry_type"] = to == "SCHEDULED" ? Json("reschedule") : Json(nullptr);
        });
      }
    }
    // EnforceCancellingToCancelledTransition
    if (from == "CANCELLING" && to != "CANCELLED") {
      return reject(nullptr,
                    "Cannot transition flows that are cancelling to a state other than "
                    "Cancelled.");
    }
    // BypassCancellingFlowRunsWithNoInfra
    if (auto bypass = bypassCancelling(run, initial, to)) {
      return bypass;
    }
    // PreventPendingTransitions
    if (to == "PENDING" &&
        (from == "PENDING" || from == "CANCELLING" || from == "RUNNING" || from == "CANCELLED")) {
      if (from == "PENDING" && jsonString(initial["name"]) != to_name && to_name != "Pending") {
        details["scheduled_time"] = initial["state_details"]["scheduled_time"];
        details["deployment_concurrency_lease_id"] =
            initial["state_details"]["deployment_concurrency_lease_id"];
      } else {
        return abort("This run is in a " + from +
                     " state and cannot transition to a PENDING state.");
      }
    }
    // ValidateDeploymentConcurrencyAtRunning (the fake's leases never expire)
    if (from == "PENDING" && to == "RUNNING") {
      details["deployment_concurrency_lease_id"] =
          initial["state_details"]["deployment_concurrency_lease_id"];
    }
    // SecureFlowConcurrencySlots
    if (to == "PENDING" && from != "PENDING" && from != "RUNNING" && from != "CANCELLING" &&
        has_deployment && !(client_version && kOldConcurrencyClients.count(*client_version))) {
      Json* deployment = findDeployment(run["deployment_id"].get<std::string>());
      if (!deployment) {
        return abort("Deployment not found.");
      }
      if (!(*deployment)["concurrency_limit"].is_null()) {
        int64_t limit = (*deployment)["concurrency_limit"].get<int64_t>();
        if (limit == 0) {
          return abort(
              "The deployment concurrency limit is 0. The flow will deadlock if submitted "
              "again.");
        }
        std::string run_id = run["id"].get<std::string>();
        if (deploymentActiveSlots((*deployment)["id"].get<std::string>(), run_id) < limit) {
          details["deployment_concurrency_lease_id"] = newId();
        } else {
          std::string strategy = "ENQUEUE";
          const Json& concurrency_options = (*deployment)["concurrency_options"];
          if (concurrency_options.is_object() &&
              concurrency_options["collision_strategy"].is_string()) {
            strategy = concurrency_options["collision_strategy"].get<std::string>();
          }
          if (strategy == "CANCEL_NEW") {
            return reject(makeState("CANCELLED", "", "Deployment concurrency limit reached."),
                          "Deployment concurrency limit reached.");
          }
          Json scheduled = makeState("SCHEDULED", "AwaitingConcurrencySlot");
          scheduled["state_details"]["scheduled_time"] =
              formatPrefectTime(now() + options.concurrency_slot_wait);
          return reject(scheduled, "Deployment concurrency limit reached.");
        }
      }
    }
    // EnsureOnlyScheduledFlowsMarkedLate
    if (to == "SCHEDULED" && to_name == "Late") {
      if (from != "SCHEDULED") {
        return reject(nullptr, "Only scheduled flows can be marked late.");
      }
      if (jsonString(initial["name"]) == "Late") {
        return reject(nullptr, "This flow run is already marked late.");
      }
    }
    // HandlePausingFlows
    if (to == "PAUSED") {
      std::string verb = to_name == "Suspended" ? "suspend" : "pause";
      if (from != "RUNNING") {
        return reject(nullptr, "Cannot " + verb + " flows that are not currently running.");
      }
      std::string key =
          details["pause_key"].is_string() ? details["pause_key"].get<std::string>() : newId();
      for (const auto& fired : run["empirical_policy"]["pause_keys"]) {
        if (fired == key) {
          return reject(nullptr, "This " + verb + " has already fired.");
        }
      }
      if (details["pause_reschedule"] == true && !has_deployment) {
        return abort("Cannot " + verb + " flows without a deployment.");
      }
      commits.push_back(
          [key](Json& changed) { changed["empirical_policy"]["pause_keys"].push_back(key); });
    }
    // HandleResumingPausedFlows
    if (from == "PAUSED") {
      if (!(to == "RUNNING" || to == "SCHEDULED" || to == "CANCELLING" || isTerminal(to))) {
        return reject(nullptr, "This run cannot transition to the StateType." + to +
                                   " state from the StateType." + from + " state.");
      }
      std::string display = to_name.empty() ? to : to_name;
      std::transform(display.begin(), display.end(), display.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (initial["state_details"]["pause_reschedule"] == true && !has_deployment) {
        return reject(nullptr,
                      "Cannot reschedule a " + display + " flow run without a deployment.");
      }
      if (to != "CANCELLING") {
        auto timeout = timeOf(initial["state_details"]["pause_timeout"]);
        if (timeout && *timeout < now()) {
          std::string verb = to_name == "Suspended" ? "suspend" : "pause";
          return reject(makeState("FAILED", "", "The flow was " + display + " and never resumed."),
                        "The flow run " + verb + " has timed out and can no longer resume.");
        }
        commits.push_back([](Json& changed) { changed["empirical_policy"]["resuming"] = true; });
      }
    }
    // CopyScheduledTime
    if (from == "SCHEDULED" && to == "PENDING" && details["scheduled_time"].is_null()) {
      details["scheduled_time"] = initial["state_details"]["scheduled_time"];
    }
    // WaitForScheduledTime
    if ((from == "SCHEDULED" || from == "PENDING") && to == "RUNNING") {
      if (auto scheduled = timeOf(initial["state_details"]["scheduled_time"])) {
        int64_t micros =
            std::chrono::duration_cast<std::chrono::microseconds>(*scheduled - now()).count();
        int64_t seconds = micros >= 0 ? micros / 1000000 : -((-micros + 999999) / 1000000);
        int64_t remainder = micros - seconds * 1000000;
        // Python rounds the sub-second part half to even: 0.5 rounds down.
        int64_t delay = seconds + (remainder > 500000 ? 1 : 0);
        if (delay > 0) {
          Decision decision;
          decision.status = "WAIT";
          decision.delay_seconds = static_cast<int>(delay);
          decision.reason = "Scheduled time is in the future";
          return decision;
        }
      }
    }
    // RetryFailedFlows
    if (from == "RUNNING" && to == "FAILED") {
      const Json& policy = run["empirical_policy"];
      int64_t run_count = run["run_count"].get<int64_t>();
      if (policy["retries"].is_null() || run_count > policy["retries"].get<int64_t>()) {
        commits.push_back(
            [](Json& changed) { changed["empirical_policy"]["retry_type"] = nullptr; });
      } else {
        double delay = policy["retry_delay"].is_number() ? policy["retry_delay"].get<double>() : 0;
        Json retry = makeState("SCHEDULED", "AwaitingRetry", proposed["message"]);
        retry["data"] = proposed["data"];
        retry["state_details"]["scheduled_time"] =
            formatPrefectTime(now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(delay)));
        retry["state_details"]["deployment_concurrency_lease_id"] =
            initial["state_details"]["deployment_concurrency_lease_id"];
        Decision decision = reject(retry, "Retrying");
        decision.on_commit = [](Json& changed) {
          Json& changed_policy = changed["empirical_policy"];
          changed_policy["resuming"] = false;
          changed_policy["pause_keys"] = Json::array();
          changed_policy["retry_type"] = "in_process";
        };
        return decision;
      }
    }
    if (!commits.empty()) {
      Decision decision;
      decision.on_commit = [commits](Json& changed) {
        for (const auto& commit : commits) {
          commit(changed);
        }
      };
      return decision;
    }
    return std::nullopt;
  }

  std::optional<Decision> bypassCancelling(const Json& run, const Json& initial,
                                           const std::string& to) {
    if (!initial.is_object() || to != "CANCELLING") {
      return std::nullopt;
    }
    std::string from = jsonString(initial["type"]);
    if (from != "SCHEDULED" && from != "PAUSED") {
      return std::nullopt;
    }
    Decision decision;
    decision.status = "REJECT";
    decision.replacement = makeState("CANCELLED", "");
    if ((from == "SCHEDULED" && !truthy(run["infrastructure_pid"])) ||
        jsonString(initial["name"]) == "Resuming") {
      decision.reason = "Scheduled flow run has no infrastructure to terminate.";
      return decision;
    }
    if (from == "PAUSED" && initial["state_details"]["pause_reschedule"] == true) {
      decision.reason = "Suspended flow run has no infrastructure to terminate.";
      return decision;
    }
    return std::nullopt;
  }

  // Runs the rules for a proposal and writes the outcome. Returns the OrchestrationResult
  // and whether a state was written.
  std::pair<Json, bool> orchestrate(RunData& data, Json proposed, bool force,
                                    const std::optional<std::string>& client_version) {
    std::string run_id = data.run["id"].get<std::string>();
    Decision decision;
    if (auto it = injected.find(run_id); it != injected.end() && !it->second.empty()) {
      Json result = it->second.front();
      it->second.pop_front();
      decision.status = result.value("status", "ACCEPT");
      Json details = result.value("details", Json::object());
      decision.reason = details.value("reason", "");
      decision.delay_seconds = details.value("delay_seconds", 0);
      if (decision.status == "REJECT" && result.contains("state") && result["state"].is_object()) {
        Json state =
            makeState(result["state"].value("type", "SCHEDULED"), result["state"].value("name", ""),
                      result["state"].value("message", Json(nullptr)));
        if (result["state"].contains("state_details")) {
          for (const auto& [key, value] : result["state"]["state_details"].items()) {
            state["state_details"][key] = value;
          }
        }
        decision.replacement = state;
      } else if (decision.status != "ACCEPT") {
        Json answer = Json::object();
        answer["state"] = result.contains("state") ? result["state"] : data.run["state"];
        answer["status"] = decision.status;
        answer["details"] = details.empty() ? detailsFor(decision) : details;
        return {answer, false};
      }
    } else if (force) {
      Json& initial = data.run["state"];
      std::string to = proposed["type"].get<std::string>();
      if (initial.is_object() && initial["type"] == "COMPLETED" && to == "COMPLETED" &&
          truthy(initial["data"]) && hasPersistedResult(initial["data"]) &&
          !hasPersistedResult(proposed["data"])) {
        decision.status = "REJECT";
        decision.reason =
            "Cannot overwrite a COMPLETED state that carries persisted result data with one "
            "that does not.";
      } else if (auto bypass = bypassCancelling(data.run, initial, to)) {
        decision = *bypass;
      }
    } else if (auto ruled = coreRules(data, proposed, client_version)) {
      decision = *ruled;
    }

    Json answer = Json::object();
    bool written = false;
    if (decision.status == "ACCEPT") {
      answer["state"] = writeState(data, proposed, decision.on_commit);
      written = true;
    } else if (decision.status == "REJECT" && decision.replacement.is_object()) {
      answer["state"] = writeState(data, decision.replacement, decision.on_commit);
      written = true;
    } else {
      answer["state"] = data.run["state"];
    }
    answer["status"] = decision.status;
    answer["details"] = detailsFor(decision);
    return {answer, written};
  }

  static Json detailsFor(const Decision& decision) {
    if (decision.status == "ACCEPT") {
      return Json{{"type", "accept_details"}};
    }
    if (decision.status == "WAIT") {
      return Json{{"type", "wait_details"},
                  {"delay_seconds", decision.delay_seconds},
                  {"reason", decision.reason}};
    }
    if (decision.status == "ABORT") {
      return Json{{"type", "abort_details"}, {"reason", decision.reason}};
    }
    return Json{{"type", "reject_details"}, {"reason", decision.reason}};
  }

  // ---- The HTTP side (defined below) ----------------------------------------------------

  using RouteHandler = http::Response (Impl::*)(Context&, const Json&);
  struct RouteDef {
    std::string method;
    std::regex pattern;
    RouteHandler handler;
    bool has_body;
    /// The pattern's literal start: a path without it cannot match, and the check is far
    /// cheaper than the regex (the scale benchmark sends thousands of requests a second).
    std::string prefix;
  };
  static const std::vector<RouteDef>& routes();

  void handle(const http::Request& request, const http::Responder& respond);
  Outcome process(const http::Request& request, RecordedRequest& record);
  http::Response route(Context& context);

  http::Response health(Context& context, const Json& body);
  http::Response ready(Context& context, const Json& body);
  http::Response version(Context& context, const Json& body);
  http::Response csrfToken(Context& context, const Json& body);
  http::Response createWorkPoolRoute(Context& context, const Json& body);
  http::Response filterWorkPools(Context& context, const Json& body);
  http::Response readWorkPool(Context& context, const Json& body);
  http::Response updateWorkPool(Context& context, const Json& body);
  http::Response scheduledFlowRuns(Context& context, const Json& body);
  http::Response workerHeartbeat(Context& context, const Json& body);
  http::Response filterWorkers(Context& context, const Json& body);
  http::Response createWorkQueueRoute(Context& context, const Json& body);
  http::Response filterWorkQueues(Context& context, const Json& body);
  http::Response readWorkQueue(Context& context, const Json& body);
  http::Response filterFlowRuns(Context& context, const Json& body);
  http::Response readFlowRun(Context& context, const Json& body);
  http::Response readFlowRunStates(Context& context, const Json& body);
  http::Response updateFlowRunRoute(Context& context, const Json& body);
  http::Response updateFlowRunLabels(Context& context, const Json& body);
  http::Response setFlowRunState(Context& context, const Json& body);
  http::Response readDeployment(Context& context, const Json& body);
  http::Response readDeploymentByName(Context& context, const Json& body);
  http::Response readFlow(Context& context, const Json& body);
  http::Response createLogs(Context& context, const Json& body);
  http::Response createEvents(Context& context, const Json& body);
  http::Response readBlockDocument(Context& context, const Json& body);
  http::Response readBlockDocumentByName(Context& context, const Json& body);
  http::Response readVariable(Context& context, const Json& body);

  // Helpers of the handlers.
  bool oldClient(const Context& context, const std::string& version) const;
  Json blockDocumentView(const Json& document, bool include_secrets);
  std::optional<http::Response> validateLimit(const Json& body, int64_t& limit, int64_t& offset,
                                              Errors& errors);
  bool runMatches(const RunData& data, const Json& body);
};

// ---- HTTP: faults, middleware, routing ----------------------------------------------------

namespace {

const char* const kUuidPattern =
    "([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})";

bool methodMatches(const std::string& wanted, const std::string& method) {
  return wanted.empty() || wanted == "*" || wanted == method;
}

// Python's int(): surrounding blanks, a sign, digits with single underscores between them.
bool pythonInt(std::string text, int64_t& out) {
  static const std::regex kPattern(R"(^\s*([+-]?)(\d(?:_?\d)*)\s*$)");
  std::smatch match;
  if (!std::regex_match(text, match, kPattern)) {
    return false;
  }
  std::string digits;
  for (char c : match[2].str()) {
    if (c != '_') {
      digits.push_back(c);
    }
  }
  try {
    out = std::stoll(digits) * (match[1] == "-" ? -1 : 1);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

std::optional<http::Response> checkApiVersion(const http::Request& request) {
  std::string version = request.header("x-prefect-api-version");
  if (version.empty()) {
    return std::nullopt;
  }
  std::vector<std::string> parts;
  std::stringstream stream(version);
  std::string part;
  while (std::getline(stream, part, '.')) {
    parts.push_back(part);
  }
  if (!version.empty() && version.back() == '.') {
    parts.emplace_back();
  }
  int64_t numbers[3] = {0, 0, 0};
  bool ok = parts.size() == 3;
  for (std::size_t i = 0; ok && i < 3; ++i) {
    ok = pythonInt(parts[i], numbers[i]);
  }
  if (!ok) {
    return detailReply(400,
                       "Invalid X-PREFECT-API-VERSION header format.Expected header in format "
                       "'x.y.z' but received " +
                           version);
  }
  if (std::make_tuple(numbers[0], numbers[1], numbers[2]) < std::make_tuple(0, 8, 0)) {
    return detailReply(400, "The request specified API version " + version +
                                " but this server requires version 0.8.0 or higher.");
  }
  return std::nullopt;
}

std::optional<std::string> clientVersion(const http::Request& request) {
  static const std::regex kPattern(R"(^prefect/(\d+\.\d+\.\d+(?:[a-z.+0-9]+)?) \(API \S+\)$)");
  std::string agent = request.header("user-agent");
  std::smatch match;
  if (std::regex_match(agent, match, kPattern)) {
    return match[1].str();
  }
  return std::nullopt;
}

std::tuple<int, int, int> versionTriple(const std::string& version) {
  int parts[3] = {0, 0, 0};
  std::sscanf(version.c_str(), "%d.%d.%d", &parts[0], &parts[1], &parts[2]);
  return {parts[0], parts[1], parts[2]};
}

std::string randomHex(std::size_t bytes) {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  std::string out;
  static const char kDigits[] = "0123456789abcdef";
  for (std::size_t i = 0; i < bytes; ++i) {
    auto value = static_cast<unsigned>(generator() & 0xFF);
    out.push_back(kDigits[value >> 4]);
    out.push_back(kDigits[value & 0xF]);
  }
  return out;
}

}  // namespace

const std::vector<FakePrefect::Impl::RouteDef>& FakePrefect::Impl::routes() {
  static const std::vector<RouteDef> kRoutes = [] {
    std::string uuid = kUuidPattern;
    std::vector<RouteDef> list;
    auto add = [&list](const std::string& method, const std::string& pattern, RouteHandler handler,
                       bool has_body) {
      const std::size_t literal = pattern.find_first_of("\\^$.|?*+()[]{}");
      list.push_back(
          RouteDef{method, std::regex(pattern), handler, has_body, pattern.substr(0, literal)});
    };
    add("GET", "/health", &Impl::health, false);
    add("GET", "/ready", &Impl::ready, false);
    add("GET", "/version", &Impl::version, false);
    add("GET", "/csrf-token", &Impl::csrfToken, false);
    add("POST", "/work_pools/", &Impl::createWorkPoolRoute, true);
    add("GET", "/work_pools/([^/]+)", &Impl::readWorkPool, false);
    add("POST", "/work_pools/filter", &Impl::filterWorkPools, true);
    add("PATCH", "/work_pools/([^/]+)", &Impl::updateWorkPool, true);
    add("POST", "/work_pools/([^/]+)/get_scheduled_flow_runs", &Impl::scheduledFlowRuns, true);
    add("POST", "/work_pools/([^/]+)/queues", &Impl::createWorkQueueRoute, true);
    add("GET", "/work_pools/([^/]+)/queues/([^/]+)", &Impl::readWorkQueue, false);
    add("POST", "/work_pools/([^/]+)/queues/filter", &Impl::filterWorkQueues, true);
    add("POST", "/work_pools/([^/]+)/workers/heartbeat", &Impl::workerHeartbeat, true);
    add("POST", "/work_pools/([^/]+)/workers/filter", &Impl::filterWorkers, true);
    add("PATCH", "/flow_runs/" + uuid, &Impl::updateFlowRunRoute, true);
    add("GET", "/flow_runs/" + uuid, &Impl::readFlowRun, false);
    add("GET", "/flow_run_states/", &Impl::readFlowRunStates, false);
    add("POST", "/flow_runs/filter", &Impl::filterFlowRuns, true);
    add("POST", "/flow_runs/" + uuid + "/set_state", &Impl::setFlowRunState, true);
    add("PATCH", "/flow_runs/" + uuid + "/labels", &Impl::updateFlowRunLabels, true);
    add("GET", "/deployments/name/([^/]+)/([^/]+)", &Impl::readDeploymentByName, false);
    add("GET", "/deployments/" + uuid, &Impl::readDeployment, false);
    add("GET", "/flows/" + uuid, &Impl::readFlow, false);
    add("POST", "/logs/", &Impl::createLogs, true);
    add("POST", "/events", &Impl::createEvents, true);
    add("GET", "/block_documents/" + uuid, &Impl::readBlockDocument, false);
    add("GET", "/block_types/slug/([^/]+)/block_documents/name/([^/]+)",
        &Impl::readBlockDocumentByName, false);
    add("GET", "/variables/name/([^/]+)", &Impl::readVariable, false);
    return list;
  }();
  return kRoutes;
}

void FakePrefect::Impl::handle(const http::Request& request, const http::Responder& respond) {
  Outcome outcome;
  {
    std::lock_guard lock(mutex);
    RecordedRequest record;
    record.method = request.method;
    record.target = request.target;
    if (options.record_bodies) {
      record.headers = request.headers;
      record.body = request.body;
    }
    record.time = Clock::now();
    try {
      outcome = process(request, record);
    } catch (const std::exception& error) {
      outcome.response = jsonReply(500, Json{{"exception_message", "Internal Server Error"},
                                             {"fake_prefect", error.what()}});
    }
    record.status = outcome.response.close_connection_without_reply ? 0 : outcome.response.status;
    if (options.record_bodies) {
      record.response_body = outcome.response.body;
    }
    requests.push_back(std::move(record));
    if (outcome.hold_rule) {
      held.push_back(HeldAnswer{*outcome.hold_rule, respond, outcome.response});
    }
    bump();
  }
  if (outcome.hold_rule) {
    return;
  }
  auto send = [respond, response = outcome.response, release = outcome.release]() {
    respond(response);
    for (const auto& answer : release) {
      answer.responder(answer.response);
    }
  };
  if (outcome.delay.count() > 0) {
    auto timer = std::make_shared<asio::steady_timer>(io, outcome.delay);
    timer->async_wait([timer, send](const boost::system::error_code&) { send(); });
    return;
  }
  send();
}

Outcome FakePrefect::Impl::process(const http::Request& request, RecordedRequest& record) {
  Outcome outcome;
  const std::string& full_path = request.path;
  bool under_api = full_path == "/api" || full_path.rfind("/api/", 0) == 0;
  record.path = under_api ? full_path.substr(4) : full_path;
  if (record.path.empty()) {
    record.path = "/";
  }

  // Rules apply in the order they were added: at most one delay and one reorder per request,
  // and a fail or drop ends the request (its answer still takes a chosen delay).
  bool delayed = false;
  bool reordered = false;
  bool answered = false;
  for (auto& rule : faults) {
    if (answered || !methodMatches(rule.method, request.method) ||
        !std::regex_match(record.path, rule.pattern)) {
      continue;
    }
    switch (rule.kind) {
      case FaultRule::Kind::Reorder: {
        if (reordered) {
          break;
        }
        auto waiting = std::find_if(held.begin(), held.end(),
                                    [&rule](const HeldAnswer& h) { return h.rule_id == rule.id; });
        if (waiting != held.end()) {
          outcome.release.push_back(std::move(*waiting));
          held.erase(waiting);
          reordered = true;
        } else if (rule.remaining > 0) {
          --rule.remaining;
          outcome.hold_rule = rule.id;
          reordered = true;
        }
        break;
      }
      case FaultRule::Kind::Delay:
        if (!delayed && rule.remaining > 0) {
          --rule.remaining;
          outcome.delay = rule.delay;
          delayed = true;
        }
        break;
      case FaultRule::Kind::Fail:
        if (rule.remaining > 0) {
          --rule.remaining;
          outcome.response.status = rule.status;
          outcome.response.body = rule.body;
          if (rule.retry_after) {
            std::ostringstream value;
            value << *rule.retry_after;
            outcome.response.headers.emplace_back("Retry-After", value.str());
          }
          answered = true;
        }
        break;
      case FaultRule::Kind::Drop:
        if (rule.remaining > 0) {
          --rule.remaining;
          outcome.response.close_connection_without_reply = true;
          answered = true;
        }
        break;
    }
  }
  if (answered && outcome.hold_rule) {
    // A failed or dropped request is not held; give its hold back.
    for (auto& rule : faults) {
      if (rule.id == *outcome.hold_rule) {
        ++rule.remaining;
      }
    }
    outcome.hold_rule.reset();
  }
  faults.erase(std::remove_if(faults.begin(), faults.end(),
                              [this, &outcome](const FaultRule& rule) {
                                return rule.remaining <= 0 && outcome.hold_rule != rule.id &&
                                       std::none_of(held.begin(), held.end(),
                                                    [&rule](const HeldAnswer& h) {
                                                      return h.rule_id == rule.id;
                                                    });
                              }),
               faults.end());
  if (answered) {
    return outcome;
  }

  if (maintenance) {
    outcome.response = jsonReply(503, Json{{"exception_message", "Service Unavailable"}});
    outcome.response.headers.emplace_back("Prefect-Maintenance", "true");
    if (maintenance_retry_after) {
      std::ostringstream value;
      value << *maintenance_retry_after;
      outcome.response.headers.emplace_back("Retry-After", value.str());
    }
    return outcome;
  }
  if (!under_api) {
    outcome.response = detailReply(404, "Not Found");
    return outcome;
  }

  const std::string& method = request.method;
  if (options.csrf_enabled &&
      (method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE")) {
    auto token = request.headers.find("prefect-csrf-token");
    auto client = request.headers.find("prefect-csrf-client");
    if (token == request.headers.end()) {
      outcome.response = detailReply(403, "Missing CSRF token.");
      return outcome;
    }
    if (client == request.headers.end()) {
      outcome.response = detailReply(403, "Missing client identifier.");
      return outcome;
    }
    auto stored = csrf_tokens.find(client->second);
    if (stored == csrf_tokens.end() || stored->second.expiration <= now() ||
        stored->second.token != token->second) {
      outcome.response = detailReply(403, "Invalid CSRF token or client identifier.");
      outcome.response.headers.emplace_back("Access-Control-Allow-Origin", "*");
      return outcome;
    }
  }

  if (options.auth_string) {
    bool exempt = (record.path == "/health" || record.path == "/ready") && method == "GET";
    if (!exempt) {
      std::string header = request.header("authorization");
      bool ok = false;
      std::istringstream words(header);
      std::string scheme;
      std::string credentials;
      std::string extra;
      if (words >> scheme >> credentials && !(words >> extra) && scheme == "Basic") {
        bool decoded_ok = false;
        std::string decoded = base64Decode(credentials, decoded_ok);
        ok = decoded_ok && decoded == *options.auth_string;
      }
      if (!ok) {
        outcome.response = jsonReply(401, Json{{"exception_message", "Unauthorized"}});
        return outcome;
      }
    }
  }

  Context context;
  context.request = &request;
  context.path = record.path;
  context.client_version = clientVersion(request);
  outcome.response = route(context);
  return outcome;
}

http::Response FakePrefect::Impl::route(Context& context) {
  const http::Request& request = *context.request;
  std::string method = request.method == "HEAD" ? "GET" : request.method;
  const RouteDef* full = nullptr;
  const RouteDef* partial = nullptr;
  std::smatch match;
  for (const auto& definition : routes()) {
    std::smatch candidate;
    if (!context.path.starts_with(definition.prefix) ||
        !std::regex_match(context.path, candidate, definition.pattern)) {
      continue;
    }
    if (definition.method == method) {
      full = &definition;
      match = candidate;
      break;
    }
    if (!partial) {
      partial = &definition;
    }
  }
  if (!full) {
    if (partial) {
      http::Response response = detailReply(405, "Method Not Allowed");
      response.headers.emplace_back("Allow", partial->method);
      return response;
    }
    if (context.path != "/") {
      std::string other = context.path.back() == '/'
                              ? context.path.substr(0, context.path.size() - 1)
                              : context.path + "/";
      for (const auto& definition : routes()) {
        if (other.starts_with(definition.prefix) && std::regex_match(other, definition.pattern)) {
          std::string target = request.target;
          std::size_t question = target.find('?');
          std::string query = question == std::string::npos ? "" : target.substr(question);
          std::string host = request.header("host");
          http::Response response = emptyReply(307);
          response.headers.emplace_back("Location", "http://" + host + "/api" + other + query);
          return response;
        }
      }
    }
    return detailReply(404, "Not Found");
  }
  for (std::size_t i = 1; i < match.size(); ++i) {
    context.params.push_back(match[i].str());
  }
  bool exempt_from_version =
      context.path == "/health" || context.path == "/ready" || context.path == "/version";
  if (!exempt_from_version) {
    if (auto rejected = checkApiVersion(request)) {
      return *rejected;
    }
  }
  Json body = nullptr;
  if (full->has_body && !request.body.empty()) {
    body = Json::parse(request.body, nullptr, false);
    if (body.is_discarded()) {
      Errors errors;
      errors.add(Json::array({"body", 0}), "json_invalid", "JSON decode error", Json::object());
      return validationReply(errors, request.body);
    }
    context.body_present = true;
  }
  return (this->*(full->handler))(context, body);
}

// ---- HTTP: route handlers -----------------------------------------------------------------

namespace {

// FastAPI's view of a body whose fields are separate `Body(...)` parameters.
bool embeddedBody(const Json& body, Errors& errors) {
  if (body.is_null() || body.is_object()) {
    return true;
  }
  errors.add(Json::array({"body"}), "model_attributes_type",
             "Input should be a valid dictionary or object to extract fields from", body);
  return false;
}

const Json& field(const Json& body, const std::string& key) {
  static const Json kNull = nullptr;
  if (!body.is_object()) {
    return kNull;
  }
  auto it = body.find(key);
  return it == body.end() ? kNull : *it;
}

bool has(const Json& body, const std::string& key) {
  return body.is_object() && body.contains(key);
}

void validateName(const Json& value, const Json& loc, Errors& errors, bool non_emptyish) {
  if (!checkString(value, loc, errors, false)) {
    return;
  }
  std::string name = value.get<std::string>();
  if (non_emptyish) {
    std::string stripped = name;
    stripped.erase(0, stripped.find_first_not_of("' \""));
    if (stripped.empty() || stripped.find_last_not_of("' \"") == std::string::npos) {
      errors.add(loc, "value_error", "Value error, name cannot be an empty string", value);
      return;
    }
  }
  if (name.empty() || name.find_first_of("/%&><") != std::string::npos) {
    errors.add(loc, "string_pattern_mismatch", "String should match pattern '^[^/%&><]+$'", value);
  }
}

std::optional<int64_t> nonNegative(const Json& value, const Json& loc, Errors& errors,
                                   int64_t minimum) {
  auto number = laxInt(value, loc, errors);
  if (number && *number < minimum) {
    errors.add(loc, minimum == 0 ? "greater_than_equal" : "greater_than",
               minimum == 0 ? "Input should be greater than or equal to 0"
                            : "Input should be greater than 0",
               value);
    return std::nullopt;
  }
  return number;
}

// `validate_base_job_template` of the server.
void validateBaseJobTemplate(const Json& value, const Json& loc, Errors& errors) {
  if (!checkObject(value, loc, errors) || value.empty()) {
    return;
  }
  const Json& job_configuration = field(value, "job_configuration");
  const Json& variables = field(value, "variables");
  if (!truthy(job_configuration) || !truthy(variables)) {
    errors.add(loc, "value_error",
               "Value error, The `base_job_template` must contain both a `job_configuration` "
               "key and a `variables` key.",
               value);
    return;
  }
  if (!job_configuration.is_object() || !variables.is_object()) {
    errors.add(loc, "value_error",
               "Value error, `job_configuration` and `variables` must be objects.", value);
    return;
  }
  static const std::regex kPlaceholder(R"(\{\{\s*([\w\.\-\[\]$]+)\s*\}\})");
  std::set<std::string> used;
  for (const auto& [key, template_value] : job_configuration.items()) {
    std::string text = template_value.dump();
    for (auto it = std::sregex_iterator(text.begin(), text.end(), kPlaceholder);
         it != std::sregex_iterator(); ++it) {
      used.insert((*it)[1].str());
    }
  }
  std::set<std::string> declared;
  if (variables.contains("properties") && variables["properties"].is_object()) {
    for (const auto& [key, property] : variables["properties"].items()) {
      declared.insert(key);
    }
  }
  std::string missing;
  for (const auto& name : used) {
    if (!declared.count(name)) {
      missing += (missing.empty() ? "" : " ,") + name;
    }
  }
  if (!missing.empty()) {
    errors.add(loc, "value_error",
               "Value error, The variables specified in the job configuration template must be "
               "present as properties in the variables schema. Your job configuration uses the "
               "following undeclared variable(s): " +
                   missing + ".",
               value);
  }
}

// ---- Filters (`prefect.server.schemas.filters`) --------------------------------------------

// Leaf types: op, uuids, strings, string, bool, datetime, state_types, int.
const Json& filterSchema(const std::string& name) {
  static const std::map<std::string, Json> kSchemas = {
      {"flow_runs", Json::parse(R"({"operator":"op","id":{"any_":"uuids","not_any_":"uuids"},
        "name":{"any_":"strings","like_":"string"},
        "tags":{"operator":"op","all_":"strings","any_":"strings","is_null_":"bool"},
        "deployment_id":{"operator":"op","any_":"uuids","is_null_":"bool"},
        "work_queue_name":{"operator":"op","any_":"strings","is_null_":"bool"},
        "state":{"operator":"op","type":{"any_":"state_types","not_any_":"state_types"},
                 "name":{"any_":"strings","not_any_":"strings"}},
        "flow_version":{"any_":"strings"},
        "start_time":{"before_":"datetime","after_":"datetime","is_null_":"bool"},
        "end_time":{"before_":"datetime","after_":"datetime","is_null_":"bool"},
        "expected_start_time":{"before_":"datetime","after_":"datetime"},
        "next_scheduled_start_time":{"before_":"datetime","after_":"datetime"},
        "parent_flow_run_id":{"operator":"op","any_":"uuids"},
        "parent_task_run_id":{"operator":"op","any_":"uuids","is_null_":"bool"},
        "idempotency_key":{"any_":"strings","not_any_":"strings"},
        "created_by":{"operator":"op","id_":"uuids","type_":"strings","is_null_":"bool"}})")},
      {"flows", Json::parse(R"({"operator":"op","id":{"any_":"uuids","not_any_":"uuids"},
        "deployment":{"operator":"op","is_null_":"bool"},
        "name":{"any_":"strings","like_":"string"},
        "tags":{"operator":"op","all_":"strings","is_null_":"bool"}})")},
      {"deployments", Json::parse(R"({"operator":"op","id":{"any_":"uuids","not_any_":"uuids"},
        "name":{"any_":"strings","like_":"string"},
        "flow_or_deployment_name":{"like_":"string"},"paused":{"eq_":"bool"},
        "tags":{"operator":"op","all_":"strings","any_":"strings","is_null_":"bool"},
        "work_queue_name":{"any_":"strings"},
        "concurrency_limit":{"ge_":"int","le_":"int","is_null_":"bool"}})")},
      {"work_pools", Json::parse(R"({"operator":"op","id":{"any_":"uuids"},
        "name":{"any_":"strings"},"type":{"any_":"strings"}})")},
      {"work_pool_queues", Json::parse(R"({"operator":"op","id":{"any_":"uuids"},
        "name":{"any_":"strings","startswith_":"strings"}})")},
      {"task_runs", Json::parse(R"({"operator":"op","id":{"any_":"uuids"},
        "name":{"any_":"strings","like_":"string"},
        "tags":{"operator":"op","all_":"strings","is_null_":"bool"},
        "state":{"operator":"op","type":{"any_":"state_types"},"name":{"any_":"strings"}},
        "start_time":{"before_":"datetime","after_":"datetime","is_null_":"bool"},
        "end_time":{"before_":"datetime","after_":"datetime","is_null_":"bool"},
        "expected_start_time":{"before_":"datetime","after_":"datetime"},
        "subflow_runs":{"exists_":"bool"},
        "flow_run_id":{"operator":"op","any_":"uuids","is_null_":"bool"}})")},
  };
  return kSchemas.at(name);
}

// Validates a filter against its schema; returns it with uuids and times made canonical.
Json validateFilter(const Json& value, const Json& schema, const Json& loc, Errors& errors) {
  if (value.is_null()) {
    return nullptr;
  }
  if (!value.is_object()) {
    errors.add(loc, "model_type", "Input should be a valid dictionary or object", value);
    return nullptr;
  }
  Json out = Json::object();
  for (const auto& [key, item] : value.items()) {
    Json item_loc = at(loc, key);
    if (!schema.contains(key)) {
      errors.add(item_loc, "extra_forbidden", "Extra inputs are not permitted", item);
      continue;
    }
    const Json& kind = schema[key];
    if (kind.is_object()) {
      out[key] = validateFilter(item, kind, item_loc, errors);
      continue;
    }
    std::string type = kind.get<std::string>();
    if (item.is_null() && type != "op") {
      out[key] = nullptr;
    } else if (type == "op") {
      if (item != "and_" && item != "or_") {
        errors.add(item_loc, "enum", "Input should be 'and_' or 'or_'", item);
      }
      out[key] = item;
    } else if (type == "string") {
      if (checkString(item, item_loc, errors, false)) {
        out[key] = item;
      }
    } else if (type == "bool") {
      if (auto flag = laxBool(item, item_loc, errors)) {
        out[key] = *flag;
      }
    } else if (type == "int") {
      if (auto number = laxInt(item, item_loc, errors)) {
        out[key] = *number;
      }
    } else if (type == "datetime") {
      if (auto time = laxTime(item, item_loc, errors)) {
        out[key] = formatPrefectTime(*time);
      }
    } else if (!item.is_array()) {
      errors.add(item_loc, "list_type", "Input should be a valid list", item);
    } else {
      Json list = Json::array();
      for (std::size_t i = 0; i < item.size(); ++i) {
        Json element_loc = at(item_loc, i);
        if (type == "uuids") {
          if (auto id = laxUuid(item[i], element_loc, errors)) {
            list.push_back(*id);
          }
        } else if (type == "state_types") {
          if (!item[i].is_string() || std::find(stateTypes().begin(), stateTypes().end(),
                                                item[i].get<std::string>()) == stateTypes().end()) {
            errors.add(element_loc, "enum",
                       "Input should be 'SCHEDULED', 'PENDING', 'RUNNING', 'COMPLETED', "
                       "'FAILED', 'CANCELLED', 'CRASHED', 'PAUSED' or 'CANCELLING'",
                       item[i]);
          } else {
            list.push_back(item[i]);
          }
        } else if (checkString(item[i], element_loc, errors, false)) {
          list.push_back(item[i]);
        }
      }
      out[key] = list;
    }
  }
  return out;
}

bool containsValue(const Json& list, const Json& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// One criterion of a filter against one field value, with SQL's treatment of NULL.
bool matchCriterion(const std::string& op, const Json& arg, const Json& value) {
  if (op == "is_null_") {
    bool is_null = value.is_null() || (value.is_array() && value.empty());
    return is_null == arg.get<bool>();
  }
  if (op == "exists_") {
    return !arg.get<bool>();
  }
  if (value.is_null()) {
    return false;
  }
  if (value.is_array()) {
    if (op == "all_") {
      return std::all_of(arg.begin(), arg.end(),
                         [&value](const Json& item) { return containsValue(value, item); });
    }
    if (op == "any_") {
      return std::any_of(arg.begin(), arg.end(),
                         [&value](const Json& item) { return containsValue(value, item); });
    }
    if (op == "like_") {
      return std::any_of(value.begin(), value.end(),
                         [&arg](const Json& item) { return matchCriterion("like_", arg, item); });
    }
    return false;
  }
  if (op == "any_" || op == "id_" || op == "type_") {
    return containsValue(arg, value);
  }
  if (op == "not_any_") {
    return !containsValue(arg, value);
  }
  if (op == "like_") {
    return lower(jsonString(value)).find(lower(arg.get<std::string>())) != std::string::npos;
  }
  if (op == "startswith_") {
    return std::any_of(arg.begin(), arg.end(), [&value](const Json& prefix) {
      return jsonString(value).rfind(prefix.get<std::string>(), 0) == 0;
    });
  }
  if (op == "before_" || op == "after_") {
    auto when = timeOf(value);
    auto bound = timeOf(arg);
    if (!when || !bound) {
      return false;
    }
    return op == "before_" ? *when <= *bound : *when >= *bound;
  }
  if (op == "eq_") {
    return value == arg;
  }
  if (op == "ge_") {
    return value.is_number() && value.get<double>() >= arg.get<double>();
  }
  if (op == "le_") {
    return value.is_number() && value.get<double>() <= arg.get<double>();
  }
  return false;
}

bool combine(const std::string& op, const std::vector<bool>& results) {
  if (results.empty()) {
    return true;
  }
  if (op == "or_") {
    return std::find(results.begin(), results.end(), true) != results.end();
  }
  return std::find(results.begin(), results.end(), false) == results.end();
}

using FieldGetter = std::function<Json(const std::string&)>;

bool matchFilter(const Json& filter, const FieldGetter& get) {
  if (!filter.is_object()) {
    return true;
  }
  std::vector<bool> results;
  for (const auto& [key, criteria] : filter.items()) {
    if (key == "operator" || !criteria.is_object()) {
      continue;
    }
    if (key == "state") {
      results.push_back(
          matchFilter(criteria, [&get](const std::string& sub) { return get("state." + sub); }));
      continue;
    }
    Json value = get(key);
    std::vector<bool> sub_results;
    for (const auto& [op, arg] : criteria.items()) {
      if (op == "operator" || arg.is_null()) {
        continue;
      }
      sub_results.push_back(matchCriterion(op, arg, value));
    }
    if (!sub_results.empty()) {
      results.push_back(combine(criteria.value("operator", "and_"), sub_results));
    }
  }
  return combine(filter.value("operator", "and_"), results);
}

}  // namespace

http::Response FakePrefect::Impl::health(Context&, const Json&) { return jsonReply(200, true); }

http::Response FakePrefect::Impl::ready(Context&, const Json&) {
  return jsonReply(200, Json{{"message", "OK"}});
}

http::Response FakePrefect::Impl::version(Context&, const Json&) { return jsonReply(200, "0.8.4"); }

http::Response FakePrefect::Impl::csrfToken(Context& context, const Json&) {
  const auto& query = context.request->query;
  auto client = query.find("client");
  if (client == query.end()) {
    Errors errors;
    errors.add(Json::array({"query", "client"}), "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!options.csrf_enabled) {
    return detailReply(422, "CSRF protection is disabled.");
  }
  TimePoint issued = now();
  CsrfToken& token = csrf_tokens[client->second];
  std::string created =
      token.json.is_object() ? token.json["created"].get<std::string>() : formatPrefectTime(issued);
  token.token = randomHex(32);
  token.expiration = issued + options.csrf_token_lifetime;
  token.json = Json{{"id", token.json.is_object() ? token.json["id"] : Json(newId())},
                    {"created", created},
                    {"updated", formatPrefectTime(issued)},
                    {"token", token.token},
                    {"client", client->second},
                    {"expiration", formatPrefectTime(token.expiration)}};
  return jsonReply(200, token.json);
}

bool FakePrefect::Impl::oldClient(const Context& context, const std::string& version) const {
  return context.client_version && versionTriple(*context.client_version) <= versionTriple(version);
}

http::Response FakePrefect::Impl::createWorkPoolRoute(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!context.body_present) {
    errors.add(loc, "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_object()) {
    errors.add(loc, "model_attributes_type",
               "Input should be a valid dictionary or object to extract fields from", body);
    return validationReply(errors, body);
  }
  checkExtra(body,
             {"name", "description", "type", "base_job_template", "is_paused", "concurrency_limit",
              "storage_configuration"},
             loc, errors);
  if (!has(body, "name")) {
    errors.add(at(loc, "name"), "missing", "Field required", body);
  } else {
    validateName(body["name"], at(loc, "name"), errors, true);
  }
  if (has(body, "description")) {
    checkString(body["description"], at(loc, "description"), errors, true);
  }
  if (has(body, "type")) {
    checkString(body["type"], at(loc, "type"), errors, false);
  }
  Json base_job_template = Json::object();
  if (has(body, "base_job_template")) {
    validateBaseJobTemplate(body["base_job_template"], at(loc, "base_job_template"), errors);
    base_job_template = body["base_job_template"];
  }
  bool is_paused = false;
  if (has(body, "is_paused")) {
    is_paused = laxBool(body["is_paused"], at(loc, "is_paused"), errors).value_or(false);
  }
  Json concurrency_limit = nullptr;
  if (has(body, "concurrency_limit") && !body["concurrency_limit"].is_null()) {
    if (auto limit =
            nonNegative(body["concurrency_limit"], at(loc, "concurrency_limit"), errors, 0)) {
      concurrency_limit = *limit;
    }
  }
  Json storage = field(body, "storage_configuration");
  if (has(body, "storage_configuration")) {
    checkObject(storage, at(loc, "storage_configuration"), errors);
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  std::string name = body["name"].get<std::string>();
  if (lower(name).rfind("prefect", 0) == 0) {
    return detailReply(403, "Work pools starting with 'Prefect' are reserved for internal use.");
  }
  if (findPool(name)) {
    return detailReply(409, "A work pool with this name already exists.");
  }
  Json& pool =
      newPool(name, has(body, "type") ? body["type"].get<std::string>() : "prefect-agent",
              base_job_template, concurrency_limit, is_paused, field(body, "description"), storage);
  Json view = poolView(pool);
  if (!view["concurrency_limit"].is_null()) {
    view["active_slots"] = 0;
  }
  if (oldClient(context, "3.3.7")) {
    view["storage_configuration"].erase("default_result_storage_block_id");
  }
  return jsonReply(201, view);
}

std::optional<http::Response> FakePrefect::Impl::validateLimit(const Json& body, int64_t& limit,
                                                               int64_t& offset, Errors& errors) {
  limit = options.default_limit;
  offset = 0;
  if (has(body, "limit") && !body["limit"].is_null()) {
    Errors limit_errors;
    auto value = laxInt(body["limit"], Json::array({"body", "limit"}), limit_errors);
    if (!value) {
      for (const auto& error : limit_errors.list()) {
        errors.add(error["loc"], error["type"], error["msg"], error["input"]);
      }
    } else if (*value < 0) {
      return detailReply(422, "Invalid limit: must be greater than or equal to 0.");
    } else if (*value > options.default_limit) {
      return detailReply(422, "Invalid limit: must be less than or equal to " +
                                  std::to_string(options.default_limit) + ".");
    } else {
      limit = *value;
    }
  }
  if (has(body, "offset") && !body["offset"].is_null()) {
    if (auto value = laxInt(body["offset"], Json::array({"body", "offset"}), errors)) {
      if (*value < 0) {
        errors.add(Json::array({"body", "offset"}), "greater_than_equal",
                   "Input should be greater than or equal to 0", body["offset"]);
      } else {
        offset = *value;
      }
    }
  }
  return std::nullopt;
}

http::Response FakePrefect::Impl::filterWorkPools(Context&, const Json& body) {
  Errors errors;
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  int64_t limit = 0;
  int64_t offset = 0;
  if (auto rejected = validateLimit(body, limit, offset, errors)) {
    return *rejected;
  }
  Json filter = validateFilter(field(body, "work_pools"), filterSchema("work_pools"),
                               Json::array({"body", "work_pools"}), errors);
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  Json out = Json::array();
  int64_t skipped = 0;
  for (auto& [name, pool] : pools) {
    bool match = matchFilter(filter, [&pool](const std::string& key) { return pool[key]; });
    if (!match || skipped++ < offset) {
      continue;
    }
    if (static_cast<int64_t>(out.size()) >= limit) {
      break;
    }
    out.push_back(poolView(pool));
  }
  return jsonReply(200, out);
}

http::Response FakePrefect::Impl::readWorkPool(Context& context, const Json&) {
  Json* pool = findPool(context.params[0]);
  if (!pool) {
    return detailReply(404, "Work pool \"" + context.params[0] + "\" not found.");
  }
  Json view = poolView(*pool);
  if (oldClient(context, "3.3.7")) {
    view["storage_configuration"].erase("default_result_storage_block_id");
  }
  return jsonReply(200, view);
}

http::Response FakePrefect::Impl::updateWorkPool(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!context.body_present) {
    errors.add(loc, "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_object()) {
    errors.add(loc, "model_attributes_type",
               "Input should be a valid dictionary or object to extract fields from", body);
    return validationReply(errors, body);
  }
  checkExtra(body,
             {"description", "is_paused", "base_job_template", "concurrency_limit",
              "storage_configuration"},
             loc, errors);
  Json update = Json::object();
  if (has(body, "description") &&
      checkString(body["description"], at(loc, "description"), errors, true)) {
    update["description"] = body["description"];
  }
  if (has(body, "is_paused")) {
    if (body["is_paused"].is_null()) {
      update["is_paused"] = nullptr;
    } else if (auto flag = laxBool(body["is_paused"], at(loc, "is_paused"), errors)) {
      update["is_paused"] = *flag;
    }
  }
  if (has(body, "base_job_template")) {
    if (!body["base_job_template"].is_null()) {
      validateBaseJobTemplate(body["base_job_template"], at(loc, "base_job_template"), errors);
    }
    update["base_job_template"] = body["base_job_template"];
  }
  if (has(body, "concurrency_limit")) {
    if (body["concurrency_limit"].is_null()) {
      update["concurrency_limit"] = nullptr;
    } else if (auto limit = nonNegative(body["concurrency_limit"], at(loc, "concurrency_limit"),
                                        errors, 0)) {
      update["concurrency_limit"] = *limit;
    }
  }
  if (has(body, "storage_configuration")) {
    if (!body["storage_configuration"].is_null()) {
      checkObject(body["storage_configuration"], at(loc, "storage_configuration"), errors);
    }
    update["storage_configuration"] = body["storage_configuration"];
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  const std::string& name = context.params[0];
  if (lower(name).rfind("prefect", 0) == 0) {
    for (const auto& [key, value] : update.items()) {
      if (key != "is_paused" && key != "concurrency_limit") {
        return detailReply(403,
                           "Work pools starting with 'Prefect' are reserved for internal use and "
                           "can only be updated to set concurrency limits or pause.");
      }
    }
  }
  Json* pool = findPool(name);
  if (!pool) {
    return detailReply(404, "Work pool \"" + name + "\" not found.");
  }
  for (const auto& [key, value] : update.items()) {
    if (key == "is_paused") {
      if (value.is_null()) {
        continue;
      }
      bool paused = value.get<bool>();
      if (paused != (*pool)["is_paused"].get<bool>() && (*pool)["type"] != "prefect-agent") {
        bool online = false;
        for (const auto& [worker_key, worker] : workers) {
          online =
              online || (worker["work_pool_id"] == (*pool)["id"] && worker["status"] == "ONLINE");
        }
        (*pool)["status"] = paused ? "PAUSED" : (online ? "READY" : "NOT_READY");
      }
    }
    if (key == "storage_configuration" && value.is_object()) {
      for (const auto& [storage_key, storage_value] : value.items()) {
        (*pool)["storage_configuration"][storage_key] = storage_value;
      }
      continue;
    }
    if (key == "base_job_template" && value.is_null()) {
      continue;
    }
    (*pool)[key] = value;
  }
  (*pool)["updated"] = formatPrefectTime(now());
  return emptyReply();
}

http::Response FakePrefect::Impl::scheduledFlowRuns(Context& context, const Json& body) {
  Errors errors;
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  int64_t limit = 0;
  int64_t offset = 0;
  // The limit dependency runs, and may answer, before the body fields are checked.
  if (auto rejected = validateLimit(body, limit, offset, errors)) {
    return *rejected;
  }
  std::vector<std::string> queue_names;
  if (!field(body, "work_queue_names").is_null()) {
    if (auto names = stringList(body["work_queue_names"], Json::array({"body", "work_queue_names"}),
                                errors)) {
      queue_names = *names;
    }
  }
  std::optional<TimePoint> before;
  std::optional<TimePoint> after;
  if (!field(body, "scheduled_before").is_null()) {
    before = laxTime(body["scheduled_before"], Json::array({"body", "scheduled_before"}), errors);
  }
  if (!field(body, "scheduled_after").is_null()) {
    after = laxTime(body["scheduled_after"], Json::array({"body", "scheduled_after"}), errors);
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  const std::string& pool_name = context.params[0];
  Json* pool = findPool(pool_name);
  if (!pool) {
    return detailReply(404, "Work pool \"" + pool_name + "\" not found.");
  }
  std::string pool_id = (*pool)["id"].get<std::string>();
  std::vector<Json*> polled;
  if (queue_names.empty()) {
    polled = queuesOf(pool_id);
  } else {
    for (const auto& name : queue_names) {
      Json* queue = findQueue(pool_name, name);
      if (!queue) {
        return detailReply(404, "Work pool queue '" + pool_name + "/" + name + "' not found.");
      }
      polled.push_back(queue);
    }
  }

  // The query of get-runs-from-worker-queues.sql.jinja, with queue priorities respected.
  struct Candidate {
    RunData* data;
    Json* queue;
    TimePoint scheduled;
  };
  std::vector<Candidate> candidates;
  if (!(*pool)["is_paused"].get<bool>()) {
    for (Json* queue : polled) {
      if ((*queue)["is_paused"].get<bool>()) {
        continue;
      }
      std::string queue_id = (*queue)["id"].get<std::string>();
      std::vector<Candidate> in_queue;
      for (auto& [id, data] : runs) {
        const Json& run = data.run;
        if (run["work_queue_id"] != queue_id || run["state_type"] != "SCHEDULED" ||
            run["empirical_policy"]["retry_type"] == "in_process") {
          continue;
        }
        auto scheduled = timeOf(run["next_scheduled_start_time"]);
        if (!scheduled || (before && *scheduled > *before) || (after && *scheduled < *after)) {
          continue;
        }
        in_queue.push_back(Candidate{&data, queue, *scheduled});
      }
      std::stable_sort(in_queue.begin(), in_queue.end(),
                       [](const Candidate& a, const Candidate& b) {
                         return a.scheduled != b.scheduled ? a.scheduled < b.scheduled
                                                           : a.data->sequence < b.data->sequence;
                       });
      std::size_t queue_slots = 1000;
      if (!(*queue)["concurrency_limit"].is_null()) {
        int64_t free = (*queue)["concurrency_limit"].get<int64_t>() - activeRunsInQueue(queue_id);
        queue_slots = std::min<std::size_t>(queue_slots,
                                            static_cast<std::size_t>(std::max<int64_t>(0, free)));
      }
      if (in_queue.size() > queue_slots) {
        in_queue.resize(queue_slots);
      }
      candidates.insert(candidates.end(), in_queue.begin(), in_queue.end());
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     int64_t pa = (*a.queue)["priority"].get<int64_t>();
                     int64_t pb = (*b.queue)["priority"].get<int64_t>();
                     if (pa != pb) {
                       return pa < pb;
                     }
                     return a.scheduled != b.scheduled ? a.scheduled < b.scheduled
                                                       : a.data->sequence < b.data->sequence;
                   });
  std::size_t pool_slots = 1000;
  if (!(*pool)["concurrency_limit"].is_null()) {
    int64_t free = (*pool)["concurrency_limit"].get<int64_t>() - activeRunsInPool(pool_id);
    pool_slots =
        std::min<std::size_t>(pool_slots, static_cast<std::size_t>(std::max<int64_t>(0, free)));
  }
  if (candidates.size() > pool_slots) {
    candidates.resize(pool_slots);
  }
  if (candidates.size() > static_cast<std::size_t>(limit)) {
    candidates.resize(static_cast<std::size_t>(limit));
  }
  Json out = Json::array();
  for (const auto& candidate : candidates) {
    Json run = candidate.data->run;
    run.erase("work_pool_id");
    run.erase("work_pool_name");
    run["state"] = nullptr;
    out.push_back(Json{
        {"work_pool_id", pool_id}, {"work_queue_id", (*candidate.queue)["id"]}, {"flow_run", run}});
  }

  // Polling marks the queues and their deployments ready.
  std::string stamp = formatPrefectTime(now());
  for (Json* queue : polled) {
    (*queue)["last_polled"] = stamp;
    if ((*queue)["status"] != "PAUSED") {
      (*queue)["status"] = "READY";
    }
    for (auto& [id, deployment] : deployments) {
      if (deployment["work_queue_id"] == (*queue)["id"]) {
        deployment["last_polled"] = stamp;
        deployment["status"] = "READY";
      }
    }
  }
  return jsonReply(200, out);
}

http::Response FakePrefect::Impl::workerHeartbeat(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  if (!has(body, "name")) {
    errors.add(at(loc, "name"), "missing", "Field required");
  } else {
    checkString(body["name"], at(loc, "name"), errors, false);
  }
  Json interval = nullptr;
  if (!field(body, "heartbeat_interval_seconds").is_null()) {
    if (auto value = laxInt(body["heartbeat_interval_seconds"],
                            at(loc, "heartbeat_interval_seconds"), errors)) {
      interval = *value;
    }
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  const std::string& pool_name = context.params[0];
  Json* pool = findPool(pool_name);
  if (!pool) {
    return detailReply(404, "Work pool \"" + pool_name + "\" not found.");
  }
  std::string name = body["name"].get<std::string>();
  std::string stamp = formatPrefectTime(now());
  Json& worker = workers[(*pool)["id"].get<std::string>() + "/" + name];
  if (!worker.is_object()) {
    worker = Json{{"id", newId()},
                  {"created", stamp},
                  {"updated", stamp},
                  {"name", name},
                  {"work_pool_id", (*pool)["id"]},
                  {"last_heartbeat_time", stamp},
                  {"heartbeat_interval_seconds", nullptr},
                  {"status", "ONLINE"}};
  }
  worker["last_heartbeat_time"] = stamp;
  worker["updated"] = stamp;
  worker["status"] = "ONLINE";
  if (!interval.is_null()) {
    worker["heartbeat_interval_seconds"] = interval;
  }
  if ((*pool)["status"] == "NOT_READY") {
    (*pool)["status"] = "READY";
  }
  heartbeats.push_back(Json{{"work_pool", pool_name},
                            {"name", name},
                            {"heartbeat_interval_seconds", interval},
                            {"raw", body},
                            {"time", stamp}});
  return emptyReply();
}

http::Response FakePrefect::Impl::filterWorkers(Context& context, const Json& body) {
  Errors errors;
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  int64_t limit = 0;
  int64_t offset = 0;
  if (auto rejected = validateLimit(body, limit, offset, errors)) {
    return *rejected;
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  if (!field(body, "workers").is_null()) {
    return notImplementedReply("worker filters");
  }
  Json* pool = findPool(context.params[0]);
  if (!pool) {
    return detailReply(404, "Work pool \"" + context.params[0] + "\" not found.");
  }
  Json out = Json::array();
  int64_t skipped = 0;
  for (const auto& [key, worker] : workers) {
    if (worker["work_pool_id"] != (*pool)["id"] || skipped++ < offset) {
      continue;
    }
    if (static_cast<int64_t>(out.size()) < limit) {
      out.push_back(worker);
    }
  }
  return jsonReply(200, out);
}

http::Response FakePrefect::Impl::createWorkQueueRoute(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!context.body_present) {
    errors.add(loc, "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_object()) {
    errors.add(loc, "model_attributes_type",
               "Input should be a valid dictionary or object to extract fields from", body);
    return validationReply(errors, body);
  }
  checkExtra(body, {"name", "description", "is_paused", "concurrency_limit", "priority", "filter"},
             loc, errors);
  if (!has(body, "name")) {
    errors.add(at(loc, "name"), "missing", "Field required", body);
  } else {
    validateName(body["name"], at(loc, "name"), errors, false);
  }
  std::string description;
  if (has(body, "description") &&
      checkString(body["description"], at(loc, "description"), errors, true) &&
      body["description"].is_string()) {
    description = body["description"].get<std::string>();
  }
  bool is_paused = false;
  if (has(body, "is_paused")) {
    is_paused = laxBool(body["is_paused"], at(loc, "is_paused"), errors).value_or(false);
  }
  Json concurrency_limit = nullptr;
  if (!field(body, "concurrency_limit").is_null()) {
    if (auto limit =
            nonNegative(body["concurrency_limit"], at(loc, "concurrency_limit"), errors, 0)) {
      concurrency_limit = *limit;
    }
  }
  std::optional<int64_t> priority;
  if (!field(body, "priority").is_null()) {
    priority = nonNegative(body["priority"], at(loc, "priority"), errors, 1);
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  const std::string& pool_name = context.params[0];
  Json* pool = findPool(pool_name);
  if (!pool) {
    return detailReply(404, "Work pool \"" + pool_name + "\" not found.");
  }
  std::string name = body["name"].get<std::string>();
  if (findQueue(pool_name, name)) {
    return detailReply(
        409, "A work queue with this name already exists in work pool {work_pool_name!r}.");
  }
  Json queue = newQueue(*pool, name, priority, concurrency_limit, is_paused, description);
  Json view = queueView(queue);
  if (!view["concurrency_limit"].is_null()) {
    view["active_slots"] = 0;
  }
  return jsonReply(201, view);
}

http::Response FakePrefect::Impl::filterWorkQueues(Context& context, const Json& body) {
  Errors errors;
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  int64_t limit = 0;
  int64_t offset = 0;
  if (auto rejected = validateLimit(body, limit, offset, errors)) {
    return *rejected;
  }
  Json filter = validateFilter(field(body, "work_queues"), filterSchema("work_pool_queues"),
                               Json::array({"body", "work_queues"}), errors);
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  Json* pool = findPool(context.params[0]);
  if (!pool) {
    return detailReply(404, "Work pool \"" + context.params[0] + "\" not found.");
  }
  Json out = Json::array();
  int64_t skipped = 0;
  for (Json* queue : queuesOf((*pool)["id"].get<std::string>())) {
    bool match = matchFilter(filter, [queue](const std::string& key) { return (*queue)[key]; });
    if (!match || skipped++ < offset) {
      continue;
    }
    if (static_cast<int64_t>(out.size()) < limit) {
      out.push_back(queueView(*queue));
    }
  }
  return jsonReply(200, out);
}

http::Response FakePrefect::Impl::readWorkQueue(Context& context, const Json&) {
  Json* queue = findQueue(context.params[0], context.params[1]);
  if (!queue) {
    return detailReply(
        404, "Work pool queue '" + context.params[0] + "/" + context.params[1] + "' not found.");
  }
  return jsonReply(200, queueView(*queue));
}

bool FakePrefect::Impl::runMatches(const RunData& data, const Json& filters) {
  const Json& run = data.run;
  Json flow = nullptr;
  if (auto it = flows.find(jsonString(run["flow_id"])); it != flows.end()) {
    flow = it->second;
  }
  auto run_field = [&run](const std::string& key) -> Json {
    if (key == "state.type") {
      return run["state_type"];
    }
    if (key == "state.name") {
      return run["state_name"];
    }
    if (key == "parent_flow_run_id") {
      return nullptr;
    }
    return run.contains(key) ? run[key] : Json(nullptr);
  };
  if (!matchFilter(filters["flow_runs"], run_field)) {
    return false;
  }
  if (filters["flows"].is_object()) {
    bool flow_has_deployment =
        std::any_of(deployments.begin(), deployments.end(),
                    [&flow](const auto& entry) { return entry.second["flow_id"] == flow["id"]; });
    auto flow_field = [&flow, flow_has_deployment](const std::string& key) -> Json {
      if (key == "deployment") {
        return flow_has_deployment ? Json("yes") : Json(nullptr);
      }
      return flow.is_object() && flow.contains(key) ? flow[key] : Json(nullptr);
    };
    if (!flow.is_object() || !matchFilter(filters["flows"], flow_field)) {
      return false;
    }
  }
  if (filters["deployments"].is_object()) {
    auto it = deployments.find(jsonString(run["deployment_id"]));
    if (it == deployments.end()) {
      return false;
    }
    const Json& deployment = it->second;
    auto deployment_field = [&deployment, &flow](const std::string& key) -> Json {
      if (key == "flow_or_deployment_name") {
        return Json::array({flow.is_object() ? flow["name"] : Json(""), deployment["name"]});
      }
      return deployment.contains(key) ? deployment[key] : Json(nullptr);
    };
    if (!matchFilter(filters["deployments"], deployment_field)) {
      return false;
    }
  }
  if (filters["work_pools"].is_object()) {
    Json* pool = run["work_pool_id"].is_string()
                     ? findPoolById(run["work_pool_id"].get<std::string>())
                     : nullptr;
    if (!pool || !matchFilter(filters["work_pools"],
                              [pool](const std::string& key) { return (*pool)[key]; })) {
      return false;
    }
  }
  if (filters["work_pool_queues"].is_object()) {
    auto it = queues.find(jsonString(run["work_queue_id"]));
    if (it == queues.end() ||
        !matchFilter(filters["work_pool_queues"],
                     [&it](const std::string& key) { return it->second[key]; })) {
      return false;
    }
  }
  return true;
}

http::Response FakePrefect::Impl::filterFlowRuns(Context&, const Json& body) {
  Errors errors;
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  int64_t limit = 0;
  int64_t offset = 0;
  if (auto rejected = validateLimit(body, limit, offset, errors)) {
    return *rejected;
  }
  static const std::vector<std::string> kSorts = {"ID_DESC",
                                                  "START_TIME_ASC",
                                                  "START_TIME_DESC",
                                                  "EXPECTED_START_TIME_ASC",
                                                  "EXPECTED_START_TIME_DESC",
                                                  "NAME_ASC",
                                                  "NAME_DESC",
                                                  "NEXT_SCHEDULED_START_TIME_ASC",
                                                  "END_TIME_DESC"};
  std::string sort = "ID_DESC";
  if (!field(body, "sort").is_null()) {
    if (!body["sort"].is_string() ||
        std::find(kSorts.begin(), kSorts.end(), body["sort"].get<std::string>()) == kSorts.end()) {
      errors.add(Json::array({"body", "sort"}), "enum", "Input should be a valid FlowRunSort",
                 body["sort"]);
    } else {
      sort = body["sort"].get<std::string>();
    }
  }
  Json filters = Json::object();
  for (const char* key :
       {"flows", "flow_runs", "task_runs", "deployments", "work_pools", "work_pool_queues"}) {
    filters[key] =
        validateFilter(field(body, key), filterSchema(key), Json::array({"body", key}), errors);
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  if (filters["task_runs"].is_object()) {
    return notImplementedReply("task_runs filters (the fake has no task runs)");
  }
  std::vector<const RunData*> matched;
  for (const auto& [id, data] : runs) {
    if (runMatches(data, filters)) {
      matched.push_back(&data);
    }
  }
  auto key_of = [&sort](const RunData* data) -> std::string {
    const Json& run = data->run;
    if (sort.rfind("ID", 0) == 0) {
      return run["id"].get<std::string>();
    }
    if (sort.rfind("NAME", 0) == 0) {
      return run["name"].get<std::string>();
    }
    std::string column = sort.rfind("START_TIME", 0) == 0            ? "start_time"
                         : sort.rfind("EXPECTED_START_TIME", 0) == 0 ? "expected_start_time"
                         : sort.rfind("NEXT_SCHEDULED", 0) == 0      ? "next_scheduled_start_time"
                                                                     : "end_time";
    auto time = timeOf(run[column]);
    return time ? formatPrefectTime(*time) : std::string();
  };
  bool descending = sort.size() > 5 && sort.substr(sort.size() - 5) == "_DESC";
  std::stable_sort(matched.begin(), matched.end(),
                   [&key_of, descending](const RunData* a, const RunData* b) {
                     std::string ka = key_of(a);
                     std::string kb = key_of(b);
                     // NULLs (empty keys) go last either way.
                     if (ka.empty() != kb.empty()) {
                       return kb.empty();
                     }
                     return descending ? ka > kb : ka < kb;
                   });
  Json out = Json::array();
  for (std::size_t i = static_cast<std::size_t>(offset);
       i < matched.size() && static_cast<int64_t>(out.size()) < limit; ++i) {
    out.push_back(runView(*matched[i]));
  }
  return jsonReply(200, out);
}

http::Response FakePrefect::Impl::readFlowRun(Context& context, const Json&) {
  RunData* data = findRun(context.params[0]);
  if (!data) {
    return detailReply(404, "Flow run not found");
  }
  return jsonReply(200, runView(*data));
}

// GET /flow_run_states/?flow_run_id=: every state of the run, oldest first (the server orders
// them by timestamp); an unknown run has no states, which is not an error.
http::Response FakePrefect::Impl::readFlowRunStates(Context& context, const Json&) {
  const auto& query = context.request->query;
  auto id = query.find("flow_run_id");
  if (id == query.end()) {
    Errors errors;
    errors.add(Json::array({"query", "flow_run_id"}), "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  RunData* data = findRun(id->second);
  return jsonReply(200, data ? Json(data->history) : Json::array());
}

http::Response FakePrefect::Impl::updateFlowRunRoute(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!context.body_present) {
    errors.add(loc, "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_object()) {
    errors.add(loc, "model_attributes_type",
               "Input should be a valid dictionary or object to extract fields from", body);
    return validationReply(errors, body);
  }
  checkExtra(body,
             {"name", "flow_version", "parameters", "empirical_policy", "tags",
              "infrastructure_pid", "job_variables"},
             loc, errors);
  Json update = Json::object();
  for (const auto& [key, value] : body.items()) {
    Json item_loc = at(loc, key);
    if (key == "name") {
      // FlowRunUpdate's validator makes up a name when none is given.
      if (value.is_null()) {
        update[key] = randomRunName();
      } else if (checkString(value, item_loc, errors, false)) {
        update[key] = value;
      }
    } else if (key == "flow_version" || key == "infrastructure_pid") {
      if (checkString(value, item_loc, errors, true)) {
        update[key] = value;
      }
    } else if (key == "parameters") {
      if (checkObject(value, item_loc, errors)) {
        update[key] = value;
      }
    } else if (key == "job_variables") {
      if (value.is_null() || checkObject(value, item_loc, errors)) {
        update[key] = value;
      }
    } else if (key == "tags") {
      if (stringList(value, item_loc, errors)) {
        update[key] = value;
      }
    } else if (key == "empirical_policy") {
      if (checkObject(value, item_loc, errors)) {
        Json policy = defaultPolicy();
        for (const auto& [policy_key, policy_value] : value.items()) {
          policy[policy_key] = policy_value;
        }
        update[key] = policy;
      }
    }
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  RunData* data = findRun(context.params[0]);
  if (!data) {
    return detailReply(404, "Flow run not found");
  }
  if (update.contains("job_variables") && !update["job_variables"].is_null()) {
    const Json& run = data->run;
    if (!run["state"].is_object()) {
      return detailReply(400, "Flow run state is required to update job variables but none exists");
    }
    if (run["state_type"] != "SCHEDULED") {
      return detailReply(400, "Job variables for a flow run in state " +
                                  run["state_type"].get<std::string>() + " cannot be updated");
    }
    if (!run["deployment_id"].is_string() ||
        !findDeployment(run["deployment_id"].get<std::string>())) {
      return detailReply(400, "A deployment for the flow run could not be found");
    }
  }
  for (const auto& [key, value] : update.items()) {
    data->run[key] = value;
  }
  data->run["updated"] = formatPrefectTime(now());
  return emptyReply();
}

http::Response FakePrefect::Impl::updateFlowRunLabels(Context& context, const Json& body) {
  Errors errors;
  if (!context.body_present) {
    errors.add(Json::array({"body"}), "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_object()) {
    errors.add(Json::array({"body"}), "dict_type", "Input should be a valid dictionary", body);
    return validationReply(errors, body);
  }
  RunData* data = findRun(context.params[0]);
  if (!data) {
    return jsonReply(
        404, Json{{"exception_message",
                   "Flow run with id " + *canonicalUuid(context.params[0]) + " not found"}});
  }
  for (const auto& [key, value] : body.items()) {
    data->run["labels"][key] = value;
  }
  data->run["updated"] = formatPrefectTime(now());
  return emptyReply();
}

http::Response FakePrefect::Impl::setFlowRunState(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!embeddedBody(body, errors)) {
    return validationReply(errors, body);
  }
  Json proposed = nullptr;
  if (!has(body, "state")) {
    errors.add(at(loc, "state"), "missing", "Field required");
  } else {
    proposed = validateStateCreate(body["state"], at(loc, "state"), errors);
  }
  bool force = false;
  if (!field(body, "force").is_null()) {
    force = laxBool(body["force"], at(loc, "force"), errors).value_or(false);
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  RunData* data = findRun(context.params[0]);
  if (!data) {
    return jsonReply(
        404, Json{{"exception_message",
                   "Flow run with id " + *canonicalUuid(context.params[0]) + " not found"}});
  }
  auto [result, written] = orchestrate(*data, proposed, force, context.client_version);
  return jsonReply(written ? 201 : 200, result);
}

http::Response FakePrefect::Impl::readDeployment(Context& context, const Json&) {
  Json* deployment = findDeployment(context.params[0]);
  if (!deployment) {
    return detailReply(404, "Deployment not found");
  }
  return jsonReply(200, deploymentView(*deployment));
}

http::Response FakePrefect::Impl::readDeploymentByName(Context& context, const Json&) {
  for (auto& [id, deployment] : deployments) {
    auto flow = flows.find(deployment["flow_id"].get<std::string>());
    if (flow != flows.end() && flow->second["name"] == context.params[0] &&
        deployment["name"] == context.params[1]) {
      return jsonReply(200, deploymentView(deployment));
    }
  }
  return detailReply(404, "Deployment not found");
}

http::Response FakePrefect::Impl::readFlow(Context& context, const Json&) {
  auto it = flows.find(*canonicalUuid(context.params[0]));
  if (it == flows.end()) {
    return detailReply(404, "Flow not found");
  }
  return jsonReply(200, it->second);
}

http::Response FakePrefect::Impl::createLogs(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!context.body_present) {
    errors.add(loc, "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_array()) {
    errors.add(loc, "list_type", "Input should be a valid list", body);
    return validationReply(errors, body);
  }
  std::vector<Json> accepted;
  for (std::size_t i = 0; i < body.size(); ++i) {
    const Json& log = body[i];
    Json log_loc = at(loc, i);
    if (!checkObject(log, log_loc, errors)) {
      continue;
    }
    checkExtra(log, {"name", "level", "message", "timestamp", "flow_run_id", "task_run_id"},
               log_loc, errors);
    Json out = Json::object();
    for (const char* key : {"name", "level", "message", "timestamp"}) {
      if (!log.contains(key)) {
        errors.add(at(log_loc, key), "missing", "Field required", log);
      }
    }
    if (log.contains("name") && checkString(log["name"], at(log_loc, "name"), errors, false)) {
      out["name"] = log["name"];
    }
    if (log.contains("level")) {
      if (auto level = laxInt(log["level"], at(log_loc, "level"), errors)) {
        out["level"] = *level;
      }
    }
    if (log.contains("message") &&
        checkString(log["message"], at(log_loc, "message"), errors, false)) {
      out["message"] = log["message"];
    }
    if (log.contains("timestamp")) {
      if (auto time = laxTime(log["timestamp"], at(log_loc, "timestamp"), errors)) {
        out["timestamp"] = formatPrefectTime(*time);
      }
    }
    for (const char* key : {"flow_run_id", "task_run_id"}) {
      out[key] = nullptr;
      if (!field(log, key).is_null()) {
        if (auto id = laxUuid(log[key], at(log_loc, key), errors)) {
          out[key] = *id;
        }
      }
    }
    accepted.push_back(out);
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  std::string stamp = formatPrefectTime(now());
  for (auto& log : accepted) {
    log["id"] = newId();
    log["created"] = stamp;
    logs.push_back(std::move(log));
  }
  return jsonReply(201, nullptr);
}

http::Response FakePrefect::Impl::createEvents(Context& context, const Json& body) {
  Errors errors;
  Json loc = Json::array({"body"});
  if (!context.body_present) {
    errors.add(loc, "missing", "Field required");
    return validationReply(errors, nullptr);
  }
  if (!body.is_array()) {
    errors.add(loc, "list_type", "Input should be a valid list", body);
    return validationReply(errors, body);
  }
  for (std::size_t i = 0; i < body.size(); ++i) {
    const Json& event = body[i];
    Json event_loc = at(loc, i);
    if (!checkObject(event, event_loc, errors)) {
      continue;
    }
    for (const char* key : {"occurred", "event", "resource", "id"}) {
      if (!event.contains(key)) {
        errors.add(at(event_loc, key), "missing", "Field required", event);
      }
    }
    if (event.contains("event")) {
      checkString(event["event"], at(event_loc, "event"), errors, false);
    }
    if (event.contains("resource") &&
        checkObject(event["resource"], at(event_loc, "resource"), errors) &&
        !event["resource"].contains("prefect.resource.id")) {
      errors.add(at(event_loc, "resource"), "value_error",
                 "Value error, Resources must include the prefect.resource.id label",
                 event["resource"]);
    }
    if (event.contains("id")) {
      laxUuid(event["id"], at(event_loc, "id"), errors);
    }
    if (event.contains("occurred")) {
      laxTime(event["occurred"], at(event_loc, "occurred"), errors);
    }
  }
  if (!errors.empty()) {
    return validationReply(errors, body);
  }
  for (const auto& event : body) {
    events.push_back(event);
  }
  return emptyReply();
}

Json FakePrefect::Impl::blockDocumentView(const Json& document, bool include_secrets) {
  Json view = document;
  if (!include_secrets) {
    for (const auto& key : block_secrets[document["id"].get<std::string>()]) {
      if (view["data"].contains(key)) {
        view["data"][key] = "********";
      }
    }
  }
  return view;
}

http::Response FakePrefect::Impl::readBlockDocument(Context& context, const Json&) {
  Errors errors;
  bool include_secrets = false;
  auto it = context.request->query.find("include_secrets");
  if (it != context.request->query.end()) {
    include_secrets = laxBool(Json(it->second), Json::array({"query", "include_secrets"}), errors)
                          .value_or(false);
  }
  if (!errors.empty()) {
    return validationReply(errors, nullptr);
  }
  auto document = block_documents.find(*canonicalUuid(context.params[0]));
  if (document == block_documents.end()) {
    return detailReply(404, "Block document not found");
  }
  return jsonReply(200, blockDocumentView(document->second, include_secrets));
}

http::Response FakePrefect::Impl::readBlockDocumentByName(Context& context, const Json&) {
  Errors errors;
  bool include_secrets = false;
  auto it = context.request->query.find("include_secrets");
  if (it != context.request->query.end()) {
    include_secrets = laxBool(Json(it->second), Json::array({"query", "include_secrets"}), errors)
                          .value_or(false);
  }
  if (!errors.empty()) {
    return validationReply(errors, nullptr);
  }
  for (const auto& [id, document] : block_documents) {
    if (document["block_type"]["slug"] == context.params[0] &&
        document["name"] == context.params[1]) {
      return jsonReply(200, blockDocumentView(document, include_secrets));
    }
  }
  return detailReply(404, "Block document not found");
}

http::Response FakePrefect::Impl::readVariable(Context& context, const Json&) {
  auto it = variables.find(context.params[0]);
  if (it == variables.end()) {
    return detailReply(404, "Variable not found.");
  }
  return jsonReply(200, it->second);
}

// ---- The public face ----------------------------------------------------------------------

FakePrefect::FakePrefect(FakePrefectOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl* impl = impl_.get();
  impl->server = std::make_unique<http::HttpServer>(impl->io);
  impl->server->setHandler([impl](const http::Request& request, http::Responder respond) {
    impl->handle(request, respond);
  });
  auto listened = impl->server->listen("127.0.0.1", 0);
  if (!listened.ok()) {
    throw std::runtime_error("fake_prefect: " + listened.error().message);
  }
  impl->port = impl->server->port();
  impl->work.emplace(asio::make_work_guard(impl->io));
  impl->thread = std::thread([impl] { impl->io.run(); });
}

FakePrefect::~FakePrefect() {
  Impl* impl = impl_.get();
  std::promise<void> stopped;
  asio::post(impl->io, [impl, &stopped] {
    impl->server->stop();
    stopped.set_value();
  });
  stopped.get_future().wait();
  impl->work.reset();
  impl->io.stop();
  impl->thread.join();
  {
    std::lock_guard lock(impl->mutex);
    impl->held.clear();
  }
  impl->server.reset();
}

std::string FakePrefect::apiUrl() const {
  return "http://127.0.0.1:" + std::to_string(impl_->port) + "/api";
}

uint16_t FakePrefect::port() const { return impl_->port; }

void FakePrefect::setAuthString(std::optional<std::string> auth_string) {
  std::lock_guard lock(impl_->mutex);
  impl_->options.auth_string = std::move(auth_string);
}

void FakePrefect::setCsrfEnabled(bool enabled) {
  std::lock_guard lock(impl_->mutex);
  impl_->options.csrf_enabled = enabled;
}

void FakePrefect::expireCsrfTokens() {
  std::lock_guard lock(impl_->mutex);
  for (auto& [client, token] : impl_->csrf_tokens) {
    token.expiration = now() - std::chrono::seconds(1);
  }
}

void FakePrefect::setMaintenance(bool on, std::optional<double> retry_after_seconds) {
  std::lock_guard lock(impl_->mutex);
  impl_->maintenance = on;
  impl_->maintenance_retry_after = retry_after_seconds;
}

std::string FakePrefect::createWorkPool(const std::string& name, const std::string& type,
                                        Json base_job_template,
                                        std::optional<int> concurrency_limit) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->findPool(name)) {
    throw std::invalid_argument("fake_prefect: work pool '" + name + "' exists");
  }
  Json& pool = impl_->newPool(name, type, std::move(base_job_template),
                              concurrency_limit ? Json(*concurrency_limit) : Json(nullptr), false,
                              nullptr, nullptr);
  impl_->bump();
  return pool["id"].get<std::string>();
}

std::string FakePrefect::createWorkQueue(const std::string& pool, const std::string& name,
                                         std::optional<int> priority,
                                         std::optional<int> concurrency_limit) {
  std::lock_guard lock(impl_->mutex);
  Json* found = impl_->findPool(pool);
  if (!found) {
    throw std::invalid_argument("fake_prefect: no work pool '" + pool + "'");
  }
  if (impl_->findQueue(pool, name)) {
    throw std::invalid_argument("fake_prefect: queue '" + pool + "/" + name + "' exists");
  }
  Json queue =
      impl_->newQueue(*found, name, priority ? std::optional<int64_t>(*priority) : std::nullopt,
                      concurrency_limit ? Json(*concurrency_limit) : Json(nullptr), false, "");
  impl_->bump();
  return queue["id"].get<std::string>();
}

void FakePrefect::setWorkPoolPaused(const std::string& pool, bool paused) {
  std::lock_guard lock(impl_->mutex);
  Json* found = impl_->findPool(pool);
  if (!found) {
    throw std::invalid_argument("fake_prefect: no work pool '" + pool + "'");
  }
  (*found)["is_paused"] = paused;
  (*found)["status"] = paused ? "PAUSED" : "NOT_READY";
  impl_->bump();
}

void FakePrefect::setWorkQueuePaused(const std::string& pool, const std::string& queue,
                                     bool paused) {
  std::lock_guard lock(impl_->mutex);
  Json* found = impl_->findQueue(pool, queue);
  if (!found) {
    throw std::invalid_argument("fake_prefect: no queue '" + pool + "/" + queue + "'");
  }
  (*found)["is_paused"] = paused;
  (*found)["status"] = paused ? "PAUSED" : "NOT_READY";
  impl_->bump();
}

void FakePrefect::setWorkQueueConcurrencyLimit(const std::string& pool, const std::string& queue,
                                               std::optional<int> limit) {
  std::lock_guard lock(impl_->mutex);
  Json* found = impl_->findQueue(pool, queue);
  if (!found) {
    throw std::invalid_argument("fake_prefect: no queue '" + pool + "/" + queue + "'");
  }
  (*found)["concurrency_limit"] = limit ? Json(*limit) : Json(nullptr);
  impl_->bump();
}

std::string FakePrefect::createFlow(const std::string& name) {
  std::lock_guard lock(impl_->mutex);
  std::string stamp = formatPrefectTime(now());
  std::string id = newId();
  impl_->flows[id] = Json{{"id", id},     {"created", stamp},      {"updated", stamp},
                          {"name", name}, {"tags", Json::array()}, {"labels", Json::object()}};
  impl_->bump();
  return id;
}

std::string FakePrefect::createDeployment(const std::string& flow_id, const std::string& name,
                                          const std::string& pool, const std::string& queue,
                                          Json job_variables, std::optional<int> concurrency_limit,
                                          const std::string& collision_strategy) {
  std::lock_guard lock(impl_->mutex);
  if (!impl_->flows.count(flow_id)) {
    throw std::invalid_argument("fake_prefect: no flow " + flow_id);
  }
  Json* found_queue = impl_->findQueue(pool, queue);
  if (!found_queue) {
    throw std::invalid_argument("fake_prefect: no queue '" + pool + "/" + queue + "'");
  }
  std::string stamp = formatPrefectTime(now());
  std::string id = newId();
  Json deployment = Json::object();
  deployment["id"] = id;
  deployment["created"] = stamp;
  deployment["updated"] = stamp;
  deployment["name"] = name;
  deployment["version"] = nullptr;
  deployment["description"] = nullptr;
  deployment["flow_id"] = flow_id;
  deployment["paused"] = false;
  deployment["schedules"] = Json::array();
  deployment["concurrency_limit"] = concurrency_limit ? Json(*concurrency_limit) : Json(nullptr);
  deployment["concurrency_limit_id"] = concurrency_limit ? Json(newId()) : Json(nullptr);
  deployment["global_concurrency_limit"] = nullptr;
  deployment["concurrency_options"] =
      concurrency_limit
          ? Json{{"collision_strategy", collision_strategy}, {"grace_period_seconds", nullptr}}
          : Json(nullptr);
  deployment["job_variables"] = std::move(job_variables);
  deployment["parameters"] = Json::object();
  deployment["tags"] = Json::array();
  deployment["labels"] = Json::object();
  deployment["work_queue_name"] = queue;
  deployment["work_queue_id"] = (*found_queue)["id"];
  deployment["last_polled"] = nullptr;
  deployment["parameter_openapi_schema"] = Json::object();
  deployment["path"] = ".";
  deployment["pull_steps"] = nullptr;
  deployment["entrypoint"] = "flows.py:main";
  deployment["storage_document_id"] = nullptr;
  deployment["infrastructure_document_id"] = nullptr;
  deployment["created_by"] = nullptr;
  deployment["updated_by"] = nullptr;
  deployment["work_pool_name"] = pool;
  deployment["status"] = "NOT_READY";
  deployment["enforce_parameter_schema"] = true;
  impl_->deployments[id] = deployment;
  impl_->bump();
  return id;
}

void FakePrefect::updateDeployment(const std::string& id, const Json& fields) {
  std::lock_guard lock(impl_->mutex);
  Json* deployment = impl_->findDeployment(id);
  if (!deployment) {
    throw std::invalid_argument("fake_prefect: no deployment " + id);
  }
  for (const auto& [key, value] : fields.items()) {
    (*deployment)[key] = value;
  }
  if (fields.contains("concurrency_limit") && !fields["concurrency_limit"].is_null() &&
      (*deployment)["concurrency_limit_id"].is_null()) {
    (*deployment)["concurrency_limit_id"] = newId();
  }
  impl_->bump();
}

void FakePrefect::deleteDeployment(const std::string& id) {
  std::lock_guard lock(impl_->mutex);
  impl_->deployments.erase(canonicalUuid(id).value_or(id));
  impl_->bump();
}

std::string FakePrefect::createFlowRun(const std::string& deployment_or_flow_id, Json job_variables,
                                       std::chrono::milliseconds scheduled_in, Json parameters) {
  FlowRunSpec spec;
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->findDeployment(deployment_or_flow_id)) {
      spec.deployment_id = deployment_or_flow_id;
    } else {
      spec.flow_id = deployment_or_flow_id;
    }
  }
  spec.job_variables = std::move(job_variables);
  spec.scheduled_in = scheduled_in;
  spec.parameters = std::move(parameters);
  return createFlowRun(spec);
}

std::string FakePrefect::createFlowRun(const FlowRunSpec& spec) {
  std::lock_guard lock(impl_->mutex);
  std::string id = impl_->newFlowRun(spec);
  impl_->bump();
  return id;
}

void FakePrefect::deleteFlowRun(const std::string& id) {
  std::lock_guard lock(impl_->mutex);
  impl_->runs.erase(canonicalUuid(id).value_or(id));
  impl_->bump();
}

std::string FakePrefect::createBlockDocument(const std::string& type_slug, const std::string& name,
                                             Json data, std::vector<std::string> secret_keys) {
  std::lock_guard lock(impl_->mutex);
  std::string stamp = formatPrefectTime(now());
  std::string id = newId();
  std::string type_id = newId();
  std::string schema_id = newId();
  Json document = Json::object();
  document["id"] = id;
  document["created"] = stamp;
  document["updated"] = stamp;
  document["name"] = name;
  document["data"] = std::move(data);
  document["block_schema_id"] = schema_id;
  document["block_schema"] =
      Json{{"id", schema_id},          {"checksum", "sha256:fake"},     {"fields", Json::object()},
           {"block_type_id", type_id}, {"capabilities", Json::array()}, {"version", "1"}};
  document["block_type_id"] = type_id;
  document["block_type_name"] = type_slug;
  document["block_type"] = Json{{"id", type_id},
                                {"name", type_slug},
                                {"slug", type_slug},
                                {"logo_url", nullptr},
                                {"documentation_url", nullptr},
                                {"description", nullptr},
                                {"code_example", nullptr},
                                {"is_protected", false}};
  document["block_document_references"] = Json::object();
  document["is_anonymous"] = false;
  impl_->block_documents[id] = document;
  impl_->block_secrets[id] = std::move(secret_keys);
  impl_->bump();
  return id;
}

void FakePrefect::createVariable(const std::string& name, Json value) {
  std::lock_guard lock(impl_->mutex);
  std::string stamp = formatPrefectTime(now());
  impl_->variables[name] =
      Json{{"id", newId()}, {"created", stamp},          {"updated", stamp},
           {"name", name},  {"value", std::move(value)}, {"tags", Json::array()}};
  impl_->bump();
}

Json FakePrefect::flowRun(const std::string& id) const {
  std::lock_guard lock(impl_->mutex);
  RunData* data = impl_->findRun(id);
  return data ? impl_->runView(*data) : Json(nullptr);
}

std::vector<Json> FakePrefect::flowRuns() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<const RunData*> ordered;
  for (const auto& [id, data] : impl_->runs) {
    ordered.push_back(&data);
  }
  std::sort(ordered.begin(), ordered.end(),
            [](const RunData* a, const RunData* b) { return a->sequence < b->sequence; });
  std::vector<Json> out;
  for (const RunData* data : ordered) {
    out.push_back(impl_->runView(*data));
  }
  return out;
}

std::vector<Json> FakePrefect::stateHistory(const std::string& id) const {
  std::lock_guard lock(impl_->mutex);
  RunData* data = impl_->findRun(id);
  return data ? data->history : std::vector<Json>{};
}

std::vector<Json> FakePrefect::logsFor(const std::string& flow_run_id) const {
  std::lock_guard lock(impl_->mutex);
  std::string id = canonicalUuid(flow_run_id).value_or(flow_run_id);
  std::vector<Json> out;
  for (const auto& log : impl_->logs) {
    if (log["flow_run_id"] == id) {
      out.push_back(log);
    }
  }
  return out;
}

std::vector<Json> FakePrefect::logs() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->logs;
}

std::vector<Json> FakePrefect::events() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->events;
}

Json FakePrefect::workPool(const std::string& name) const {
  std::lock_guard lock(impl_->mutex);
  Json* pool = impl_->findPool(name);
  return pool ? impl_->poolView(*pool) : Json(nullptr);
}

Json FakePrefect::workQueue(const std::string& pool, const std::string& name) const {
  std::lock_guard lock(impl_->mutex);
  Json* queue = impl_->findQueue(pool, name);
  return queue ? impl_->queueView(*queue) : Json(nullptr);
}

Json FakePrefect::deployment(const std::string& id) const {
  std::lock_guard lock(impl_->mutex);
  Json* found = impl_->findDeployment(id);
  return found ? impl_->deploymentView(*found) : Json(nullptr);
}

std::vector<Json> FakePrefect::heartbeats() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->heartbeats;
}

std::vector<RecordedRequest> FakePrefect::requests() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->requests;
}

int FakePrefect::countRequests(const std::string& method, const std::string& path_regex) const {
  std::regex pattern(path_regex);
  std::lock_guard lock(impl_->mutex);
  return static_cast<int>(std::count_if(
      impl_->requests.begin(), impl_->requests.end(), [&](const RecordedRequest& request) {
        return methodMatches(method, request.method) && std::regex_match(request.path, pattern);
      }));
}

std::vector<std::string> FakePrefect::userAgents() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<std::string> out;
  for (const auto& request : impl_->requests) {
    auto it = request.headers.find("user-agent");
    if (it != request.headers.end() && std::find(out.begin(), out.end(), it->second) == out.end()) {
      out.push_back(it->second);
    }
  }
  return out;
}

void FakePrefect::clearRequests() {
  std::lock_guard lock(impl_->mutex);
  impl_->requests.clear();
}

Json FakePrefect::setState(const std::string& id, const std::string& type, const std::string& name,
                           const std::string& message, bool force) {
  std::lock_guard lock(impl_->mutex);
  RunData* data = impl_->findRun(id);
  if (!data) {
    throw std::invalid_argument("fake_prefect: no flow run " + id);
  }
  if (std::find(stateTypes().begin(), stateTypes().end(), type) == stateTypes().end()) {
    throw std::invalid_argument("fake_prefect: no state type " + type);
  }
  Json state = makeState(type, name, message.empty() ? Json(nullptr) : Json(message));
  if (type == "SCHEDULED") {
    state["state_details"]["scheduled_time"] = formatPrefectTime(now());
  }
  auto [result, written] = impl_->orchestrate(*data, state, force, std::nullopt);
  impl_->bump();
  return result;
}

void FakePrefect::updateFlowRun(const std::string& id, const Json& fields) {
  std::lock_guard lock(impl_->mutex);
  RunData* data = impl_->findRun(id);
  if (!data) {
    throw std::invalid_argument("fake_prefect: no flow run " + id);
  }
  for (const auto& [key, value] : fields.items()) {
    data->run[key] = value;
  }
  impl_->bump();
}

bool FakePrefect::waitUntil(const std::function<bool(FakePrefect&)>& predicate,
                            std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    uint64_t seen = 0;
    {
      std::lock_guard lock(impl_->mutex);
      seen = impl_->generation;
    }
    if (predicate(*this)) {
      return true;
    }
    std::unique_lock lock(impl_->mutex);
    if (!impl_->state_changed.wait_until(lock, deadline,
                                         [this, seen] { return impl_->generation != seen; })) {
      lock.unlock();
      return predicate(*this);
    }
  }
}

void FakePrefect::failNext(const std::string& method, const std::string& path_regex, int status,
                           int count, std::string body, std::optional<double> retry_after_seconds) {
  FaultRule rule;
  rule.kind = FaultRule::Kind::Fail;
  rule.method = method;
  rule.pattern = std::regex(path_regex);
  rule.remaining = count;
  rule.status = status;
  rule.body =
      body.empty() ? Json{{"detail", "Injected failure by fake_prefect"}}.dump() : std::move(body);
  rule.retry_after = retry_after_seconds;
  std::lock_guard lock(impl_->mutex);
  rule.id = impl_->next_rule_id++;
  impl_->faults.push_back(std::move(rule));
}

void FakePrefect::dropNext(const std::string& method, const std::string& path_regex, int count) {
  FaultRule rule;
  rule.kind = FaultRule::Kind::Drop;
  rule.method = method;
  rule.pattern = std::regex(path_regex);
  rule.remaining = count;
  std::lock_guard lock(impl_->mutex);
  rule.id = impl_->next_rule_id++;
  impl_->faults.push_back(std::move(rule));
}

void FakePrefect::delayNext(const std::string& method, const std::string& path_regex,
                            std::chrono::milliseconds delay, int count) {
  FaultRule rule;
  rule.kind = FaultRule::Kind::Delay;
  rule.method = method;
  rule.pattern = std::regex(path_regex);
  rule.remaining = count;
  rule.delay = delay;
  std::lock_guard lock(impl_->mutex);
  rule.id = impl_->next_rule_id++;
  impl_->faults.push_back(std::move(rule));
}

void FakePrefect::reorderNext(const std::string& method, const std::string& path_regex, int count) {
  FaultRule rule;
  rule.kind = FaultRule::Kind::Reorder;
  rule.method = method;
  rule.pattern = std::regex(path_regex);
  rule.remaining = count;
  std::lock_guard lock(impl_->mutex);
  rule.id = impl_->next_rule_id++;
  impl_->faults.push_back(std::move(rule));
}

void FakePrefect::clearFaults() {
  std::vector<HeldAnswer> release;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->faults.clear();
    release.swap(impl_->held);
  }
  for (const auto& answer : release) {
    answer.responder(answer.response);
  }
}

void FakePrefect::injectOrchestration(const std::string& flow_run_id, Json result) {
  std::lock_guard lock(impl_->mutex);
  impl_->injected[canonicalUuid(flow_run_id).value_or(flow_run_id)].push_back(std::move(result));
}

}  // namespace poolworker::testing
