// The fake Prefect API as a program, for the benchmarks (bench/scale.py, bench/growth.py): a
// server fast enough that it is not what limits the worker.
//   fake_prefect [--pool NAME] [--type TYPE] [--template FILE] [--record-bodies]
// It creates the pool (with the base job template read from FILE, a JSON document), a flow and
// a deployment on the pool, prints "ready <port>" and then reads commands on stdin, one per line,
// answering each with one line of JSON:
//   runs N [JOB_VARIABLES_JSON]  creates N runs of the deployment, due now -> {"created": N}
//   stats                        -> {"runs": n, "states": {"PENDING": n, ...}, "with_pid": n,
//                                    "requests": n, "routes": {"GET /flow_runs/{id}": n, ...},
//                                    "route_times": {"GET /flow_runs/{id}": [first, last], ...}}
//                                (times: when the requests arrived, seconds since the epoch)
//   quit                         stops the server
// It also stops when stdin closes or on SIGTERM/SIGINT.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "tests/fakes/fake_prefect.h"

namespace {

std::atomic<bool> g_stop{false};
void onSignal(int) { g_stop = true; }

// Requests grouped by route: ids (UUIDs) in the path become "{id}", so the counts read per call.
std::string routeOf(const poolworker::testing::RecordedRequest& request) {
  std::string path = request.path;
  std::string out;
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto slash = path.find('/', start);
    const std::string segment =
        path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    const bool uuid = segment.size() == 36 && segment[8] == '-' && segment[13] == '-';
    out += uuid ? "{id}" : segment;
    if (slash == std::string::npos) {
      break;
    }
    out += '/';
    start = slash + 1;
  }
  return request.method + " " + out;
}

poolworker::Json stats(const poolworker::testing::FakePrefect& fake) {
  poolworker::Json states = poolworker::Json::object();
  int with_pid = 0;
  const auto runs = fake.flowRuns();
  for (const auto& run : runs) {
    const std::string type = run["state"].is_object() ? run["state"].value("type", "") : "";
    states[type] = states.value(type, 0) + 1;
    if (run.contains("infrastructure_pid") && !run["infrastructure_pid"].is_null()) {
      ++with_pid;
    }
  }
  std::map<std::string, int> routes;
  std::map<std::string, std::pair<double, double>> times;
  const auto requests = fake.requests();
  for (const auto& request : requests) {
    const std::string route = routeOf(request);
    ++routes[route];
    const double at = std::chrono::duration<double>(request.time.time_since_epoch()).count();
    auto [slot, first] = times.try_emplace(route, at, at);
    if (!first) {
      slot->second.first = std::min(slot->second.first, at);
      slot->second.second = std::max(slot->second.second, at);
    }
  }
  poolworker::Json route_times = poolworker::Json::object();
  for (const auto& [route, span] : times) {
    route_times[route] = {span.first, span.second};
  }
  return poolworker::Json{{"runs", runs.size()},  {"states", states},
                          {"with_pid", with_pid}, {"requests", requests.size()},
                          {"routes", routes},     {"route_times", route_times}};
}

}  // namespace

int main(int argc, char** argv) {
  std::string pool = "bench";
  std::string type = "process";
  std::string template_file;
  bool record_bodies = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "fake_prefect: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--pool") {
      pool = next();
    } else if (arg == "--type") {
      type = next();
    } else if (arg == "--template") {
      template_file = next();
    } else if (arg == "--record-bodies") {
      record_bodies = true;
    } else {
      std::cerr << "fake_prefect: unknown argument " << arg << "\n";
      return 2;
    }
  }
  std::signal(SIGTERM, onSignal);
  std::signal(SIGINT, onSignal);
  std::signal(SIGPIPE, SIG_IGN);

  poolworker::Json base_template = poolworker::Json::object();
  if (!template_file.empty()) {
    std::ifstream in(template_file);
    if (!in) {
      std::cerr << "fake_prefect: cannot read --template " << template_file << "\n";
      return 2;
    }
    try {
      base_template = poolworker::Json::parse(in);
    } catch (const std::exception& error) {
      std::cerr << "fake_prefect: --template " << template_file << " is not JSON: " << error.what()
                << "\n";
      return 2;
    }
  }

  poolworker::testing::FakePrefectOptions options;
  options.record_bodies = record_bodies;
  options.default_limit = 1000;
  poolworker::testing::FakePrefect fake(options);
  fake.createWorkPool(pool, type, base_template);
  const std::string flow = fake.createFlow("bench-flow");
  const std::string deployment = fake.createDeployment(flow, "bench", pool);
  std::cout << "ready " << fake.port() << std::endl;

  // Commands come from a reader thread so that a signal still stops the program while stdin is
  // silent.
  std::thread reader([&] {
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream words(line);
      std::string command;
      words >> command;
      try {
        if (command == "runs") {
          int count = 0;
          words >> count;
          std::string rest;
          std::getline(words, rest);
          const auto variables = rest.find_first_not_of(' ') == std::string::npos
                                     ? poolworker::Json::object()
                                     : poolworker::Json::parse(rest);
          for (int n = 0; n < count; ++n) {
            fake.createFlowRun(deployment, variables);
          }
          std::cout << poolworker::Json{{"created", count}}.dump() << std::endl;
        } else if (command == "stats") {
          std::cout << stats(fake).dump() << std::endl;
        } else if (command == "quit") {
          break;
        } else if (!command.empty()) {
          std::cout << poolworker::Json{{"error", "unknown command " + command}}.dump()
                    << std::endl;
        }
      } catch (const std::exception& error) {
        std::cout << poolworker::Json{{"error", error.what()}}.dump() << std::endl;
      }
    }
    g_stop = true;
  });
  while (!g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // The reader may still be blocked on stdin; the process ends without waiting for it.
  reader.detach();
  std::_Exit(0);
}
