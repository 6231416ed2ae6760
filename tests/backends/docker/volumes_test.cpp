#include "backends/docker/volumes.h"

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

TEST(Volumes, AcceptsWhatPrefectAccepts) {
  const std::pair<std::string, std::string> cases[] = {
      {"/anon", "/anon"},
      {"/host:/ctr", "/host:/ctr"},
      {"/host:/ctr:ro", "/host:/ctr:ro"},
      {"/host:/ctr:rw", "/host:/ctr:rw"},
      {"named:/ctr", "named:/ctr"},
      {"my_vol.1-a:/ctr:ro", "my_vol.1-a:/ctr:ro"},
      {"./data:/data", "./data:/data"},
      {"../up:/up", "../up:/up"},
      {".:/here", ".:/here"},
      {"C:\\data:/data", "C:\\data:/data"},
      {"\\\\server\\share:/data", "\\\\server\\share:/data"},
      {"  /trim:/trim  ", "/trim:/trim"},
  };
  for (const auto& [input, expected] : cases) {
    auto checked = validateVolume(input);
    ASSERT_TRUE(checked.ok()) << input << ": " << checked.error().message;
    EXPECT_EQ(*checked, expected);
  }
}

TEST(Volumes, RefusesBadSpecsWithAClearMessage) {
  const std::pair<std::string, std::string> cases[] = {
      {"", "cannot be empty"},
      {"   ", "cannot be empty"},
      {"relative", "is not a volume"},
      {"/a:/b:/c:/d", "neither 'ro' nor 'rw'"},
      {"/host:relative", "must be absolute"},
      {"./data:relative", "must be absolute"},
      {"$(pwd)/data:/data", "is not a volume name"},
      {"-bad:/ctr", "is not a volume name"},
      {"/host:/ctr:rx", "neither 'ro' nor 'rw'"},
      {"/host:", "is not a volume"},
      {":/ctr", "is not a volume"},
  };
  for (const auto& [input, fragment] : cases) {
    auto checked = validateVolume(input);
    ASSERT_FALSE(checked.ok()) << input;
    EXPECT_EQ(checked.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_NE(checked.error().message.find(fragment), std::string::npos)
        << input << ": " << checked.error().message;
    EXPECT_EQ(checked.error().message.rfind("job variable 'volumes': ", 0), 0u);
  }
}

TEST(Volumes, ResolvesExplicitRelativeSourcesOnly) {
  const std::filesystem::path base = "/srv/flows";
  EXPECT_EQ(resolveRelativeBind("./data:/data", base), "/srv/flows/data:/data");
  EXPECT_EQ(resolveRelativeBind(".:/here:ro", base), "/srv/flows:/here:ro");
  EXPECT_EQ(resolveRelativeBind("../x:/x", base), "/srv/x:/x");
  EXPECT_EQ(resolveRelativeBind("..:/x", base), "/srv:/x");
  EXPECT_EQ(resolveRelativeBind("/abs:/x", base), "/abs:/x");
  EXPECT_EQ(resolveRelativeBind("named:/x", base), "named:/x");
  EXPECT_EQ(resolveRelativeBind("/anon", base), "/anon");
  EXPECT_TRUE(isRelativeBindSource(".\\win"));
  EXPECT_FALSE(isRelativeBindSource(".hidden"));
}

TEST(Volumes, FindsTheContainerPathLikeDockerPy) {
  EXPECT_EQ(containerPathOfVolume("/host:/ctr"), "/ctr");
  EXPECT_EQ(containerPathOfVolume("/host:/ctr:ro"), "/ctr");
  EXPECT_EQ(containerPathOfVolume("named:/ctr:rw"), "/ctr");
  EXPECT_EQ(containerPathOfVolume("/anon"), "/anon");
  EXPECT_EQ(containerPathOfVolume("C:\\data:/data"), "/data");
  EXPECT_EQ(containerPathOfVolume("/ctr:ro"), "/ctr");
}

}  // namespace
}  // namespace poolworker::backends::docker
