// Where the plugin directories come from: --plugin-dir, POOLWORKER_PLUGIN_DIR(S), and
// plugin_dir / plugin_dirs in the config file, in that order of precedence.

#include <fstream>

#include <gtest/gtest.h>

#include "tests/test_support.h"
#include "worker/settings.h"

namespace poolworker {
namespace {

using testing::TempDir;

StartFlags poolFlags() {
  StartFlags flags;
  flags.pool = "my-pool";
  return flags;
}

std::string configWith(const TempDir& dir, const std::string& text) {
  const auto path = dir.path() / "config.yaml";
  std::ofstream(path) << text;
  return path.string();
}

TEST(PluginSettings, NoneByDefault) {
  auto s = resolveSettings(poolFlags(), {{"HOME", "/nonexistent"}});
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_TRUE(s->plugin_dirs.empty());
}

TEST(PluginSettings, TheConfigFileNamesOneOrSeveralDirectories) {
  TempDir dir;
  StartFlags flags = poolFlags();
  flags.config_file = configWith(dir, "plugin_dir: /opt/plugins\n");
  auto one = resolveSettings(flags, {{"HOME", "/nonexistent"}});
  ASSERT_TRUE(one) << one.error().message;
  EXPECT_EQ(one->plugin_dirs, (std::vector<std::string>{"/opt/plugins"}));

  flags.config_file = configWith(dir, "plugin_dirs: [/a, /b]\n");
  auto two = resolveSettings(flags, {{"HOME", "/nonexistent"}});
  ASSERT_TRUE(two) << two.error().message;
  EXPECT_EQ(two->plugin_dirs, (std::vector<std::string>{"/a", "/b"}));
}

TEST(PluginSettings, TheEnvironmentBeatsTheFileAndFlagsBeatBoth) {
  TempDir dir;
  StartFlags flags = poolFlags();
  flags.config_file = configWith(dir, "plugin_dir: /from/file\n");
  Environment env = {{"HOME", "/nonexistent"}, {"POOLWORKER_PLUGIN_DIR", "/env/a,/env/b"}};
  auto from_env = resolveSettings(flags, env);
  ASSERT_TRUE(from_env) << from_env.error().message;
  EXPECT_EQ(from_env->plugin_dirs, (std::vector<std::string>{"/env/a", "/env/b"}));
  EXPECT_EQ(from_env->sources["plugin_dirs"], "environment");

  flags.plugin_dirs = {"/flag"};
  auto from_flag = resolveSettings(flags, env);
  ASSERT_TRUE(from_flag) << from_flag.error().message;
  EXPECT_EQ(from_flag->plugin_dirs, (std::vector<std::string>{"/flag"}));
}

}  // namespace
}  // namespace poolworker
