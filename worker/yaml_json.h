#pragma once

// YAML documents as JSON values, shared by the config file of `start` and the deployment file of
// `serve`. yaml-cpp stays behind this header's implementation.

#include <poolworker/json.h>

namespace YAML {
class Node;
}  // namespace YAML

namespace poolworker {

/// @brief Converts a YAML scalar the way YAML 1.2's core schema reads it: a quoted scalar stays a
/// string; plain `true`/`false`, `null`/`~`/empty and numbers become JSON booleans, null and
/// numbers; anything else is a string.
Json yamlScalar(const YAML::Node& node);

/// @brief Converts a YAML node (mapping, sequence or scalar) to JSON; mapping keys are strings.
Json yamlToJson(const YAML::Node& node);

}  // namespace poolworker
