#include "tests/fakes/fake_kube.h"

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <list>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace poolworker::testing {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

std::string nowIso() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string percentDecode(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      out.push_back(static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else if (text[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, sep)) {
    parts.push_back(item);
  }
  return parts;
}

Json status(int code, const std::string& reason, const std::string& message,
            Json details = nullptr) {
  Json s = {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", Json::object()},
            {"status", "Failure"}, {"message", message}, {"reason", reason},
            {"code", code}};
  if (!details.is_null()) {
    s["details"] = std::move(details);
  }
  return s;
}

bool matches(const Json& object, const std::map<std::string, std::string>& selector) {
  const Json labels = object["metadata"].value("labels", Json::object());
  for (const auto& [key, value] : selector) {
    if (!labels.contains(key) || !labels[key].is_string() ||
        labels[key].get<std::string>() != value) {
      return false;
    }
  }
  return true;
}

struct Event {
  long long rv;
  std::string resource;
  std::string ns;
  std::string type;
  Json object;
};

struct Reply {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
};

}  // namespace

struct FakeKube::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  unsigned short port = 0;
  bool run_commands = false;
  std::thread accept_thread;
  std::thread controller_thread;

  mutable std::mutex mutex;
  std::condition_variable changed;
  bool stopping = false;
  long long rv = 1000;
  long long compacted_below = 0;
  int drop_generation = 0;
  std::deque<Event> history;
  std::set<std::string> namespaces{"default", "kube-system"};
  std::map<std::string, std::map<std::string, Json>> jobs;  // ns -> name -> job
  std::map<std::string, std::map<std::string, Json>> pods;  // ns -> name -> pod
  std::map<std::string, std::string> logs;                  // ns/pod -> text
  std::map<std::string, PodScript> scripts;                 // ns/job -> script
  std::function<PodScript(const Json&)> script_for;
  std::set<std::pair<std::string, std::string>> forbidden;
  std::map<std::string, int> watch_requests;
  std::map<std::string, int> list_requests;
  std::map<std::string, int> open_watches;
  std::vector<std::string> deletions;
  std::mt19937 random{std::random_device{}()};

  // Timed controller actions.
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers;

  int active_connections = 0;
  std::list<std::shared_ptr<tcp::socket>> sockets;

  // Followers of a pod's log wait on the pod's own condition: with thousands of followed pods,
  // waking them all at every event of the cluster would cost more than the worker measured.
  std::map<std::string, std::shared_ptr<std::condition_variable>> log_waiters;  // ns/pod

  void wakeLog(const std::string& key) {
    if (auto it = log_waiters.find(key); it != log_waiters.end()) {
      it->second->notify_all();
    }
  }

  // ---- store (mutex held) ----
  std::string nextRv() { return std::to_string(++rv); }

  void record(const std::string& resource, const std::string& ns, const std::string& type,
              const Json& object) {
    history.push_back(Event{rv, resource, ns, type, object});
    if (history.size() > 200000) {
      history.pop_front();
    }
    changed.notify_all();
  }

  void putPod(const std::string& ns, Json pod, const char* type) {
    pod["metadata"]["resourceVersion"] = nextRv();
    const std::string name = pod["metadata"]["name"];
    pods[ns][name] = pod;
    record("pods", ns, type, pod);
    wakeLog(ns + "/" + name);  // A follower ends when the pod's phase does.
  }

  void putJob(const std::string& ns, Json job, const char* type) {
    job["metadata"]["resourceVersion"] = nextRv();
    const std::string name = job["metadata"]["name"];
    jobs[ns][name] = job;
    record("jobs", ns, type, job);
  }

  void removePod(const std::string& ns, const std::string& name) {
    auto it = pods[ns].find(name);
    if (it == pods[ns].end()) {
      return;
    }
    Json pod = it->second;
    pods[ns].erase(it);
    pod["metadata"]["resourceVersion"] = nextRv();
    record("pods", ns, "DELETED", pod);
    wakeLog(ns + "/" + name);
  }

  void removeJob(const std::string& ns, const std::string& name) {
    auto it = jobs[ns].find(name);
    if (it == jobs[ns].end()) {
      return;
    }
    Json job = it->second;
    jobs[ns].erase(it);
    scripts.erase(ns + "/" + name);
    job["metadata"]["resourceVersion"] = nextRv();
    record("jobs", ns, "DELETED", job);
  }

  std::vector<std::string> podNamesOf(const std::string& ns, const std::string& job) {
    std::vector<std::string> names;
    for (const auto& [name, pod] : pods[ns]) {
      if (pod["metadata"]["labels"].value("job-name", "") == job) {
        names.push_back(name);
      }
    }
    return names;
  }

  std::string randomSuffix() {
    static constexpr char kAlphabet[] = "bcdfghjklmnpqrstvwxz2456789";
    std::string out;
    std::uniform_int_distribution<int> pick(0, static_cast<int>(sizeof(kAlphabet)) - 2);
    for (int i = 0; i < 5; ++i) {
      out.push_back(kAlphabet[pick(random)]);
    }
    return out;
  }

  std::string uid() {
    std::uniform_int_distribution<unsigned> hex(0, 15);
    std::string out;
    for (int i = 0; i < 32; ++i) {
      out.push_back("0123456789abcdef"[hex(random)]);
      if (i == 7 || i == 11 || i == 15 || i == 19) {
        out.push_back('-');
      }
    }
    return out;
  }

  void after(std::chrono::milliseconds delay, std::function<void()> action) {
    timers.emplace(std::chrono::steady_clock::now() + delay, std::move(action));
    changed.notify_all();
  }

  // ---- the Job controller and kubelet (mutex held) ----
  void startJob(const std::string& ns, const std::string& job_name) {
    Json& job = jobs[ns][job_name];
    const PodScript script = script_for ? script_for(job) : PodScript{};
    scripts[ns + "/" + job_name] = script;
    const std::string pod_name = job_name + "-" + randomSuffix();
    Json templ = job["spec"]["template"];
    Json labels = templ["metadata"].value("labels", Json::object());
    labels["job-name"] = job_name;
    labels["batch.kubernetes.io/job-name"] = job_name;
    labels["controller-uid"] = job["metadata"]["uid"];
    labels["batch.kubernetes.io/controller-uid"] = job["metadata"]["uid"];
    Json pod = {{"apiVersion", "v1"},
                {"kind", "Pod"},
                {"metadata",
                 {{"name", pod_name},
                  {"namespace", ns},
                  {"uid", uid()},
                  {"labels", labels},
                  {"creationTimestamp", nowIso()},
                  {"ownerReferences", Json::array({{{"apiVersion", "batch/v1"},
                                                    {"kind", "Job"},
                                                    {"name", job_name},
                                                    {"uid", job["metadata"]["uid"]},
                                                    {"controller", true},
                                                    {"blockOwnerDeletion", true}}})}}},
                {"spec", templ["spec"]},
                {"status", {{"phase", "Pending"}}}};
    putPod(ns, pod, "ADDED");
    Json updated = job;
    updated["status"] = {{"active", 1}, {"startTime", nowIso()}};
    putJob(ns, updated, "MODIFIED");
    const std::string image = templ["spec"]["containers"][0].value("image", "");
    after(script.step, [this, ns, pod_name, job_name, script, image]() {
      step(ns, pod_name, job_name, script, image, 1);
    });
  }

  Json containerStatus(const std::string& image, Json state) {
    return Json::array({{{"name", "prefect-job"},
                         {"image", image},
                         {"ready", state.contains("running")},
                         {"restartCount", 0},
                         {"state", std::move(state)}}});
  }

  void step(const std::string& ns, const std::string& pod_name, const std::string& job_name,
            const PodScript& script, const std::string& image, int stage) {
    auto it = pods[ns].find(pod_name);
    if (it == pods[ns].end() || it->second["metadata"].contains("deletionTimestamp")) {
      return;
    }
    Json pod = it->second;
    using Kind = PodScript::Kind;
    if (script.kind == Kind::Pending) {
      pod["status"]["conditions"] =
          Json::array({{{"type", "PodScheduled"},
                        {"status", "False"},
                        {"reason", "Unschedulable"},
                        {"message", "0/1 nodes are available: 1 Insufficient cpu."}}});
      putPod(ns, pod, "MODIFIED");
      return;
    }
    if (script.kind == Kind::PullFail) {
      const char* reason = stage == 1 ? "ErrImagePull" : "ImagePullBackOff";
      pod["status"]["containerStatuses"] = containerStatus(
          image, {{"waiting",
                   {{"reason", reason}, {"message", "Back-off pulling image \"" + image + "\""}}}});
      putPod(ns, pod, "MODIFIED");
      if (stage == 1) {
        after(script.step, [=, this]() { step(ns, pod_name, job_name, script, image, 2); });
      }
      return;
    }
    if (stage == 1) {
      pod["status"]["phase"] = "Running";
      pod["status"]["startTime"] = nowIso();
      pod["status"]["containerStatuses"] =
          containerStatus(image, {{"running", {{"startedAt", nowIso()}}}});
      putPod(ns, pod, "MODIFIED");
      if (run_commands) {
        launch(ns, pod_name, job_name, pod);
        return;
      }
      logs[ns + "/" + pod_name] += script.log;
      wakeLog(ns + "/" + pod_name);
      if (script.kind != Kind::Hold) {
        after(script.step, [=, this]() { step(ns, pod_name, job_name, script, image, 2); });
      }
      return;
    }
    if (script.kind == Kind::Evict) {
      pod["status"]["phase"] = "Failed";
      pod["status"]["reason"] = "Evicted";
      pod["status"]["message"] = "The node was low on resource: memory.";
      pod["status"]["containerStatuses"] =
          containerStatus(image, {{"terminated",
                                   {{"reason", "ContainerStatusUnknown"},
                                    {"message",
                                     "The container could not be located when the pod "
                                     "was terminated"}}}});
      putPod(ns, pod, "MODIFIED");
      failJob(ns, job_name, "BackoffLimitExceeded", "Job has reached the specified backoff limit");
      return;
    }
    terminate(ns, pod_name, job_name, script.exit_code);
  }

  void terminate(const std::string& ns, const std::string& pod_name, const std::string& job_name,
                 int exit_code) {
    auto it = pods[ns].find(pod_name);
    if (it == pods[ns].end()) {
      return;
    }
    Json pod = it->second;
    const std::string image = pod["spec"]["containers"][0].value("image", "");
    pod["status"]["phase"] = exit_code == 0 ? "Succeeded" : "Failed";
    pod["status"]["containerStatuses"] =
        containerStatus(image, {{"terminated",
                                 {{"exitCode", exit_code},
                                  {"reason", exit_code == 0 ? "Completed" : "Error"},
                                  {"finishedAt", nowIso()}}}});
    putPod(ns, pod, "MODIFIED");
    wakeLog(ns + "/" + pod_name);  // Log followers end with the container.
    if (exit_code == 0) {
      auto job = jobs[ns].find(job_name);
      if (job == jobs[ns].end()) {
        return;
      }
      Json updated = job->second;
      updated["status"] = {
          {"succeeded", 1},
          {"active", 0},
          {"completionTime", nowIso()},
          {"conditions", Json::array({{{"type", "SuccessCriteriaMet"}, {"status", "True"}},
                                      {{"type", "Complete"}, {"status", "True"}}})}};
      putJob(ns, updated, "MODIFIED");
    } else {
      failJob(ns, job_name, "BackoffLimitExceeded", "Job has reached the specified backoff limit");
    }
  }

  void failJob(const std::string& ns, const std::string& job_name, const std::string& reason,
               const std::string& message) {
    auto job = jobs[ns].find(job_name);
    if (job == jobs[ns].end()) {
      return;
    }
    Json updated = job->second;
    updated["status"] = {
        {"failed", 1},
        {"active", 0},
        {"conditions", Json::array({{{"type", "FailureTarget"}, {"status", "True"}},
                                    {{"type", "Failed"},
                                     {"status", "True"},
                                     {"reason", reason},
                                     {"message", message}}})}};
    putJob(ns, updated, "MODIFIED");
  }

  // The fake kubelet: runs the container's args with its env; output becomes the pod's log.
  void launch(const std::string& ns, const std::string& pod_name, const std::string& job_name,
              const Json& pod) {
    const Json container = pod["spec"]["containers"][0];
    std::vector<std::string> argv;
    for (const auto& arg : container.value("args", Json::array())) {
      argv.push_back(arg.get<std::string>());
    }
    std::vector<std::string> env;
    std::set<std::string> names;
    for (const auto& entry : container.value("env", Json::array())) {
      if (entry.contains("value") && entry["value"].is_string()) {
        names.insert(entry["name"].get<std::string>());
        env.push_back(entry["name"].get<std::string>() + "=" + entry["value"].get<std::string>());
      }
    }
    // What an image's own environment would give the process: taken from the fake's.
    for (const char* name : {"PATH", "HOME", "PREFECT_HOME", "TMPDIR", "LANG"}) {
      const char* value = std::getenv(name);
      if (value != nullptr && names.count(name) == 0) {
        env.push_back(std::string(name) + "=" + value);
      }
    }
    ++kubelet_threads;
    std::thread([this, ns, pod_name, job_name, argv, env]() {
      struct Done {
        Impl* impl;
        ~Done() {
          std::lock_guard lock(impl->mutex);
          --impl->kubelet_threads;
          impl->changed.notify_all();
        }
      } done{this};
      int pipefd[2];
      if (argv.empty() || pipe(pipefd) != 0) {
        std::lock_guard lock(mutex);
        terminate(ns, pod_name, job_name, 127);
        return;
      }
      const pid_t pid = fork();
      if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        close(pipefd[1]);
        std::vector<char*> args;
        for (const auto& a : argv) {
          args.push_back(const_cast<char*>(a.c_str()));
        }
        args.push_back(nullptr);
        std::vector<char*> envp;
        for (const auto& e : env) {
          envp.push_back(const_cast<char*>(e.c_str()));
        }
        envp.push_back(nullptr);
        execvpe(args[0], args.data(), envp.data());
        _exit(127);
      }
      close(pipefd[1]);
      {
        std::lock_guard lock(mutex);
        kubelet_pids[ns + "/" + pod_name] = pid;
      }
      std::array<char, 4096> buffer{};
      for (;;) {
        const ssize_t n = read(pipefd[0], buffer.data(), buffer.size());
        if (n <= 0) {
          break;
        }
        std::lock_guard lock(mutex);
        logs[ns + "/" + pod_name].append(buffer.data(), static_cast<std::size_t>(n));
        wakeLog(ns + "/" + pod_name);
      }
      close(pipefd[0]);
      int wstatus = 0;
      waitpid(pid, &wstatus, 0);
      const int code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
      std::lock_guard lock(mutex);
      kubelet_pids.erase(ns + "/" + pod_name);
      terminate(ns, pod_name, job_name, code);
    }).detach();
  }
  std::map<std::string, pid_t> kubelet_pids;
  int kubelet_threads = 0;

  void controllerLoop() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      if (timers.empty()) {
        changed.wait(lock);
        continue;
      }
      const auto next = timers.begin()->first;
      if (changed.wait_until(lock, next) == std::cv_status::timeout ||
          std::chrono::steady_clock::now() >= next) {
        while (!timers.empty() && timers.begin()->first <= std::chrono::steady_clock::now()) {
          auto action = std::move(timers.begin()->second);
          timers.erase(timers.begin());
          action();
        }
      }
    }
  }

  // ---- deletion (mutex held) ----
  void deleteJob(const std::string& ns, const std::string& name, const std::string& policy) {
    auto it = jobs[ns].find(name);
    if (it == jobs[ns].end()) {
      return;
    }
    // A running process of the fake kubelet gets SIGTERM, as the kubelet sends it.
    for (const auto& pod : podNamesOf(ns, name)) {
      if (auto pid = kubelet_pids.find(ns + "/" + pod); pid != kubelet_pids.end()) {
        ::kill(pid->second, SIGTERM);
      }
    }
    if (policy == "Foreground") {
      Json job = it->second;
      job["metadata"]["deletionTimestamp"] = nowIso();
      job["metadata"]["finalizers"] = Json::array({"foregroundDeletion"});
      putJob(ns, job, "MODIFIED");
      after(std::chrono::milliseconds(10), [this, ns, name]() {
        for (const auto& pod : podNamesOf(ns, name)) {
          removePod(ns, pod);
        }
        removeJob(ns, name);
      });
      return;
    }
    removeJob(ns, name);
    if (policy != "Orphan") {
      after(std::chrono::milliseconds(10), [this, ns, name]() {
        for (const auto& pod : podNamesOf(ns, name)) {
          removePod(ns, pod);
        }
      });
    }
  }

  // ---- HTTP ----
  void serve() {
    for (;;) {
      auto socket = std::make_shared<tcp::socket>(io);
      boost::system::error_code ec;
      acceptor.accept(*socket, ec);
      std::lock_guard lock(mutex);
      if (stopping) {
        return;
      }
      if (ec) {
        continue;
      }
      sockets.push_back(socket);
      ++active_connections;
      // Detached: a benchmark makes thousands of connections; the destructor waits for the
      // count of active ones to reach zero instead of joining each.
      std::thread([this, socket]() {
        connection(socket);
        std::lock_guard done(mutex);
        sockets.remove(socket);
        --active_connections;
        changed.notify_all();
      }).detach();
    }
  }

  static void writeAll(tcp::socket& socket, const std::string& data,
                       boost::system::error_code& ec) {
    asio::write(socket, asio::buffer(data), ec);
  }

  static std::string chunk(const std::string& data) {
    std::ostringstream out;
    out << std::hex << data.size() << "\r\n" << data << "\r\n";
    return out.str();
  }

  void connection(std::shared_ptr<tcp::socket> socket) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> request;
      boost::system::error_code ec;
      http::read(*socket, buffer, request, ec);
      if (ec) {
        break;
      }
      if (!handle(*socket, request)) {
        break;
      }
    }
    boost::system::error_code ignored;
    socket->shutdown(tcp::socket::shutdown_both, ignored);
    socket->close(ignored);
  }

  bool send(tcp::socket& socket, const Reply& reply) {
    std::ostringstream out;
    out << "HTTP/1.1 " << reply.status << " " << (reply.status < 300 ? "OK" : "Error") << "\r\n"
        << "Content-Type: " << reply.content_type << "\r\n"
        << "Content-Length: " << reply.body.size() << "\r\n\r\n"
        << reply.body;
    boost::system::error_code ec;
    writeAll(socket, out.str(), ec);
    return !ec;
  }

  static Reply json(int code, const Json& body) { return Reply{code, body.dump() + "\n"}; }

  bool handle(tcp::socket& socket, const http::request<http::string_body>& request) {
    const std::string target(request.target());
    const auto q = target.find('?');
    const std::string path = target.substr(0, q);
    std::map<std::string, std::string> query;
    if (q != std::string::npos) {
      for (const auto& pair : split(target.substr(q + 1), '&')) {
        const auto eq = pair.find('=');
        query[percentDecode(pair.substr(0, eq))] =
            eq == std::string::npos ? "" : percentDecode(pair.substr(eq + 1));
      }
    }
    const std::string auth(request[http::field::authorization]);
    if (auth != std::string("Bearer ") + kToken) {
      return send(socket, json(401, status(401, "Unauthorized", "Unauthorized")));
    }
    const auto parts = split(path, '/');  // "", "api"|"apis", ...
    std::string ns;
    std::string resource;
    std::string name;
    std::string sub;
    std::string group;
    // /api/v1/namespaces/{ns}[/{resource}[/{name}[/{sub}]]]
    // /apis/batch/v1/namespaces/{ns}/jobs[/{name}]
    std::size_t base = 0;
    if (parts.size() >= 4 && parts[1] == "api" && parts[2] == "v1" && parts[3] == "namespaces") {
      base = 4;
    } else if (parts.size() >= 5 && parts[1] == "apis" && parts[2] == "batch" && parts[3] == "v1" &&
               parts[4] == "namespaces") {
      base = 5;
      group = "batch";
    } else if (path == "/version") {
      return send(socket,
                  json(200, {{"major", "1"}, {"minor", "31"}, {"gitVersion", "v1.31.0-fake"}}));
    } else {
      return send(socket, json(404, status(404, "NotFound",
                                           "the server could not find the requested resource")));
    }
    if (parts.size() > base) ns = percentDecode(parts[base]);
    if (parts.size() > base + 1) resource = parts[base + 1];
    if (parts.size() > base + 2) name = percentDecode(parts[base + 2]);
    if (parts.size() > base + 3) sub = parts[base + 3];
    if ((group == "batch") != (resource == "jobs") && !resource.empty()) {
      return send(socket, json(404, status(404, "NotFound",
                                           "the server could not find the requested resource")));
    }
    const std::string method(request.method_string());
    std::string verb;
    if (method == "GET") {
      verb = query.count("watch") != 0 && query["watch"] == "true" ? "watch"
             : name.empty()                                        ? "list"
                                                                   : "get";
    } else if (method == "POST") {
      verb = "create";
    } else if (method == "DELETE") {
      verb = "delete";
    } else {
      return send(socket, json(405, status(405, "MethodNotAllowed", "method not allowed")));
    }
    const std::string full_resource = sub.empty() ? resource : resource + "/" + sub;
    std::unique_lock lock(mutex);
    if (forbidden.count({verb, full_resource.empty() ? "namespaces" : full_resource}) != 0) {
      const std::string what = full_resource.empty() ? "namespaces" : full_resource;
      const std::string in = resource.empty() ? "" : " in the namespace \"" + ns + "\"";
      const std::string message =
          (what + (group.empty() ? "" : "." + group)) + (name.empty() ? "" : " \"" + name + "\"") +
          " is forbidden: User \"system:serviceaccount:default:poolworker\" cannot " + verb +
          " resource \"" + what + "\" in API group \"" + group + "\"" + in;
      lock.unlock();
      return send(socket, json(403, status(403, "Forbidden", message,
                                           {{"group", group}, {"kind", what}, {"name", name}})));
    }
    if (resource.empty()) {
      if (namespaces.count(ns) == 0) {
        lock.unlock();
        return send(socket, json(404, status(404, "NotFound", "namespaces \"" + ns + "\" not found",
                                             {{"name", ns}, {"kind", "namespaces"}})));
      }
      Json object = {{"apiVersion", "v1"},
                     {"kind", "Namespace"},
                     {"metadata", {{"name", ns}, {"uid", "cluster-" + ns + "-uid"}}}};
      lock.unlock();
      return send(socket, json(200, object));
    }
    if (resource != "jobs" && resource != "pods") {
      lock.unlock();
      return send(socket, json(404, status(404, "NotFound",
                                           "the server could not find the requested resource")));
    }
    if (verb == "create") {
      if (resource != "jobs") {
        lock.unlock();
        return send(socket,
                    json(405, status(405, "MethodNotAllowed", "not supported by the fake")));
      }
      return createJob(socket, lock, ns, request.body());
    }
    if (verb == "delete") {
      deletions.push_back(target.substr(q == std::string::npos ? target.size() : q + 1));
      if (resource != "jobs" || name.empty()) {
        lock.unlock();
        return send(socket,
                    json(405, status(405, "MethodNotAllowed", "not supported by the fake")));
      }
      if (jobs[ns].count(name) == 0) {
        lock.unlock();
        return send(socket,
                    json(404, status(404, "NotFound", "jobs.batch \"" + name + "\" not found",
                                     {{"name", name}, {"group", "batch"}, {"kind", "jobs"}})));
      }
      std::string policy = query.count("propagationPolicy") ? query["propagationPolicy"] : "";
      const Json body = Json::parse(request.body(), nullptr, false);
      if (policy.empty() && body.is_object()) {
        policy = body.value("propagationPolicy", "");
      }
      Json answer = jobs[ns][name];
      deleteJob(ns, name, policy.empty() ? "Orphan" : policy);
      lock.unlock();
      return send(socket, json(200, answer));
    }
    const std::string kind = resource;
    auto& store = resource == "jobs" ? jobs : pods;
    if (verb == "get") {
      if (sub == "log") {
        return podLog(socket, lock, ns, name, query);
      }
      auto it = store[ns].find(name);
      if (it == store[ns].end()) {
        const std::string what = resource == "jobs" ? "jobs.batch" : "pods";
        lock.unlock();
        return send(socket, json(404, status(404, "NotFound", what + " \"" + name + "\" not found",
                                             {{"name", name}, {"kind", resource}})));
      }
      Json object = it->second;
      lock.unlock();
      return send(socket, json(200, object));
    }
    std::map<std::string, std::string> selector;
    if (query.count("labelSelector") != 0 && !query["labelSelector"].empty()) {
      for (const auto& term : split(query["labelSelector"], ',')) {
        const auto eq = term.find('=');
        if (eq == std::string::npos) {
          lock.unlock();
          return send(socket,
                      json(400, status(400, "BadRequest", "the fake supports only k=v selectors")));
        }
        std::string value = term.substr(eq + 1);
        if (!value.empty() && value[0] == '=') {
          value = value.substr(1);
        }
        selector[term.substr(0, eq)] = value;
      }
    }
    if (verb == "list") {
      ++list_requests[kind];
      Json items = Json::array();
      for (const auto& [n, object] : store[ns]) {
        if (matches(object, selector)) {
          items.push_back(object);
        }
      }
      Json list = {{"apiVersion", resource == "jobs" ? "batch/v1" : "v1"},
                   {"kind", resource == "jobs" ? "JobList" : "PodList"},
                   {"metadata", {{"resourceVersion", std::to_string(rv)}}},
                   {"items", items}};
      lock.unlock();
      return send(socket, json(200, list));
    }
    return watch(socket, lock, kind, ns, selector, query);
  }

  bool createJob(tcp::socket& socket, std::unique_lock<std::mutex>& lock, const std::string& ns,
                 const std::string& body) {
    const auto fail = [&](int code, const Json& s) {
      lock.unlock();
      return send(socket, json(code, s));
    };
    if (namespaces.count(ns) == 0) {
      return fail(404, status(404, "NotFound", "namespaces \"" + ns + "\" not found",
                              {{"name", ns}, {"kind", "namespaces"}}));
    }
    Json job = Json::parse(body, nullptr, false);
    if (!job.is_object()) {
      return fail(400,
                  status(400, "BadRequest", "the body of the request was in an unknown format"));
    }
    const auto invalid = [&](const std::string& name, const std::string& field,
                             const std::string& message) {
      return fail(422, status(422, "Invalid",
                              "Job.batch \"" + name + "\" is invalid: " + field + ": " + message,
                              {{"name", name},
                               {"group", "batch"},
                               {"kind", "Job"},
                               {"causes", Json::array({{{"reason", "FieldValueRequired"},
                                                        {"message", message},
                                                        {"field", field}}})}}));
    };
    Json& metadata = job["metadata"];
    if (!metadata.is_object()) {
      metadata = Json::object();
    }
    std::string name = metadata.value("name", "");
    if (name.empty()) {
      const std::string prefix = metadata.value("generateName", "");
      if (prefix.empty()) {
        return invalid("", "metadata.name", "Required value: name or generateName is required");
      }
      name = prefix + randomSuffix();
    }
    if (metadata.contains("namespace") && metadata["namespace"] != ns) {
      return fail(400, status(400, "BadRequest",
                              "the namespace of the provided object does not match the namespace "
                              "sent on the request"));
    }
    const Json containers = job["spec"]["template"]["spec"].value("containers", Json());
    if (!containers.is_array() || containers.empty()) {
      return invalid(name, "spec.template.spec.containers", "Required value");
    }
    for (std::size_t i = 0; i < containers.size(); ++i) {
      if (!containers[i].contains("image") || !containers[i]["image"].is_string() ||
          containers[i]["image"].get<std::string>().empty()) {
        return invalid(name, "spec.template.spec.containers[" + std::to_string(i) + "].image",
                       "Required value");
      }
    }
    const std::string restart = job["spec"]["template"]["spec"].value("restartPolicy", "");
    if (restart != "Never" && restart != "OnFailure") {
      return fail(422, status(422, "Invalid",
                              "Job.batch \"" + name +
                                  "\" is invalid: spec.template.spec.restartPolicy: Required "
                                  "value: valid values: \"OnFailure\", \"Never\""));
    }
    if (jobs[ns].count(name) != 0) {
      return fail(409, status(409, "AlreadyExists", "jobs.batch \"" + name + "\" already exists",
                              {{"name", name}, {"group", "batch"}, {"kind", "jobs"}}));
    }
    metadata["name"] = name;
    metadata["namespace"] = ns;
    metadata["uid"] = uid();
    metadata["creationTimestamp"] = nowIso();
    metadata["generation"] = 1;
    if (!job["spec"].contains("backoffLimit")) {
      job["spec"]["backoffLimit"] = 6;
    }
    job["status"] = Json::object();
    putJob(ns, job, "ADDED");
    Json created = jobs[ns][name];
    after(std::chrono::milliseconds(5), [this, ns, name]() {
      if (jobs[ns].count(name) != 0) {
        startJob(ns, name);
      }
    });
    lock.unlock();
    return send(socket, json(201, created));
  }

  bool podLog(tcp::socket& socket, std::unique_lock<std::mutex>& lock, const std::string& ns,
              const std::string& name, std::map<std::string, std::string>& query) {
    auto pod = pods[ns].find(name);
    if (pod == pods[ns].end()) {
      lock.unlock();
      return send(socket, json(404, status(404, "NotFound", "pods \"" + name + "\" not found")));
    }
    const auto started = [&]() {
      auto p = pods[ns].find(name);
      return p != pods[ns].end() && p->second["status"].value("phase", "") != "Pending";
    };
    if (!started()) {
      lock.unlock();
      return send(socket, json(400, status(400, "BadRequest",
                                           "container \"prefect-job\" in pod \"" + name +
                                               "\" is waiting to start: ContainerCreating")));
    }
    const bool follow = query["follow"] == "true";
    boost::system::error_code ec;
    const std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    lock.unlock();
    writeAll(socket, head, ec);
    lock.lock();
    std::size_t sent = 0;
    const std::string key = ns + "/" + name;
    auto& waiter = log_waiters[key];
    if (!waiter) {
      waiter = std::make_shared<std::condition_variable>();
    }
    const std::shared_ptr<std::condition_variable> woken = waiter;
    for (;;) {
      const std::string& text = logs[key];
      if (text.size() > sent) {
        const std::string piece = text.substr(sent);
        sent = text.size();
        lock.unlock();
        writeAll(socket, chunk(piece), ec);
        lock.lock();
        if (ec) {
          return false;
        }
        continue;
      }
      auto p = pods[ns].find(name);
      const bool ended = p == pods[ns].end() ||
                         p->second["status"].value("phase", "") == "Succeeded" ||
                         p->second["status"].value("phase", "") == "Failed";
      if (!follow || ended || stopping) {
        break;
      }
      // Woken by new output, the container's end, the pod's deletion or the server stopping;
      // the timeout is only a safety net.
      woken->wait_for(lock, std::chrono::seconds(5));
    }
    lock.unlock();
    writeAll(socket, "0\r\n\r\n", ec);
    return false;
  }

  bool watch(tcp::socket& socket, std::unique_lock<std::mutex>& lock, const std::string& kind,
             const std::string& ns, const std::map<std::string, std::string>& selector,
             std::map<std::string, std::string>& query) {
    ++watch_requests[kind];
    const bool bookmarks = query["allowWatchBookmarks"] == "true";
    const std::string from = query["resourceVersion"];
    long long since = 0;
    try {
      since = from.empty() ? 0 : std::stoll(from);
    } catch (const std::exception&) {
      lock.unlock();
      return send(socket, json(400, status(400, "BadRequest", "invalid resourceVersion")));
    }
    boost::system::error_code ec;
    const std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    std::vector<std::string> lines;
    if (since != 0 && since < compacted_below) {
      lock.unlock();
      writeAll(socket, head, ec);
      const Json event = {{"type", "ERROR"},
                          {"object", status(410, "Expired",
                                            "too old resource version: " + from + " (" +
                                                std::to_string(compacted_below) + ")")}};
      writeAll(socket, chunk(event.dump() + "\n") + "0\r\n\r\n", ec);
      return false;
    }
    if (since == 0) {
      // Without a version, a watch starts with the current objects as ADDED.
      auto& store = kind == "jobs" ? jobs : pods;
      for (const auto& [n, object] : store[ns]) {
        if (matches(object, selector)) {
          lines.push_back(Json({{"type", "ADDED"}, {"object", object}}).dump() + "\n");
        }
      }
      since = rv;
    }
    ++open_watches[kind];
    const int generation = drop_generation;
    lock.unlock();
    writeAll(socket, head, ec);
    for (const auto& line : lines) {
      writeAll(socket, chunk(line), ec);
    }
    lock.lock();
    long long sent_rv = since;
    auto idle_since = std::chrono::steady_clock::now();
    while (!ec && !stopping && drop_generation == generation) {
      std::string out;
      // History is ordered by rv: skip what this watcher has seen.
      auto it = std::upper_bound(history.begin(), history.end(), sent_rv,
                                 [](long long v, const Event& e) { return v < e.rv; });
      for (; it != history.end(); ++it) {
        sent_rv = it->rv;
        if (it->resource != kind || it->ns != ns || !matches(it->object, selector)) {
          continue;
        }
        out += Json({{"type", it->type}, {"object", it->object}}).dump() + "\n";
      }
      const auto now = std::chrono::steady_clock::now();
      if (out.empty() && bookmarks && now - idle_since > std::chrono::milliseconds(500) &&
          rv > since) {
        const Json object = {{"kind", kind == "jobs" ? "Job" : "Pod"},
                             {"apiVersion", kind == "jobs" ? "batch/v1" : "v1"},
                             {"metadata",
                              {{"resourceVersion", std::to_string(rv)},
                               {"annotations", {{"k8s.io/initial-events-end", "true"}}}}}};
        out = Json({{"type", "BOOKMARK"}, {"object", object}}).dump() + "\n";
        since = rv;
        sent_rv = std::max(sent_rv, rv);
      }
      if (!out.empty()) {
        idle_since = now;
        lock.unlock();
        writeAll(socket, chunk(out), ec);
        lock.lock();
        continue;
      }
      changed.wait_for(lock, std::chrono::milliseconds(100));
    }
    --open_watches[kind];
    lock.unlock();
    if (drop_generation != generation) {
      return false;  // Dropped: close without the final chunk, like a broken connection.
    }
    writeAll(socket, "0\r\n\r\n", ec);
    return false;
  }
};

FakeKube::FakeKube(unsigned short port, bool run_commands) : impl_(std::make_unique<Impl>()) {
  impl_->run_commands = run_commands;
  tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(endpoint);
  impl_->acceptor.listen(1024);
  impl_->port = impl_->acceptor.local_endpoint().port();
  impl_->accept_thread = std::thread([this]() { impl_->serve(); });
  impl_->controller_thread = std::thread([this]() { impl_->controllerLoop(); });
}

FakeKube::~FakeKube() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
    impl_->changed.notify_all();
    for (auto& [key, waiter] : impl_->log_waiters) {
      waiter->notify_all();
    }
    for (auto& socket : impl_->sockets) {
      boost::system::error_code ignored;
      socket->shutdown(tcp::socket::shutdown_both, ignored);
    }
  }
  boost::system::error_code ignored;
  // Wake the blocking accept with a connection of our own.
  {
    tcp::socket poke(impl_->io);
    poke.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), impl_->port), ignored);
  }
  impl_->accept_thread.join();
  impl_->controller_thread.join();
  {
    std::unique_lock lock(impl_->mutex);
    for (const auto& [pod, pid] : impl_->kubelet_pids) {
      ::kill(pid, SIGTERM);
    }
    while (impl_->active_connections > 0 || impl_->kubelet_threads > 0) {
      for (auto& socket : impl_->sockets) {
        socket->shutdown(tcp::socket::shutdown_both, ignored);
      }
      impl_->changed.wait_for(lock, std::chrono::milliseconds(50));
    }
  }
  impl_->acceptor.close(ignored);
}

std::string FakeKube::url() const { return "http://127.0.0.1:" + std::to_string(impl_->port); }

unsigned short FakeKube::port() const { return impl_->port; }

std::string FakeKube::kubeconfig(const std::string& namespace_) const {
  return "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  "
         "cluster:\n"
         "    server: " +
         url() + "\nusers:\n- name: fake\n  user:\n    token: " + kToken +
         "\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    "
         "namespace: " +
         namespace_ + "\n";
}

void FakeKube::createNamespace(const std::string& name) {
  std::lock_guard lock(impl_->mutex);
  impl_->namespaces.insert(name);
}

void FakeKube::setScript(std::function<PodScript(const Json& job)> script) {
  std::lock_guard lock(impl_->mutex);
  impl_->script_for = std::move(script);
}

bool FakeKube::finishPod(const std::string& ns, const std::string& job, int exit_code) {
  std::lock_guard lock(impl_->mutex);
  for (const auto& pod : impl_->podNamesOf(ns, job)) {
    if (impl_->pods[ns][pod]["status"].value("phase", "") == "Running") {
      impl_->terminate(ns, pod, job, exit_code);
      return true;
    }
  }
  return false;
}

bool FakeKube::deleteJobFromOutside(const std::string& ns, const std::string& name) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->jobs[ns].count(name) == 0) {
    return false;
  }
  impl_->deleteJob(ns, name, "Background");
  return true;
}

void FakeKube::forbid(const std::string& verb, const std::string& resource) {
  std::lock_guard lock(impl_->mutex);
  impl_->forbidden.insert({verb, resource});
}

void FakeKube::dropWatches() {
  std::lock_guard lock(impl_->mutex);
  ++impl_->drop_generation;
  impl_->changed.notify_all();
}

void FakeKube::compact() {
  std::lock_guard lock(impl_->mutex);
  impl_->compacted_below = impl_->rv + 1;
  impl_->history.clear();
}

int FakeKube::watchRequests(const std::string& resource) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->watch_requests.find(resource);
  return it == impl_->watch_requests.end() ? 0 : it->second;
}

int FakeKube::listRequests(const std::string& resource) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->list_requests.find(resource);
  return it == impl_->list_requests.end() ? 0 : it->second;
}

int FakeKube::openWatches(const std::string& resource) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->open_watches.find(resource);
  return it == impl_->open_watches.end() ? 0 : it->second;
}

std::optional<Json> FakeKube::job(const std::string& ns, const std::string& name) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->jobs[ns].find(name);
  if (it == impl_->jobs[ns].end()) {
    return std::nullopt;
  }
  return it->second;
}

std::vector<Json> FakeKube::jobs(const std::string& ns) const {
  std::lock_guard lock(impl_->mutex);
  std::vector<Json> out;
  for (const auto& [name, job] : impl_->jobs[ns]) {
    out.push_back(job);
  }
  return out;
}

std::vector<Json> FakeKube::podsOf(const std::string& ns, const std::string& job) const {
  std::lock_guard lock(impl_->mutex);
  std::vector<Json> out;
  for (const auto& name : impl_->podNamesOf(ns, job)) {
    out.push_back(impl_->pods[ns][name]);
  }
  return out;
}

std::vector<std::string> FakeKube::jobDeletions() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->deletions;
}

}  // namespace poolworker::testing
