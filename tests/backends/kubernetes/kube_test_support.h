#pragma once

// A fake cluster, a backend pointed at it through a kubeconfig, and runs prepared by the
// worker's own templating from the default Kubernetes base job template.

#include <memory>
#include <string>

#include "backends/kubernetes/kubernetes_backend.h"
#include "tests/backends/docker/docker_test_support.h"
#include "tests/fakes/fake_kube.h"
#include "tests/test_support.h"
#include "worker/job_variables.h"
#include "worker/run_preparation.h"

namespace poolworker::kube_testing {

using docker_testing::await;
using docker_testing::RecordingSink;
using docker_testing::runFor;
using docker_testing::runUntil;
using docker_testing::TestExecutor;

inline constexpr char kWorkerName[] = "k8s-test-worker";

/// The run's job configuration as the worker prepares it from the default template.
inline StartRequest makeRequest(const Json& job_variables, const std::string& run_id,
                                const std::string& worker_name = kWorkerName) {
  const Json tmpl =
      Json::parse(testing::readFile(testing::sourcePath("templates/kubernetes.json")));
  auto rendered = jobvars::renderJobConfiguration(tmpl, job_variables);
  EXPECT_TRUE(rendered.ok()) << (rendered ? "" : rendered.error().message);
  PreparationContext ctx;
  ctx.pool = {{"name", "k8s-pool"}, {"id", "11111111-2222-3333-4444-555555555555"}};
  ctx.flow_run = {{"id", run_id}, {"name", "crimson-otter"}, {"flow_id", "flow-1"}};
  ctx.flow = {{"id", "flow-1"}, {"name", "my-flow"}};
  ctx.worker_name = worker_name;
  ctx.api_url = "http://127.0.0.1:4200/api";
  ctx.settings_env = {{"PREFECT_API_URL", ctx.api_url}};
  auto config = prepareConfiguration(*rendered, ctx);
  EXPECT_TRUE(config.ok()) << (config ? "" : config.error().message);
  StartRequest request;
  request.run = makeRunContext(ctx);
  request.configuration = *config;
  return request;
}

/// A fake cluster and a kubeconfig file that points at it.
struct Cluster {
  testing::FakeKube kube;
  testing::TempDir dir;
  std::string kubeconfig_path;

  Cluster() {
    kubeconfig_path = (dir.path() / "config").string();
    std::FILE* f = std::fopen(kubeconfig_path.c_str(), "w");
    const std::string text = kube.kubeconfig();
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }

  backends::kubernetes::KubernetesBackendSettings settings(
      const std::string& worker_name = kWorkerName) const {
    backends::kubernetes::KubernetesBackendSettings s;
    s.worker_name = worker_name;
    s.environment.kubeconfig = kubeconfig_path;
    s.environment.service_host.clear();
    s.create_retry_delay = std::chrono::milliseconds(50);
    s.max_watch_backoff = std::chrono::milliseconds(500);
    return s;
  }
};

}  // namespace poolworker::kube_testing
