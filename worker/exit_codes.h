#pragma once

// Exit codes of poolworker itself, and what the exit codes of flow-run infrastructure mean.

#include <string>

namespace poolworker::exit_codes {

inline constexpr int kOk = 0;
/// A setting, the API URL, the credentials or the backend made start-up impossible.
inline constexpr int kStartupFailure = 1;
/// The command line was wrong.
inline constexpr int kUsage = 2;

/// @brief One sentence on what an infrastructure exit code usually means (signals negative).
std::string explain(int code);
/// @brief What a user can do about it.
std::string resolution(int code);
/// @brief True for codes that usually mean a deliberate stop (cancellation, shutdown).
bool isQuiet(int code);

}  // namespace poolworker::exit_codes
