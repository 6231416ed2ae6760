#pragma once

// The service manager's notification protocol (systemd's sd_notify), spoken directly: one
// datagram to $NOTIFY_SOCKET. Linking libsystemd for this would map seven more libraries
// (libgcrypt, liblzma, libzstd, ...) into a process whose point is to be small.

#include <chrono>
#include <optional>
#include <string>

namespace poolworker::service {

/// @brief Sends `state` (e.g. "READY=1", "STOPPING=1", "WATCHDOG=1") to the service manager.
/// Returns false when there is no manager listening ($NOTIFY_SOCKET unset) or the send failed.
bool notify(const std::string& state);

/// @brief The watchdog period the service manager asked for ($WATCHDOG_USEC, when
/// $WATCHDOG_PID is unset or names this process), or nothing when the watchdog is off.
std::optional<std::chrono::microseconds> watchdogPeriod();

}  // namespace poolworker::service
