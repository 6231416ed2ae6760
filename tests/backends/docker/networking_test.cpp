#include "backends/docker/networking.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

TEST(Networking, ReadsTheHostOfAUrlLikeUrllib) {
  EXPECT_EQ(urlHost("http://127.0.0.1:4200/api"), "127.0.0.1");
  EXPECT_EQ(urlHost("http://localhost/api"), "localhost");
  EXPECT_EQ(urlHost("https://api.example.com"), "api.example.com");
  EXPECT_EQ(urlHost("localhost:4200/api"), "");
  EXPECT_EQ(urlHost(""), "");
}

TEST(Networking, InfersTheNetworkModeLikePrefect) {
  const std::vector<std::string> none;
  const std::vector<std::string> networks = {"n1"};
  EXPECT_EQ(inferNetworkMode(std::string("bridge"), none, "http://127.0.0.1:4200/api", true),
            "bridge");
  EXPECT_EQ(inferNetworkMode(std::string("bridge"), networks, "", true), "bridge");
  EXPECT_EQ(inferNetworkMode(std::nullopt, networks, "http://127.0.0.1:4200/api", true),
            std::nullopt);
  EXPECT_EQ(inferNetworkMode(std::nullopt, none, "http://127.0.0.1:4200/api", true), "host");
  EXPECT_EQ(inferNetworkMode(std::nullopt, none, "http://localhost:4200/api", true), "host");
  EXPECT_EQ(inferNetworkMode(std::nullopt, none, "http://localhost:4200/api", false), std::nullopt);
  EXPECT_EQ(inferNetworkMode(std::nullopt, none, "http://prefect:4200/api", true), std::nullopt);
  EXPECT_EQ(inferNetworkMode(std::nullopt, none, "", true), std::nullopt);
  EXPECT_EQ(inferNetworkMode(std::string(""), none, "http://localhost/api", true), "host");
}

TEST(Networking, RewritesLocalApiUrls) {
  EXPECT_EQ(rewriteLocalApiUrl("http://127.0.0.1:4200/api"),
            "http://host.docker.internal:4200/api");
  EXPECT_EQ(rewriteLocalApiUrl("http://localhost:4200/api"),
            "http://host.docker.internal:4200/api");
  EXPECT_EQ(rewriteLocalApiUrl("https://prefect.example.com/api"),
            "https://prefect.example.com/api");
}

TEST(Networking, WantsTheHostGatewayWhenTheApiIsLocal) {
  EXPECT_TRUE(wantsHostGateway(Json::object(), true));
  EXPECT_TRUE(wantsHostGateway(Json{{"PREFECT_API_URL", "http://127.0.0.1:4200/api"}}, true));
  EXPECT_TRUE(wantsHostGateway(Json{{"PREFECT_API_URL", "http://localhost/api"}}, true));
  EXPECT_TRUE(
      wantsHostGateway(Json{{"PREFECT_API_URL", "http://host.docker.internal:4200/api"}}, true));
  EXPECT_FALSE(wantsHostGateway(Json{{"PREFECT_API_URL", "https://api.prefect.cloud/api"}}, true));
  EXPECT_FALSE(wantsHostGateway(Json{{"PREFECT_API_URL", "http://127.0.0.1:4200/api"}}, false));
}

}  // namespace
}  // namespace poolworker::backends::docker
