#pragma once

// The run journal: one small JSON file per run this worker has claimed, written atomically, so
// that a worker started after a crash or an upgrade finds every run it must settle.
//
// Durability: an entry is in the kernel (written and renamed into place) when `write` returns,
// so it survives the worker being killed at any point. Making it survive a power loss as well
// (fdatasync of the file, fsync of the directory) is left to a background thread that commits
// every entry written meanwhile in one pass: two disk syncs per run, on the event loop, capped the
// worker at ~100 run starts a second, and the infrastructure a run starts rarely survives a power
// loss of the worker's machine either.

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>
#include <poolworker/run.h>

namespace poolworker {

/// @brief Where a run stands, as far as the journal knows.
enum class RunPhase {
  Claiming,  ///< A PENDING proposal was (maybe) sent; `transition_id` says which one.
  Claimed,   ///< The server accepted the claim; nothing was started yet.
  Started,   ///< The backend started the infrastructure; `handle` finds it.
};

/// @brief One journalled run.
struct JournalEntry {
  std::string flow_run_id;
  std::string flow_run_name;
  RunPhase phase = RunPhase::Claiming;
  std::string transition_id;  ///< Of our PENDING proposal: tells our claim from another's.
  std::string backend;        ///< Worker type that runs it.
  std::optional<RunHandle> handle;
  std::string updated;      ///< RFC 3339 time of the last write.
  bool cancelling = false;  ///< A cancellation was under way.

  Json toJson() const;
  static Result<JournalEntry> fromJson(const Json& j);
};

/// @brief The journal of one worker instance: a directory it holds an exclusive lock on.
class Journal {
 public:
  /// @brief Opens (creating if needed) the journal of `pool` under `state_dir`. The first free
  /// instance directory is taken (`<state_dir>/<pool>`, then `<pool>~2`, `<pool>~3`, ...) so
  /// that two workers of one pool on one machine never share a journal.
  static Result<std::unique_ptr<Journal>> open(const std::string& state_dir,
                                               const std::string& pool);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  /// @brief Writes or replaces a run's entry (write to a temporary file, rename it into place;
  /// the disk sync follows in the background, see above).
  Result<void> write(JournalEntry entry);
  /// @brief Waits until every entry written so far is on disk.
  void sync();
  /// @brief Forgets a run. Missing entries are fine.
  Result<void> remove(const std::string& flow_run_id);
  /// @brief Every entry on disk. Unreadable files are reported in `problems`.
  std::vector<JournalEntry> load(std::vector<std::string>* problems = nullptr) const;

  /// @brief The journal's directory.
  const std::string& directory() const { return dir_; }
  /// @brief A directory a backend may use for its own files (created on demand).
  std::string backendDirectory(const std::string& backend) const;

 private:
  Journal(std::string dir, int lock_fd);
  void syncLoop();

  std::string dir_;
  int lock_fd_ = -1;

  // Group commit: files written since the last pass, and the pass counters `sync` waits on.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable synced_;
  std::vector<std::string> unsynced_;
  unsigned long long requested_ = 0;
  unsigned long long completed_ = 0;
  bool stopping_ = false;
  std::thread syncer_;
};

}  // namespace poolworker
