#pragma once

// The process backend: each flow run is a local process, started in a session of its own so
// that it outlives the worker, with the Prefect engine as its default command.

#include <poolworker/backend.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::process {

/// @brief The factory of the built-in "process" backend, running its work on `io`.
BackendFactoryPtr makeFactory(boost::asio::io_context& io);

}  // namespace poolworker::backends::process
