#include "backends/docker/engine_version.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

TEST(EngineVersion, ComparesNumerically) {
  EXPECT_LT(compareVersions("1.9", "1.10"), 0);
  EXPECT_GT(compareVersions("1.41", "1.4"), 0);
  EXPECT_EQ(compareVersions("1.41", "1.41.0"), 0);
  EXPECT_EQ(compareVersions("20.10.24+dfsg1", "20.10.24"), 0);
  EXPECT_EQ(compareVersions("20.10.0-ce", "20.10.0"), 0);
  EXPECT_LT(compareVersions("19.03.12", "20.10.0"), 0);
  EXPECT_GT(compareVersions("29.0.1", "20.10.0"), 0);
  EXPECT_EQ(compareVersions("", "0"), 0);
}

TEST(EngineVersion, ParsesTheVersionAnswer) {
  auto version = parseEngineVersion(
      R"({"Version":"20.10.24+dfsg1","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux"})");
  ASSERT_TRUE(version.ok()) << version.error().message;
  EXPECT_EQ(version->version, "20.10.24+dfsg1");
  EXPECT_EQ(version->api_version, "1.41");
  EXPECT_EQ(version->min_api_version, "1.12");
  EXPECT_EQ(version->os, "linux");

  EXPECT_FALSE(parseEngineVersion("not json").ok());
  EXPECT_FALSE(parseEngineVersion(R"({"Version":"1.0"})").ok());
}

EngineVersion engine(std::string api, std::string min) {
  EngineVersion version;
  version.version = "x";
  version.api_version = std::move(api);
  version.min_api_version = std::move(min);
  return version;
}

TEST(EngineVersion, NegotiatesTheServerVersionCappedAtTheNewestTested) {
  EXPECT_EQ(negotiateApiVersion(engine("1.41", "1.12")).value(), "1.41");
  // A newer engine is spoken to in the newest version we tested...
  EXPECT_EQ(negotiateApiVersion(engine("1.47", "1.24")).value(), "1.41");
  // ...unless it refuses that version: Docker 29 has a floor of 1.44.
  EXPECT_EQ(negotiateApiVersion(engine("1.52", "1.44")).value(), "1.44");
  // An older engine is spoken to in its own version.
  EXPECT_EQ(negotiateApiVersion(engine("1.40", "1.12")).value(), "1.40");
  EXPECT_EQ(negotiateApiVersion(engine("1.45", "1.24"), "1.45").value(), "1.45");
  // Without a minimum (very old engines) the cap alone applies.
  EXPECT_EQ(negotiateApiVersion(engine("1.43", "")).value(), "1.41");
}

TEST(EngineVersion, RefusesEnginesTooOldForWaitConditions) {
  auto chosen = negotiateApiVersion(engine("1.29", "1.12"));
  ASSERT_FALSE(chosen.ok());
  EXPECT_EQ(chosen.error().kind, ErrorKind::InfrastructureFailed);
  EXPECT_NE(chosen.error().message.find("1.30"), std::string::npos);
}

TEST(EngineVersion, KnowsWhichEnginesMapHostGateway) {
  EXPECT_TRUE(supportsHostGateway("20.10.0"));
  EXPECT_TRUE(supportsHostGateway("20.10.24+dfsg1"));
  EXPECT_TRUE(supportsHostGateway("28.2.2"));
  EXPECT_FALSE(supportsHostGateway("19.03.12"));
  EXPECT_FALSE(supportsHostGateway("20.9.9"));
}

}  // namespace
}  // namespace poolworker::backends::docker
