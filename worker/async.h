#pragma once

// Glue between callback-style APIs (backends, cpprestsdk) and the worker's coroutines on one
// io_context.

#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it.

#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>

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
    // While the operation runs outside the io_context (a cpprestsdk thread, a child process),
    // nothing else may keep the context busy: tracked work stops run() from returning early.
    auto work = asio::prefer(executor, asio::execution::outstanding_work.tracked);
    start([work, shared](Result<T> result) mutable {
      asio::post(work, [shared, result = std::move(result)]() mutable {
        (*shared)(std::move(result));
      });
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
