#pragma once

/// @file
/// @brief Splits a command line into arguments the way POSIX shells quote, without a shell.

#include <string>
#include <string_view>
#include <vector>

#include <poolworker/result.h>

namespace poolworker::backends::common {

/// @brief Splits `command` into arguments with the rules of Python's `shlex.split(command)`
/// (POSIX mode, comments off).
///
/// Whitespace (space, tab, CR, LF) separates arguments. Single quotes keep everything literally;
/// double quotes keep everything except that a backslash escapes `"` and `\`; outside quotes a
/// backslash escapes any character. Nothing is expanded: `$HOME`, `*` and `#` stay as they are.
/// Work is done on bytes, which is exact for UTF-8 input since every special character is ASCII.
/// @param command the command line, e.g. `sh -c 'echo "$HOME"'`.
/// @return the arguments (possibly none), or `InvalidConfiguration` with the message
///   "no closing quotation" or "no escaped character" (without a location, for the caller to
///   prefix).
Result<std::vector<std::string>> shellSplit(std::string_view command);

}  // namespace poolworker::backends::common
