#include "worker/version.h"

#include <gtest/gtest.h>

#include <string>

TEST(Version, IsSemver) { EXPECT_EQ(std::string(poolworker::version()).find('.'), 1u); }
