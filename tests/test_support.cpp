#include "tests/test_support.h"

#include <fstream>
#include <sstream>
#include <system_error>

#include <gtest/gtest.h>
#include <stdlib.h>

namespace poolworker::testing {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "pwtest-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp failed for " << pattern;
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::filesystem::path sourcePath(const std::string& relative) {
  return std::filesystem::path(POOLWORKER_SOURCE_DIR) / relative;
}

std::filesystem::path binPath(const std::string& name) {
  return std::filesystem::path(POOLWORKER_BIN_DIR) / name;
}

std::string readFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return {};
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace poolworker::testing
