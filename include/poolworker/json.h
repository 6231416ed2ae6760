#pragma once

/// @file
/// @brief The JSON type used throughout poolworker's public API.

#include <nlohmann/json.hpp>

namespace poolworker {

/// @brief A JSON value that keeps the order of object keys as they were inserted or parsed.
///
/// Prefect's job templates are Python dicts, whose order is visible in rendered strings
/// (`str({'b': 1, 'a': 2})`) and in what users see. Keeping insertion order makes poolworker's
/// output match Prefect's byte for byte.
using Json = nlohmann::ordered_json;

}  // namespace poolworker
