#include "backends/plugins/loader.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <sys/stat.h>
#include <unistd.h>

#include "backends/plugins/executable_plugin.h"
#include "backends/plugins/library_plugin.h"

namespace poolworker::backends::plugins {
namespace {

namespace fs = std::filesystem;

Error unsafe(const std::string& message) {
  return makeError(ErrorKind::InvalidConfiguration, message);
}

Result<void> checkOwnerAndMode(const std::string& path, const char* what) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    return unsafe(std::string(what) + " " + path + " cannot be inspected: " + std::strerror(errno));
  }
  if (info.st_uid != 0 && info.st_uid != ::geteuid()) {
    return unsafe(std::string(what) + " " + path + " belongs to uid " +
                  std::to_string(info.st_uid) + ", neither root nor the user poolworker runs as (" +
                  std::to_string(::geteuid()) + ")");
  }
  if ((info.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(info.st_mode & 07777));
    return unsafe(std::string(what) + " " + path + " is writable by " +
                  ((info.st_mode & S_IWOTH) != 0 ? "others" : "its group") + " (mode " + mode +
                  "); run chmod go-w on it");
  }
  return success();
}

}  // namespace

Result<void> checkSafeToLoad(const std::string& path) {
  std::error_code error;
  const fs::path real = fs::canonical(path, error);
  if (error) {
    return unsafe("plugin " + path + " cannot be resolved: " + error.message());
  }
  if (auto dir = checkOwnerAndMode(real.parent_path().string(), "the plugin directory"); !dir) {
    return unsafe("refused plugin " + path + ": " + dir.error().message);
  }
  if (auto file = checkOwnerAndMode(real.string(), "the file"); !file) {
    return unsafe("refused plugin " + path + ": " + file.error().message);
  }
  return success();
}

LoadReport loadPlugins(BackendRegistry& registry, boost::asio::io_context& io,
                       const std::vector<std::string>& directories,
                       std::chrono::milliseconds info_timeout) {
  LoadReport report;
  for (const auto& directory : directories) {
    std::error_code error;
    if (!fs::is_directory(directory, error)) {
      report.refused.push_back("plugin directory " + directory + " does not exist or is not a " +
                               "directory");
      continue;
    }
    std::vector<fs::path> entries;
    for (const auto& entry : fs::directory_iterator(directory, error)) {
      entries.push_back(entry.path());
    }
    if (error) {
      report.refused.push_back("plugin directory " + directory +
                               " cannot be read: " + error.message());
      continue;
    }
    std::sort(entries.begin(), entries.end());
    for (const auto& entry : entries) {
      const std::string name = entry.filename().string();
      const std::string path = entry.string();
      if (name.empty() || name[0] == '.' || !fs::is_regular_file(entry, error)) {
        continue;
      }
      const bool library = entry.extension() == ".so";
      if (!library && ::access(path.c_str(), X_OK) != 0) {
        continue;  // a README, a config file: not a plugin
      }
      if (auto safe = checkSafeToLoad(path); !safe) {
        report.refused.push_back(safe.error().message);
        continue;
      }
      auto factory =
          library ? loadLibraryPlugin(io, path) : loadExecutablePlugin(io, path, info_timeout);
      if (!factory) {
        report.refused.push_back("refused " + factory.error().message);
        continue;
      }
      const BackendInfo info = (*factory)->info();
      if (auto added = registry.add(std::move(factory).value()); !added) {
        report.refused.push_back("refused plugin " + path + ": " + added.error().message);
        continue;
      }
      report.loaded.push_back(
          "backend plugin '" + info.name + "' " + info.version + " (" +
          (library ? "shared library, ABI " + std::to_string(POOLWORKER_PLUGIN_ABI_MAJOR) + "." +
                         std::to_string(POOLWORKER_PLUGIN_ABI_MINOR)
                   : "executable, protocol " + std::to_string(kExecutableProtocolVersion)) +
          ") from " + path);
    }
  }
  return report;
}

}  // namespace poolworker::backends::plugins
