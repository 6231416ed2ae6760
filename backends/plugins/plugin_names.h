#pragma once

// What a plugin's backend name may be: it becomes a work pool's `type`, a key of the config
// file's `backends:` map and part of file names.

#include <string>

#include <poolworker/result.h>

namespace poolworker::backends::plugins {

/// @brief Succeeds for 1 to 64 letters, digits, '-' and '_', starting with a letter.
inline Result<void> checkBackendName(const std::string& name) {
  if (name.empty()) {
    return makeError(ErrorKind::InvalidConfiguration, "its backend name is empty");
  }
  bool ok = name.size() <= 64 && std::isalpha(static_cast<unsigned char>(name[0]));
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_');
  }
  if (!ok) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "its backend name '" + name +
                         "' is not 1 to 64 letters, digits, '-' or '_' starting with a letter");
  }
  return success();
}

}  // namespace poolworker::backends::plugins
