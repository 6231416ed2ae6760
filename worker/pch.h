#pragma once

// Precompiled for poolworker_core only: the heavy third-party headers most of worker/ uses.
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it.

#include <boost/asio.hpp>
#include <nlohmann/json.hpp>
