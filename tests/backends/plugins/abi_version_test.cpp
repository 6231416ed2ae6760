// Fails when include/poolworker/plugin.h changes without a version bump: the hash of the
// header's text (comments removed, whitespace collapsed, so that documentation may be edited
// freely) must be the one recorded for its version in include/poolworker/plugin_abi.lock.

#include <regex>
#include <sstream>

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <poolworker/plugin.h>

#include "tests/test_support.h"

namespace poolworker::testing {
namespace {

// The header without comments, every run of whitespace turned into one space.
std::string normalised(const std::string& text) {
  std::string code;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text.compare(i, 2, "/*") == 0) {
      const size_t end = text.find("*/", i + 2);
      i = end == std::string::npos ? text.size() : end + 1;
      code += ' ';
    } else if (text.compare(i, 2, "//") == 0) {
      const size_t end = text.find('\n', i);
      i = end == std::string::npos ? text.size() : end - 1;
      code += ' ';
    } else {
      code += text[i];
    }
  }
  std::string out;
  bool space = false;
  for (char c : code) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = true;
      continue;
    }
    if (space && !out.empty()) {
      out += ' ';
    }
    space = false;
    out += c;
  }
  return out;
}

std::string sha256(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha256(), nullptr);
  std::string hex;
  char byte[3];
  for (unsigned int i = 0; i < size; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

TEST(PluginAbiVersion, TheHeaderHashIsTheOneRecordedForItsVersion) {
  const std::string header = readFile(sourcePath("include/poolworker/plugin.h"));
  const std::string version = std::to_string(POOLWORKER_PLUGIN_ABI_MAJOR) + "." +
                              std::to_string(POOLWORKER_PLUGIN_ABI_MINOR);
  const std::string hash = sha256(normalised(header));

  std::istringstream lock(readFile(sourcePath("include/poolworker/plugin_abi.lock")));
  std::string line;
  std::vector<std::pair<std::string, std::string>> recorded;
  while (std::getline(lock, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::istringstream fields(line);
    std::string v;
    std::string h;
    fields >> v >> h;
    recorded.emplace_back(v, h);
  }
  ASSERT_FALSE(recorded.empty()) << "plugin_abi.lock records no version";
  EXPECT_EQ(recorded.back().first, version)
      << "the last version in plugin_abi.lock must be the header's " << version << "; add a line '"
      << version << " " << hash << "' when you bump it";
  for (const auto& [v, h] : recorded) {
    if (v == version) {
      EXPECT_EQ(h, hash) << "include/poolworker/plugin.h changed, but its ABI version is still "
                         << version << ". Bump POOLWORKER_PLUGIN_ABI_MINOR for a compatible "
                         << "addition at the end of a table, or POOLWORKER_PLUGIN_ABI_MAJOR (and "
                         << "the entry symbol's name) for anything else, then append the line '"
                         << "<major>.<minor> <sha256 printed by this test>' to plugin_abi.lock. "
                         << "Never edit a recorded line.";
    }
  }
}

TEST(PluginAbiVersion, CommentsAndSpacingDoNotChangeTheHash) {
  EXPECT_EQ(normalised("int  a; // note\n/* block\n comment */ int b;"), "int a; int b;");
  EXPECT_NE(sha256(normalised("int a;")), sha256(normalised("long a;")));
}

}  // namespace
}  // namespace poolworker::testing
