#include "worker/journal.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "worker/prefect_client.h"

namespace poolworker {
namespace {

namespace fs = std::filesystem;

const char* phaseName(RunPhase phase) {
  switch (phase) {
    case RunPhase::Claiming:
      return "claiming";
    case RunPhase::Claimed:
      return "claimed";
    case RunPhase::Started:
      return "started";
  }
  return "claiming";
}

// A pool name may hold characters that are awkward in a path; keep it readable but safe.
std::string safeName(const std::string& name) {
  std::string out;
  for (unsigned char c : name) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  if (out.empty() || out == "." || out == "..") {
    out = "_" + out;
  }
  return out;
}

Result<void> syncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return makeError(ErrorKind::Internal, "cannot open '" + dir + "': " + std::strerror(errno));
  }
  ::fsync(fd);
  ::close(fd);
  return success();
}

// Writes `content` under `dir/name` by way of a temporary file, so that a reader (or a worker
// started after a kill) sees the old entry or the new one, never half of one.
Result<void> writeFileAtomically(const std::string& dir, const std::string& name,
                                 const std::string& content) {
  std::string tmp = dir + "/." + name + ".tmp";
  std::string final_path = dir + "/" + name;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return makeError(ErrorKind::Internal, "cannot write '" + tmp + "': " + std::strerror(errno));
  }
  const char* p = content.data();
  size_t left = content.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return makeError(ErrorKind::Internal, "cannot write '" + tmp + "': " + std::strerror(err));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return makeError(ErrorKind::Internal, "cannot write '" + tmp + "': " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return makeError(ErrorKind::Internal,
                     "cannot rename '" + tmp + "' to '" + final_path + "': " + std::strerror(err));
  }
  return success();
}

}  // namespace

Json JournalEntry::toJson() const {
  Json j = {{"flow_run_id", flow_run_id}, {"flow_run_name", flow_run_name},
            {"phase", phaseName(phase)},  {"transition_id", transition_id},
            {"backend", backend},         {"updated", updated},
            {"cancelling", cancelling}};
  if (handle) {
    j["handle"] = {{"backend", handle->backend},
                   {"infrastructure_pid", handle->infrastructure_pid},
                   {"data", handle->data}};
  }
  return j;
}

Result<JournalEntry> JournalEntry::fromJson(const Json& j) {
  if (!j.is_object() || !j.contains("flow_run_id") || !j["flow_run_id"].is_string()) {
    return makeError(ErrorKind::InvalidConfiguration, "not a journal entry");
  }
  JournalEntry e;
  e.flow_run_id = j["flow_run_id"].get<std::string>();
  e.flow_run_name = j.value("flow_run_name", "");
  std::string phase = j.value("phase", "claiming");
  e.phase = phase == "started"   ? RunPhase::Started
            : phase == "claimed" ? RunPhase::Claimed
                                 : RunPhase::Claiming;
  e.transition_id = j.value("transition_id", "");
  e.backend = j.value("backend", "");
  e.updated = j.value("updated", "");
  e.cancelling = j.value("cancelling", false);
  if (auto h = j.find("handle"); h != j.end() && h->is_object()) {
    RunHandle handle;
    handle.backend = h->value("backend", e.backend);
    handle.infrastructure_pid = h->value("infrastructure_pid", "");
    handle.data = h->value("data", Json::object());
    e.handle = std::move(handle);
  }
  return e;
}

Result<std::unique_ptr<Journal>> Journal::open(const std::string& state_dir,
                                               const std::string& pool) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  if (ec) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "state directory '" + state_dir + "' cannot be created: " + ec.message());
  }
  const std::string base = state_dir + "/" + safeName(pool);
  for (int instance = 1; instance <= 64; ++instance) {
    std::string dir = instance == 1 ? base : base + "~" + std::to_string(instance);
    fs::create_directories(dir + "/runs", ec);
    if (ec) {
      return makeError(ErrorKind::InvalidConfiguration,
                       "state directory '" + dir + "' cannot be created: " + ec.message());
    }
    std::string lock_path = dir + "/lock";
    int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return makeError(ErrorKind::InvalidConfiguration,
                       "cannot open '" + lock_path + "': " + std::strerror(errno));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      std::string pid = std::to_string(::getpid()) + "\n";
      if (::ftruncate(fd, 0) == 0) {
        ssize_t ignored = ::write(fd, pid.data(), pid.size());
        (void)ignored;
      }
      return std::unique_ptr<Journal>(new Journal(dir, fd));
    }
    ::close(fd);
  }
  return makeError(ErrorKind::InvalidConfiguration,
                   "every journal under '" + base + "' is locked by another running poolworker");
}

Journal::Journal(std::string dir, int lock_fd)
    : dir_(std::move(dir)), lock_fd_(lock_fd), syncer_([this] { syncLoop(); }) {}

Journal::~Journal() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  syncer_.join();
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
  }
}

void Journal::syncLoop() {
  const std::string runs = dir_ + "/runs";
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || requested_ != completed_; });
    if (requested_ == completed_) {
      return;  // Stopping with nothing left to commit.
    }
    const auto pass = requested_;
    std::vector<std::string> files;
    files.swap(unsynced_);
    lock.unlock();
    for (const auto& file : files) {
      // A file replaced or removed since it was written needs nothing more: its successor is
      // in a later pass, and a removal needs only the directory's sync.
      const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        ::fdatasync(fd);
        ::close(fd);
      }
    }
    (void)syncDirectory(runs);
    lock.lock();
    completed_ = pass;
    synced_.notify_all();
  }
}

void Journal::sync() {
  std::unique_lock lock(mutex_);
  const auto wanted = requested_;
  synced_.wait(lock, [&] { return completed_ >= wanted; });
}

Result<void> Journal::write(JournalEntry entry) {
  entry.updated = prefect::formatTimestamp(std::chrono::system_clock::now());
  const std::string name = safeName(entry.flow_run_id) + ".json";
  auto written = writeFileAtomically(dir_ + "/runs", name, entry.toJson().dump(2) + "\n");
  if (written) {
    std::lock_guard lock(mutex_);
    unsynced_.push_back(dir_ + "/runs/" + name);
    ++requested_;
  }
  wake_.notify_one();
  return written;
}

Result<void> Journal::remove(const std::string& flow_run_id) {
  std::string path = dir_ + "/runs/" + safeName(flow_run_id) + ".json";
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return makeError(ErrorKind::Internal, "cannot remove '" + path + "': " + std::strerror(errno));
  }
  {
    std::lock_guard lock(mutex_);
    ++requested_;
  }
  wake_.notify_one();
  return success();
}

std::vector<JournalEntry> Journal::load(std::vector<std::string>* problems) const {
  std::vector<JournalEntry> out;
  std::error_code ec;
  for (const auto& file : fs::directory_iterator(dir_ + "/runs", ec)) {
    const std::string name = file.path().filename().string();
    if (name.empty() || name[0] == '.' || file.path().extension() != ".json") {
      continue;
    }
    std::ifstream in(file.path());
    std::stringstream ss;
    ss << in.rdbuf();
    Json j = Json::parse(ss.str(), nullptr, false);
    auto entry = JournalEntry::fromJson(j);
    if (!entry) {
      if (problems != nullptr) {
        problems->push_back(file.path().string() + ": unreadable journal entry");
      }
      continue;
    }
    out.push_back(std::move(entry).value());
  }
  return out;
}

std::string Journal::backendDirectory(const std::string& backend) const {
  std::string dir = dir_ + "/backend-" + safeName(backend);
  std::error_code ec;
  fs::create_directories(dir, ec);
  return dir;
}

}  // namespace poolworker
