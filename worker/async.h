#pragma once

// Glue between callback-style APIs (backends, the HTTP client) and the worker's coroutines on one
// io_context.

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <poolworker/executor.h>
#include <poolworker/result.h>

namespace poolworker {

namespace asio = boost::asio;

// GCC 12 destroys twice a prvalue of aggregate or closure type (a lambda, `T{...}`) that appears
// inside a `co_await` expression. Build such awaitables in a statement of their own:
//   auto op = awaitCallback<T>([...](auto done) { ... });
//   auto result = co_await std::move(op);
// The ASan build of the tests catches any regression.

/// @brief Awaits a callback-style operation. `start` receives a `Callback<T>`-compatible
/// function; whatever thread calls it, the coroutine resumes on its own executor.
template <typename T, typename Start>
asio::awaitable<Result<T>> awaitCallback(Start start) {
  auto executor = co_await asio::this_coro::executor;
  auto initiation = [executor, start = std::move(start)](auto handler) mutable {
    auto shared = std::make_shared<decltype(handler)>(std::move(handler));
    // While the operation runs outside the io_context (a backend's thread, a child process),
    // nothing else may keep the context busy: tracked work stops run() from returning early.
    auto work = asio::prefer(executor, asio::execution::outstanding_work.tracked);
    start([work, shared](Result<T> result) mutable {
      asio::post(work,
                 [shared, result = std::move(result)]() mutable { (*shared)(std::move(result)); });
    });
  };
  auto op = asio::async_initiate<decltype(asio::use_awaitable), void(Result<T>)>(
      std::move(initiation), asio::use_awaitable);
  co_return co_await std::move(op);
}

/// @brief Suspends the calling coroutine for `delay` (or until `timer` is cancelled).
inline asio::awaitable<void> sleepFor(std::chrono::steady_clock::duration delay) {
  asio::steady_timer timer(co_await asio::this_coro::executor, delay);
  boost::system::error_code ignored;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

/// @brief A coroutine started at once, whose result is awaited later (by any number of
/// coroutines): for requests that need not wait for one another.
template <typename T>
class Started {
 public:
  /// @brief Starts `task` on `io`; it runs to its end even if nobody awaits it.
  Started(asio::io_context& io, asio::awaitable<T> task) : state_(std::make_shared<State>(io)) {
    asio::co_spawn(io, run(state_, std::move(task)), asio::detached);
  }

  /// @brief True once the task ended.
  bool done() const { return state_->value.has_value(); }

  /// @brief The task's result (a copy), once it ended.
  asio::awaitable<T> get() {
    auto state = state_;
    while (!state->value) {
      boost::system::error_code ignored;
      co_await state->ready.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return *state->value;
  }

 private:
  struct State {
    explicit State(asio::io_context& io) : ready(io, asio::steady_timer::time_point::max()) {}
    std::optional<T> value;
    asio::steady_timer ready;  ///< Cancelled when `value` is set, to wake the awaiting ones.
  };

  static asio::awaitable<void> run(std::shared_ptr<State> state, asio::awaitable<T> task) {
    state->value.emplace(co_await std::move(task));
    state->ready.cancel();
  }

  std::shared_ptr<State> state_;
};

/// @brief A counting semaphore for coroutines of one io_context: at most `slots` holders at a
/// time; the others wait in arrival order. A slot is released when its `Slot` is destroyed,
/// also when the coroutine holding it is destroyed with its io_context.
class AsyncGate {
 private:
  struct Waiter {
    explicit Waiter(const asio::any_io_executor& executor)
        : wake(executor, asio::steady_timer::time_point::max()) {}
    asio::steady_timer wake;
    bool granted = false;
  };
  struct State {
    int free = 0;
    // Weak: a waiter whose coroutine was destroyed must not be handed a slot.
    std::deque<std::weak_ptr<Waiter>> waiters;

    void release() {
      while (!waiters.empty()) {
        auto waiter = waiters.front().lock();
        waiters.pop_front();
        if (waiter) {
          waiter->granted = true;
          waiter->wake.cancel();
          return;
        }
      }
      ++free;
    }
  };

 public:
  /// @brief Holds one slot until destroyed.
  class Slot {
   public:
    Slot() = default;
    explicit Slot(std::shared_ptr<State> state) : state_(std::move(state)) {}
    Slot(Slot&& other) noexcept = default;
    Slot& operator=(Slot&& other) noexcept {
      if (this != &other) {
        reset();
        state_ = std::move(other.state_);
      }
      return *this;
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { reset(); }

    /// @brief Gives the slot back now.
    void reset() {
      if (auto state = std::exchange(state_, nullptr)) {
        state->release();
      }
    }

   private:
    std::shared_ptr<State> state_;
  };

  /// @param slots how many holders at once; at least 1.
  explicit AsyncGate(int slots) : state_(std::make_shared<State>()) {
    state_->free = slots < 1 ? 1 : slots;
  }

  /// @brief Waits for a free slot.
  asio::awaitable<Slot> acquire() {
    if (state_->free > 0 && state_->waiters.empty()) {
      --state_->free;
      co_return Slot(state_);
    }
    auto waiter = std::make_shared<Waiter>(co_await asio::this_coro::executor);
    state_->waiters.push_back(waiter);
    while (!waiter->granted) {
      boost::system::error_code ignored;
      co_await waiter->wake.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return Slot(state_);
  }

  /// @brief True when no slot is free: `acquire` would wait.
  bool full() const { return state_->free == 0; }

  /// @brief How many coroutines wait for a slot.
  size_t waiting() const { return state_->waiters.size(); }

 private:
  std::shared_ptr<State> state_;
};

/// @brief The worker's `Executor` for backends: tasks and timers on an io_context.
class AsioExecutor final : public Executor {
 public:
  explicit AsioExecutor(asio::io_context& io) : io_(io) {}

  void post(std::function<void()> task) override;
  std::unique_ptr<Timer> schedule(std::chrono::milliseconds delay,
                                  std::function<void()> task) override;

 private:
  asio::io_context& io_;
};

}  // namespace poolworker
