#pragma once

// Helpers shared by the C++ test suites.

#include <filesystem>
#include <string>

namespace poolworker::testing {

/// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Absolute path of a file in the source tree, e.g. sourcePath("templates/process.json").
std::filesystem::path sourcePath(const std::string& relative);

/// Absolute path of a program built by this tree, e.g. binPath("poolworker").
std::filesystem::path binPath(const std::string& name);

/// Reads a whole file; fails the current test when it cannot.
std::string readFile(const std::filesystem::path& path);

}  // namespace poolworker::testing
