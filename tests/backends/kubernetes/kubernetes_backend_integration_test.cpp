// The Kubernetes backend against the fake API server: Jobs created, followed by the shared
// watch, ended by exit codes, eviction, image pull failure, deletion and cancellation, and the
// watch's recovery from dropped connections and compacted history.

#include <atomic>
#include <set>

#include <gtest/gtest.h>

#include "tests/backends/kubernetes/kube_test_support.h"

namespace poolworker::kube_testing {
namespace {

using backends::kubernetes::KubernetesBackend;
using testing::PodScript;

class KubernetesBackendTest : public ::testing::Test {
 protected:
  boost::asio::io_context io;
  TestExecutor executor{io};
  Cluster cluster;
  std::unique_ptr<KubernetesBackend> backend =
      std::make_unique<KubernetesBackend>(io, executor, cluster.settings());

  ~KubernetesBackendTest() override {
    backend->shutdown();
    io.restart();
    io.poll();
  }

  Result<RunHandle> start(const Json& vars, const std::string& id,
                          std::shared_ptr<RecordingSink> sink) {
    const StartRequest request = makeRequest(vars, id);
    return await<RunHandle>(
        io, [&](Callback<RunHandle> done) { backend->start(request, sink, std::move(done)); });
  }

  Result<Outcome> wait(const RunHandle& handle, std::shared_ptr<RecordingSink> sink) {
    return await<Outcome>(
        io, [&](Callback<Outcome> done) { backend->wait(handle, sink, std::move(done)); });
  }

  static std::string jobName(const RunHandle& handle) { return handle.data.value("job", ""); }
};

TEST_F(KubernetesBackendTest, RunCompletesWithExitCodeZeroAndStreamsLogs) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.log = "hello from the pod\n";
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000001", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string name = jobName(*handle);
  EXPECT_EQ(handle->infrastructure_pid, "default:" + name);
  EXPECT_EQ(name.rfind("crimson-otter-", 0), 0U) << name;
  auto job = cluster.kube.job("default", name);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ((*job)["metadata"]["labels"]["prefect.io/flow-run-id"],
            "0a000000-0000-0000-0000-000000000001");
  EXPECT_EQ((*job)["spec"]["template"]["metadata"]["labels"]["prefect.io/worker-name"],
            kWorkerName);
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  ASSERT_TRUE(outcome->exit_code.has_value());
  EXPECT_EQ(*outcome->exit_code, 0);
  EXPECT_NE(sink->out().find("hello from the pod"), std::string::npos) << sink->out();
}

TEST_F(KubernetesBackendTest, ExitCodeThreeComesFromTheContainerStatus) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.exit_code = 3;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000002", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  ASSERT_TRUE(outcome->exit_code.has_value());
  EXPECT_EQ(*outcome->exit_code, 3);
  EXPECT_NE(outcome->detail.find("BackoffLimitExceeded"), std::string::npos) << outcome->detail;
}

TEST_F(KubernetesBackendTest, EvictedPodEndsTheRunWithoutAnExitCode) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::Evict;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000003", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_FALSE(outcome->exit_code.has_value());
  EXPECT_NE(outcome->detail.find("evicted"), std::string::npos) << outcome->detail;
  EXPECT_NE(outcome->detail.find("low on resource: memory"), std::string::npos);
}

TEST_F(KubernetesBackendTest, ImagePullFailureLongerThanThePodWatchTimeoutEndsTheRun) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::PullFail;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start({{"pod_watch_timeout_seconds", 1}, {"image", "registry.invalid/nope:1"}},
                      "0a000000-0000-0000-0000-000000000004", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_FALSE(outcome->exit_code.has_value());
  EXPECT_NE(outcome->detail.find("registry.invalid/nope:1"), std::string::npos) << outcome->detail;
  EXPECT_NE(outcome->detail.find("could not be pulled"), std::string::npos);
  EXPECT_NE(sink->messages().find("cannot pull its image (ErrImagePull)"), std::string::npos)
      << sink->messages();
  // The stuck Job is removed rather than left retrying the pull for ever.
  const std::string name = jobName(*handle);
  EXPECT_TRUE(runUntil(io, [&] { return !cluster.kube.job("default", name).has_value(); }));
}

TEST_F(KubernetesBackendTest, CancellationDeletesTheJobInTheForeground) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::Hold;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000005", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string name = jobName(*handle);
  ASSERT_TRUE(runUntil(io, [&] {
    auto pods = cluster.kube.podsOf("default", name);
    return !pods.empty() && pods[0]["status"]["phase"] == "Running";
  }));
  std::optional<Result<Outcome>> outcome;
  backend->wait(*handle, sink, [&](Result<Outcome> r) { outcome.emplace(std::move(r)); });
  auto killed = await<void>(io, [&](Callback<void> done) {
    backend->kill(*handle, std::chrono::seconds(7), std::move(done));
  });
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  ASSERT_TRUE(runUntil(io, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  EXPECT_FALSE((*outcome)->exit_code.has_value());
  EXPECT_NE((*outcome)->detail.find("deleted on request"), std::string::npos);
  const auto deletions = cluster.kube.jobDeletions();
  ASSERT_EQ(deletions.size(), 1U);
  EXPECT_NE(deletions[0].find("propagationPolicy=Foreground"), std::string::npos) << deletions[0];
  EXPECT_NE(deletions[0].find("gracePeriodSeconds=7"), std::string::npos) << deletions[0];
  EXPECT_FALSE(cluster.kube.job("default", name).has_value());
  EXPECT_TRUE(cluster.kube.podsOf("default", name).empty());
}

TEST_F(KubernetesBackendTest, JobDeletedFromOutsideEndsTheRunAndSaysSo) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::Hold;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000006", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string name = jobName(*handle);
  std::optional<Result<Outcome>> outcome;
  backend->wait(*handle, sink, [&](Result<Outcome> r) { outcome.emplace(std::move(r)); });
  ASSERT_TRUE(runUntil(io, [&] { return !cluster.kube.podsOf("default", name).empty(); }));
  ASSERT_TRUE(cluster.kube.deleteJobFromOutside("default", name));
  ASSERT_TRUE(runUntil(io, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok());
  EXPECT_FALSE((*outcome)->exit_code.has_value());
  EXPECT_NE((*outcome)->detail.find("was deleted before it finished"), std::string::npos)
      << (*outcome)->detail;
}

TEST_F(KubernetesBackendTest, DroppedWatchResumesWithoutLosingAnEvent) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::Hold;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000007", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string name = jobName(*handle);
  std::optional<Result<Outcome>> outcome;
  backend->wait(*handle, sink, [&](Result<Outcome> r) { outcome.emplace(std::move(r)); });
  ASSERT_TRUE(runUntil(io, [&] {
    return cluster.kube.openWatches("jobs") == 1 && cluster.kube.openWatches("pods") == 1 &&
           !cluster.kube.podsOf("default", name).empty() &&
           cluster.kube.podsOf("default", name)[0]["status"]["phase"] == "Running";
  }));
  const int lists = cluster.kube.listRequests("jobs");
  cluster.kube.dropWatches();
  // The pod ends while nobody watches: the resumed watch must deliver it from history.
  ASSERT_TRUE(cluster.kube.finishPod("default", name, 5));
  ASSERT_TRUE(runUntil(io, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  ASSERT_TRUE((*outcome)->exit_code.has_value());
  EXPECT_EQ(*(*outcome)->exit_code, 5);
  EXPECT_GE(cluster.kube.watchRequests("jobs"), 2);
  EXPECT_EQ(cluster.kube.listRequests("jobs"), lists) << "a resumed watch needs no re-list";
}

TEST_F(KubernetesBackendTest, GoneResourceVersionForcesARelist) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::Hold;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000008", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string name = jobName(*handle);
  std::optional<Result<Outcome>> outcome;
  backend->wait(*handle, sink, [&](Result<Outcome> r) { outcome.emplace(std::move(r)); });
  ASSERT_TRUE(runUntil(io, [&] {
    return cluster.kube.openWatches("jobs") == 1 && cluster.kube.openWatches("pods") == 1 &&
           !cluster.kube.podsOf("default", name).empty() &&
           cluster.kube.podsOf("default", name)[0]["status"]["phase"] == "Running";
  }));
  const int job_lists = cluster.kube.listRequests("jobs");
  const int pod_lists = cluster.kube.listRequests("pods");
  // History is compacted and the watches dropped before the pod ends: the resumed watches ask
  // for a version the server no longer has, get 410 Gone, and must list again.
  cluster.kube.compact();
  cluster.kube.dropWatches();
  ASSERT_TRUE(cluster.kube.finishPod("default", name, 0));
  ASSERT_TRUE(runUntil(io, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  ASSERT_TRUE((*outcome)->exit_code.has_value());
  EXPECT_EQ(*(*outcome)->exit_code, 0);
  EXPECT_GT(cluster.kube.listRequests("jobs") + cluster.kube.listRequests("pods"),
            job_lists + pod_lists);
}

TEST_F(KubernetesBackendTest, TwoHundredConcurrentRunsShareOneWatchPerResource) {
  constexpr int kRuns = 200;
  std::vector<RunHandle> handles;
  auto sink = std::make_shared<RecordingSink>();
  std::vector<std::optional<Result<RunHandle>>> started(kRuns);
  for (int i = 0; i < kRuns; ++i) {
    char id[64];
    std::snprintf(id, sizeof(id), "0b000000-0000-0000-0000-%012d", i);
    const StartRequest request = makeRequest({{"stream_output", false}}, id);
    backend->start(request, sink, [&started, i](Result<RunHandle> r) { started[i].emplace(r); });
  }
  ASSERT_TRUE(runUntil(io, [&] {
    return std::all_of(started.begin(), started.end(), [](auto& s) { return s.has_value(); });
  }));
  std::atomic<int> finished{0};
  std::set<int> codes;
  for (auto& s : started) {
    ASSERT_TRUE(s->ok()) << s->error().message;
    backend->wait(**s, sink, [&](Result<Outcome> r) {
      ASSERT_TRUE(r.ok());
      codes.insert(r->exit_code.value_or(-1));
      ++finished;
    });
  }
  ASSERT_TRUE(runUntil(io, [&] { return finished == kRuns; }));
  EXPECT_EQ(codes, std::set<int>{0});
  // Runs can end from the lists alone, before the watch that follows a list has reached the
  // server: wait for both watches, then check that there is one of each.
  ASSERT_TRUE(runUntil(io, [&] {
    return cluster.kube.watchRequests("jobs") >= 1 && cluster.kube.watchRequests("pods") >= 1;
  }));
  EXPECT_EQ(cluster.kube.watchRequests("jobs"), 1);
  EXPECT_EQ(cluster.kube.watchRequests("pods"), 1);
  EXPECT_EQ(backend->watchConnections(), 2);
}

TEST_F(KubernetesBackendTest, ForbiddenCreateNamesVerbAndResource) {
  cluster.kube.forbid("create", "jobs");
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-000000000009", sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InfrastructureFailed);
  EXPECT_NE(handle.error().message.find("may not create jobs in namespace 'default'"),
            std::string::npos)
      << handle.error().message;
  EXPECT_NE(handle.error().message.find("cannot create resource \"jobs\" in API group \"batch\""),
            std::string::npos)
      << handle.error().message;
}

TEST_F(KubernetesBackendTest, MissingNamespaceIsNamed) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start({{"namespace", "nowhere"}}, "0a000000-0000-0000-0000-00000000000a", sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_NE(handle.error().message.find("namespace 'nowhere' does not exist"), std::string::npos)
      << handle.error().message;
}

TEST_F(KubernetesBackendTest, InvalidManifestCarriesTheApiMessage) {
  auto sink = std::make_shared<RecordingSink>();
  Json vars = {{"image", ""}};
  auto handle = start(vars, "0a000000-0000-0000-0000-00000000000b", sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_NE(handle.error().message.find("spec.template.spec.containers[0].image: Required value"),
            std::string::npos)
      << handle.error().message;
}

TEST_F(KubernetesBackendTest, UnreachableApiServerIsSaidSo) {
  backends::kubernetes::KubernetesBackendSettings settings = cluster.settings();
  testing::TempDir dir;
  const std::string path = (dir.path() / "config").string();
  std::FILE* f = std::fopen(path.c_str(), "w");
  const std::string text =
      "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n"
      "    server: http://127.0.0.1:1\nusers:\n- name: u\n  user:\n    token: t\n"
      "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n";
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  settings.environment.kubeconfig = path;
  backend = std::make_unique<KubernetesBackend>(io, executor, settings);
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-00000000000c", sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::Transient);
  EXPECT_NE(handle.error().message.find("unreachable"), std::string::npos)
      << handle.error().message;
}

TEST_F(KubernetesBackendTest, RecoveryAfterRestartFindsTheJobAndFollowsIt) {
  cluster.kube.setScript([](const Json&) {
    PodScript s;
    s.kind = PodScript::Kind::Hold;
    return s;
  });
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(Json::object(), "0a000000-0000-0000-0000-00000000000d", sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string name = jobName(*handle);
  // The worker stops; a new one (another name, as a default worker name is random) recovers.
  backend->shutdown();
  const Json journalled = {{"pid", handle->infrastructure_pid}, {"data", handle->data}};
  backend =
      std::make_unique<KubernetesBackend>(io, executor, cluster.settings("another-worker-name"));
  RunHandle restored;
  restored.backend = "kubernetes";
  restored.infrastructure_pid = journalled["pid"];
  restored.data = Json::parse(journalled["data"].dump());
  auto recovery = await<Recovery>(
      io, [&](Callback<Recovery> done) { backend->recover(restored, sink, std::move(done)); });
  ASSERT_TRUE(recovery.ok()) << recovery.error().message;
  EXPECT_TRUE(recovery->running);
  std::optional<Result<Outcome>> outcome;
  backend->wait(restored, sink, [&](Result<Outcome> r) { outcome.emplace(std::move(r)); });
  ASSERT_TRUE(runUntil(io, [&] {
    auto pods = cluster.kube.podsOf("default", name);
    return !pods.empty() && pods[0]["status"]["phase"] == "Running";
  }));
  ASSERT_TRUE(cluster.kube.finishPod("default", name, 4));
  ASSERT_TRUE(runUntil(io, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  EXPECT_EQ((*outcome)->exit_code.value_or(-1), 4);

  // A Job that is gone is NotFound.
  RunHandle gone = restored;
  gone.infrastructure_pid = "default:no-such-job";
  auto missing = await<Recovery>(
      io, [&](Callback<Recovery> done) { backend->recover(gone, sink, std::move(done)); });
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind, ErrorKind::NotFound);
}

}  // namespace
}  // namespace poolworker::kube_testing
