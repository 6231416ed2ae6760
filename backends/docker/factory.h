#pragma once

/// @file
/// @brief The factory of the built-in "docker" backend: its options, its default base job
/// template (the same as Prefect's Docker worker) and the creation of instances.

#include <poolworker/backend.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::docker {

/// @brief The factory of the built-in "docker" backend, running its work on `io`.
BackendFactoryPtr makeFactory(boost::asio::io_context& io);

}  // namespace poolworker::backends::docker
