#pragma once

/// @file
/// @brief What the process backend reads about processes and the machine from /proc, to find a
/// run's process again and to tell it apart from a later process that reuses its pid.

#include <cstdint>
#include <optional>
#include <string>

#include <sys/types.h>

namespace poolworker::backends::process {

/// @brief The fields of `/proc/<pid>/stat` the backend uses.
struct ProcStat {
  char state = '?';              ///< 'R', 'S', 'D', 'Z' (zombie: ended, not yet reaped), ...
  pid_t process_group = 0;       ///< Field 5: the process group id.
  std::uint64_t start_time = 0;  ///< Field 22: start time in clock ticks after boot.

  /// @brief True when the process has ended and waits to be reaped.
  bool ended() const { return state == 'Z' || state == 'X'; }
};

/// @brief Reads `/proc/<pid>/stat`.
/// @param pid the process.
/// @return its fields, or nothing when there is no such process (or /proc cannot be read).
std::optional<ProcStat> readProcStat(pid_t pid);

/// @brief Parses the text of a `/proc/<pid>/stat` file.
/// @param text the file's content; the command name may contain spaces and parentheses.
/// @return its fields, or nothing when the text is malformed.
std::optional<ProcStat> parseProcStat(const std::string& text);

/// @brief The kernel's boot id (`/proc/sys/kernel/random/boot_id`), which changes at every boot.
/// @return the id, or an empty string when it cannot be read.
std::string readBootId();

/// @brief The machine's host name, as `gethostname` reports it.
std::string hostName();

/// @brief Opens a pidfd for `pid` (Linux 5.3 and later). The descriptor is close-on-exec.
/// @return the descriptor, or -1 with `errno` set.
int openPidfd(pid_t pid);

}  // namespace poolworker::backends::process
