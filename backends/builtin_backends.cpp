// The one list of built-in backends. Each entry is guarded by its CMake option.

#include "backends/registry.h"

#ifdef POOLWORKER_BACKEND_PROCESS
#include "backends/process/factory.h"
#endif
#ifdef POOLWORKER_BACKEND_DOCKER
#include "backends/docker/factory.h"
#endif
#ifdef POOLWORKER_BACKEND_KUBERNETES
#include "backends/kubernetes/factory.h"
#endif

namespace poolworker::backends {

Result<void> registerBuiltinBackends(BackendRegistry& registry, boost::asio::io_context& io) {
#ifdef POOLWORKER_BACKEND_PROCESS
  if (auto added = registry.add(process::makeFactory(io)); !added) {
    return added;
  }
#endif
#ifdef POOLWORKER_BACKEND_DOCKER
  if (auto added = registry.add(docker::makeFactory(io)); !added) {
    return added;
  }
#endif
#ifdef POOLWORKER_BACKEND_KUBERNETES
  if (auto added = registry.add(kubernetes::makeFactory(io)); !added) {
    return added;
  }
#endif
  (void)io;
  (void)registry;
  return success();
}

}  // namespace poolworker::backends
