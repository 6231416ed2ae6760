#pragma once

/// @file
/// @brief The factory of the built-in "kubernetes" backend: its default base job template (the
/// same as prefect-kubernetes') and the creation of instances.

#include <poolworker/backend.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::kubernetes {

/// @brief The factory of the built-in "kubernetes" backend, running its work on `io`.
BackendFactoryPtr makeFactory(boost::asio::io_context& io);

}  // namespace poolworker::backends::kubernetes
