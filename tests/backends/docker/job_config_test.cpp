#include "backends/docker/job_config.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

TEST(JobConfig, AppliesPrefectsDefaults) {
  auto job = parseJobConfiguration(Json::object(), "/");
  ASSERT_TRUE(job.ok()) << job.error().message;
  EXPECT_FALSE(job->command.has_value());
  EXPECT_EQ(job->image, kDefaultImage);
  EXPECT_TRUE(job->stream_output);
  EXPECT_FALSE(job->auto_remove);
  EXPECT_FALSE(job->privileged);
  EXPECT_TRUE(job->networks.empty());
  EXPECT_FALSE(job->image_pull_policy.has_value());
  EXPECT_EQ(job->container_create_kwargs, Json::object());
}

TEST(JobConfig, ReadsEveryVariable) {
  const Json configuration = Json::parse(R"({
    "command": "python -m app",
    "env": {"A": "1", "B": null},
    "labels": {"prefect.io/flow-run-id": "x"},
    "name": "run-1",
    "image": "img:1",
    "registry_credentials": {"username": "u", "password": "p", "registry_url": "r"},
    "image_pull_policy": "Never",
    "networks": ["a", "b"],
    "network_mode": "bridge",
    "auto_remove": true,
    "volumes": ["./data:/data", "/x:/y:ro"],
    "stream_output": "false",
    "mem_limit": "1g",
    "memswap_limit": -1,
    "privileged": 1,
    "container_create_kwargs": {"user": "1000"},
    "unknown_key": "ignored"
  })");
  auto job = parseJobConfiguration(configuration, "/srv");
  ASSERT_TRUE(job.ok()) << job.error().message;
  EXPECT_EQ(job->command, "python -m app");
  EXPECT_EQ(job->env["B"], nullptr);
  EXPECT_EQ(job->name, "run-1");
  EXPECT_EQ(job->image, "img:1");
  ASSERT_TRUE(job->registry_credentials.has_value());
  EXPECT_EQ(job->image_pull_policy, PullPolicy::Never);
  EXPECT_EQ(job->networks, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(job->network_mode, "bridge");
  EXPECT_TRUE(job->auto_remove);
  EXPECT_EQ(job->volumes, (std::vector<std::string>{"/srv/data:/data", "/x:/y:ro"}));
  EXPECT_FALSE(job->stream_output);
  EXPECT_EQ(job->mem_limit, Json("1g"));
  EXPECT_EQ(job->memswap_limit, Json(-1));
  EXPECT_TRUE(job->privileged);
  EXPECT_EQ(job->container_create_kwargs["user"], "1000");
}

TEST(JobConfig, NamesTheVariableThatIsWrong) {
  const std::pair<Json, std::string> cases[] = {
      {Json{{"networks", "net"}}, "job variable 'networks' must be a list of strings"},
      {Json{{"networks", Json::array({1})}}, "job variable 'networks' must be a list"},
      {Json{{"env", Json{{"A", 1}}}}, "job variable 'env' must hold strings; 'A' is 1"},
      {Json{{"labels", Json{{"A", nullptr}}}}, "job variable 'labels' must hold strings"},
      {Json{{"auto_remove", "perhaps"}}, "job variable 'auto_remove' must be true or false"},
      {Json{{"volumes", Json::array({"bad volume"})}}, "job variable 'volumes': 'bad volume'"},
      {Json{{"mem_limit", "12x"}}, "job variable 'mem_limit'"},
      {Json{{"image_pull_policy", "Sometimes"}}, "job variable 'image_pull_policy'"},
      {Json{{"container_create_kwargs", "x"}}, "job variable 'container_create_kwargs'"},
      {Json{{"command", 3}}, "job variable 'command' must be a string or null"},
      {Json::array(), "the job configuration must be an object"},
  };
  for (const auto& [configuration, fragment] : cases) {
    auto job = parseJobConfiguration(configuration, "/");
    ASSERT_FALSE(job.ok()) << configuration.dump();
    EXPECT_EQ(job.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_NE(job.error().message.find(fragment), std::string::npos)
        << configuration.dump() << ": " << job.error().message;
  }
}

TEST(JobConfig, TreatsNullAndEmptyLikePrefect) {
  auto job = parseJobConfiguration(
      Json{{"command", ""}, {"image", nullptr}, {"networks", nullptr}, {"stream_output", nullptr}},
      "/");
  ASSERT_TRUE(job.ok()) << job.error().message;
  EXPECT_FALSE(job->command.has_value());
  EXPECT_EQ(job->image, kDefaultImage);
  EXPECT_TRUE(job->stream_output);
}

}  // namespace
}  // namespace poolworker::backends::docker
