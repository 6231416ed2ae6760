#include "backends/process/proc_info.h"

#include <gtest/gtest.h>
#include <unistd.h>

namespace poolworker::backends::process {
namespace {

TEST(ProcInfo, ParsesStatWithAnAwkwardCommandName) {
  const std::string text =
      "4242 (a) b (c)) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654321 "
      "1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
  const auto stat = parseProcStat(text);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->state, 'S');
  EXPECT_EQ(stat->process_group, 4240);
  EXPECT_EQ(stat->start_time, 987654321u);
  EXPECT_FALSE(stat->ended());
  EXPECT_FALSE(parseProcStat("4242 (cut short) S 1 2").has_value());
  EXPECT_FALSE(parseProcStat("no parenthesis").has_value());
}

TEST(ProcInfo, ReadsThisProcess) {
  const auto first = readProcStat(getpid());
  const auto second = readProcStat(getpid());
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(first->start_time, second->start_time);
  EXPECT_EQ(first->process_group, getpgrp());
  EXPECT_FALSE(readProcStat(0).has_value());
  EXPECT_FALSE(readBootId().empty());
  EXPECT_EQ(readBootId(), readBootId());
  EXPECT_FALSE(hostName().empty());
}

}  // namespace
}  // namespace poolworker::backends::process
