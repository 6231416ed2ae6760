#include "worker/cli.h"

#include <gtest/gtest.h>

namespace poolworker::cli {
namespace {

TEST(Cli, StartFlagsLikePrefectWorkerStart) {
  auto cmd = parse({"start", "--pool", "p", "-q", "a", "--work-queue=b", "-n", "w", "-l", "3",
                    "--prefetch-seconds", "5", "--run-once", "-t", "process", "--base-job-template",
                    "t.json", "--with-healthcheck"});
  ASSERT_TRUE(cmd) << cmd.error().message;
  EXPECT_EQ(cmd->name, "start");
  EXPECT_EQ(*cmd->start.pool, "p");
  EXPECT_EQ(cmd->start.work_queues, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(*cmd->start.name, "w");
  EXPECT_EQ(*cmd->start.limit, "3");
  EXPECT_EQ(*cmd->start.prefetch_seconds, "5");
  EXPECT_TRUE(cmd->start.run_once);
  EXPECT_EQ(*cmd->start.type, "process");
  EXPECT_EQ(*cmd->start.base_job_template, "t.json");
  EXPECT_TRUE(cmd->start.with_healthcheck);
}

TEST(Cli, WorkerStartAliasAndShortForms) {
  auto cmd = parse({"worker", "start", "-pmy-pool"});
  ASSERT_TRUE(cmd) << cmd.error().message;
  EXPECT_EQ(cmd->name, "start");
  EXPECT_EQ(*cmd->start.pool, "my-pool");
}

TEST(Cli, UnknownOptionIsAUsageError) {
  auto cmd = parse({"start", "--pool", "p", "--bogus"});
  ASSERT_FALSE(cmd);
  EXPECT_NE(cmd.error().message.find("--bogus"), std::string::npos);
  EXPECT_NE(cmd.error().message.find("poolworker start --help"), std::string::npos);
}

TEST(Cli, MissingValue) {
  auto cmd = parse({"start", "--pool"});
  ASSERT_FALSE(cmd);
  EXPECT_NE(cmd.error().message.find("needs a value"), std::string::npos);
}

TEST(Cli, HelpAndVersion) {
  EXPECT_EQ(parse({"--help"})->name, "help");
  EXPECT_EQ(parse({})->name, "help");
  auto start_help = parse({"start", "--help"});
  ASSERT_TRUE(start_help);
  EXPECT_EQ(start_help->name, "help");
  EXPECT_EQ(start_help->help_topic, "start");
  EXPECT_EQ(parse({"--version"})->name, "version");
  EXPECT_NE(helpText("start").find("--pool"), std::string::npos);
  EXPECT_NE(helpText("").find("start"), std::string::npos);
}

TEST(Cli, UnknownCommand) {
  auto cmd = parse({"strat"});
  ASSERT_FALSE(cmd);
  EXPECT_NE(cmd.error().message.find("strat"), std::string::npos);
}

TEST(Cli, RenderAndTemplate) {
  auto r = parse({"render", "--pool", "p", "--deployment", "flow/dep", "--job-variables", "{}"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->deployment, "flow/dep");
  EXPECT_EQ(r->job_variables, "{}");
  auto t = parse({"template", "--type", "process"});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->type, "process");
}

TEST(ServeCli, ParsesFileAndFlags) {
  auto cmd = parse({"serve", "flows.yaml", "--limit", "2", "--query-seconds", "3",
                    "--no-pause-on-shutdown", "--run-once"});
  ASSERT_TRUE(cmd) << cmd.error().message;
  EXPECT_EQ(cmd->name, "serve");
  EXPECT_EQ(cmd->serve_file, "flows.yaml");
  EXPECT_EQ(*cmd->start.limit, "2");
  EXPECT_EQ(*cmd->query_seconds, "3");
  EXPECT_TRUE(cmd->no_pause_on_shutdown);
  EXPECT_TRUE(cmd->start.run_once);
  EXPECT_FALSE(parse({"serve"}));
  EXPECT_FALSE(parse({"serve", "a.yaml", "b.yaml"}));
}

}  // namespace
}  // namespace poolworker::cli
