#include "worker/async.h"

namespace poolworker {
namespace {

class AsioTimer final : public Timer {
 public:
  AsioTimer(asio::io_context& io, std::chrono::milliseconds delay, std::function<void()> task)
      : timer_(std::make_shared<asio::steady_timer>(io, delay)) {
    timer_->async_wait([timer = timer_, task = std::move(task)](boost::system::error_code ec) {
      if (!ec) {
        task();
      }
    });
  }
  ~AsioTimer() override { cancel(); }
  AsioTimer(const AsioTimer&) = delete;
  AsioTimer& operator=(const AsioTimer&) = delete;

  void cancel() override { timer_->cancel(); }

 private:
  // Shared with the pending wait, so that cancelling from the task itself is safe.
  std::shared_ptr<asio::steady_timer> timer_;
};

}  // namespace

void AsioExecutor::post(std::function<void()> task) { asio::post(io_, std::move(task)); }

std::unique_ptr<Timer> AsioExecutor::schedule(std::chrono::milliseconds delay,
                                              std::function<void()> task) {
  return std::make_unique<AsioTimer>(io_, delay, std::move(task));
}

}  // namespace poolworker
