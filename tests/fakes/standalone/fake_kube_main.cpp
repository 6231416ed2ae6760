// The fake Kubernetes API server as a program, for the end-to-end tests and the benchmark:
//   fake_kube [--port N] [--kubelet] [--kubeconfig PATH] [--namespace NS] [--pod-step-ms MS]
// It writes a kubeconfig pointing at itself to PATH, prints "ready <port>" on stdout, and serves
// until stdin closes or it receives SIGTERM/SIGINT. With --kubelet, each pod's container args
// run as a local process with the container's env (so a real flow run executes).

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "tests/fakes/fake_kube.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void onSignal(int) { g_stop = 1; }
}  // namespace

int main(int argc, char** argv) {
  unsigned short port = 0;
  bool kubelet = false;
  std::string kubeconfig;
  std::string ns = "default";
  int step_ms = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "fake_kube: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--port") {
      port = static_cast<unsigned short>(std::stoi(next()));
    } else if (arg == "--kubelet") {
      kubelet = true;
    } else if (arg == "--kubeconfig") {
      kubeconfig = next();
    } else if (arg == "--namespace") {
      ns = next();
    } else if (arg == "--pod-step-ms") {
      step_ms = std::stoi(next());
    } else {
      std::cerr << "fake_kube: unknown argument " << arg << "\n";
      return 2;
    }
  }
  std::signal(SIGTERM, onSignal);
  std::signal(SIGINT, onSignal);
  std::signal(SIGPIPE, SIG_IGN);
  poolworker::testing::FakeKube kube(port, kubelet);
  if (ns != "default") {
    kube.createNamespace(ns);
  }
  kube.setScript([step_ms](const poolworker::Json& job) {
    poolworker::testing::PodScript script;
    script.step = std::chrono::milliseconds(step_ms);
    // A test directs a pod through the Job's annotation "fake-kube/script": exit:<n>, hold,
    // evict, pull-fail.
    const auto annotations = job["metadata"].value("annotations", poolworker::Json::object());
    const std::string directive = annotations.value("fake-kube/script", "");
    if (directive.rfind("exit:", 0) == 0) {
      script.exit_code = std::stoi(directive.substr(5));
    } else if (directive == "hold") {
      script.kind = poolworker::testing::PodScript::Kind::Hold;
    } else if (directive == "evict") {
      script.kind = poolworker::testing::PodScript::Kind::Evict;
    } else if (directive == "pull-fail") {
      script.kind = poolworker::testing::PodScript::Kind::PullFail;
    }
    return script;
  });
  if (!kubeconfig.empty()) {
    std::ofstream out(kubeconfig);
    out << kube.kubeconfig(ns);
  }
  std::cout << "ready " << kube.port() << std::endl;
  while (g_stop == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return 0;
}
