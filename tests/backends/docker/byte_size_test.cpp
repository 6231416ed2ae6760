#include "backends/docker/byte_size.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

struct SizeCase {
  Json input;
  std::int64_t expected;
};

TEST(ByteSize, ReadsSizesLikeDockerPy) {
  // Expected values are docker-py's parse_bytes() results.
  const SizeCase cases[] = {
      {"100000b", 100000},
      {"1000k", 1024000},
      {"128m", 134217728},
      {"1g", 1073741824},
      {"1G", 1073741824},
      {"128mb", 134217728},
      {"128MB", 134217728},
      {"1.5g", 1610612736},
      {"512", 512},
      {"-1", -1},
      {"", 0},
      {Json(4096), 4096},
      {Json(-1), -1},
  };
  for (const auto& c : cases) {
    auto parsed = parseByteSize(c.input, "job variable 'mem_limit'");
    ASSERT_TRUE(parsed.ok()) << c.input.dump() << ": " << parsed.error().message;
    EXPECT_EQ(*parsed, c.expected) << c.input.dump();
  }
}

TEST(ByteSize, RefusesWhatDockerPyRefuses) {
  for (const Json& input : {Json("12x"), Json("m"), Json("abc"), Json("1.2.3m"), Json(true),
                            Json::array(), Json("9999999999999g")}) {
    auto parsed = parseByteSize(input, "job variable 'mem_limit'");
    ASSERT_FALSE(parsed.ok()) << input.dump();
    EXPECT_EQ(parsed.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_EQ(parsed.error().message.rfind("job variable 'mem_limit'", 0), 0u)
        << parsed.error().message;
  }
}

}  // namespace
}  // namespace poolworker::backends::docker
