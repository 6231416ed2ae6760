#include "worker/journal.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "tests/test_support.h"

namespace poolworker {
namespace {

using testing::TempDir;

JournalEntry started(const std::string& id) {
  JournalEntry e;
  e.flow_run_id = id;
  e.flow_run_name = "name-" + id;
  e.phase = RunPhase::Started;
  e.transition_id = "t-" + id;
  e.backend = "process";
  e.handle = RunHandle{"process", "host:42", Json{{"pid", 42}}};
  return e;
}

TEST(Journal, WritesLoadsAndRemovesEntries) {
  TempDir dir;
  auto journal = Journal::open(dir.path().string(), "my pool/with:odd chars");
  ASSERT_TRUE(journal) << journal.error().message;
  ASSERT_TRUE((*journal)->write(started("a")));
  ASSERT_TRUE((*journal)->write(started("b")));
  auto entries = (*journal)->load();
  ASSERT_EQ(entries.size(), 2u);
  for (const auto& e : entries) {
    EXPECT_EQ(e.phase, RunPhase::Started);
    ASSERT_TRUE(e.handle);
    EXPECT_EQ(e.handle->infrastructure_pid, "host:42");
    EXPECT_EQ(e.handle->data["pid"], 42);
    EXPECT_FALSE(e.updated.empty());
  }
  ASSERT_TRUE((*journal)->remove("a"));
  ASSERT_TRUE((*journal)->remove("never-written"));
  EXPECT_EQ((*journal)->load().size(), 1u);
}

TEST(Journal, ReplacingAnEntryKeepsOneFile) {
  TempDir dir;
  auto journal = Journal::open(dir.path().string(), "p");
  ASSERT_TRUE(journal);
  JournalEntry e = started("a");
  e.phase = RunPhase::Claiming;
  e.handle.reset();
  ASSERT_TRUE((*journal)->write(e));
  ASSERT_TRUE((*journal)->write(started("a")));
  auto entries = (*journal)->load();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].phase, RunPhase::Started);
}

TEST(Journal, SecondWorkerOfSamePoolGetsItsOwnDirectory) {
  TempDir dir;
  auto first = Journal::open(dir.path().string(), "p");
  auto second = Journal::open(dir.path().string(), "p");
  ASSERT_TRUE(first);
  ASSERT_TRUE(second);
  EXPECT_NE((*first)->directory(), (*second)->directory());
  std::string first_dir = (*first)->directory();
  first->reset();
  // Once the first is gone its journal is free again, and found first.
  auto third = Journal::open(dir.path().string(), "p");
  ASSERT_TRUE(third);
  EXPECT_EQ((*third)->directory(), first_dir);
}

TEST(Journal, UnreadableEntryIsReportedNotFatal) {
  TempDir dir;
  auto journal = Journal::open(dir.path().string(), "p");
  ASSERT_TRUE(journal);
  ASSERT_TRUE((*journal)->write(started("ok")));
  std::ofstream((*journal)->directory() + "/runs/broken.json") << "{not json";
  std::vector<std::string> problems;
  auto entries = (*journal)->load(&problems);
  EXPECT_EQ(entries.size(), 1u);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("broken.json"), std::string::npos);
}

TEST(Journal, UnwritableStateDirectoryIsAClearError) {
  auto journal = Journal::open("/proc/poolworker-cannot-exist", "p");
  ASSERT_FALSE(journal);
  EXPECT_NE(journal.error().message.find("/proc/poolworker-cannot-exist"), std::string::npos);
}

}  // namespace
}  // namespace poolworker
