#pragma once

/// @file
/// @brief The worker's event loop, as a backend sees it.

#include <chrono>
#include <functional>
#include <memory>

namespace poolworker {

/// @brief A pending timer. Destroying it, or calling `cancel`, stops the task from running.
class Timer {
 public:
  virtual ~Timer() = default;
  /// @brief Stops the task if it has not run yet. Safe to call more than once.
  virtual void cancel() = 0;
};

/// @brief Runs tasks on the worker's single event-loop thread.
///
/// Every call into a `Backend` happens on this thread, and every callback a backend invokes
/// must be invoked on it too. A backend that does blocking work does it on a thread of its own
/// and hands the result back with `post`.
///
/// Thread-safety: `post` may be called from any thread; `schedule`, and the `Timer` it returns,
/// only on the event-loop thread.
class Executor {
 public:
  virtual ~Executor() = default;

  /// @brief Runs `task` on the event-loop thread, soon and never inline.
  virtual void post(std::function<void()> task) = 0;

  /// @brief Runs `task` on the event-loop thread once `delay` has passed.
  /// @return a timer owned by the caller; the task does not run once it is destroyed.
  virtual std::unique_ptr<Timer> schedule(std::chrono::milliseconds delay,
                                          std::function<void()> task) = 0;
};

}  // namespace poolworker
