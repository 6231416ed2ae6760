// The Job manifest prepared from a run's job configuration, checked against what
// prefect-kubernetes' KubernetesWorkerJobConfiguration does (the e2e compatibility test
// compares whole manifests with the package itself).

#include "backends/kubernetes/manifest.h"

#include <gtest/gtest.h>

#include "tests/backends/kubernetes/kube_test_support.h"

namespace poolworker::backends::kubernetes {
namespace {

using kube_testing::makeRequest;

TEST(SlugifyTest, LabelsAndNamesFollowPrefectsRules) {
  EXPECT_EQ(slugifyLabelValue("my flow!"), "my-flow");
  EXPECT_EQ(slugifyLabelValue("__x__"), "x");
  EXPECT_EQ(slugifyLabelValue("???"), "???");
  EXPECT_EQ(slugifyLabelValue(std::string(70, 'a')), std::string(63, 'a'));
  EXPECT_EQ(slugifyLabelKey("prefect.io/flow run"), "prefect.io/flow-run");
  EXPECT_EQ(slugifyLabelKey("a b/c_d"), "a-b/c_d");
  EXPECT_EQ(slugifyName("Crimson Otter_1"), "crimson-otter-1");
  EXPECT_EQ(slugifyName(std::string(50, 'x')), std::string(45, 'x'));
  EXPECT_EQ(slugifyName("!!!"), "");
}

TEST(ManifestTest, DefaultTemplateBecomesPrefectsJob) {
  const StartRequest request = makeRequest(Json::object(), "0c000000-0000-0000-0000-000000000001");
  auto manifest = prepareJobManifest(request.configuration, request.run);
  ASSERT_TRUE(manifest.ok()) << manifest.error().message;
  const Json& m = *manifest;
  EXPECT_EQ(m["metadata"]["generateName"], "crimson-otter-");
  EXPECT_EQ(m["metadata"]["namespace"], "default");
  EXPECT_EQ(m["spec"]["backoffLimit"], 0);
  EXPECT_FALSE(m["spec"].contains("ttlSecondsAfterFinished"));
  const Json& container = m["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(container["name"], "prefect-job");
  EXPECT_EQ(container["image"], kDefaultImage);
  EXPECT_EQ(container["args"], Json::array({"prefect", "flow-run", "execute"}));
  bool reschedule = false;
  for (const auto& entry : container["env"]) {
    if (entry["name"] == "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR") {
      reschedule = entry["value"] == "reschedule";
    }
  }
  EXPECT_TRUE(reschedule) << container["env"].dump();
  const Json& labels = m["metadata"]["labels"];
  EXPECT_EQ(labels["app.kubernetes.io/managed-by"], "prefect");
  EXPECT_EQ(labels["app.kubernetes.io/name"], "my-flow");
  EXPECT_EQ(labels["prefect.io/flow-run-id"], "0c000000-0000-0000-0000-000000000001");
  EXPECT_EQ(m["spec"]["template"]["metadata"]["labels"], labels);
  EXPECT_FALSE(m["spec"]["template"]["metadata"].contains("annotations"));
}

TEST(ManifestTest, VariablesReachTheJob) {
  const Json vars = {{"image", "repo/img:1"},
                     {"namespace", "flows"},
                     {"service_account_name", "runner"},
                     {"finished_job_ttl", 60},
                     {"backoff_limit", 2},
                     {"command", "python -m 'my flow'"},
                     {"labels", {{"team", "data eng"}}},
                     {"annotations", {{"note key", "v"}}},
                     {"env", {{"A", "1"}}},
                     {"name", "My Job"}};
  const StartRequest request = makeRequest(vars, "0c000000-0000-0000-0000-000000000002");
  auto manifest = prepareJobManifest(request.configuration, request.run);
  ASSERT_TRUE(manifest.ok()) << manifest.error().message;
  const Json& m = *manifest;
  EXPECT_EQ(m["metadata"]["namespace"], "flows");
  EXPECT_EQ(m["metadata"]["generateName"], "My Job-") << "a rendered name is not slugified";
  EXPECT_EQ(m["spec"]["ttlSecondsAfterFinished"], 60);
  EXPECT_EQ(m["spec"]["backoffLimit"], 2);
  const Json& pod = m["spec"]["template"];
  EXPECT_EQ(pod["spec"]["serviceAccountName"], "runner");
  EXPECT_EQ(pod["spec"]["containers"][0]["args"], Json::array({"python", "-m", "my flow"}));
  EXPECT_EQ(m["metadata"]["labels"]["team"], "data-eng");
  EXPECT_EQ(m["metadata"]["annotations"]["note-key"], "v");
  EXPECT_EQ(pod["metadata"]["annotations"]["note-key"], "v");
  bool relinquish = false;
  bool a = false;
  for (const auto& entry : pod["spec"]["containers"][0]["env"]) {
    relinquish |= entry["name"] == "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR" &&
                  entry["value"] == "relinquish";
    a |= entry["name"] == "A" && entry["value"] == "1";
  }
  EXPECT_TRUE(relinquish);
  EXPECT_TRUE(a);
}

TEST(ManifestTest, CustomManifestHardCodedEnvGoesAfterGeneratedOnes) {
  StartRequest request =
      makeRequest({{"env", {{"A", "generated"}}}}, "0c000000-0000-0000-0000-000000000003");
  Json& container =
      request.configuration["job_manifest"]["spec"]["template"]["spec"]["containers"][0];
  container["env"] = Json::array(
      {{{"name", "A"}, {"value", "template"}},
       {{"name", "SECRET"}, {"valueFrom", {{"secretKeyRef", {{"name", "s"}, {"key", "k"}}}}}}});
  auto manifest = prepareJobManifest(request.configuration, request.run);
  ASSERT_TRUE(manifest.ok()) << manifest.error().message;
  const Json& env = (*manifest)["spec"]["template"]["spec"]["containers"][0]["env"];
  ASSERT_GE(env.size(), 2U);
  EXPECT_EQ(env[env.size() - 1]["name"], "SECRET");
  int count_a = 0;
  for (const auto& entry : env) {
    if (entry["name"] == "A") {
      ++count_a;
      EXPECT_EQ(entry["value"], "generated");
    }
  }
  EXPECT_EQ(count_a, 1);
}

TEST(ManifestTest, ValidationMessagesAreNamedAsPrefectNamesThem) {
  StartRequest request = makeRequest(Json::object(), "0c000000-0000-0000-0000-000000000004");
  Json config = request.configuration;
  config["job_manifest"]["kind"] = "CronJob";
  config["job_manifest"]["spec"]["template"]["spec"]["restartPolicy"] = "Always";
  auto incompatible = prepareJobManifest(config, request.run);
  ASSERT_FALSE(incompatible.ok());
  EXPECT_EQ(incompatible.error().message,
            "Job has incompatible values for the following attributes: /kind must have value "
            "'Job', /spec/template/spec/restartPolicy must have value 'Never'");

  config = request.configuration;
  config["job_manifest"]["spec"]["template"]["spec"].erase("containers");
  config["job_manifest"].erase("apiVersion");
  auto missing = prepareJobManifest(config, request.run);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message,
            "Job is missing required attributes at the following paths: /apiVersion, "
            "/spec/template/spec/containers");
  EXPECT_EQ(missing.error().kind, ErrorKind::InvalidConfiguration);
}

}  // namespace
}  // namespace poolworker::backends::kubernetes
