#include "worker/settings.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/test_support.h"

namespace poolworker {
namespace {

using testing::TempDir;

StartFlags poolFlags() {
  StartFlags flags;
  flags.pool = "my-pool";
  return flags;
}

void writeFile(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

TEST(Settings, DefaultsMatchPrefect) {
  auto s = resolveSettings(poolFlags(), {{"HOME", "/nonexistent"}});
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->pool, "my-pool");
  EXPECT_DOUBLE_EQ(s->query_seconds, 10);
  EXPECT_DOUBLE_EQ(s->heartbeat_seconds, 30);
  EXPECT_DOUBLE_EQ(s->prefetch_seconds, 10);
  EXPECT_EQ(s->webserver_host, "0.0.0.0");
  EXPECT_EQ(s->webserver_port, 8080);
  EXPECT_EQ(s->api.max_retries, 5);
  EXPECT_DOUBLE_EQ(s->api.request_timeout_seconds, 60);
  EXPECT_FALSE(s->limit.has_value());
  EXPECT_TRUE(s->create_pool_if_not_found);
}

TEST(Settings, PoolIsRequired) {
  auto s = resolveSettings(StartFlags{}, {});
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("--pool"), std::string::npos);
}

TEST(Settings, FlagsBeatEnvironmentBeatFileBeatProfileBeatDefaults) {
  TempDir dir;
  writeFile(dir.path() / "profiles.toml",
            "active = \"local\"\n[profiles.local]\nPREFECT_API_URL = \"http://profile/api\"\n"
            "PREFECT_WORKER_QUERY_SECONDS = \"4\"\nPREFECT_WORKER_HEARTBEAT_SECONDS = \"44\"\n"
            "PREFECT_API_REQUEST_TIMEOUT = \"12\"\n");
  writeFile(dir.path() / "config.yaml",
            "prefetch_seconds: 3\n"
            "worker:\n  query_seconds: 3\n  heartbeat_seconds: 33\n"
            "api:\n  url: http://file/api\n");
  StartFlags flags = poolFlags();
  flags.prefetch_seconds = "1";
  flags.config_file = (dir.path() / "config.yaml").string();
  Environment env = {{"PREFECT_HOME", dir.path().string()},
                     {"PREFECT_WORKER_QUERY_SECONDS", "2"},
                     {"PREFECT_WORKER_PREFETCH_SECONDS", "2"}};
  auto s = resolveSettings(flags, env);
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_DOUBLE_EQ(s->prefetch_seconds, 1);          // flag
  EXPECT_DOUBLE_EQ(s->query_seconds, 2);             // environment
  EXPECT_DOUBLE_EQ(s->heartbeat_seconds, 33);        // file
  EXPECT_EQ(s->api.url, "http://file/api");          // file beats profile
  EXPECT_DOUBLE_EQ(s->api.request_timeout_seconds, 12);  // profile
  EXPECT_EQ(s->webserver_port, 8080);                // default
  EXPECT_EQ(s->sources.at("prefetch_seconds"), "flag");
  EXPECT_EQ(s->sources.at("worker.query_seconds"), "environment");
  EXPECT_EQ(s->sources.at("worker.heartbeat_seconds"), "config file");
  EXPECT_EQ(s->sources.at("api.request_timeout"), "profile");
  // What runs are given: the resolved Prefect settings.
  EXPECT_EQ(s->prefect_settings.at("PREFECT_API_URL"), "http://file/api");
  EXPECT_EQ(s->prefect_settings.at("PREFECT_WORKER_QUERY_SECONDS"), "2");
}

TEST(Settings, UnknownConfigKeyNamesFileLineAndKey) {
  TempDir dir;
  writeFile(dir.path() / "c.yaml", "pool: p\nworker:\n  qurey_seconds: 3\n");
  StartFlags flags;
  flags.config_file = (dir.path() / "c.yaml").string();
  auto s = resolveSettings(flags, {});
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("c.yaml:3"), std::string::npos) << s.error().message;
  EXPECT_NE(s.error().message.find("worker.qurey_seconds"), std::string::npos);
}

TEST(Settings, YamlSyntaxErrorNamesLine) {
  TempDir dir;
  writeFile(dir.path() / "c.yaml", "pool: p\nworker: [\n");
  StartFlags flags;
  flags.config_file = (dir.path() / "c.yaml").string();
  auto s = resolveSettings(flags, {});
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("c.yaml:"), std::string::npos) << s.error().message;
}

TEST(Settings, BadValueNamesItsSource) {
  auto s = resolveSettings(poolFlags(), {{"PREFECT_WORKER_QUERY_SECONDS", "often"}});
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("PREFECT_WORKER_QUERY_SECONDS"), std::string::npos);
  EXPECT_NE(s.error().message.find("often"), std::string::npos);
  StartFlags flags = poolFlags();
  flags.limit = "ten";
  auto l = resolveSettings(flags, {});
  ASSERT_FALSE(l);
  EXPECT_NE(l.error().message.find("--limit"), std::string::npos);
}

TEST(Settings, BooleansAcceptPrefectSpellings) {
  for (const char* v : {"true", "True", "1", "yes", "on"}) {
    auto s = resolveSettings(poolFlags(), {{"PREFECT_API_TLS_INSECURE_SKIP_VERIFY", v}});
    ASSERT_TRUE(s);
    EXPECT_TRUE(s->api.tls_insecure_skip_verify) << v;
  }
  auto s = resolveSettings(poolFlags(), {{"PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "false"}});
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->api.tls_insecure_skip_verify);
}

TEST(Settings, ApiKeyFromFileIsSecretAndPassedToRuns) {
  TempDir dir;
  writeFile(dir.path() / "key", "pnu_secret\n");
  auto s = resolveSettings(poolFlags(), {{"POOLWORKER_API_KEY_FILE", (dir.path() / "key").string()}});
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->api.key.reveal(), "pnu_secret");
  EXPECT_EQ(s->api.key.masked(), "********");
  EXPECT_EQ(s->prefect_settings.at("PREFECT_API_KEY"), "pnu_secret");
}

TEST(Settings, MissingKeyFileIsAnError) {
  auto s = resolveSettings(poolFlags(), {{"POOLWORKER_API_KEY_FILE", "/nonexistent/key"}});
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("/nonexistent/key"), std::string::npos);
}

TEST(Settings, WorkQueuesFromFlagsAndEnvironment) {
  StartFlags flags = poolFlags();
  flags.work_queues = {"a", "b"};
  auto s = resolveSettings(flags, {{"POOLWORKER_WORK_QUEUES", "x,y"}});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->work_queues, (std::vector<std::string>{"a", "b"}));
  auto e = resolveSettings(poolFlags(), {{"POOLWORKER_WORK_QUEUES", "x, y"}});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->work_queues, (std::vector<std::string>{"x", "y"}));
}

TEST(Settings, WorkerNameMustNotContainSlashOrPercent) {
  StartFlags flags = poolFlags();
  flags.name = "a/b";
  EXPECT_FALSE(resolveSettings(flags, {}));
  flags.name = "a%b";
  EXPECT_FALSE(resolveSettings(flags, {}));
  flags.name = "a b";
  EXPECT_TRUE(resolveSettings(flags, {}));
}

TEST(Settings, BackendOptionsFromFileAndEnvironment) {
  TempDir dir;
  writeFile(dir.path() / "c.yaml", "pool: p\nbackends:\n  process:\n    python: /usr/bin/python3\n");
  StartFlags flags;
  flags.config_file = (dir.path() / "c.yaml").string();
  auto s = resolveSettings(flags, {{"POOLWORKER_BACKEND_PROCESS_SHIM_PATH", "/x/shim"}});
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->backend_options["process"]["python"], "/usr/bin/python3");
  EXPECT_EQ(s->backend_options["process"]["shim_path"], "/x/shim");
}

TEST(Settings, PrefectSettingsFromEnvironmentPassThrough) {
  auto s = resolveSettings(poolFlags(), {{"PREFECT_LOGGING_LEVEL", "DEBUG"},
                                         {"PREFECT__FLOW_RUN_ID", "not-a-setting"}});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->prefect_settings.at("PREFECT_LOGGING_LEVEL"), "DEBUG");
  EXPECT_FALSE(s->prefect_settings.contains("PREFECT__FLOW_RUN_ID"));
}

TEST(Settings, TrailingSlashOfApiUrlIsDropped) {
  auto s = resolveSettings(poolFlags(), {{"PREFECT_API_URL", "http://127.0.0.1:4200/api/"}});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->api.url, "http://127.0.0.1:4200/api");
}

TEST(Settings, CloudIsDetectedByUrlPrefix) {
  auto s = resolveSettings(
      poolFlags(), {{"PREFECT_API_URL", "https://api.prefect.cloud/api/accounts/a/workspaces/w"}});
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->api.isCloud());
  auto local = resolveSettings(poolFlags(), {{"PREFECT_API_URL", "http://127.0.0.1:4200/api"}});
  ASSERT_TRUE(local);
  EXPECT_FALSE(local->api.isCloud());
}

TEST(Settings, StateDirectoryDefaults) {
  EXPECT_EQ(defaultStateDirectory({{"STATE_DIRECTORY", "/var/lib/poolworker:/other"}}),
            "/var/lib/poolworker");
}

}  // namespace
}  // namespace poolworker
