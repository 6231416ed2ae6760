#include "backends/docker/create_kwargs.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

Result<TranslatedKwargs> translate(const char* json, const char* api = "1.41") {
  return translateCreateKwargs(Json::parse(json), api);
}

TEST(CreateKwargs, TranslatesTheCommonKeys) {
  auto out = translate(R"({
    "user": 1000, "entrypoint": ["/entry", "x"], "working_dir": "/w", "shm_size": "64m",
    "cpu_count": 2, "nano_cpus": 500000000, "cpu_shares": 0, "cap_add": [],
    "device_requests": [{"Driver": "nvidia", "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}],
    "ports": {"80": [["127.0.0.1", 8080]], "81": ["0.0.0.0", 8081]},
    "platform": "linux/arm64", "stdin_open": true, "detach": false
  })");
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_EQ(out->config["User"], "1000");
  EXPECT_EQ(out->config["Entrypoint"], Json::array({"/entry", "x"}));
  EXPECT_EQ(out->config["WorkingDir"], "/w");
  EXPECT_EQ(out->host_config["ShmSize"], 67108864);
  EXPECT_EQ(out->host_config["CpuCount"], 2);
  EXPECT_EQ(out->host_config["NanoCpus"], 500000000);
  // Falsy values are dropped where docker-py drops them.
  EXPECT_FALSE(out->host_config.contains("CpuShares"));
  EXPECT_FALSE(out->host_config.contains("CapAdd"));
  EXPECT_EQ(out->host_config["DeviceRequests"][0],
            Json::parse(R"({"Driver":"nvidia","Count":0,"DeviceIDs":["0"],
                           "Capabilities":[["gpu"]],"Options":{}})"));
  // A [ip, port] pair is one binding to that address, as the user means it.
  EXPECT_EQ(out->host_config["PortBindings"]["80/tcp"],
            Json::parse(R"([{"HostIp":"127.0.0.1","HostPort":"8080"}])"));
  EXPECT_EQ(out->host_config["PortBindings"]["81/tcp"],
            Json::parse(R"([{"HostIp":"0.0.0.0","HostPort":"8081"}])"));
  EXPECT_EQ(out->config["ExposedPorts"], Json::parse(R"({"80/tcp":{},"81/tcp":{}})"));
  EXPECT_EQ(out->platform, "linux/arm64");
  EXPECT_TRUE(out->stdin_open);
  EXPECT_FALSE(out->detach);
}

TEST(CreateKwargs, DropsJobVariableNamesAndWarnsAboutVolumes) {
  auto out = translate(R"({"image": "x", "command": "y", "env": {}, "labels": {"a": "b"},
                           "volumes": ["/a:/b"], "privileged": true, "mem_limit": "1g"})");
  ASSERT_TRUE(out.ok()) << out.error().message;
  EXPECT_TRUE(out->config.empty());
  EXPECT_TRUE(out->host_config.empty());
  ASSERT_EQ(out->warnings.size(), 1u);
  EXPECT_NE(out->warnings[0].find("set the job variable 'volumes'"), std::string::npos);
}

TEST(CreateKwargs, RefusesWhatDockerPyRefuses) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"environment": {"A": "1"}})", "'environment' is set by the worker itself"},
      {R"({"network": "n"})", "'network' is set by the worker itself"},
      {R"({"version": "1.41"})", "'version' is set by the worker itself"},
      {R"({"no_such_option": 1})", "'no_such_option' is not a docker-py keyword argument"},
      {R"({"stdout": true})", "'stdout' is not a docker-py keyword argument"},
      {R"({"cpu_shares": "512"})", "'cpu_shares' must be an integer"},
      {R"({"shm_size": "lots"})", "'shm_size'"},
      {R"({"restart_policy": "always"})", "'restart_policy' must be an object"},
      {R"({"userns_mode": "private"})", "'userns_mode' can only be 'host'"},
      {R"({"ulimits": [{"soft": 1}]})", "'ulimits' has a limit without a name"},
      {R"({"devices": [3]})", "'devices' must hold strings"},
      {R"({"ports": {"80": {"HostIp": "1.2.3.4"}}})", "has no HostPort"},
      {R"({"init_path": "/x"})", "'init_path' is not supported from Engine API 1.29 on"},
      {R"({"entrypoint": "sh -c 'x"})", "'entrypoint' cannot be split"},
      {R"({"tty": "yes"})", "'tty' must be true or false"},
  };
  for (const auto& [json, fragment] : cases) {
    auto out = translate(json);
    ASSERT_FALSE(out.ok()) << json;
    EXPECT_EQ(out.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_NE(out.error().message.find(fragment), std::string::npos)
        << json << ": " << out.error().message;
    EXPECT_EQ(out.error().message.rfind("job variable 'container_create_kwargs': ", 0), 0u);
  }
}

TEST(CreateKwargs, ChecksTheApiVersion) {
  auto old = translate(R"({"device_requests": [{"count": 1}]})", "1.39");
  ASSERT_FALSE(old.ok());
  EXPECT_NE(old.error().message.find("needs Engine API 1.40 or newer; the engine speaks 1.39"),
            std::string::npos);
  EXPECT_FALSE(translate(R"({"platform": "linux/amd64"})", "1.40").ok());
  EXPECT_TRUE(translate(R"({"mounts": []})", "1.30").ok());
}

TEST(CreateKwargs, ListsWhatItKnows) {
  const auto keys = supportedCreateKwargs();
  for (const char* key : {"ports", "device_requests", "shm_size", "user", "entrypoint",
                          "working_dir", "cpu_count", "cpu_shares", "nano_cpus", "mounts"}) {
    EXPECT_NE(std::find(keys.begin(), keys.end(), key), keys.end()) << key;
  }
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  EXPECT_TRUE(translateCreateKwargs(Json(), "1.41").ok());
  EXPECT_FALSE(translateCreateKwargs(Json::array(), "1.41").ok());
}

}  // namespace
}  // namespace poolworker::backends::docker
