#include "backends/process/factory.h"

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "backends/process/process_backend.h"
#include "tests/backends/process/process_test_support.h"
#include "tests/test_support.h"

namespace poolworker::backends::process {
namespace {

using poolworker::testing::TempDir;
using poolworker::testing::TestExecutor;

TEST(ProcessFactory, DescribesTheBackend) {
  boost::asio::io_context io;
  auto factory = makeFactory(io);
  ASSERT_NE(factory, nullptr);
  const BackendInfo info = factory->info();
  EXPECT_EQ(info.name, "process");
  EXPECT_EQ(info.origin, "built-in");
  EXPECT_FALSE(info.version.empty());
  ASSERT_EQ(info.options.size(), 2u);
  EXPECT_EQ(info.options[0].key, "python");
  EXPECT_EQ(info.options[0].default_value, "python3");
  EXPECT_EQ(info.options[1].key, "shim_path");
  EXPECT_EQ(info.options[1].default_value, "");
}

TEST(ProcessFactory, DefaultTemplateIsTheEmbeddedFile) {
  boost::asio::io_context io;
  const Json embedded = makeFactory(io)->defaultBaseJobTemplate();
  const Json file = Json::parse(
      poolworker::testing::readFile(poolworker::testing::sourcePath("templates/process.json")));
  EXPECT_EQ(embedded, file);
  EXPECT_TRUE(embedded["job_configuration"].contains("command"));
}

TEST(ProcessFactory, FindsTheShimBesideTheExecutable) {
  // The tests are built into the same folder as the programs, as the worker is.
  EXPECT_EQ(defaultShimPath(), poolworker::testing::binPath("poolworker-run").string());
}

TEST(ProcessFactory, RejectsUnusableOptions) {
  boost::asio::io_context io;
  TestExecutor executor(io);
  TempDir state;
  auto factory = makeFactory(io);
  BackendContext context;
  context.executor = &executor;
  context.state_directory = state.path().string();
  context.options = Json{{"python", 3}};
  auto created = factory->create(context);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_EQ(created.error().message, "backends.process.python must be a string, not number");

  context.options = Json::object();
  context.state_directory = "";
  EXPECT_FALSE(factory->create(context).ok());

  context.state_directory = state.path().string();
  context.executor = nullptr;
  EXPECT_FALSE(factory->create(context).ok());

  context.executor = &executor;
  auto backend = factory->create(context);
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  (*backend)->shutdown();
}

}  // namespace
}  // namespace poolworker::backends::process
