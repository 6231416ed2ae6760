#include "backends/process/launch_spec.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "tests/test_support.h"

namespace poolworker::backends::process {
namespace {

namespace fs = std::filesystem;
using poolworker::testing::TempDir;

bool hasEntry(const std::vector<std::string>& env, const std::string& entry) {
  return std::find(env.begin(), env.end(), entry) != env.end();
}

TEST(ParseLaxBool, AcceptsWhatPydanticAccepts) {
  for (const Json& yes : {Json(true), Json(1), Json(1.0), Json("1"), Json("true"), Json("TRUE"),
                          Json("t"), Json("Yes"), Json("y"), Json("oN")}) {
    auto value = parseLaxBool(yes, "stream_output");
    ASSERT_TRUE(value.ok()) << yes.dump();
    EXPECT_TRUE(*value) << yes.dump();
  }
  for (const Json& no : {Json(false), Json(0), Json(0.0), Json("0"), Json("false"), Json("F"),
                         Json("no"), Json("N"), Json("OFF")}) {
    auto value = parseLaxBool(no, "stream_output");
    ASSERT_TRUE(value.ok()) << no.dump();
    EXPECT_FALSE(*value) << no.dump();
  }
  for (const Json& bad : {Json(2), Json(1.5), Json(""), Json(" true"), Json("2"), Json(nullptr),
                          Json::array(), Json::object()}) {
    auto value = parseLaxBool(bad, "stream_output");
    ASSERT_FALSE(value.ok()) << bad.dump();
    EXPECT_EQ(value.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_EQ(value.error().message,
              "job configuration 'stream_output' must be a boolean, not " + bad.dump());
  }
}

TEST(BuildLaunchSpec, DefaultCommandUsesThePythonOption) {
  for (const Json& command : {Json(nullptr), Json(""), Json("  \t ")}) {
    auto spec = buildLaunchSpec(Json{{"command", command}}, "/opt/py/bin/python3", {});
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    EXPECT_TRUE(spec->default_command);
    EXPECT_EQ(spec->argv,
              (std::vector<std::string>{"/opt/py/bin/python3", "-m", "prefect.engine"}));
  }
  auto missing = buildLaunchSpec(Json::object(), "python3", {});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->default_command);
  EXPECT_TRUE(missing->stream_output);
  EXPECT_EQ(missing->working_dir, "");
}

TEST(BuildLaunchSpec, SplitsTheCommandLikeShlex) {
  auto spec = buildLaunchSpec(Json{{"command", "prefect flow-run execute 'a b' \"c\\\"d\""}},
                              "python3", {});
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  EXPECT_FALSE(spec->default_command);
  EXPECT_EQ(spec->argv,
            (std::vector<std::string>{"prefect", "flow-run", "execute", "a b", "c\"d"}));
}

TEST(BuildLaunchSpec, RejectsBadFieldsByName) {
  struct Case {
    Json configuration;
    std::string message;
  };
  TempDir dir;
  const fs::path file = dir.path() / "file";
  std::ofstream(file) << "x";
  for (const auto& c : std::vector<Case>{
           {Json::array(), "job configuration must be an object, not array"},
           {Json{{"command", 3}},
            "job configuration 'command' must be a string or null, not number"},
           {Json{{"command", "a 'b"}}, "job configuration 'command': no closing quotation"},
           {Json{{"command", "a\\"}}, "job configuration 'command': no escaped character"},
           {Json{{"env", "A=1"}}, "job configuration 'env' must be an object, not string"},
           {Json{{"env", {{"A", 1}}}},
            "job configuration 'env': variable 'A' must be a string or null, not number"},
           {Json{{"env", {{"A=B", "1"}}}},
            "job configuration 'env': 'A=B' is not a valid variable name"},
           {Json{{"env", {{"", "1"}}}}, "job configuration 'env': '' is not a valid variable name"},
           {Json{{"working_dir", 5}},
            "job configuration 'working_dir' must be a string or null, not number"},
           {Json{{"working_dir", file.string()}},
            "job configuration 'working_dir': '" + file.string() + "' is not a directory"},
           {Json{{"working_dir", (dir.path() / "nope").string()}},
            "job configuration 'working_dir': directory '" + (dir.path() / "nope").string() +
                "' does not exist"},
       }) {
    auto spec = buildLaunchSpec(c.configuration, "python3", {});
    ASSERT_FALSE(spec.ok()) << c.configuration.dump();
    EXPECT_EQ(spec.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_EQ(spec.error().message, c.message);
  }
}

TEST(BuildLaunchSpec, OverlaysTheEnvironment) {
  auto spec = buildLaunchSpec(Json{{"env", {{"KEEP", "job"}, {"DROP", nullptr}, {"NEW", "n=1"}}}},
                              "python3", {"KEEP=worker", "DROP=worker", "OTHER=worker"});
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  EXPECT_TRUE(hasEntry(spec->env, "KEEP=job"));
  EXPECT_TRUE(hasEntry(spec->env, "NEW=n=1"));
  EXPECT_TRUE(hasEntry(spec->env, "OTHER=worker"));
  EXPECT_EQ(spec->env.size(), 3u);
}

TEST(BuildLaunchSpec, RelativeWorkingDirResolvesAgainstTheWorkersDirectory) {
  TempDir dir;
  fs::create_directory(dir.path() / "sub");
  const fs::path before = fs::current_path();
  fs::current_path(dir.path());
  auto spec = buildLaunchSpec(Json{{"working_dir", "sub"}}, "python3", {});
  fs::current_path(before);
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  EXPECT_EQ(fs::path(spec->working_dir), fs::canonical(dir.path() / "sub"));
}

TEST(ResolveProgram, SearchesTheChildsPath) {
  TempDir dir;
  const fs::path tool = dir.path() / "tool";
  std::ofstream(tool) << "#!/bin/sh\n";
  fs::permissions(tool, fs::perms::owner_all);
  const fs::path other = dir.path() / "other";
  fs::create_directory(other);
  std::ofstream(other / "plain") << "#!/bin/sh\n";

  LaunchSpec spec;
  spec.working_dir = dir.path().string();
  spec.env = {"PATH=" + other.string() + ":" + dir.path().string()};
  spec.argv = {"tool"};
  ASSERT_TRUE(resolveProgram(spec).ok());
  EXPECT_EQ(spec.program, tool.string());

  // An empty PATH entry is the working directory.
  spec.env = {"PATH=/nonexistent:"};
  ASSERT_TRUE(resolveProgram(spec).ok());
  EXPECT_EQ(spec.program, tool.string());

  spec.env = {"PATH=" + other.string()};
  spec.argv = {"plain"};
  auto result = resolveProgram(spec);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().message,
            "command 'plain' found at '" + (other / "plain").string() + "' is not executable");

  spec.argv = {"pythn3"};
  spec.default_command = true;
  result = resolveProgram(spec);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().message,
            "interpreter 'pythn3' not found on PATH (set the process backend's 'python' option, "
            "or give the deployment a 'command')");

  // Without PATH the default search path applies, as for execvp.
  spec.env = {};
  spec.argv = {"sh"};
  spec.default_command = false;
  ASSERT_TRUE(resolveProgram(spec).ok());
  EXPECT_TRUE(spec.program == "/bin/sh" || spec.program == "/usr/bin/sh") << spec.program;

  spec.argv = {"./tool"};
  ASSERT_TRUE(resolveProgram(spec).ok());
  EXPECT_EQ(fs::path(spec.program).lexically_normal(), tool);
}

TEST(TempWorkingDir, IsNamedLikePythonsAndRecognised) {
  auto dir = createTempWorkingDir();
  ASSERT_TRUE(dir.ok()) << dir.error().message;
  EXPECT_TRUE(fs::is_directory(*dir));
  EXPECT_TRUE(isTempWorkingDirName(*dir)) << *dir;
  EXPECT_EQ(fs::status(*dir).permissions() & fs::perms::all, fs::perms::owner_all);
  fs::remove(*dir);
  EXPECT_FALSE(isTempWorkingDirName("/"));
  EXPECT_FALSE(isTempWorkingDirName("/home/user"));
  EXPECT_FALSE(isTempWorkingDirName("tmpabcdefghprefect"));
  EXPECT_FALSE(isTempWorkingDirName("/tmp/tmpabc/efghprefect"));
  EXPECT_TRUE(isTempWorkingDirName("/tmp/tmpab_d3fghprefect"));
}

}  // namespace
}  // namespace poolworker::backends::process
