#include "backends/docker/image_ref.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

TEST(ImageRef, SplitsLikePrefect) {
  struct Case {
    std::string image, repository, tag;
    bool digest;
  };
  // Expected values follow prefect.utilities.dockerutils.parse_image_tag.
  const Case cases[] = {
      {"prefecthq/prefect:latest", "prefecthq/prefect", "latest", false},
      {"prefecthq/prefect", "prefecthq/prefect", "", false},
      {"alpine", "alpine", "", false},
      {"alpine:3.19", "alpine", "3.19", false},
      {"hostname.io:5050/folder/subfolder:latest", "hostname.io:5050/folder/subfolder", "latest",
       false},
      {"hostname.io:5050/folder/subfolder", "hostname.io:5050/folder/subfolder", "", false},
      {"localhost:5000/img", "localhost:5000/img", "", false},
      {"prefecthq/prefect@sha256:abc123", "prefecthq/prefect", "sha256:abc123", true},
      {"img@sha256:abc", "img", "sha256:abc", true},
  };
  for (const auto& c : cases) {
    const ImageRef ref = parseImageRef(c.image);
    EXPECT_EQ(ref.repository, c.repository) << c.image;
    EXPECT_EQ(ref.tag, c.tag) << c.image;
    EXPECT_EQ(ref.digest, c.digest) << c.image;
  }
}

TEST(ImageRef, FindsTheRegistry) {
  EXPECT_EQ(registryOf("alpine"), "docker.io");
  EXPECT_EQ(registryOf("prefecthq/prefect"), "docker.io");
  EXPECT_EQ(registryOf("ghcr.io/org/app"), "ghcr.io");
  EXPECT_EQ(registryOf("localhost/app"), "localhost");
  EXPECT_EQ(registryOf("registry:5000/app"), "registry:5000");
  EXPECT_EQ(registryOf("index.docker.io/library/alpine"), "docker.io");
}

TEST(ImageRef, DefaultsThePullPolicyFromTheTag) {
  const auto policy = [](const std::string& image) {
    return effectivePullPolicy(std::nullopt, parseImageRef(image));
  };
  EXPECT_EQ(policy("img:latest"), PullPolicy::Always);
  EXPECT_EQ(policy("img"), PullPolicy::Always);
  EXPECT_EQ(policy("img:3-latest"), PullPolicy::IfNotPresent);
  EXPECT_EQ(policy("img:1.2"), PullPolicy::IfNotPresent);
  EXPECT_EQ(policy("img@sha256:abc"), PullPolicy::IfNotPresent);
  EXPECT_EQ(effectivePullPolicy(PullPolicy::Never, parseImageRef("img:latest")), PullPolicy::Never);
}

TEST(ImageRef, ReadsThePullPolicyVariable) {
  EXPECT_EQ(parsePullPolicy(Json()).value(), std::nullopt);
  EXPECT_EQ(parsePullPolicy("IfPossible").value(), PullPolicy::IfPossible);
  EXPECT_EQ(parsePullPolicy("Never").value(), PullPolicy::Never);
  auto bad = parsePullPolicy("never");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_NE(bad.error().message.find("image_pull_policy"), std::string::npos);
  EXPECT_FALSE(parsePullPolicy(3).ok());
  EXPECT_STREQ(pullPolicyName(PullPolicy::IfNotPresent), "IfNotPresent");
}

TEST(ImageRef, ReadsRegistryCredentials) {
  auto none = parseRegistryCredentials(Json());
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  auto credentials = parseRegistryCredentials(
      Json{{"username", "u"}, {"password", "p"}, {"registry_url", "ghcr.io"}, {"reauth", false}});
  ASSERT_TRUE(credentials.ok()) << credentials.error().message;
  ASSERT_TRUE(credentials->has_value());
  EXPECT_EQ((*credentials)->username, "u");
  EXPECT_EQ((*credentials)->password, "p");
  EXPECT_EQ((*credentials)->registry_url, "ghcr.io");
  EXPECT_FALSE((*credentials)->reauth);

  auto missing = parseRegistryCredentials(Json{{"username", "u"}, {"registry_url", "r"}});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("'password'"), std::string::npos);
  EXPECT_FALSE(parseRegistryCredentials("u:p").ok());
}

TEST(ImageRef, EncodesTheAuthHeaderLikeDockerPy) {
  // base64.urlsafe_b64encode(json.dumps(...)) with docker-py's key order; json.dumps puts a
  // space after separators, nlohmann does not, so compare by decoding the known value instead.
  const Json auth = authConfigOf(RegistryCredentials{"user", "p?ss>", "ghcr.io", true});
  EXPECT_EQ(auth.dump(), R"({"username":"user","password":"p?ss>","serveraddress":"ghcr.io"})");
  EXPECT_EQ(encodeRegistryAuth(auth),
            "eyJ1c2VybmFtZSI6InVzZXIiLCJwYXNzd29yZCI6InA_c3M-Iiwic2VydmVyYWRkcmVzcyI6ImdoY3Iu"
            "aW8ifQ==");
}

TEST(ImageRef, FindsAmbientCredentialsInTheDockerConfig) {
  const Json config = Json::parse(R"({
    "auths": {
      "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
      "ghcr.io": {"auth": "Z2g6dG9rOmVu"},
      "registry.local:5000": {"identitytoken": "tok"}
    }
  })");
  auto hub = authFromDockerConfig(config, "docker.io");
  ASSERT_TRUE(hub.has_value());
  EXPECT_EQ((*hub)["username"], "hub");
  EXPECT_EQ((*hub)["password"], "secret");
  EXPECT_EQ((*hub)["serveraddress"], "https://index.docker.io/v1/");

  auto gh = authFromDockerConfig(config, "ghcr.io");
  ASSERT_TRUE(gh.has_value());
  EXPECT_EQ((*gh)["username"], "gh");
  EXPECT_EQ((*gh)["password"], "tok:en");

  auto token = authFromDockerConfig(config, "registry.local:5000");
  ASSERT_TRUE(token.has_value());
  EXPECT_EQ((*token)["IdentityToken"], "tok");

  EXPECT_FALSE(authFromDockerConfig(config, "quay.io").has_value());
  EXPECT_FALSE(authFromDockerConfig(Json::object(), "docker.io").has_value());
  EXPECT_FALSE(authFromDockerConfig(Json::parse(R"({"auths":{"x":{"auth":"!!"}}})"), "x"));
}

}  // namespace
}  // namespace poolworker::backends::docker
