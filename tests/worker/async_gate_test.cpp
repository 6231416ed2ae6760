// AsyncGate: the bound on claimed runs being started at once.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "worker/async.h"

namespace poolworker {
namespace {

// Holds a slot for `hold`, noting how many holders there were at once and the order of entry.
asio::awaitable<void> holder(AsyncGate& gate, int id, std::chrono::milliseconds hold, int& holding,
                             int& most, std::vector<int>& order) {
  auto slot = co_await gate.acquire();
  order.push_back(id);
  ++holding;
  most = std::max(most, holding);
  co_await sleepFor(hold);
  --holding;
}

TEST(AsyncGate, NeverHasMoreHoldersThanSlotsAndServesWaitersInOrder) {
  asio::io_context io;
  AsyncGate gate(2);
  int holding = 0;
  int most = 0;
  std::vector<int> order;
  for (int id = 0; id < 7; ++id) {
    asio::co_spawn(io, holder(gate, id, std::chrono::milliseconds(5), holding, most, order),
                   asio::detached);
  }
  io.run();
  EXPECT_EQ(most, 2);
  EXPECT_EQ(holding, 0);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(gate.full());
  EXPECT_EQ(gate.waiting(), 0u);
}

TEST(AsyncGate, ResetGivesTheSlotBackBeforeTheHolderEnds) {
  asio::io_context io;
  AsyncGate gate(1);
  std::vector<std::string> events;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto slot = co_await gate.acquire();
        events.push_back("first in");
        co_await sleepFor(std::chrono::milliseconds(5));
        slot.reset();
        events.push_back("first released");
        co_await sleepFor(std::chrono::milliseconds(20));
        events.push_back("first ends");
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto slot = co_await gate.acquire();
        events.push_back("second in");
      },
      asio::detached);
  io.run();
  EXPECT_EQ(events,
            (std::vector<std::string>{"first in", "first released", "second in", "first ends"}));
}

TEST(AsyncGate, AWaiterDestroyedWithItsContextTakesNoSlot) {
  AsyncGate gate(1);
  {
    asio::io_context io;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto slot = co_await gate.acquire();
          co_await sleepFor(std::chrono::hours(1));
        },
        asio::detached);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          auto slot = co_await gate.acquire();
          ADD_FAILURE() << "the second coroutine must still be waiting";
        },
        asio::detached);
    for (int step = 0; step < 1000 && gate.waiting() == 0; ++step) {
      io.run_one_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(gate.full());
    EXPECT_EQ(gate.waiting(), 1u);
  }  // Both coroutines are destroyed here, without running on.
  asio::io_context io;
  bool entered = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto slot = co_await gate.acquire();
        entered = true;
      },
      asio::detached);
  io.run();
  EXPECT_TRUE(entered);
}

}  // namespace
}  // namespace poolworker
