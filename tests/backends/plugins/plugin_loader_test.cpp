// The plugin loader: which plugins it refuses and why, and what it registers.

#include <fstream>

#include <boost/asio/io_context.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "backends/plugins/library_plugin.h"
#include "backends/plugins/loader.h"
#include "tests/backends/plugins/plugin_test_support.h"

namespace poolworker::testing {
namespace {

using ::testing::HasSubstr;
namespace plugins = backends::plugins;

class PluginLoader : public ::testing::Test {
 protected:
  plugins::LoadReport load() {
    (void)backends::registerBuiltinBackends(registry_, io_);
    return plugins::loadPlugins(registry_, io_, {dir_.path().string()});
  }

  static std::string joined(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& line : lines) {
      out += line + "\n";
    }
    return out;
  }

  boost::asio::io_context io_;
  backends::BackendRegistry registry_;
  PluginDir dir_;
};

TEST_F(PluginLoader, LoadsACPluginAndAnExecutableOneWithTheirOriginAndTemplate) {
  const auto so = dir_.add(builtPlugin("c-good"));
  const auto exe = dir_.add(scriptPlugin("script-process"));
  auto report = load();
  EXPECT_TRUE(report.refused.empty()) << joined(report.refused);
  ASSERT_EQ(report.loaded.size(), 2u) << joined(report.loaded);

  BackendFactory* c = registry_.find("c-fixture");
  ASSERT_NE(c, nullptr) << registry_.names();
  EXPECT_EQ(c->info().version, "0.1.0");
  EXPECT_EQ(c->info().origin, so.string());
  ASSERT_EQ(c->info().options.size(), 1u);
  EXPECT_EQ(c->info().options[0].key, "colour");
  EXPECT_EQ(c->info().options[0].default_value, "blue");
  EXPECT_EQ(c->defaultBaseJobTemplate()["job_configuration"]["command"], "{{ command }}");

  BackendFactory* script = registry_.find("script-process");
  ASSERT_NE(script, nullptr) << registry_.names();
  EXPECT_EQ(script->info().origin, exe.string());
  EXPECT_TRUE(script->defaultBaseJobTemplate()["variables"]["properties"].contains("command"));
  // The built-ins are still there, beside the plugins.
  EXPECT_NE(registry_.find("process"), nullptr);
}

TEST_F(PluginLoader, RefusesAPluginBuiltForAnotherAbiMajorNamingBoth) {
  dir_.add(builtPlugin("abi-v2-symbol"));
  dir_.add(builtPlugin("abi-v2-field"));
  auto report = load();
  ASSERT_EQ(report.refused.size(), 2u) << joined(report.refused);
  const std::string all = joined(report.refused);
  EXPECT_THAT(all, HasSubstr("abi-v2-symbol.so: built for plugin ABI major 2 (it exports "
                             "poolworker_plugin_v2); this poolworker loads ABI major 1"));
  EXPECT_THAT(all, HasSubstr("abi-v2-field.so: built for plugin ABI 2.0; this poolworker loads "
                             "ABI 1.x only"));
  EXPECT_TRUE(report.loaded.empty());
}

TEST_F(PluginLoader, RefusesAPluginBuiltForANewerMinor) {
  dir_.add(builtPlugin("abi-newer-minor"));
  auto report = load();
  ASSERT_EQ(report.refused.size(), 1u);
  EXPECT_THAT(report.refused[0], HasSubstr("built for plugin ABI 1.99, newer than this "
                                           "poolworker's 1.0; upgrade poolworker"));
}

TEST_F(PluginLoader, RefusesALibraryWithoutTheEntrySymbol) {
  dir_.add(builtPlugin("no-entry"));
  auto report = load();
  ASSERT_EQ(report.refused.size(), 1u);
  EXPECT_THAT(report.refused[0], HasSubstr("no-entry.so: does not export poolworker_plugin_v1"));
}

TEST_F(PluginLoader, RefusesAFileThatIsNotALibrary) {
  const auto path = dir_.path() / "broken.so";
  {
    std::ofstream out(path);
    out << "not an ELF file";
  }
  ::chmod(path.c_str(), 0755);
  auto report = load();
  ASSERT_EQ(report.refused.size(), 1u);
  EXPECT_THAT(report.refused[0], HasSubstr("broken.so: cannot be loaded: "));
}

TEST_F(PluginLoader, RefusesAPluginFileWritableByOthersOrGroup) {
  const auto world = dir_.add(builtPlugin("c-good"), "world.so");
  ::chmod(world.c_str(), 0777);
  const auto group = dir_.add(scriptPlugin("script-process"), "group-writable");
  ::chmod(group.c_str(), 0775);
  auto report = load();
  ASSERT_EQ(report.refused.size(), 2u) << joined(report.refused);
  const std::string all = joined(report.refused);
  EXPECT_THAT(all, HasSubstr("world.so is writable by others (mode 0777); run chmod go-w"));
  EXPECT_THAT(all, HasSubstr("group-writable is writable by its group (mode 0775)"));
  EXPECT_EQ(registry_.find("c-fixture"), nullptr);
}

TEST_F(PluginLoader, RefusesEveryPluginOfADirectoryWritableByOthers) {
  dir_.add(builtPlugin("c-good"));
  ::chmod(dir_.path().c_str(), 0777);
  auto report = load();
  ::chmod(dir_.path().c_str(), 0755);
  ASSERT_EQ(report.refused.size(), 1u);
  EXPECT_THAT(report.refused[0], HasSubstr("the plugin directory " + dir_.path().string()));
  EXPECT_THAT(report.refused[0], HasSubstr("is writable by others (mode 0777)"));
}

TEST_F(PluginLoader, RefusesANameTakenByABuiltInBackend) {
  dir_.add(builtPlugin("clash"));
  auto report = load();
  ASSERT_EQ(report.refused.size(), 1u);
  EXPECT_THAT(report.refused[0],
              HasSubstr("clash.so: a backend named 'process' is already registered (from "
                        "built-in)"));
  EXPECT_EQ(registry_.find("process")->info().origin, "built-in");
}

TEST_F(PluginLoader, SkipsHiddenAndNonExecutableFilesAndReportsAMissingDirectory) {
  {
    std::ofstream readme(dir_.path() / "README");
    readme << "notes";
  }
  dir_.add(scriptPlugin("script-process"), ".hidden");
  (void)backends::registerBuiltinBackends(registry_, io_);
  auto report =
      plugins::loadPlugins(registry_, io_, {dir_.path().string(), "/nonexistent/plugins"});
  EXPECT_TRUE(report.loaded.empty()) << joined(report.loaded);
  ASSERT_EQ(report.refused.size(), 1u) << joined(report.refused);
  EXPECT_THAT(report.refused[0], HasSubstr("/nonexistent/plugins does not exist"));
}

TEST_F(PluginLoader, RefusesAnExecutableThatSpeaksAnotherProtocolOrAnswersInfoBadly) {
  auto script = [&](const std::string& name, const std::string& body) {
    const auto path = dir_.path() / name;
    std::ofstream out(path);
    out << "#!/bin/sh\n" << body << "\n";
    out.close();
    ::chmod(path.c_str(), 0755);
  };
  script("proto2", R"(echo '{"protocol": 2, "name": "x", "version": "1"}')");
  script("junk", "echo 'hello'");
  script("crashes", "kill -SEGV $$");
  script("no-template", R"(echo '{"protocol": 1, "name": "nt", "version": "1"}')");
  script("bad-name", R"(echo '{"protocol": 1, "name": "no spaces", "version": "1"}')");
  auto report = load();
  ASSERT_EQ(report.refused.size(), 5u) << joined(report.refused);
  const std::string all = joined(report.refused);
  EXPECT_THAT(all, HasSubstr("proto2 speaks protocol 2; this poolworker speaks protocol 1"));
  EXPECT_THAT(all, HasSubstr("junk answered `info` with something that is not a JSON object: "
                             "'hello"));
  EXPECT_THAT(all, HasSubstr("crashes crashed in `info`: killed by signal 11"));
  EXPECT_THAT(all, HasSubstr("no-template: 'default_base_job_template' must be an object"));
  EXPECT_THAT(all, HasSubstr("bad-name: its backend name 'no spaces' is not 1 to 64 letters"));
}

}  // namespace
}  // namespace poolworker::testing
