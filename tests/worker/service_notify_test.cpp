#include "worker/service_notify.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "tests/test_support.h"

namespace poolworker::service {
namespace {

// Sets an environment variable for the scope of one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      old_ = old;
    }
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A datagram socket standing in for systemd's notification socket.
class FakeManager {
 public:
  explicit FakeManager(const std::string& name) : name_(name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, name.data(), name.size());
    if (name[0] == '@') {
      address.sun_path[0] = '\0';
    }
    auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&address), length), 0)
        << std::strerror(errno);
  }
  ~FakeManager() { ::close(fd_); }
  FakeManager(const FakeManager&) = delete;
  FakeManager& operator=(const FakeManager&) = delete;

  std::string receive() {
    char buffer[256];
    ssize_t n = ::recv(fd_, buffer, sizeof(buffer), MSG_DONTWAIT);
    return n < 0 ? std::string() : std::string(buffer, static_cast<size_t>(n));
  }

 private:
  std::string name_;
  int fd_ = -1;
};

TEST(ServiceNotify, SendsTheStateToAPathSocket) {
  poolworker::testing::TempDir dir;
  std::string path = (dir.path() / "notify").string();
  FakeManager manager(path);
  ScopedEnv env("NOTIFY_SOCKET", path);
  EXPECT_TRUE(notify("READY=1"));
  EXPECT_EQ(manager.receive(), "READY=1");
}

TEST(ServiceNotify, SendsTheStateToAnAbstractSocket) {
  std::string name = "@poolworker-test-" + std::to_string(::getpid());
  FakeManager manager(name);
  ScopedEnv env("NOTIFY_SOCKET", name);
  EXPECT_TRUE(notify("STOPPING=1"));
  EXPECT_EQ(manager.receive(), "STOPPING=1");
}

TEST(ServiceNotify, DoesNothingWithoutAManager) {
  ScopedEnv env("NOTIFY_SOCKET", "");
  EXPECT_FALSE(notify("READY=1"));
  ScopedEnv relative("NOTIFY_SOCKET", "relative/path");
  EXPECT_FALSE(notify("READY=1"));
}

TEST(ServiceNotify, WatchdogPeriodFollowsTheEnvironment) {
  {
    ScopedEnv usec("WATCHDOG_USEC", "");
    EXPECT_FALSE(watchdogPeriod().has_value());
  }
  {
    ScopedEnv usec("WATCHDOG_USEC", "30000000");
    ScopedEnv pid("WATCHDOG_PID", std::to_string(::getpid()));
    ASSERT_TRUE(watchdogPeriod().has_value());
    EXPECT_EQ(watchdogPeriod()->count(), 30000000);
  }
  {
    // The watchdog is meant for another process (a parent that exec'd us, say).
    ScopedEnv usec("WATCHDOG_USEC", "30000000");
    ScopedEnv pid("WATCHDOG_PID", std::to_string(::getpid() + 1));
    EXPECT_FALSE(watchdogPeriod().has_value());
  }
  {
    ScopedEnv usec("WATCHDOG_USEC", "soon");
    ScopedEnv pid("WATCHDOG_PID", "");
    EXPECT_FALSE(watchdogPeriod().has_value());
  }
}

}  // namespace
}  // namespace poolworker::service
