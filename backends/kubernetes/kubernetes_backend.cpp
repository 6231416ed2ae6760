#include "backends/kubernetes/kubernetes_backend.h"

#include <algorithm>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "backends/common/http_client.h"
#include "backends/kubernetes/kube_api.h"
#include "backends/kubernetes/manifest.h"

namespace poolworker::backends::kubernetes {

namespace {

using common::urlEncode;

constexpr std::chrono::seconds kLogDrainLimit{5};
constexpr int kMaxLogAttempts = 30;
constexpr char kWorkerLabel[] = "prefect.io/worker-name";

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

std::string jobsPath(const std::string& ns) {
  return "/apis/batch/v1/namespaces/" + urlEncode(ns) + "/jobs";
}

std::string podsPath(const std::string& ns) {
  return "/api/v1/namespaces/" + urlEncode(ns) + "/pods";
}

// resourceVersions are opaque, but every API server in use writes etcd revisions: integers.
// Compared only to avoid calling a Job deleted that a list simply predates.
std::optional<long long> revision(const std::string& rv) {
  try {
    std::size_t used = 0;
    const long long value = std::stoll(rv, &used);
    if (used == rv.size()) {
      return value;
    }
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

std::string str(const Json& object, const char* key) {
  if (!object.is_object()) {
    return {};
  }
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const Json& at(const Json& object, const char* key) {
  static const Json kNull;
  if (!object.is_object()) {
    return kNull;
  }
  const auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

std::string objectName(const Json& object) { return str(at(object, "metadata"), "name"); }

std::string jobOfPod(const Json& pod) {
  const Json& labels = at(at(pod, "metadata"), "labels");
  std::string job = str(labels, "batch.kubernetes.io/job-name");
  if (job.empty()) {
    job = str(labels, "job-name");
  }
  if (job.empty()) {
    for (const auto& owner : at(at(pod, "metadata"), "ownerReferences")) {
      if (str(owner, "kind") == "Job") {
        job = str(owner, "name");
      }
    }
  }
  return job;
}

const Json* prefectContainerStatus(const Json& pod) {
  const Json& statuses = at(at(pod, "status"), "containerStatuses");
  if (!statuses.is_array() || statuses.empty()) {
    return nullptr;
  }
  for (const auto& status : statuses) {
    if (str(status, "name") == kContainerName) {
      return &status;
    }
  }
  return &statuses.at(0);
}

std::optional<int> exitCodeOf(const Json& pod) {
  const Json* status = prefectContainerStatus(pod);
  if (status == nullptr) {
    return std::nullopt;
  }
  const Json& terminated = at(at(*status, "state"), "terminated");
  const Json& code = at(terminated, "exitCode");
  if (code.is_number_integer()) {
    return code.get<int>();
  }
  return std::nullopt;
}

bool conditionTrue(const Json& job, const char* type, std::string* reason, std::string* message) {
  for (const auto& condition : at(at(job, "status"), "conditions")) {
    if (str(condition, "type") == type && str(condition, "status") == "True") {
      if (reason != nullptr) {
        *reason = str(condition, "reason");
      }
      if (message != nullptr) {
        *message = str(condition, "message");
      }
      return true;
    }
  }
  return false;
}

Json pick(const Json& object, std::initializer_list<const char*> keys) {
  Json kept = Json::object();
  if (!object.is_object()) {
    return kept;
  }
  for (const char* key : keys) {
    if (const auto it = object.find(key); it != object.end()) {
      kept[key] = *it;
    }
  }
  return kept;
}

// What the watch keeps of a Job or Pod: the fields a run's end is read from, and nothing else.
// Every run in flight has one of each in the cache, and a real API server's objects carry the
// whole pod spec, managed fields and a dozen status fields (conditions with timestamps, IPs):
// kept whole, they were most of the worker's memory per run.
Json slim(const Json& object, bool pod) {
  const Json& metadata = at(object, "metadata");
  Json kept_metadata =
      pick(metadata, {"name", "resourceVersion", "creationTimestamp", "deletionTimestamp"});
  const Json& status = at(object, "status");
  Json kept_status;
  if (pod) {
    kept_metadata["labels"] =
        pick(at(metadata, "labels"), {"job-name", "batch.kubernetes.io/job-name"});
    Json owners = Json::array();
    for (const auto& owner : at(metadata, "ownerReferences")) {
      if (str(owner, "kind") == "Job") {
        owners.push_back(pick(owner, {"kind", "name"}));
      }
    }
    if (!owners.empty()) {
      kept_metadata["ownerReferences"] = std::move(owners);
    }
    kept_status = pick(status, {"phase", "reason", "message"});
    const Json& containers = at(status, "containerStatuses");
    if (containers.is_array()) {
      Json kept_containers = Json::array();
      for (const auto& container : containers) {
        Json kept_container = pick(container, {"name", "image"});
        const Json& state = at(container, "state");
        Json kept_state = Json::object();
        if (state.contains("waiting")) {
          kept_state["waiting"] = pick(at(state, "waiting"), {"reason", "message"});
        }
        if (state.contains("terminated")) {
          kept_state["terminated"] = pick(at(state, "terminated"), {"exitCode"});
        }
        kept_container["state"] = std::move(kept_state);
        kept_containers.push_back(std::move(kept_container));
      }
      kept_status["containerStatuses"] = std::move(kept_containers);
    }
  } else {
    kept_status = Json::object();
    const Json& conditions = at(status, "conditions");
    if (conditions.is_array()) {
      Json kept_conditions = Json::array();
      for (const auto& condition : conditions) {
        kept_conditions.push_back(pick(condition, {"type", "status", "reason", "message"}));
      }
      kept_status["conditions"] = std::move(kept_conditions);
    }
  }
  return Json{{"metadata", std::move(kept_metadata)}, {"status", std::move(kept_status)}};
}

bool podEvicted(const Json& pod) { return str(at(pod, "status"), "reason") == "Evicted"; }

bool isPullFailure(const std::string& reason) {
  return reason == "ErrImagePull" || reason == "ImagePullBackOff" || reason == "InvalidImageName" ||
         reason == "ErrImageNeverPull";
}

struct Tracker {
  std::string name;
  std::string created_rv;
  bool stream_output = true;
  std::chrono::seconds pod_watch_timeout{60};
  std::shared_ptr<LogSink> log;
  std::vector<Callback<Outcome>> waiters;
  std::optional<Outcome> outcome;
  bool finished = false;  // outcome decided and log streams drained
  bool deleted = false;
  bool killed = false;
  bool fetching_pods = false;
  bool fetched_pods = false;
  std::unique_ptr<Timer> pull_timer;
  std::string pull_pod;
  std::set<std::string> streamed_pods;
  std::map<std::string, std::shared_ptr<common::HttpCall>> log_calls;
  std::unique_ptr<Timer> drain_timer;
  std::unique_ptr<Timer> log_retry;
};

}  // namespace

/// One resource kind (jobs or pods) of a namespace: list, then watch from the list's RV.
struct ResourceStream {
  std::string kind;  // "jobs" or "pods"
  std::string path;
  std::string rv;
  bool listed = false;
  std::uint64_t generation = 0;
  std::shared_ptr<common::HttpCall> call;
  std::string buffer;
  int failures = 0;
  std::unique_ptr<Timer> retry;
  bool warned = false;
};

/// The shared watch of one API server, namespace and worker label, and the runs it follows.
class NamespaceWatch : public std::enable_shared_from_this<NamespaceWatch> {
 public:
  NamespaceWatch(std::shared_ptr<KubeApi> api, Executor& executor, std::string ns,
                 std::string selector, int* watch_counter, std::shared_ptr<LogSink> worker_log,
                 std::chrono::milliseconds max_backoff)
      : api_(std::move(api)),
        executor_(executor),
        ns_(std::move(ns)),
        selector_(std::move(selector)),
        watch_counter_(watch_counter),
        worker_log_(std::move(worker_log)),
        max_backoff_(max_backoff) {
    jobs_.kind = "jobs";
    jobs_.path = jobsPath(ns_);
    pods_.kind = "pods";
    pods_.path = podsPath(ns_);
  }

  void begin() {
    list(jobs_);
    list(pods_);
  }

  std::shared_ptr<Tracker> tracker(const std::string& name) {
    auto& slot = trackers_[name];
    if (!slot) {
      slot = std::make_shared<Tracker>();
      slot->name = name;
    }
    return slot;
  }

  void evaluateSoon(const std::string& name) {
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    executor_.post([weak, name]() {
      if (auto self = weak.lock(); self && !self->stopped_) {
        self->evaluate(name);
      }
    });
  }

  KubeApi& api() { return *api_; }
  const std::string& ns() const { return ns_; }

  void stop() {
    stopped_ = true;
    for (ResourceStream* stream : {&jobs_, &pods_}) {
      stream->retry.reset();
      if (stream->call) {
        stream->call->cancel();
      }
    }
    for (auto& [name, t] : trackers_) {
      t->pull_timer.reset();
      t->drain_timer.reset();
      t->log_retry.reset();
      for (auto& [pod, call] : t->log_calls) {
        if (call) {
          call->cancel();
        }
      }
      for (auto& waiter : t->waiters) {
        executor_.post([waiter = std::move(waiter)]() {
          waiter(makeError(ErrorKind::Cancelled, "the worker is stopping"));
        });
      }
      t->waiters.clear();
    }
  }

 private:
  std::string selectorQuery() const { return "labelSelector=" + urlEncode(selector_); }

  std::chrono::milliseconds backoff(int failures) const {
    const long long base = 250LL << std::min(failures, 8);
    return std::min(std::chrono::milliseconds(base), max_backoff_);
  }

  void retryLater(ResourceStream& stream, bool relist) {
    const auto delay = backoff(stream.failures++);
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    ResourceStream* target = &stream;
    stream.retry = executor_.schedule(delay, [weak, target, relist]() {
      auto self = weak.lock();
      if (!self || self->stopped_) {
        return;
      }
      if (relist) {
        self->list(*target);
      } else {
        self->watch(*target);
      }
    });
  }

  void reportWatchProblem(ResourceStream& stream, const Error& error) {
    if (stream.warned) {
      return;
    }
    stream.warned = true;
    const std::string message = "cannot follow Kubernetes " + stream.kind + " in namespace '" +
                                ns_ + "': " + error.message + " (retrying)";
    if (worker_log_) {
      worker_log_->log(LogLevel::Warning, message);
    }
    for (auto& [name, t] : trackers_) {
      if (t->log && !t->finished) {
        t->log->log(LogLevel::Warning, message);
      }
    }
  }

  void list(ResourceStream& stream) {
    if (stopped_) {
      return;
    }
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    ResourceStream* target = &stream;
    api_->call("GET", stream.path + "?" + selectorQuery(), Json(),
               ApiAction{"list", stream.kind, ns_, ""}, [weak, target](Result<Json> answer) {
                 auto self = weak.lock();
                 if (!self || self->stopped_) {
                   return;
                 }
                 if (!answer) {
                   if (answer.error().kind == ErrorKind::Cancelled) {
                     return;
                   }
                   self->reportWatchProblem(*target, answer.error());
                   self->retryLater(*target, true);
                   return;
                 }
                 self->reconcile(*target, *answer);
                 self->watch(*target);
               });
  }

  void reconcile(ResourceStream& stream, const Json& list) {
    stream.rv = str(at(list, "metadata"), "resourceVersion");
    stream.listed = true;
    std::set<std::string> present;
    const Json& items = at(list, "items");
    std::set<std::string> touched;
    const bool pods = stream.kind == "pods";
    auto& cache = pods ? pods_cache_ : jobs_cache_;
    for (const auto& item : items) {
      const std::string name = objectName(item);
      present.insert(name);
      if (pods) {
        storePod(name, item);
      } else {
        jobs_cache_[name] = slim(item, false);
      }
      touched.insert(pods ? jobOfPod(item) : name);
    }
    const auto list_rv = revision(stream.rv);
    for (auto it = cache.begin(); it != cache.end();) {
      if (present.count(it->first) != 0) {
        ++it;
        continue;
      }
      touched.insert(pods ? jobOfPod(it->second) : it->first);
      if (pods) {
        unindexPod(it->first, it->second);
      } else {
        markDeleted(it->first);
      }
      it = cache.erase(it);
    }
    if (stream.kind == "jobs") {
      // A followed Job that the list does not hold, although the list is newer than the Job's
      // creation, was deleted while nobody watched.
      for (auto& [name, t] : trackers_) {
        if (present.count(name) != 0 || t->deleted) {
          continue;
        }
        const auto created = revision(t->created_rv);
        if (list_rv && created && *created <= *list_rv) {
          t->deleted = true;
          touched.insert(name);
        }
      }
    }
    for (const auto& name : touched) {
      evaluate(name);
    }
    if (jobs_.listed && pods_.listed) {
      for (auto& [name, t] : trackers_) {
        if (touched.count(name) == 0) {
          evaluate(name);
        }
      }
    }
  }

  void markDeleted(const std::string& job) {
    if (auto it = trackers_.find(job); it != trackers_.end()) {
      it->second->deleted = true;
    }
  }

  void watch(ResourceStream& stream) {
    if (stopped_) {
      return;
    }
    const std::uint64_t generation = ++stream.generation;
    stream.buffer.clear();
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    ResourceStream* target = &stream;
    common::StreamHandlers handlers;
    handlers.on_head = [weak, target, generation](const common::HttpResponse&) {
      auto self = weak.lock();
      if (self && target->generation == generation) {
        target->failures = 0;
        target->warned = false;
      }
    };
    handlers.on_data = [weak, target, generation](std::string_view data) {
      auto self = weak.lock();
      if (!self || self->stopped_ || target->generation != generation) {
        return;
      }
      target->buffer.append(data);
      std::size_t start = 0;
      for (std::size_t nl = target->buffer.find('\n'); nl != std::string::npos;
           nl = target->buffer.find('\n', start)) {
        const std::string line = target->buffer.substr(start, nl - start);
        start = nl + 1;
        if (!self->handleLine(*target, line) || target->generation != generation) {
          return;  // The stream was replaced (410): the rest of this one is stale.
        }
      }
      target->buffer.erase(0, start);
    };
    handlers.on_done = [weak, target, generation](Result<common::HttpResponse> result) {
      auto self = weak.lock();
      if (!self || self->stopped_ || target->generation != generation) {
        return;
      }
      target->call.reset();
      if (!result) {
        if (result.error().kind == ErrorKind::Cancelled) {
          return;
        }
        self->retryLater(*target, false);
        return;
      }
      if (result->status == 410) {
        self->list(*target);
        return;
      }
      if (result->status < 200 || result->status >= 300) {
        self->reportWatchProblem(*target,
                                 apiError(*result, ApiAction{"watch", target->kind, self->ns_, ""},
                                          self->api_->connection().server));
        self->retryLater(*target, false);
        return;
      }
      // A clean end (server timeout, proxy idle limit): go on from the last version seen.
      self->watch(*target);
    };
    ++*watch_counter_;
    const std::string query = "?" + selectorQuery() + "&watch=true&allowWatchBookmarks=true" +
                              "&resourceVersion=" + urlEncode(stream.rv);
    stream.call = api_->stream(stream.path + query, std::move(handlers));
  }

  // Returns false when the stream had to be abandoned (410 Gone: re-list).
  bool handleLine(ResourceStream& stream, const std::string& line) {
    if (line.find_first_not_of(" \r\t") == std::string::npos) {
      return true;
    }
    const Json event = Json::parse(line, nullptr, false);
    if (!event.is_object()) {
      return true;
    }
    const std::string type = str(event, "type");
    const Json& object = at(event, "object");
    if (type == "ERROR" || (type.empty() && event.contains("code"))) {
      const Json& status = type.empty() ? event : object;
      const Json& code = at(status, "code");
      if (code.is_number() && code.get<int>() == 410) {
        ++stream.generation;
        if (stream.call) {
          stream.call->cancel();
          stream.call.reset();
        }
        list(stream);
        return false;
      }
      return true;
    }
    const std::string rv = str(at(object, "metadata"), "resourceVersion");
    if (!rv.empty()) {
      stream.rv = rv;
    }
    if (type == "BOOKMARK") {
      return true;
    }
    const std::string name = objectName(object);
    if (stream.kind == "jobs") {
      if (type == "DELETED") {
        jobs_cache_.erase(name);
        markDeleted(name);
      } else {
        jobs_cache_[name] = slim(object, false);
      }
      evaluate(name);
    } else {
      if (type == "DELETED") {
        erasePod(name);
      } else {
        storePod(name, object);
      }
      evaluate(jobOfPod(object));
    }
    return true;
  }

  void storePod(const std::string& name, const Json& pod) {
    if (const auto old = pods_cache_.find(name); old != pods_cache_.end()) {
      unindexPod(name, old->second);
    }
    Json kept = slim(pod, true);
    pods_of_job_[jobOfPod(kept)].insert(name);
    pods_cache_[name] = std::move(kept);
  }

  void unindexPod(const std::string& name, const Json& pod) {
    const auto job = pods_of_job_.find(jobOfPod(pod));
    if (job != pods_of_job_.end()) {
      job->second.erase(name);
      if (job->second.empty()) {
        pods_of_job_.erase(job);
      }
    }
  }

  void erasePod(const std::string& name) {
    if (const auto it = pods_cache_.find(name); it != pods_cache_.end()) {
      unindexPod(name, it->second);
      pods_cache_.erase(it);
    }
  }

  // Through the index: a scan of every cached pod at every event was quadratic in the runs.
  std::vector<const Json*> podsOf(const std::string& job) const {
    std::vector<const Json*> pods;
    if (const auto names = pods_of_job_.find(job); names != pods_of_job_.end()) {
      for (const auto& name : names->second) {
        if (const auto pod = pods_cache_.find(name); pod != pods_cache_.end()) {
          pods.push_back(&pod->second);
        }
      }
    }
    std::sort(pods.begin(), pods.end(), [](const Json* a, const Json* b) {
      return str(at(*a, "metadata"), "creationTimestamp") <
             str(at(*b, "metadata"), "creationTimestamp");
    });
    return pods;
  }

 public:
  void evaluate(const std::string& name) {
    auto found = trackers_.find(name);
    if (found == trackers_.end() || stopped_) {
      return;
    }
    std::shared_ptr<Tracker> t = found->second;
    if (t->finished) {
      deliver(t);
      return;
    }
    if (t->outcome || !jobs_.listed || !pods_.listed) {
      return;
    }
    const auto pods = podsOf(name);
    const Json* newest = pods.empty() ? nullptr : pods.back();
    if (t->stream_output && t->log) {
      for (const Json* pod : pods) {
        const std::string phase = str(at(*pod, "status"), "phase");
        if (phase == "Running" || phase == "Succeeded" || phase == "Failed") {
          followLog(t, objectName(*pod));
        }
      }
    }
    watchImagePull(t, newest);
    if (t->outcome) {
      return;
    }
    const auto job = jobs_cache_.find(name);
    if (t->deleted || job == jobs_cache_.end()) {
      if (!t->deleted) {
        return;  // Not seen yet: the watch will bring it.
      }
      Outcome outcome;
      if (newest != nullptr) {
        outcome.exit_code = exitCodeOf(*newest);
      }
      outcome.detail =
          t->killed ? "The Kubernetes Job " + ns_ + "/" + name + " was deleted on request."
                    : "The Kubernetes Job " + ns_ + "/" + name + " was deleted before it finished.";
      decide(t, std::move(outcome));
      return;
    }
    std::string reason;
    std::string message;
    if (conditionTrue(job->second, "Complete", nullptr, nullptr) ||
        conditionTrue(job->second, "SuccessCriteriaMet", nullptr, nullptr)) {
      Outcome outcome;
      outcome.exit_code = newest != nullptr ? exitCodeOf(*newest).value_or(0) : 0;
      decide(t, std::move(outcome));
      return;
    }
    if (!conditionTrue(job->second, "Failed", &reason, &message)) {
      return;
    }
    const std::string why =
        reason.empty() ? std::string("failed") : reason + (message.empty() ? "" : ": " + message);
    if (newest != nullptr && podEvicted(*newest)) {
      Outcome outcome;
      outcome.detail = "Pod " + objectName(*newest) +
                       " was evicted: " + str(at(*newest, "status"), "message") + " (Job " + why +
                       ")";
      decide(t, std::move(outcome));
      return;
    }
    if (newest != nullptr) {
      if (const auto code = exitCodeOf(*newest)) {
        Outcome outcome;
        outcome.exit_code = code;
        outcome.detail = "Kubernetes Job " + ns_ + "/" + name + " failed (" + why + ").";
        decide(t, std::move(outcome));
        return;
      }
    }
    if (!t->fetched_pods) {
      fetchPods(t);  // The pod's last events may trail the Job's: read them once.
      return;
    }
    Outcome outcome;
    outcome.detail = "Kubernetes Job " + ns_ + "/" + name + " failed (" + why +
                     ") and its container left no exit code.";
    decide(t, std::move(outcome));
  }

  void deliver(const std::shared_ptr<Tracker>& t) {
    if (!t->finished || t->waiters.empty()) {
      return;
    }
    for (auto& waiter : t->waiters) {
      executor_.post([waiter = std::move(waiter), outcome = *t->outcome]() { waiter(outcome); });
    }
    t->waiters.clear();
    trackers_.erase(t->name);
  }

 private:
  void fetchPods(const std::shared_ptr<Tracker>& t) {
    if (t->fetching_pods) {
      return;
    }
    t->fetching_pods = true;
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    const std::string name = t->name;
    api_->call("GET", pods_.path + "?labelSelector=" + urlEncode("job-name=" + name), Json(),
               ApiAction{"list", "pods", ns_, ""}, [weak, t, name](Result<Json> answer) {
                 auto self = weak.lock();
                 if (!self || self->stopped_) {
                   return;
                 }
                 t->fetching_pods = false;
                 t->fetched_pods = true;
                 if (answer) {
                   for (const auto& pod : at(*answer, "items")) {
                     self->storePod(objectName(pod), pod);
                   }
                 }
                 self->evaluate(name);
               });
  }

  void watchImagePull(const std::shared_ptr<Tracker>& t, const Json* pod) {
    const Json* status = pod != nullptr ? prefectContainerStatus(*pod) : nullptr;
    const Json& waiting = status != nullptr ? at(at(*status, "state"), "waiting") : at(Json(), "");
    const std::string reason = str(waiting, "reason");
    if (!isPullFailure(reason)) {
      t->pull_timer.reset();
      t->pull_pod.clear();
      return;
    }
    const std::string pod_name = objectName(*pod);
    if (t->pull_timer && t->pull_pod == pod_name) {
      return;
    }
    t->pull_pod = pod_name;
    if (t->log) {
      t->log->log(LogLevel::Warning, "Pod " + pod_name + " cannot pull its image (" + reason +
                                         "): " + str(waiting, "message"));
    }
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    const std::string image = str(*status, "image");
    const auto timeout = t->pod_watch_timeout;
    t->pull_timer =
        executor_.schedule(std::chrono::duration_cast<std::chrono::milliseconds>(timeout),
                           [weak, t, pod_name, image, timeout]() {
                             auto self = weak.lock();
                             if (!self || self->stopped_ || t->outcome) {
                               return;
                             }
                             std::string detail = "The image";
                             if (!image.empty()) {
                               detail += " '" + image + "'";
                             }
                             detail += " of pod " + pod_name + " could not be pulled for " +
                                       std::to_string(timeout.count()) +
                                       " s (pod_watch_timeout_seconds); the Job was deleted.";
                             Outcome outcome;
                             outcome.detail = detail;
                             self->deleteJob(t->name, std::chrono::seconds(0), [](Result<void>) {});
                             self->decide(t, std::move(outcome));
                           });
  }

 public:
  void deleteJob(const std::string& name, std::chrono::seconds grace, Callback<void> done) {
    const std::string target = jobsPath(ns_) + "/" + urlEncode(name) +
                               "?gracePeriodSeconds=" + std::to_string(grace.count()) +
                               "&propagationPolicy=Foreground";
    const Json body = {{"kind", "DeleteOptions"},
                       {"apiVersion", "v1"},
                       {"gracePeriodSeconds", grace.count()},
                       {"propagationPolicy", "Foreground"}};
    api_->call("DELETE", target, body, ApiAction{"delete", "jobs", ns_, name},
               [done = std::move(done)](Result<Json> answer) {
                 if (!answer && answer.error().kind != ErrorKind::NotFound) {
                   done(answer.error());
                   return;
                 }
                 done(success());
               });
  }

 private:
  void followLog(const std::shared_ptr<Tracker>& t, const std::string& pod) {
    if (t->streamed_pods.count(pod) != 0) {
      return;
    }
    t->streamed_pods.insert(pod);
    openLog(t, pod, 0);
  }

  void openLog(const std::shared_ptr<Tracker>& t, const std::string& pod, int attempt) {
    std::weak_ptr<NamespaceWatch> weak = weak_from_this();
    common::StreamHandlers handlers;
    handlers.on_head = [](const common::HttpResponse&) {};
    handlers.on_data = [t](std::string_view data) {
      if (t->log) {
        t->log->output(data, false);
      }
    };
    handlers.on_done = [weak, t, pod, attempt](Result<common::HttpResponse> result) {
      auto self = weak.lock();
      if (!self || self->stopped_) {
        return;
      }
      t->log_calls.erase(pod);
      // 400 while the container is still being created: try again shortly.
      const bool again =
          result && result->status == 400 && !t->outcome && attempt < kMaxLogAttempts;
      if (again) {
        t->log_retry = self->executor_.schedule(std::chrono::seconds(1), [weak, t, pod, attempt]() {
          if (auto s = weak.lock(); s && !s->stopped_) {
            s->openLog(t, pod, attempt + 1);
          }
        });
        return;
      }
      if (result && (result->status < 200 || result->status >= 300) && t->log &&
          result->status != 404) {
        t->log->log(LogLevel::Warning,
                    "Could not follow the logs of pod " + pod + ": " +
                        apiError(*result, ApiAction{"get", "pods/log", self->ns_, pod},
                                 self->api_->connection().server)
                            .message);
      }
      self->maybeFinish(t);
    };
    const std::string target = podsPath(ns_) + "/" + urlEncode(pod) +
                               "/log?container=" + std::string(kContainerName) + "&follow=true";
    t->log_calls[pod] = api_->stream(target, std::move(handlers));
  }

  void decide(const std::shared_ptr<Tracker>& t, Outcome outcome) {
    t->outcome = std::move(outcome);
    t->pull_timer.reset();
    if (!t->log_calls.empty()) {
      std::weak_ptr<NamespaceWatch> weak = weak_from_this();
      t->drain_timer = executor_.schedule(
          std::chrono::duration_cast<std::chrono::milliseconds>(kLogDrainLimit), [weak, t]() {
            auto self = weak.lock();
            if (!self) {
              return;
            }
            for (auto& [pod, call] : t->log_calls) {
              if (call) {
                call->cancel();
              }
            }
            t->log_calls.clear();
            self->maybeFinish(t);
          });
      return;
    }
    maybeFinish(t);
  }

  void maybeFinish(const std::shared_ptr<Tracker>& t) {
    if (!t->outcome || !t->log_calls.empty() || t->finished) {
      return;
    }
    t->finished = true;
    t->drain_timer.reset();
    t->log_retry.reset();
    deliver(t);
  }

  std::shared_ptr<KubeApi> api_;
  Executor& executor_;
  std::string ns_;
  std::string selector_;
  int* watch_counter_;
  std::shared_ptr<LogSink> worker_log_;
  std::chrono::milliseconds max_backoff_;
  ResourceStream jobs_;
  ResourceStream pods_;
  std::map<std::string, Json> jobs_cache_;
  std::map<std::string, Json> pods_cache_;
  std::map<std::string, std::set<std::string>> pods_of_job_;  // job -> its cached pods
  std::map<std::string, std::shared_ptr<Tracker>> trackers_;
  bool stopped_ = false;
};

Result<std::pair<std::string, std::string>> parseInfrastructurePid(const std::string& pid) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t colon = pid.find(':'); colon != std::string::npos;
       colon = pid.find(':', start)) {
    parts.push_back(pid.substr(start, colon - start));
    start = colon + 1;
  }
  parts.push_back(pid.substr(start));
  if ((parts.size() != 2 && parts.size() != 3) || parts[parts.size() - 1].empty() ||
      parts[parts.size() - 2].empty()) {
    return invalid("infrastructure_pid '" + pid +
                   "' is not '<namespace>:<job name>' (nor the legacy "
                   "'<cluster uid>:<namespace>:<job name>')");
  }
  return std::make_pair(parts[parts.size() - 2], parts[parts.size() - 1]);
}

class KubernetesBackend::Core : public std::enable_shared_from_this<Core> {
 public:
  Core(boost::asio::io_context& io, Executor& executor, KubernetesBackendSettings settings)
      : io_(io), executor_(executor), settings_(std::move(settings)) {}

  struct Resolved {
    std::shared_ptr<KubeApi> api;
    std::string namespace_;
  };

  Result<std::shared_ptr<KubeApi>> apiFor(const Json& cluster_config) {
    auto connection = resolveConnection(cluster_config, settings_.environment);
    if (!connection) {
      return connection.error();
    }
    auto& slot = apis_[connection->key];
    if (!slot) {
      slot = std::make_shared<KubeApi>(io_, std::move(connection).value());
    }
    return slot;
  }

  std::shared_ptr<NamespaceWatch> watchFor(const std::shared_ptr<KubeApi>& api,
                                           const std::string& ns, const std::string& selector) {
    const std::string key = api->connection().key + "|" + ns + "|" + selector;
    auto& slot = watches_[key];
    if (!slot) {
      slot = std::make_shared<NamespaceWatch>(api, executor_, ns, selector, &watch_connections_,
                                              settings_.worker_log, settings_.max_watch_backoff);
      slot->begin();
    }
    return slot;
  }

  struct HandleInfo {
    std::string ns;
    std::string job;
    Json cluster_config;
    std::string selector;
    std::string created_rv;
    bool stream_output = true;
    std::chrono::seconds pod_watch_timeout{60};
  };

  static Result<HandleInfo> infoOf(const RunHandle& handle) {
    auto parsed = parseInfrastructurePid(handle.infrastructure_pid);
    if (!parsed) {
      return parsed.error();
    }
    HandleInfo info;
    info.ns = parsed->first;
    info.job = parsed->second;
    const Json& data = handle.data;
    info.cluster_config = data.is_object() ? data.value("cluster_config", Json()) : Json();
    info.selector = str(data, "selector");
    info.created_rv = str(data, "resource_version");
    if (data.is_object()) {
      info.stream_output = data.value("stream_output", true);
      const Json timeout = data.value("pod_watch_timeout_seconds", Json(60));
      if (timeout.is_number()) {
        info.pod_watch_timeout = std::chrono::seconds(timeout.get<long long>());
      }
    }
    return info;
  }

  Result<std::shared_ptr<NamespaceWatch>> watchOf(const HandleInfo& info) {
    auto api = apiFor(info.cluster_config);
    if (!api) {
      return api.error();
    }
    std::string selector = info.selector;
    if (selector.empty()) {
      selector = std::string(kWorkerLabel) + "=" + slugifyLabelValue(settings_.worker_name);
    }
    return watchFor(*api, info.ns, selector);
  }

  void createJob(std::shared_ptr<KubeApi> api, std::string ns, Json manifest, int attempt,
                 std::function<void(Result<Json>)> done) {
    std::weak_ptr<Core> weak = weak_from_this();
    const std::string target = jobsPath(ns);
    api->call(
        "POST", target, manifest, ApiAction{"create", "jobs", ns, ""},
        [weak, api, ns, manifest, attempt, done = std::move(done)](Result<Json> answer) mutable {
          auto self = weak.lock();
          if (!self) {
            return;
          }
          if (!answer && answer.error().kind == ErrorKind::Transient &&
              answer.error().http_status == 0 && attempt + 1 < self->settings_.create_attempts &&
              !self->stopped_) {
            self->retry_timers_.push_back(self->executor_.schedule(
                self->settings_.create_retry_delay,
                [weak, api, ns, manifest, attempt, done = std::move(done)]() mutable {
                  if (auto s = weak.lock()) {
                    s->createJob(api, ns, std::move(manifest), attempt + 1, std::move(done));
                  }
                }));
            return;
          }
          done(std::move(answer));
        });
  }

  boost::asio::io_context& io_;
  Executor& executor_;
  KubernetesBackendSettings settings_;
  std::map<std::string, std::shared_ptr<KubeApi>> apis_;
  std::map<std::string, std::shared_ptr<NamespaceWatch>> watches_;
  std::vector<std::unique_ptr<Timer>> retry_timers_;
  int watch_connections_ = 0;
  bool stopped_ = false;
};

KubernetesBackend::KubernetesBackend(boost::asio::io_context& io, Executor& executor,
                                     KubernetesBackendSettings settings)
    : core_(std::make_shared<Core>(io, executor, std::move(settings))) {}

KubernetesBackend::~KubernetesBackend() { shutdown(); }

int KubernetesBackend::watchConnections() const { return core_->watch_connections_; }

namespace {

struct PreparedJob {
  std::string ns;
  Json manifest;
  Json cluster_config;
  bool stream_output = true;
  long long pod_watch_timeout = 60;
};

Result<PreparedJob> prepare(const StartRequest& request) {
  const Json& config = request.configuration;
  auto manifest = prepareJobManifest(config, request.run);
  if (!manifest) {
    return manifest.error();
  }
  PreparedJob job;
  job.ns = config.value("namespace", Json("default")).is_string()
               ? config.value("namespace", std::string("default"))
               : std::string("default");
  job.manifest = std::move(manifest).value();
  job.cluster_config = config.value("cluster_config", Json());
  const Json stream = config.value("stream_output", Json(true));
  if (!stream.is_null() && !stream.is_boolean()) {
    return invalid("stream_output must be true or false, not " + stream.dump());
  }
  job.stream_output = stream.is_null() ? true : stream.get<bool>();
  const Json timeout = config.value("pod_watch_timeout_seconds", Json(60));
  if (!timeout.is_null()) {
    if (!timeout.is_number_integer() || timeout.get<long long>() < 0) {
      return invalid("pod_watch_timeout_seconds must be a whole number of seconds, not " +
                     timeout.dump());
    }
    job.pod_watch_timeout = timeout.get<long long>();
  }
  return job;
}

}  // namespace

Result<Json> KubernetesBackend::preview(const StartRequest& request) {
  auto job = prepare(request);
  if (!job) {
    return job.error();
  }
  return job->manifest;
}

void KubernetesBackend::start(const StartRequest& request, std::shared_ptr<LogSink> log,
                              Callback<RunHandle> done) {
  auto core = core_;
  const auto fail = [core, &done](Error error) {
    core->executor_.post([done = std::move(done), error = std::move(error)]() { done(error); });
  };
  auto job = prepare(request);
  if (!job) {
    fail(job.error());
    return;
  }
  auto api = core->apiFor(job->cluster_config);
  if (!api) {
    fail(api.error());
    return;
  }
  const Json& labels = at(at(job->manifest, "metadata"), "labels");
  std::string selector = std::string(kWorkerLabel) + "=" + str(labels, kWorkerLabel);
  if (str(labels, kWorkerLabel).empty()) {
    fail(invalid("the Job's labels lack '" + std::string(kWorkerLabel) +
                 "', which poolworker follows its Jobs by"));
    return;
  }
  if (log) {
    log->log(LogLevel::Info, "Creating a Kubernetes Job in namespace '" + job->ns + "' via " +
                                 (*api)->connection().source);
  }
  std::weak_ptr<Core> weak = core;
  PreparedJob prepared = std::move(job).value();
  const std::string ns = prepared.ns;
  Json manifest = prepared.manifest;
  core->createJob(
      *api, ns, std::move(manifest), 0,
      [weak, api = *api, prepared = std::move(prepared), selector, log,
       done = std::move(done)](Result<Json> created) {
        auto self = weak.lock();
        if (!self) {
          return;
        }
        if (!created) {
          Error error = created.error();
          error.message = "Unable to create Kubernetes job: " + error.message;
          if (error.kind == ErrorKind::Unauthorized || error.kind == ErrorKind::NotFound) {
            error.kind = ErrorKind::InfrastructureFailed;
          }
          done(std::move(error));
          return;
        }
        const Json& metadata = at(*created, "metadata");
        const std::string name = str(metadata, "name");
        if (name.empty()) {
          done(makeError(ErrorKind::Internal,
                         "the Kubernetes API server created a Job without a name"));
          return;
        }
        RunHandle handle;
        handle.backend = "kubernetes";
        handle.infrastructure_pid = prepared.ns + ":" + name;
        handle.data = {{"namespace", prepared.ns},
                       {"job", name},
                       {"uid", str(metadata, "uid")},
                       {"resource_version", str(metadata, "resourceVersion")},
                       {"selector", selector},
                       {"stream_output", prepared.stream_output},
                       {"pod_watch_timeout_seconds", prepared.pod_watch_timeout},
                       {"cluster_config", prepared.cluster_config}};
        auto watch = self->watchFor(api, prepared.ns, selector);
        auto tracker = watch->tracker(name);
        tracker->created_rv = str(metadata, "resourceVersion");
        tracker->stream_output = prepared.stream_output;
        tracker->pod_watch_timeout = std::chrono::seconds(prepared.pod_watch_timeout);
        tracker->log = log;
        done(std::move(handle));
      });
}

void KubernetesBackend::wait(const RunHandle& handle, std::shared_ptr<LogSink> log,
                             Callback<Outcome> done) {
  auto core = core_;
  auto info = Core::infoOf(handle);
  Result<std::shared_ptr<NamespaceWatch>> watch =
      info ? core->watchOf(*info) : Result<std::shared_ptr<NamespaceWatch>>(info.error());
  if (!watch || core->stopped_) {
    Error error =
        watch ? makeError(ErrorKind::Cancelled, "the backend has shut down") : watch.error();
    core->executor_.post([done = std::move(done), error]() { done(error); });
    return;
  }
  auto tracker = (*watch)->tracker(info->job);
  if (tracker->created_rv.empty()) {
    tracker->created_rv = info->created_rv;
  }
  if (!tracker->log) {
    tracker->log = log;
    tracker->stream_output = info->stream_output;
    tracker->pod_watch_timeout = info->pod_watch_timeout;
  }
  tracker->waiters.push_back(std::move(done));
  (*watch)->evaluateSoon(info->job);
}

void KubernetesBackend::kill(const RunHandle& handle, std::chrono::milliseconds grace,
                             Callback<void> done) {
  auto core = core_;
  auto info = Core::infoOf(handle);
  Result<std::shared_ptr<NamespaceWatch>> watch =
      info ? core->watchOf(*info) : Result<std::shared_ptr<NamespaceWatch>>(info.error());
  if (!watch) {
    core->executor_.post([done = std::move(done), error = watch.error()]() { done(error); });
    return;
  }
  (*watch)->tracker(info->job)->killed = true;
  const auto seconds = std::chrono::ceil<std::chrono::seconds>(grace);
  (*watch)->deleteJob(info->job, seconds, std::move(done));
}

void KubernetesBackend::recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
                                Callback<Recovery> done) {
  auto core = core_;
  auto info = Core::infoOf(handle);
  Result<std::shared_ptr<KubeApi>> api =
      info ? core->apiFor(info->cluster_config) : Result<std::shared_ptr<KubeApi>>(info.error());
  if (!api) {
    core->executor_.post([done = std::move(done), error = api.error()]() { done(error); });
    return;
  }
  const std::string ns = info->ns;
  const std::string job = info->job;
  (*api)->call("GET", jobsPath(ns) + "/" + urlEncode(job), Json(),
               ApiAction{"get", "jobs", ns, job},
               [log, ns, job, done = std::move(done)](Result<Json> answer) {
                 if (!answer) {
                   Error error = answer.error();
                   if (error.kind == ErrorKind::NotFound) {
                     error.message = "the Kubernetes Job " + ns + "/" + job + " no longer exists";
                   }
                   done(std::move(error));
                   return;
                 }
                 if (log) {
                   log->log(LogLevel::Info,
                            "Found the Kubernetes Job " + ns + "/" + job + " again; following it.");
                 }
                 Recovery recovery;
                 recovery.running = true;  // `wait` reads its end from the shared watch.
                 done(recovery);
               });
}

void KubernetesBackend::shutdown() {
  if (core_->stopped_) {
    return;
  }
  core_->stopped_ = true;
  core_->retry_timers_.clear();
  for (auto& [key, watch] : core_->watches_) {
    watch->stop();
  }
  for (auto& [key, api] : core_->apis_) {
    api->cancelAll();
  }
}

}  // namespace poolworker::backends::kubernetes
