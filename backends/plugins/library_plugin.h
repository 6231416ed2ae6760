#pragma once

// Shared-library backends: a `*.so` exporting the C ABI of <poolworker/plugin.h>, adapted to
// poolworker's BackendFactory and Backend.

#include <string>

#include <poolworker/backend.h>
#include <poolworker/plugin.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::plugins {

/// @brief Loads the library at `path` (`dlopen` with RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE:
/// a plugin is never unloaded, so no run can outlive its code), checks its ABI version and
/// descriptor, and returns a factory for it.
/// @return the factory, or an error saying why the plugin is refused.
Result<BackendFactoryPtr> loadLibraryPlugin(boost::asio::io_context& io, const std::string& path);

/// @brief Adapts a descriptor that is already in memory (tests use it for plugins linked into
/// the test binary). `origin` is what `poolworker backends` shows.
Result<BackendFactoryPtr> adaptPlugin(boost::asio::io_context& io,
                                      const poolworker_plugin* descriptor,
                                      const std::string& origin);

}  // namespace poolworker::backends::plugins
