#include "backends/docker/naming.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

TEST(Naming, ConvertsLabelsToDockerStyle) {
  const Json labels = Json::parse(R"({
    "prefect.io/flow-run-id": "1",
    "prefect.io/version": "3.8.8",
    "team": "data",
    "a.b.c/d/e": "x",
    ".lead/k": "y"
  })");
  const Json converted = toDockerLabels(labels);
  EXPECT_EQ(converted.dump(),
            R"({"io.prefect.flow-run-id":"1","io.prefect.version":"3.8.8","team":"data",)"
            R"("c.b.a.d/e":"x","lead..k":"y"})");
  EXPECT_EQ(toDockerLabels(Json()), Json::object());
}

TEST(Naming, SlugifiesContainerNamesLikePrefect) {
  // Expected values were produced by prefect-docker's _slugify_container_name (python-slugify).
  const std::pair<std::string, std::string> cases[] = {
      {"crimson-fox", "crimson-fox"},
      {"CamelCase_name.v2", "CamelCase_name.v2"},
      {"my flow run", "my-flow-run"},
      {"__My Flow/Run #1 'x' &amp; y...", "My-Flow-Run-1-x-y..."},
      {"--..__x", "x"},
      {"a  --  b", "a-b"},
      {"it's", "it-s"},
      {"1,000 runs", "1000-runs"},
      {"a&#65;b", "aAb"},
      {"tab\there", "tab-here"},
      {"end!!!", "end"},
  };
  for (const auto& [input, expected] : cases) {
    auto slug = slugifyContainerName(input);
    ASSERT_TRUE(slug.has_value()) << input;
    EXPECT_EQ(*slug, expected) << input;
  }
  EXPECT_FALSE(slugifyContainerName("").has_value());
  EXPECT_FALSE(slugifyContainerName("___").has_value());
  EXPECT_FALSE(slugifyContainerName("!!!").has_value());
  EXPECT_EQ(slugifyContainerName(std::string(300, 'x'))->size(), 250u);
  EXPECT_EQ(*slugifyContainerName(std::string(249, 'x') + " y"), std::string(249, 'x'));
}

TEST(Naming, WritesAndSplitsInfrastructurePids) {
  EXPECT_EQ(dockerBaseUrl("unix:///var/run/docker.sock", false), "http+docker://localhost");
  EXPECT_EQ(dockerBaseUrl("tcp://10.0.0.5:2375", false), "http://10.0.0.5:2375");
  EXPECT_EQ(dockerBaseUrl("tcp://10.0.0.5:2376", true), "https://10.0.0.5:2376");
  const std::string pid = infrastructurePid("http+docker://localhost", "3f1c9a");
  EXPECT_EQ(pid, "http+docker://localhost:3f1c9a");
  EXPECT_EQ(splitInfrastructurePid(pid),
            std::make_pair(std::string("http+docker://localhost"), std::string("3f1c9a")));
  EXPECT_EQ(splitInfrastructurePid("https://h:2376:abc"),
            std::make_pair(std::string("https://h:2376"), std::string("abc")));
  EXPECT_EQ(splitInfrastructurePid("abc"), std::make_pair(std::string(), std::string("abc")));
}

}  // namespace
}  // namespace poolworker::backends::docker
