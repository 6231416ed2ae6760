#pragma once

// An example backend plugin: each flow run is a local process started with /bin/sh, in a
// session of its own so that it outlives the worker. It shows the whole Backend lifecycle:
// start, wait, kill, recover (after a worker restart), check and preview, written against the
// public headers only and driven by the worker's event loop through `Executor` timers: no
// thread of its own.
//
// A run's exit status is written to a file by the wrapper shell, so that a worker that restarts
// while the run goes on still learns how it ended. Its output goes to a file too, copied to the
// worker's output while the run is followed (job variable `stream_output`).

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include <poolworker/backend.h>

namespace simple_process {

/// @brief Settings of one instance.
struct Settings {
  std::string python = "python3";  ///< Interpreter of the default command.
  std::string state_directory;     ///< Where status and output files of runs are kept.
  std::chrono::milliseconds poll_interval{250};
};

/// @brief Runs each flow run as a local process.
class SimpleProcessBackend : public poolworker::Backend {
 public:
  SimpleProcessBackend(poolworker::Executor& executor, Settings settings);
  ~SimpleProcessBackend() override;
  SimpleProcessBackend(const SimpleProcessBackend&) = delete;
  SimpleProcessBackend& operator=(const SimpleProcessBackend&) = delete;

  void start(const poolworker::StartRequest& request, std::shared_ptr<poolworker::LogSink> log,
             poolworker::Callback<poolworker::RunHandle> done) override;
  void wait(const poolworker::RunHandle& handle, std::shared_ptr<poolworker::LogSink> log,
            poolworker::Callback<poolworker::Outcome> done) override;
  void kill(const poolworker::RunHandle& handle, std::chrono::milliseconds grace,
            poolworker::Callback<void> done) override;
  void recover(const poolworker::RunHandle& handle, std::shared_ptr<poolworker::LogSink> log,
               poolworker::Callback<poolworker::Recovery> done) override;
  poolworker::Result<poolworker::Json> preview(const poolworker::StartRequest& request) override;
  void shutdown() override;

 private:
  struct Watch;
  struct Stop;
  void tick();
  void arm();

  poolworker::Executor& executor_;
  Settings settings_;
  std::map<int, std::shared_ptr<Watch>> watches_;  // by pid
  std::map<int, std::shared_ptr<Stop>> stops_;     // by pid
  std::map<int, bool> children_;                   // pids started by this instance
  std::unique_ptr<poolworker::Timer> timer_;
  bool stopped_ = false;
};

/// @brief The example's default base job template (the process worker's variables).
const char* defaultTemplate();

}  // namespace simple_process
