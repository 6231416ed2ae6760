#pragma once

// An event loop, executor and log sink for the Docker backend's tests.

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <gtest/gtest.h>

#include <poolworker/backend.h>

namespace poolworker::docker_testing {

/// Executor on a test's io_context, as the worker implements it.
class TestExecutor : public Executor {
 public:
  explicit TestExecutor(boost::asio::io_context& io) : io_(io) {}

  void post(std::function<void()> task) override { boost::asio::post(io_, std::move(task)); }

  std::unique_ptr<Timer> schedule(std::chrono::milliseconds delay,
                                  std::function<void()> task) override {
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, delay);
    timer->async_wait([timer, task = std::move(task)](const boost::system::error_code& ec) {
      if (!ec) {
        task();
      }
    });
    return std::make_unique<AsioTimer>(timer);
  }

 private:
  class AsioTimer : public Timer {
   public:
    explicit AsioTimer(std::shared_ptr<boost::asio::steady_timer> timer)
        : timer_(std::move(timer)) {}
    ~AsioTimer() override { cancel(); }
    void cancel() override { timer_->cancel(); }

   private:
    std::shared_ptr<boost::asio::steady_timer> timer_;
  };

  boost::asio::io_context& io_;
};

/// Records everything a backend writes about one run.
class RecordingSink : public LogSink {
 public:
  void log(LogLevel level, std::string_view message) override {
    std::lock_guard<std::mutex> lock(mutex_);
    messages_.emplace_back(level, std::string(message));
  }
  void output(std::string_view chunk, bool is_stderr) override {
    std::lock_guard<std::mutex> lock(mutex_);
    (is_stderr ? err_ : out_).append(chunk);
  }

  std::string out() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return out_;
  }
  std::string err() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return err_;
  }
  /// Every message, one per line, "<level> <message>".
  std::string messages() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string all;
    for (const auto& [level, message] : messages_) {
      all += std::to_string(static_cast<int>(level)) + " " + message + "\n";
    }
    return all;
  }

 private:
  mutable std::mutex mutex_;
  std::string out_;
  std::string err_;
  std::vector<std::pair<LogLevel, std::string>> messages_;
};

/// Runs `io` until `done()` holds. Fails the test instead of hanging forever when nothing
/// happens for a long time (a guard against deadlock, not a timing assertion).
inline bool runUntil(boost::asio::io_context& io, const std::function<bool()>& done,
                     std::chrono::seconds guard = std::chrono::seconds(180)) {
  const auto deadline = std::chrono::steady_clock::now() + guard;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "the event loop made no progress towards the expected state";
      return false;
    }
    io.restart();
    io.run_one_for(std::chrono::milliseconds(200));
  }
  return true;
}

/// Runs `io` for `duration`, whatever happens.
inline void runFor(boost::asio::io_context& io, std::chrono::milliseconds duration) {
  const auto deadline = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < deadline) {
    io.restart();
    io.run_one_until(deadline);
  }
}

/// Calls `operation` with a callback and runs `io` until the callback was called; checks that
/// it is called exactly once.
template <typename T>
Result<T> await(boost::asio::io_context& io, const std::function<void(Callback<T>)>& operation) {
  std::optional<Result<T>> result;
  int calls = 0;
  operation([&](Result<T> value) {
    ++calls;
    result.emplace(std::move(value));
  });
  if (!runUntil(io, [&] { return result.has_value(); })) {
    return makeError(ErrorKind::Internal, "callback was never called");
  }
  // Let stray second calls show up.
  io.restart();
  io.poll();
  EXPECT_EQ(calls, 1);
  return std::move(*result);
}

}  // namespace poolworker::docker_testing
