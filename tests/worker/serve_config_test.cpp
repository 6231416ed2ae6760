#include "worker/serve_config.h"

#include <fstream>

#include <gtest/gtest.h>

#include "tests/test_support.h"

namespace poolworker::serve {
namespace {

using poolworker::testing::TempDir;

class ServeFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.path() / "flows");
    write("flows/hello.py",
          "from prefect import flow\n"
          "\n"
          "@flow(\n"
          "    name=\"say-hello\",\n"
          "    log_prints=True,\n"
          ")\n"
          "def hello(name: str = \"world\", count: int = 1, loud: bool = False):\n"
          "    print(name)\n"
          "\n"
          "@flow\n"
          "async def plain_flow(items: list[int], ratio: float | None = None, untyped=3):\n"
          "    pass\n"
          "\n"
          "def helper():\n"
          "    def nested():\n"
          "        pass\n");
    // A zone database of two zones, so the test does not depend on the machine's tzdata.
    std::filesystem::create_directories(dir_.path() / "zoneinfo/Europe");
    write("zoneinfo/UTC", "TZif2 fake zone data");
    write("zoneinfo/Europe/Paris", "TZif2 fake zone data");
    write("zoneinfo/NotAZone", "this is not a zone file");
    env_.zoneinfo_dir = (dir_.path() / "zoneinfo").string();
  }

  void write(const std::string& relative, const std::string& text) {
    std::ofstream out(dir_.path() / relative);
    out << text;
  }

  Result<ServeFile> parse(const std::string& yaml) {
    return parseServeFile(yaml, (dir_.path() / "serve.yaml").string(), env_);
  }

  // Parses a file expected to be refused and returns the message.
  std::string refused(const std::string& yaml) {
    auto file = parse(yaml);
    EXPECT_FALSE(file) << "accepted:\n" << yaml;
    return file ? std::string() : file.error().message;
  }

  TempDir dir_;
  CheckEnvironment env_;
};

TEST_F(ServeFileTest, ReadsEveryField) {
  auto file = parse(R"(
name: nightly
pause_on_shutdown: false
limit: 3
deployments:
  - name: hourly
    entrypoint: flows/hello.py:hello
    description: Says hello
    version: "1.2"
    tags: [a, b]
    parameters: {name: Ada, count: 2}
    concurrency_limit: {limit: 2, collision_strategy: CANCEL_NEW, grace_period_seconds: 120}
    schedules:
      - cron: "0 9 * * mon-fri"
        timezone: Europe/Paris
        day_or: false
      - interval: 90
        anchor_date: "2026-01-01T00:00:00Z"
        active: false
        parameters: {count: 5}
        slug: every-90
      - rrule: "FREQ=DAILY;BYHOUR=9"
    job:
      env: {GREETING: hi, DROP: null}
      python: /opt/my python/bin/python3
  - name: adhoc
    entrypoint: flows/hello.py:plain_flow
    working_dir: flows/..
    enforce_parameter_schema: false
)");
  ASSERT_TRUE(file) << file.error().message;
  EXPECT_EQ(file->name, "nightly");
  EXPECT_EQ(file->pause_on_shutdown, false);
  EXPECT_EQ(file->limit, 3);
  ASSERT_EQ(file->deployments.size(), 2u);
  const DeploymentSpec& d = file->deployments[0];
  EXPECT_EQ(d.name, "hourly");
  EXPECT_EQ(d.flow_name, "say-hello");
  EXPECT_EQ(d.working_dir, dir_.path().lexically_normal().string());
  EXPECT_EQ(d.version, "1.2");
  EXPECT_EQ(d.tags, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(d.parameters, Json({{"name", "Ada"}, {"count", 2}}));
  EXPECT_EQ(d.concurrency_limit, 2);
  EXPECT_EQ(d.concurrency_options,
            Json({{"collision_strategy", "CANCEL_NEW"}, {"grace_period_seconds", 120}}));
  ASSERT_EQ(d.schedules.size(), 3u);
  EXPECT_EQ(d.schedules[0].schedule,
            Json({{"cron", "0 9 * * mon-fri"}, {"timezone", "Europe/Paris"}, {"day_or", false}}));
  EXPECT_EQ(d.schedules[1].schedule,
            Json({{"interval", 90.0}, {"anchor_date", "2026-01-01T00:00:00Z"}}));
  EXPECT_FALSE(d.schedules[1].active);
  EXPECT_EQ(d.schedules[2].schedule,
            Json({{"rrule", "FREQ=DAILY;BYHOUR=9"}, {"timezone", nullptr}}));

  const DeploymentSpec& adhoc = file->deployments[1];
  EXPECT_EQ(adhoc.flow_name, "plain-flow");  // Prefect's default: underscores become dashes.
  EXPECT_FALSE(adhoc.enforce_parameter_schema);
  EXPECT_TRUE(adhoc.schedules.empty());
}

TEST_F(ServeFileTest, ScheduleObjectsAsPrefectSendsThem) {
  auto file = parse(R"(
deployments:
  - name: d
    entrypoint: flows/hello.py:hello
    schedules:
      - interval: 60
        timezone: UTC
      - cron: "*/5 * * * *"
        active: false
        slug: five
)");
  ASSERT_TRUE(file) << file.error().message;
  Json schedules = schedulesJson(file->deployments[0]);
  EXPECT_EQ(schedules, Json::parse(R"([
    {"schedule": {"interval": 60.0, "timezone": "UTC"}, "active": true,
     "max_scheduled_runs": null, "parameters": {}, "slug": null},
    {"schedule": {"cron": "*/5 * * * *", "timezone": null, "day_or": true}, "active": false,
     "max_scheduled_runs": null, "parameters": {}, "slug": "five"}
  ])"));
}

TEST_F(ServeFileTest, DeploymentBodyHasNoWorkPoolAndIsNotPaused) {
  auto file = parse(R"(
deployments:
  - name: d
    entrypoint: flows/hello.py:hello
    tags: [x]
    concurrency_limit: 4
)");
  ASSERT_TRUE(file) << file.error().message;
  Json body = deploymentBody(file->deployments[0], "flow-id");
  EXPECT_EQ(body["flow_id"], "flow-id");
  EXPECT_EQ(body["name"], "d");
  EXPECT_EQ(body["entrypoint"], "flows/hello.py:hello");
  EXPECT_EQ(body["path"], dir_.path().lexically_normal().string());
  EXPECT_EQ(body["paused"], false);
  EXPECT_EQ(body["concurrency_limit"], 4);
  EXPECT_EQ(body["enforce_parameter_schema"], true);
  EXPECT_EQ(body["version"], nullptr);
  EXPECT_EQ(body["description"], nullptr);
  EXPECT_EQ(body["job_variables"], Json::object());
  EXPECT_FALSE(body.contains("work_pool_name"));
  EXPECT_FALSE(body.contains("work_queue_name"));
  EXPECT_FALSE(body.contains("concurrency_options"));
}

TEST_F(ServeFileTest, ParameterSchemaFromTheSignature) {
  auto file = parse(R"(
deployments:
  - {name: a, entrypoint: flows/hello.py:hello}
  - {name: b, entrypoint: flows/hello.py:plain_flow}
)");
  ASSERT_TRUE(file) << file.error().message;
  // What prefect.utilities.callables.parameter_schema gives for the same functions.
  EXPECT_EQ(file->deployments[0].parameter_openapi_schema, Json::parse(R"({
    "title": "Parameters", "type": "object",
    "properties": {
      "name": {"default": "world", "position": 0, "title": "name", "type": "string"},
      "count": {"default": 1, "position": 1, "title": "count", "type": "integer"},
      "loud": {"default": false, "position": 2, "title": "loud", "type": "boolean"}}})"));
  EXPECT_EQ(file->deployments[1].parameter_openapi_schema, Json::parse(R"({
    "title": "Parameters", "type": "object",
    "properties": {
      "items": {"items": {"type": "integer"}, "position": 0, "title": "items", "type": "array"},
      "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": null,
                "position": 1, "title": "ratio"},
      "untyped": {"default": 3, "position": 2, "title": "untyped"}},
    "required": ["items"]})"));
}

TEST_F(ServeFileTest, JobVariablesForTheProcessBackend) {
  auto file = parse(R"(
deployments:
  - name: a
    entrypoint: flows/hello.py:hello
    job: {env: {A: "1"}, python: "/opt/it's/python"}
  - name: b
    entrypoint: flows/hello.py:hello
    job: {command: "my-runner --flag"}
)");
  ASSERT_TRUE(file) << file.error().message;
  Json a = jobVariables(file->deployments[0]);
  EXPECT_EQ(a["working_dir"], dir_.path().lexically_normal().string());
  EXPECT_EQ(a["env"], Json({{"A", "1"}}));
  EXPECT_EQ(a["command"], "'/opt/it'\"'\"'s/python' -m prefect.engine");
  EXPECT_EQ(jobVariables(file->deployments[1])["command"], "my-runner --flag");
}

TEST_F(ServeFileTest, YamlSyntaxErrorNamesFileAndLine) {
  std::string message = refused("deployments:\n  - name: a\n    tags: [unclosed\n");
  EXPECT_NE(message.find("serve.yaml:"), std::string::npos) << message;
}

TEST_F(ServeFileTest, UnknownKeyNamesFileLineAndKey) {
  std::string message = refused(R"(deployments:
  - name: a
    entrypoint: flows/hello.py:hello
    schedule:
      cron: "* * * * *"
      timezon: UTC
)");
  EXPECT_NE(message.find("serve.yaml:6: 'timezon': unknown key"), std::string::npos) << message;
}

TEST_F(ServeFileTest, MissingEntrypointFile) {
  std::string message = refused("deployments:\n  - name: a\n    entrypoint: flows/nope.py:hello\n");
  EXPECT_NE(message.find("serve.yaml:3: 'entrypoint'"), std::string::npos) << message;
  EXPECT_NE(message.find("nope.py' does not exist"), std::string::npos) << message;
}

TEST_F(ServeFileTest, FunctionNotDefinedAtTopLevel) {
  EXPECT_NE(refused("deployments:\n  - name: a\n    entrypoint: flows/hello.py:goodbye\n")
                .find("no top-level 'def goodbye('"),
            std::string::npos);
  // A nested function is not an entrypoint the engine can load.
  EXPECT_NE(refused("deployments:\n  - name: a\n    entrypoint: flows/hello.py:nested\n")
                .find("no top-level 'def nested('"),
            std::string::npos);
  EXPECT_NE(refused("deployments:\n  - name: a\n    entrypoint: flows/hello.py\n")
                .find("must be 'path/file.py:function'"),
            std::string::npos);
}

TEST_F(ServeFileTest, BadCronNamesTheField) {
  std::string message = refused(R"(deployments:
  - name: a
    entrypoint: flows/hello.py:hello
    schedules:
      - cron: "61 * * * *"
)");
  EXPECT_NE(message.find("serve.yaml:5: 'cron': invalid cron string '61 * * * *'"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("minute"), std::string::npos) << message;
}

TEST_F(ServeFileTest, UnknownTimezone) {
  std::string message = refused(R"(deployments:
  - name: a
    entrypoint: flows/hello.py:hello
    schedules:
      - cron: "0 * * * *"
        timezone: Mars/Olympus
)");
  EXPECT_NE(message.find("serve.yaml:6: 'timezone': unknown time zone 'Mars/Olympus'"),
            std::string::npos)
      << message;
}

TEST_F(ServeFileTest, BadIntervals) {
  for (const char* interval : {"0", "-5", "soon", "[1]"}) {
    std::string message = refused(std::string("deployments:\n  - name: a\n    entrypoint: "
                                              "flows/hello.py:hello\n    schedule:\n      "
                                              "interval: ") +
                                  interval + "\n");
    EXPECT_NE(message.find("serve.yaml:5: 'interval': must be a positive number of seconds"),
              std::string::npos)
        << interval << ": " << message;
  }
  EXPECT_NE(refused("deployments:\n  - name: a\n    entrypoint: flows/hello.py:hello\n"
                    "    schedule: {interval: 5, anchor_date: tomorrow}\n")
                .find("'anchor_date': 'tomorrow' is not an ISO 8601 date-time"),
            std::string::npos);
}

TEST_F(ServeFileTest, OtherMistakes) {
  EXPECT_NE(refused("deployments: []\n").find("non-empty list"), std::string::npos);
  EXPECT_NE(refused("").find("empty"), std::string::npos);
  EXPECT_NE(refused("deployments:\n  - entrypoint: flows/hello.py:hello\n").find("needs a 'name'"),
            std::string::npos);
  EXPECT_NE(refused("deployments:\n  - {name: a, entrypoint: flows/hello.py:hello}\n"
                    "  - {name: a, entrypoint: flows/hello.py:hello}\n")
                .find("'say-hello/a' appears twice"),
            std::string::npos);
  EXPECT_NE(refused("deployments:\n  - {name: a, entrypoint: flows/hello.py:hello, "
                    "schedule: {cron: '* * * * *', interval: 5}}\n")
                .find("exactly one of"),
            std::string::npos);
  EXPECT_NE(refused("deployments:\n  - {name: a, entrypoint: flows/hello.py:hello, "
                    "working_dir: missing}\n")
                .find("working directory"),
            std::string::npos);
  EXPECT_NE(refused("deployments:\n  - {name: a, entrypoint: flows/hello.py:hello, "
                    "concurrency_limit: 0}\n")
                .find("'concurrency_limit': must be a whole number of at least 1"),
            std::string::npos);
  EXPECT_NE(refused("deployments:\n  - {name: a, entrypoint: flows/hello.py:hello, "
                    "schedule: {rrule: 'FREQ=SOMETIMES'}}\n")
                .find("invalid rrule: FREQ=SOMETIMES"),
            std::string::npos);
}

TEST(Cron, AcceptsWhatCroniterAccepts) {
  for (const char* cron :
       {"* * * * *", "0 0 * * *", "*/15 9-17 * * 1-5", "0 12 1,15 * *", "0 0 L * *",
        "0 9 * jan-mar mon", "0 9 * * 5#2", "0 9 * * 5L", "0 0 * * 7", "30 * * * * 15", "@hourly",
        "@daily", "@Weekly", "0 0 ? * *", "0-59/10 * * * *"}) {
    EXPECT_EQ(checkCron(cron), "") << cron;
  }
}

TEST(Cron, RefusesWhatCroniterOrPrefectRefuses) {
  for (const char* cron : {"", "* * * *", "* * * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *",
                           "* * * 13 *", "* * * * 8", "*/0 * * * *", "a * * * *", "H * * * *",
                           "R * * * *", "@often", "1-x * * * *", "* * * * 5#6", "1,,2 * * * *"}) {
    EXPECT_NE(checkCron(cron), "") << cron;
  }
}

TEST(Rrule, Checks) {
  EXPECT_EQ(checkRrule("FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9"), "");
  EXPECT_EQ(checkRrule("DTSTART:20260101T090000\nRRULE:FREQ=DAILY;COUNT=5"), "");
  EXPECT_NE(checkRrule("BYHOUR=9"), "");
  EXPECT_NE(checkRrule("FREQ=DAILY;BOGUS=1"), "");
  EXPECT_NE(checkRrule("DTSTART:20260101T090000"), "");
  EXPECT_NE(checkRrule(std::string(6501, 'F')), "");
}

TEST(Timezone, AgainstTheSystemDatabase) {
  // tzdata is installed by .ci/install-deps.
  const std::string dir = defaultCheckEnvironment().zoneinfo_dir;
  EXPECT_TRUE(timezoneExists("UTC", dir));
  EXPECT_TRUE(timezoneExists("America/New_York", dir));
  EXPECT_FALSE(timezoneExists("America/Nowhere", dir));
  EXPECT_FALSE(timezoneExists("../zoneinfo/UTC", dir));
  EXPECT_FALSE(timezoneExists("/etc/passwd", dir));
  EXPECT_FALSE(timezoneExists("America", dir));  // a folder, not a zone
}

TEST(IsoDateTime, Forms) {
  EXPECT_TRUE(isIsoDateTime("2026-01-01T00:00:00Z"));
  EXPECT_TRUE(isIsoDateTime("2026-01-01 09:30:00.123+02:00"));
  EXPECT_TRUE(isIsoDateTime("2026-01-01"));
  EXPECT_FALSE(isIsoDateTime("2026-13-01T00:00:00"));
  EXPECT_FALSE(isIsoDateTime("yesterday"));
}

}  // namespace
}  // namespace poolworker::serve
