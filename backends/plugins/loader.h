#pragma once

// Finds backend plugins in plugin directories, checks that they are safe to load, loads them and
// registers them beside the built-in backends.

#include <chrono>
#include <string>
#include <vector>

#include <poolworker/result.h>

#include "backends/registry.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::plugins {

/// @brief What `loadPlugins` did, for the caller to log.
struct LoadReport {
  std::vector<std::string> loaded;   ///< One line per registered plugin: name, version, path.
  std::vector<std::string> refused;  ///< One message per refused file, naming it and why.
};

/// @brief Checks that poolworker may load `path`: it and its directory belong to root or to
/// the user poolworker runs as, and neither is writable by group or others (anyone who can
/// replace a plugin can run code as the worker).
Result<void> checkSafeToLoad(const std::string& path);

/// @brief Loads every plugin in `directories`, in order, each directory's entries sorted by
/// name: `*.so` files as shared-library plugins, other executable regular files as executable
/// plugins. Hidden files and subdirectories are skipped. A refused plugin is reported and
/// skipped; the others still load. A plugin whose name is taken (by a built-in backend or an
/// earlier plugin) is refused.
LoadReport loadPlugins(BackendRegistry& registry, boost::asio::io_context& io,
                       const std::vector<std::string>& directories,
                       std::chrono::milliseconds info_timeout = std::chrono::seconds(30));

}  // namespace poolworker::backends::plugins
