#include "backends/docker/pull_stream.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

const std::string kProgress =
    "{\"status\":\"Pulling from library/alpine\",\"id\":\"3.19\"}\r\n"
    "{\"status\":\"Downloading\",\"progressDetail\":{\"current\":1024,\"total\":30000},"
    "\"progress\":\"[=>  ] {braces} \\\"quoted\\\"\",\"id\":\"a1b2\"}\r\n"
    "{\"status\":\"Status: Downloaded newer image for alpine:3.19\"}\n";

TEST(PullStream, ReadsProgressWhateverTheCuts) {
  for (size_t cut = 0; cut <= kProgress.size(); ++cut) {
    PullStreamParser parser("alpine:3.19");
    ASSERT_TRUE(parser.feed(std::string_view(kProgress).substr(0, cut)).ok()) << cut;
    ASSERT_TRUE(parser.feed(std::string_view(kProgress).substr(cut)).ok()) << cut;
    EXPECT_TRUE(parser.finish().ok()) << cut;
    EXPECT_EQ(parser.objects(), 3u);
    EXPECT_EQ(parser.lastStatus(), "Status: Downloaded newer image for alpine:3.19");
  }
}

TEST(PullStream, ReadsObjectsWithoutSeparators) {
  PullStreamParser parser("x");
  ASSERT_TRUE(parser.feed(R"({"status":"a"}{"status":"b"}   {"status":"c"})").ok());
  EXPECT_EQ(parser.objects(), 3u);
  EXPECT_EQ(parser.lastStatus(), "c");
}

TEST(PullStream, AnErrorObjectFailsThePull) {
  const std::string stream =
      "{\"status\":\"Pulling\"}\n"
      "{\"errorDetail\":{\"message\":\"manifest unknown\"},\"error\":\"manifest unknown\"}\n";
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    PullStreamParser parser("img:9");
    auto first = parser.feed(std::string_view(stream).substr(0, cut));
    auto result = first.ok() ? parser.feed(std::string_view(stream).substr(cut)) : first;
    ASSERT_FALSE(result.ok()) << cut;
    EXPECT_EQ(result.error().kind, ErrorKind::InfrastructureFailed);
    EXPECT_EQ(result.error().message, "Docker pull failed for img:9: manifest unknown");
  }
}

TEST(PullStream, RefusesGarbageAndTruncation) {
  PullStreamParser garbage("x");
  EXPECT_FALSE(garbage.feed("<html>").ok());

  PullStreamParser truncated("x");
  ASSERT_TRUE(truncated.feed(R"({"status":"Downloa)").ok());
  auto end = truncated.finish();
  ASSERT_FALSE(end.ok());
  EXPECT_NE(end.error().message.find("ended mid-object"), std::string::npos);

  PullStreamParser empty("x");
  EXPECT_TRUE(empty.finish().ok());
}

}  // namespace
}  // namespace poolworker::backends::docker
