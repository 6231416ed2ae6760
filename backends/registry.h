#pragma once

// The registry of backends: built-in ones and plugins (backends/plugins/loader.h), behind one
// lookup by name.

#include <map>
#include <string>
#include <vector>

#include <poolworker/backend.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends {

/// @brief Holds every backend factory this worker can use, keyed by worker type.
class BackendRegistry {
 public:
  /// @brief Adds a factory. Fails with `InvalidConfiguration` if its name is already taken.
  Result<void> add(BackendFactoryPtr factory);

  /// @brief The factory for `name`, or nullptr.
  BackendFactory* find(const std::string& name) const;

  /// @brief Every registered factory, sorted by name.
  std::vector<BackendFactory*> list() const;

  /// @brief The registered names, sorted, joined with ", " (for error messages).
  std::string names() const;

 private:
  std::map<std::string, BackendFactoryPtr> factories_;
};

/// @brief Registers every backend compiled into this binary. They run on `io`.
Result<void> registerBuiltinBackends(BackendRegistry& registry, boost::asio::io_context& io);

}  // namespace poolworker::backends
