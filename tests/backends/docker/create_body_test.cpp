#include "backends/docker/create_body.h"

#include <gtest/gtest.h>

#include "tests/test_support.h"

namespace poolworker::backends::docker {
namespace {

Json fixtures() {
  return Json::parse(poolworker::testing::readFile(
      poolworker::testing::sourcePath("tests/backends/docker/fixtures/create_bodies.json")));
}

// Every case of fixtures/create_bodies.json was run through prefect-docker and docker-py by
// fixtures/generate_create_bodies.py: the body must be the one docker-py sends, key order
// included.
TEST(CreateBody, MatchesPrefectsDockerWorkerForEveryFixture) {
  const Json cases = fixtures();
  ASSERT_TRUE(cases.is_array());
  ASSERT_GE(cases.size(), 20u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    auto job = parseJobConfiguration(c["configuration"], "/");
    ASSERT_TRUE(job.ok()) << job.error().message;
    RunContext run;
    run.api_url = c["api_url"];
    EngineFacts facts;
    facts.api_version = c["api_version"];
    facts.engine_version = c["engine_version"];
    auto plan = planContainer(*job, run, facts);
    ASSERT_TRUE(plan.ok()) << plan.error().message;
    const Json& expected = c["expected"];
    EXPECT_EQ(plan->body.dump(1), expected["body"].dump(1));
    EXPECT_EQ(plan->name ? Json(*plan->name) : Json(), expected["name"]);
    EXPECT_EQ(pullPolicyName(plan->pull_policy), expected["pull_policy"].get<std::string>());
    EXPECT_EQ(Json(plan->extra_networks), expected["extra_networks"]);
  }
}

DockerJob jobWith(const Json& configuration) {
  Json base = Json::parse(R"({
    "env": {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT__FLOW_RUN_ID": "id-1"},
    "labels": {"prefect.io/flow-run-id": "id-1"},
    "name": "crimson-fox",
    "image": "img:1"
  })");
  for (const auto& [key, value] : configuration.items()) {
    base[key] = value;
  }
  auto job = parseJobConfiguration(base, "/");
  EXPECT_TRUE(job.ok()) << job.error().message;
  return job.ok() ? *job : DockerJob{};
}

RunContext localRun() {
  RunContext run;
  run.api_url = "http://127.0.0.1:4200/api";
  return run;
}

TEST(CreateBody, UsesTheDefaultCommandSplitLikeShlex) {
  auto plan = planContainer(jobWith(Json::object()), localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->body["Cmd"], Json::array({"prefect", "flow-run", "execute"}));

  plan = planContainer(jobWith(Json{{"command", "sh -c 'echo \"$HOME\"; exit 3'"}}), localRun(),
                       EngineFacts{});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->body["Cmd"], Json::array({"sh", "-c", "echo \"$HOME\"; exit 3"}));

  auto bad =
      planContainer(jobWith(Json{{"command", "sh -c 'unclosed"}}), localRun(), EngineFacts{});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_NE(bad.error().message.find("job variable 'command'"), std::string::npos);
}

TEST(CreateBody, RewritesOnlyTheWorkersOwnApiUrl) {
  // A network, so no host mode: the worker's URL is rewritten...
  auto plan = planContainer(jobWith(Json{{"networks", {"n"}}}), localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->body["Env"][0], "PREFECT_API_URL=http://host.docker.internal:4200/api");
  EXPECT_EQ(plan->body["HostConfig"]["NetworkMode"], "n");
  EXPECT_EQ(plan->body["HostConfig"]["ExtraHosts"],
            Json::array({"host.docker.internal:host-gateway"}));
  EXPECT_EQ(plan->body["NetworkingConfig"], Json::parse(R"({"EndpointsConfig":{"n":{}}})"));

  // ...one the user set is not.
  auto user = jobWith(Json{{"networks", {"n"}}});
  user.env["PREFECT_API_URL"] = "http://localhost:9999/api";
  plan = planContainer(user, localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->body["Env"][0], "PREFECT_API_URL=http://localhost:9999/api");
}

TEST(CreateBody, TakesTheNetworkingConfigOfTheFirstNetworkFromTheKwargs) {
  auto plan =
      planContainer(jobWith(Json::parse(R"({"networks": ["n1", "n2"], "container_create_kwargs":
          {"networking_config": {"n1": {"Aliases": ["app"]}}}})")),
                    localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  EXPECT_EQ(plan->body["NetworkingConfig"],
            Json::parse(R"({"EndpointsConfig":{"n1":{"Aliases":["app"]}}})"));
  EXPECT_EQ(plan->extra_networks, std::vector<std::string>{"n2"});
}

TEST(CreateBody, HostGatewayNeedsEngine2010) {
  EngineFacts old;
  old.engine_version = "19.03.12";
  auto plan = planContainer(jobWith(Json::object()), localRun(), old);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->body["HostConfig"]["ExtraHosts"], Json::array());
  ASSERT_EQ(plan->warnings.size(), 1u);
  EXPECT_NE(plan->warnings[0].find("v19.03.12"), std::string::npos);
}

TEST(CreateBody, KeepsLabelsAndStampsTheVersion) {
  auto job = jobWith(Json::object());
  job.labels["io.prefect.version"] = "user-set";
  job.labels["app/tier"] = "db";
  auto plan = planContainer(job, localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->body["Labels"]["io.prefect.flow-run-id"], "id-1");
  EXPECT_EQ(plan->body["Labels"]["io.prefect.version"], "3.8.8");
  EXPECT_EQ(plan->body["Labels"]["app.tier"], "db");
}

TEST(CreateBody, RefusesPortsWithHostNetworking) {
  auto plan =
      planContainer(jobWith(Json::parse(R"({"container_create_kwargs": {"ports": {"80": 8080}}})")),
                    localRun(), EngineFacts{});
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message.find("'ports' cannot be used with the network mode 'host'"),
            std::string::npos);
}

TEST(CreateBody, CarriesTtyAndPlatformAndWarnings) {
  auto plan = planContainer(jobWith(Json::parse(R"({"stream_output": false, "auto_remove": true,
          "container_create_kwargs": {"tty": true, "platform": "linux/amd64",
                                      "volumes": ["/x:/x"]}})")),
                            localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  EXPECT_TRUE(plan->tty);
  EXPECT_EQ(plan->platform, "linux/amd64");
  EXPECT_FALSE(plan->stream_output);
  EXPECT_TRUE(plan->auto_remove);
  EXPECT_EQ(plan->body["HostConfig"]["AutoRemove"], true);
  ASSERT_EQ(plan->warnings.size(), 1u);
  EXPECT_NE(plan->warnings[0].find("'volumes' in container_create_kwargs is ignored"),
            std::string::npos);
  EXPECT_FALSE(plan->body["HostConfig"].contains("Binds"));
}

TEST(CreateBody, PreviewShowsWhatStartSends) {
  auto plan = planContainer(jobWith(Json{{"networks", {"a", "b"}}}), localRun(), EngineFacts{});
  ASSERT_TRUE(plan.ok());
  const Json preview = previewOf(*plan);
  EXPECT_EQ(preview["image"], "img:1");
  EXPECT_EQ(preview["name"], "crimson-fox");
  EXPECT_EQ(preview["pull_policy"], "IfNotPresent");
  EXPECT_EQ(preview["create"], plan->body);
  EXPECT_EQ(preview["networks"], Json::array({"b"}));
  std::vector<std::string> keys;
  for (const auto& [key, value] : preview.items()) {
    keys.push_back(key);
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"image", "name", "pull_policy", "create", "networks"}));
}

}  // namespace
}  // namespace poolworker::backends::docker
