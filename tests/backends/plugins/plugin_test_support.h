#pragma once

// Helpers of the plugin tests: where the built plugins are, a safe plugin directory to copy
// them into, and running one backend call to its end on a private event loop.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <poolworker/backend.h>

#include "tests/test_support.h"

namespace poolworker::testing {

/// A plugin built by this tree: "simple-process" (examples) or a fixture of
/// tests/backends/plugins/fixtures ("c-good", "abi-v2-symbol", "throwing-process", ...).
inline std::filesystem::path builtPlugin(const std::string& name) {
  const std::filesystem::path build = std::filesystem::path(POOLWORKER_BIN_DIR).parent_path();
  if (name == "simple-process") {
    return build / "plugins" / "simple-process.so";
  }
  return build / "test-plugins" / name / (name + ".so");
}

/// An executable plugin of the source tree: "script-process" (examples) or "faulty-script".
inline std::filesystem::path scriptPlugin(const std::string& name) {
  if (name == "script-process") {
    return sourcePath("examples/plugins/script-process/script-process");
  }
  return sourcePath("tests/backends/plugins/fixtures/" + name);
}

/// A directory that the loader accepts (mode 0700, ours), holding copies of plugins.
class PluginDir {
 public:
  PluginDir() : dir_(), path_(dir_.path() / "plugins") {
    std::filesystem::create_directory(path_);
    ::chmod(path_.c_str(), 0755);
  }
  /// Copies `file` in (as `name`, default its own name), mode 0755; returns the copy's path.
  std::filesystem::path add(const std::filesystem::path& file, std::string name = "") {
    const auto target = path_ / (name.empty() ? file.filename().string() : name);
    std::filesystem::copy_file(file, target, std::filesystem::copy_options::overwrite_existing);
    ::chmod(target.c_str(), 0755);
    return target;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  TempDir dir_;
  std::filesystem::path path_;
};

/// Starts `op` with a callback and runs `io` until the callback has been called (at most
/// `timeout`); returns what it got.
template <typename T, typename Op>
std::optional<Result<T>> runToEnd(boost::asio::io_context& io, Op op,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  std::optional<Result<T>> out;
  op([&out](Result<T> result) { out.emplace(std::move(result)); });
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  io.restart();
  while (!out && std::chrono::steady_clock::now() < deadline) {
    io.run_one_for(std::chrono::milliseconds(100));
  }
  return out;
}

/// A log sink that keeps what it is given.
class RecordingLog final : public LogSink {
 public:
  void log(LogLevel, std::string_view message) override {
    std::lock_guard lock(mu_);
    messages_ += std::string(message) + "\n";
  }
  void output(std::string_view chunk, bool) override {
    std::lock_guard lock(mu_);
    output_ += chunk;
  }
  std::string messages() {
    std::lock_guard lock(mu_);
    return messages_;
  }
  std::string output() {
    std::lock_guard lock(mu_);
    return output_;
  }

 private:
  std::mutex mu_;
  std::string messages_;
  std::string output_;
};

}  // namespace poolworker::testing
