#include "backends/process/proc_info.h"

#include <cerrno>
#include <fstream>
#include <sstream>

#include <sys/syscall.h>
#include <unistd.h>

namespace poolworker::backends::process {
namespace {

std::string readSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return {};
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::optional<ProcStat> parseProcStat(const std::string& text) {
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) {
    return std::nullopt;
  }
  std::istringstream fields(text.substr(paren + 1));
  ProcStat stat;
  long long parent = 0;
  long long group = 0;
  if (!(fields >> stat.state >> parent >> group)) {
    return std::nullopt;
  }
  stat.process_group = static_cast<pid_t>(group);
  // Fields 6 to 21 lie between the group and the start time.
  std::string skipped;
  for (int field = 6; field <= 21; ++field) {
    if (!(fields >> skipped)) {
      return std::nullopt;
    }
  }
  if (!(fields >> stat.start_time)) {
    return std::nullopt;
  }
  return stat;
}

std::optional<ProcStat> readProcStat(pid_t pid) {
  if (pid <= 0) {
    return std::nullopt;
  }
  const std::string text = readSmallFile("/proc/" + std::to_string(pid) + "/stat");
  if (text.empty()) {
    return std::nullopt;
  }
  return parseProcStat(text);
}

std::string readBootId() {
  std::string id = readSmallFile("/proc/sys/kernel/random/boot_id");
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) {
    id.pop_back();
  }
  return id;
}

std::string hostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) {
    return "localhost";
  }
  return name;
}

int openPidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

}  // namespace poolworker::backends::process
