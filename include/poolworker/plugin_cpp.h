#pragma once

/// @file
/// @brief Write a shared-library plugin in C++ with the same interface as a built-in backend.
///
/// Implement `poolworker::BackendFactory` and `poolworker::Backend` (see `backend.h`) exactly
/// as a built-in backend does, then export the factory from one source file of the library:
///
/// @code
///   #include <poolworker/plugin_cpp.h>
///
///   class SlurmFactory final : public poolworker::BackendFactory { ... };
///
///   POOLWORKER_PLUGIN(SlurmFactory)
/// @endcode
///
/// The macro defines the C entry symbol of `plugin.h` and adapts the C table to the factory:
/// JSON in and out, log sinks and the event loop (`BackendContext::executor`) through the host
/// API. Every C++ exception is caught at the boundary and becomes `POOLWORKER_ERR_INTERNAL`
/// with the exception's message, so a throwing backend fails one call, never the worker.
///
/// The factory class needs a default constructor. It is constructed once, when poolworker
/// loads the library, and lives until the process exits. `BackendFactory::info().origin` is
/// ignored: poolworker fills in the library's path.
///
/// Build the library with `-fvisibility=hidden`: `POOLWORKER_PLUGIN` exports the entry symbol
/// alone. Link your own copy of anything you use; poolworker shares no C++ library with
/// plugins, only the C ABI.

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include <poolworker/backend.h>
#include <poolworker/plugin.h>
#include <poolworker/plugin_json.h>

namespace poolworker::plugin_sdk {

/// @brief Copies `text` into a buffer that `freeBuffer` releases.
inline void fillBuffer(poolworker_buffer* buffer, std::string_view text) {
  if (buffer == nullptr) {
    return;
  }
  buffer->data = static_cast<char*>(std::malloc(text.size() + 1));
  buffer->size = buffer->data == nullptr ? 0 : text.size();
  if (buffer->data != nullptr) {
    std::memcpy(buffer->data, text.data(), text.size());
    buffer->data[text.size()] = '\0';
  }
}

/// @brief The `free_buffer` of plugins built with this wrapper.
inline void freeBuffer(poolworker_buffer* buffer) {
  if (buffer != nullptr) {
    std::free(buffer->data);
    buffer->data = nullptr;
    buffer->size = 0;
  }
}

/// @brief A `LogSink` writing to a host log. Releases the host reference when destroyed,
/// unless it was borrowed (the worker's log).
class HostLogSink final : public LogSink {
 public:
  HostLogSink(const poolworker_host_api* api, poolworker_log_host* log, bool owned)
      : api_(api), log_(log), owned_(owned) {}
  ~HostLogSink() override {
    if (owned_ && log_ != nullptr) {
      api_->log_release(log_);
    }
  }
  HostLogSink(const HostLogSink&) = delete;
  HostLogSink& operator=(const HostLogSink&) = delete;

  void log(LogLevel level, std::string_view message) override {
    api_->log(log_, static_cast<poolworker_log_level>(level), message.data(), message.size());
  }
  void output(std::string_view chunk, bool is_stderr) override {
    api_->output(log_, chunk.data(), chunk.size(), is_stderr ? 1 : 0);
  }

 private:
  const poolworker_host_api* api_;
  poolworker_log_host* log_;
  bool owned_;
};

/// @brief The worker's event loop, reached through the host API.
class HostExecutor final : public Executor {
 public:
  HostExecutor(const poolworker_host_api* api, std::shared_ptr<LogSink> worker_log)
      : api_(api), worker_log_(std::move(worker_log)) {}

  void post(std::function<void()> task) override {
    api_->post(api_->host, &HostExecutor::run, new Task{std::move(task), worker_log_});
  }

  std::unique_ptr<Timer> schedule(std::chrono::milliseconds delay,
                                  std::function<void()> task) override {
    auto* heap = new Task{std::move(task), worker_log_};
    const uint64_t ms = delay.count() < 0 ? 0 : static_cast<uint64_t>(delay.count());
    const uint64_t id = api_->schedule(api_->host, ms, &HostExecutor::run, heap);
    return std::make_unique<HostTimer>(api_, id, heap);
  }

 private:
  struct Task {
    std::function<void()> fn;
    std::shared_ptr<LogSink> log;
  };

  class HostTimer final : public Timer {
   public:
    HostTimer(const poolworker_host_api* api, uint64_t id, Task* task)
        : api_(api), id_(id), task_(task) {}
    ~HostTimer() override { cancel(); }
    HostTimer(const HostTimer&) = delete;
    HostTimer& operator=(const HostTimer&) = delete;
    void cancel() override {
      if (task_ != nullptr && api_->cancel_timer(api_->host, id_) == 1) {
        delete task_;
      }
      task_ = nullptr;
    }

   private:
    const poolworker_host_api* api_;
    uint64_t id_;
    Task* task_;
  };

  // A task that throws must not unwind into the host's event loop.
  static void run(void* user_data) {
    std::unique_ptr<Task> task(static_cast<Task*>(user_data));
    try {
      task->fn();
    } catch (const std::exception& e) {
      task->log->log(LogLevel::Error, std::string("backend plugin task threw: ") + e.what());
    } catch (...) {
      task->log->log(LogLevel::Error, "backend plugin task threw a non-standard exception");
    }
  }

  const poolworker_host_api* api_;
  std::shared_ptr<LogSink> worker_log_;
};

/// @brief One pending host completion; finishes it at most once, whoever asks first.
class Completion {
 public:
  Completion(const poolworker_host_api* api, poolworker_completion_host* done)
      : api_(api), done_(done) {}

  void finish(poolworker_status status, std::string_view data) {
    if (!fired_.exchange(true)) {
      api_->complete(done_, status, data.data(), data.size());
    }
  }
  void fail(const Error& error) { finish(plugin::statusOf(error.kind), error.message); }

 private:
  const poolworker_host_api* api_;
  poolworker_completion_host* done_;
  std::atomic<bool> fired_{false};
};

/// @brief A created instance: the C++ backend and what it was given.
struct Instance {
  const poolworker_host_api* api = nullptr;
  std::string plugin_name;
  std::shared_ptr<LogSink> worker_log;
  std::unique_ptr<HostExecutor> executor;
  BackendPtr backend;
};

/// @brief Runs `body`; turns an exception into a failed completion naming `what`.
template <typename Body>
void guarded(const Instance& instance, const std::shared_ptr<Completion>& completion,
             const char* what, Body body) {
  try {
    body();
  } catch (const std::exception& e) {
    completion->fail(makeError(ErrorKind::Internal, "backend plugin '" + instance.plugin_name +
                                                        "' threw in " + what + ": " + e.what()));
  } catch (...) {
    completion->fail(makeError(
        ErrorKind::Internal,
        "backend plugin '" + instance.plugin_name + "' threw a non-standard exception in " + what));
  }
}

/// @brief The C table for factory type `F`, built once.
template <typename F>
class Glue {
 public:
  static const poolworker_plugin* describe(uint32_t host_major, uint32_t /*host_minor*/) {
    if (host_major != POOLWORKER_PLUGIN_ABI_MAJOR) {
      return nullptr;
    }
    try {
      static Glue glue;
      return &glue.descriptor_;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "backend plugin: its factory failed to describe itself: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "backend plugin: its factory failed to describe itself\n");
    }
    return nullptr;
  }

 private:
  Glue() {
    const BackendInfo info = factory_.info();
    name_ = info.name;
    version_ = info.version;
    description_ = info.description;
    template_ = factory_.defaultBaseJobTemplate().dump();
    options_ = plugin::toJson(info.options).dump();
    descriptor_.struct_size = sizeof(poolworker_plugin);
    descriptor_.abi_major = POOLWORKER_PLUGIN_ABI_MAJOR;
    descriptor_.abi_minor = POOLWORKER_PLUGIN_ABI_MINOR;
    descriptor_.name = name_.c_str();
    descriptor_.version = version_.c_str();
    descriptor_.description = description_.c_str();
    descriptor_.default_template_json = template_.c_str();
    descriptor_.options_json = options_.c_str();
    descriptor_.create = &Glue::create;
    descriptor_.destroy = &Glue::destroy;
    descriptor_.start = &Glue::start;
    descriptor_.wait = &Glue::wait;
    descriptor_.kill = &Glue::kill;
    descriptor_.recover = &Glue::recover;
    descriptor_.check = &Glue::check;
    descriptor_.preview = &Glue::preview;
    descriptor_.shutdown = &Glue::shutdown;
    descriptor_.free_buffer = &freeBuffer;
    self() = this;
  }

  static Glue*& self() {
    static Glue* glue = nullptr;
    return glue;
  }

  static Instance& cast(poolworker_instance* instance) {
    return *reinterpret_cast<Instance*>(instance);
  }

  static std::string_view text(const char* data, size_t size) {
    return data == nullptr ? std::string_view() : std::string_view(data, size);
  }

  static std::string threw(const char* what, const char* message) {
    return "backend plugin '" + self()->name_ + "' threw in " + what + ": " + message;
  }

  static poolworker_status create(const poolworker_host_api* api, const char* context_json,
                                  size_t context_size, poolworker_log_host* worker_log,
                                  poolworker_instance** out, poolworker_buffer* error) {
    try {
      auto parsed = plugin::parseObject(text(context_json, context_size), "the instance context");
      if (!parsed) {
        fillBuffer(error, parsed.error().message);
        return POOLWORKER_ERR_INTERNAL;
      }
      auto instance = std::make_unique<Instance>();
      instance->api = api;
      instance->plugin_name = self()->name_;
      instance->worker_log = std::make_shared<HostLogSink>(api, worker_log, false);
      instance->executor = std::make_unique<HostExecutor>(api, instance->worker_log);
      BackendContext context;
      context.executor = instance->executor.get();
      context.worker_name = parsed->value("worker_name", "");
      context.state_directory = parsed->value("state_directory", "");
      context.options = parsed->value("options", Json::object());
      context.worker_log = instance->worker_log;
      auto backend = self()->factory_.create(context);
      if (!backend) {
        fillBuffer(error, backend.error().message);
        return plugin::statusOf(backend.error().kind);
      }
      instance->backend = std::move(backend).value();
      *out = reinterpret_cast<poolworker_instance*>(instance.release());
      return POOLWORKER_OK;
    } catch (const std::exception& e) {
      fillBuffer(error, threw("create", e.what()));
    } catch (...) {
      fillBuffer(error, threw("create", "a non-standard exception"));
    }
    return POOLWORKER_ERR_INTERNAL;
  }

  static void destroy(poolworker_instance* instance) {
    try {
      delete reinterpret_cast<Instance*>(instance);
    } catch (...) {
      std::fprintf(stderr, "backend plugin: an instance threw while being destroyed\n");
    }
  }

  static void start(poolworker_instance* handle, const char* request_json, size_t request_size,
                    poolworker_log_host* log, poolworker_completion_host* done) {
    Instance& instance = cast(handle);
    auto completion = std::make_shared<Completion>(instance.api, done);
    std::shared_ptr<LogSink> sink = std::make_shared<HostLogSink>(instance.api, log, true);
    guarded(instance, completion, "start", [&] {
      auto parsed = plugin::parseObject(text(request_json, request_size), "the start request");
      if (!parsed) {
        completion->fail(parsed.error());
        return;
      }
      auto request = plugin::startRequestFromJson(*parsed);
      if (!request) {
        completion->fail(request.error());
        return;
      }
      instance.backend->start(*request, sink, [completion](Result<RunHandle> result) {
        if (!result) {
          completion->fail(result.error());
          return;
        }
        completion->finish(POOLWORKER_OK, plugin::toJson(*result).dump());
      });
    });
  }

  static Result<RunHandle> handleOf(const char* json, size_t size) {
    auto parsed = plugin::parseObject(text(json, size), "the run handle");
    if (!parsed) {
      return std::move(parsed).error();
    }
    return plugin::runHandleFromJson(*parsed, "the run handle");
  }

  static void wait(poolworker_instance* handle, const char* handle_json, size_t handle_size,
                   poolworker_log_host* log, poolworker_completion_host* done) {
    Instance& instance = cast(handle);
    auto completion = std::make_shared<Completion>(instance.api, done);
    std::shared_ptr<LogSink> sink = std::make_shared<HostLogSink>(instance.api, log, true);
    guarded(instance, completion, "wait", [&] {
      auto run = handleOf(handle_json, handle_size);
      if (!run) {
        completion->fail(run.error());
        return;
      }
      instance.backend->wait(*run, sink, [completion](Result<Outcome> result) {
        if (!result) {
          completion->fail(result.error());
          return;
        }
        completion->finish(POOLWORKER_OK, plugin::toJson(*result).dump());
      });
    });
  }

  static void kill(poolworker_instance* handle, const char* handle_json, size_t handle_size,
                   uint64_t grace_ms, poolworker_completion_host* done) {
    Instance& instance = cast(handle);
    auto completion = std::make_shared<Completion>(instance.api, done);
    guarded(instance, completion, "kill", [&] {
      auto run = handleOf(handle_json, handle_size);
      if (!run) {
        completion->fail(run.error());
        return;
      }
      instance.backend->kill(*run, std::chrono::milliseconds(grace_ms),
                             [completion](Result<void> result) {
                               if (!result) {
                                 completion->fail(result.error());
                                 return;
                               }
                               completion->finish(POOLWORKER_OK, "");
                             });
    });
  }

  static void recover(poolworker_instance* handle, const char* handle_json, size_t handle_size,
                      poolworker_log_host* log, poolworker_completion_host* done) {
    Instance& instance = cast(handle);
    auto completion = std::make_shared<Completion>(instance.api, done);
    std::shared_ptr<LogSink> sink = std::make_shared<HostLogSink>(instance.api, log, true);
    guarded(instance, completion, "recover", [&] {
      auto run = handleOf(handle_json, handle_size);
      if (!run) {
        completion->fail(run.error());
        return;
      }
      instance.backend->recover(*run, sink, [completion](Result<Recovery> result) {
        if (!result) {
          completion->fail(result.error());
          return;
        }
        completion->finish(POOLWORKER_OK, plugin::toJson(*result).dump());
      });
    });
  }

  static void check(poolworker_instance* handle, poolworker_completion_host* done) {
    Instance& instance = cast(handle);
    auto completion = std::make_shared<Completion>(instance.api, done);
    guarded(instance, completion, "check", [&] {
      instance.backend->check([completion](Result<void> result) {
        if (!result) {
          completion->fail(result.error());
          return;
        }
        completion->finish(POOLWORKER_OK, "");
      });
    });
  }

  static poolworker_status preview(poolworker_instance* handle, const char* request_json,
                                   size_t request_size, poolworker_buffer* out) {
    Instance& instance = cast(handle);
    try {
      auto parsed = plugin::parseObject(text(request_json, request_size), "the preview request");
      if (!parsed) {
        fillBuffer(out, parsed.error().message);
        return POOLWORKER_ERR_INTERNAL;
      }
      auto request = plugin::startRequestFromJson(*parsed);
      if (!request) {
        fillBuffer(out, request.error().message);
        return plugin::statusOf(request.error().kind);
      }
      auto result = instance.backend->preview(*request);
      if (!result) {
        fillBuffer(out, result.error().message);
        return plugin::statusOf(result.error().kind);
      }
      fillBuffer(out, result->dump());
      return POOLWORKER_OK;
    } catch (const std::exception& e) {
      fillBuffer(out, threw("preview", e.what()));
    } catch (...) {
      fillBuffer(out, threw("preview", "a non-standard exception"));
    }
    return POOLWORKER_ERR_INTERNAL;
  }

  static void shutdown(poolworker_instance* handle) {
    try {
      cast(handle).backend->shutdown();
    } catch (...) {
      std::fprintf(stderr, "backend plugin: shutdown threw\n");
    }
  }

  F factory_;
  std::string name_;
  std::string version_;
  std::string description_;
  std::string template_;
  std::string options_;
  poolworker_plugin descriptor_{};
};

}  // namespace poolworker::plugin_sdk

/// @brief Exports factory class `FACTORY` as this library's backend plugin. Use once per
/// library, at namespace scope, in a source file.
#define POOLWORKER_PLUGIN(FACTORY)                                                            \
  extern "C" POOLWORKER_PLUGIN_EXPORT const poolworker_plugin* poolworker_plugin_v1(          \
      uint32_t host_abi_major, uint32_t host_abi_minor) {                                     \
    return ::poolworker::plugin_sdk::Glue<FACTORY>::describe(host_abi_major, host_abi_minor); \
  }
