#include "backends/plugins/library_plugin.h"

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <dlfcn.h>

#include <poolworker/plugin_json.h>

#include "backends/plugins/plugin_names.h"

namespace poolworker::backends::plugins {
namespace {

namespace asio = boost::asio;

// Size of the descriptor of ABI 1.0: a plugin's table must reach at least this far.
constexpr size_t kDescriptorSizeV1_0 =
    offsetof(poolworker_plugin, free_buffer) + sizeof(poolworker_plugin::free_buffer);

// ---- host objects -------------------------------------------------------------------------

// A run's log, as a plugin holds it: one reference per `poolworker_log_host*` handed out.
struct LogRef {
  std::shared_ptr<LogSink> sink;
};

poolworker_log_host* toHost(LogRef* ref) { return reinterpret_cast<poolworker_log_host*>(ref); }
LogRef* fromHost(poolworker_log_host* log) { return reinterpret_cast<LogRef*>(log); }

// One pending call. Completions may arrive on any thread, and an instance may be destroyed
// with calls still pending; every live completion is therefore listed here, and a completion
// that is not (already completed, or dropped with its instance) is ignored.
struct PendingCall {
  const void* owner;  // the instance adapter that issued it
  std::function<void(poolworker_status, std::string)> deliver;
};

std::mutex& pendingMutex() {
  static std::mutex mutex;
  return mutex;
}

std::unordered_map<PendingCall*, std::unique_ptr<PendingCall>>& pendingCalls() {
  static std::unordered_map<PendingCall*, std::unique_ptr<PendingCall>> calls;
  return calls;
}

poolworker_completion_host* newPending(const void* owner,
                                       std::function<void(poolworker_status, std::string)> fn) {
  auto call = std::make_unique<PendingCall>(PendingCall{owner, std::move(fn)});
  PendingCall* raw = call.get();
  std::lock_guard lock(pendingMutex());
  pendingCalls().emplace(raw, std::move(call));
  return reinterpret_cast<poolworker_completion_host*>(raw);
}

void dropPending(const void* owner) {
  std::lock_guard lock(pendingMutex());
  std::erase_if(pendingCalls(), [owner](const auto& item) { return item.second->owner == owner; });
}

// The event loop and timers of one instance.
struct HostState {
  explicit HostState(asio::io_context& io_context) : io(io_context) {}
  asio::io_context& io;
  std::map<uint64_t, std::unique_ptr<asio::steady_timer>> timers;
  uint64_t next_timer = 1;
};

HostState& stateOf(poolworker_host* host) { return *reinterpret_cast<HostState*>(host); }

void hostLog(poolworker_log_host* log, poolworker_log_level level, const char* message,
             size_t size) {
  if (log == nullptr || message == nullptr) {
    return;
  }
  LogLevel mapped = LogLevel::Info;
  switch (level) {
    case POOLWORKER_LOG_DEBUG:
      mapped = LogLevel::Debug;
      break;
    case POOLWORKER_LOG_WARNING:
      mapped = LogLevel::Warning;
      break;
    case POOLWORKER_LOG_ERROR:
      mapped = LogLevel::Error;
      break;
    default:
      break;
  }
  fromHost(log)->sink->log(mapped, std::string_view(message, size));
}

void hostOutput(poolworker_log_host* log, const char* chunk, size_t size, int32_t is_stderr) {
  if (log != nullptr && chunk != nullptr) {
    fromHost(log)->sink->output(std::string_view(chunk, size), is_stderr != 0);
  }
}

void hostLogRelease(poolworker_log_host* log) { delete fromHost(log); }

void hostComplete(poolworker_completion_host* completion, poolworker_status status,
                  const char* data, size_t size) {
  auto* key = reinterpret_cast<PendingCall*>(completion);
  std::unique_ptr<PendingCall> call;
  {
    std::lock_guard lock(pendingMutex());
    auto it = pendingCalls().find(key);
    if (it == pendingCalls().end()) {
      return;
    }
    call = std::move(it->second);
    pendingCalls().erase(it);
  }
  call->deliver(status, data == nullptr ? std::string() : std::string(data, size));
}

void hostPost(poolworker_host* host, poolworker_task_fn task, void* user_data) {
  asio::post(stateOf(host).io, [task, user_data] { task(user_data); });
}

uint64_t hostSchedule(poolworker_host* host, uint64_t delay_ms, poolworker_task_fn task,
                      void* user_data) {
  HostState& state = stateOf(host);
  const uint64_t id = state.next_timer++;
  auto timer = std::make_unique<asio::steady_timer>(state.io, std::chrono::milliseconds(delay_ms));
  timer->async_wait([&state, id, task, user_data](const boost::system::error_code& ec) {
    if (ec) {
      return;  // cancelled: the plugin frees user_data
    }
    state.timers.erase(id);
    task(user_data);
  });
  state.timers.emplace(id, std::move(timer));
  return id;
}

int32_t hostCancelTimer(poolworker_host* host, uint64_t timer_id) {
  HostState& state = stateOf(host);
  auto it = state.timers.find(timer_id);
  if (it == state.timers.end()) {
    return 0;
  }
  it->second->cancel();
  state.timers.erase(it);
  return 1;
}

// ---- the adapters ---------------------------------------------------------------------------

struct Plugin {
  const poolworker_plugin* descriptor = nullptr;
  std::string origin;
  Json default_template;
  std::vector<OptionSpec> options;
};

std::string who(const Plugin& plugin) {
  return std::string("backend plugin '") + plugin.descriptor->name + "'";
}

Error pluginError(const Plugin& plugin, const char* call, poolworker_status status,
                  std::string message) {
  if (message.empty()) {
    message = who(plugin) + " failed in " + call + " (status " + std::to_string(status) +
              ") without a message";
  }
  return makeError(plugin::kindOf(status), std::move(message));
}

std::string takeBuffer(const Plugin& plugin, poolworker_buffer& buffer) {
  std::string out;
  if (buffer.data != nullptr) {
    out.assign(buffer.data, buffer.size);
    plugin.descriptor->free_buffer(&buffer);
  }
  return out;
}

class LibraryBackend final : public Backend {
 public:
  LibraryBackend(asio::io_context& io, std::shared_ptr<const Plugin> plugin)
      : io_(io), plugin_(std::move(plugin)), state_(std::make_unique<HostState>(io)) {
    api_.struct_size = sizeof(poolworker_host_api);
    api_.abi_major = POOLWORKER_PLUGIN_ABI_MAJOR;
    api_.abi_minor = POOLWORKER_PLUGIN_ABI_MINOR;
    api_.host = reinterpret_cast<poolworker_host*>(state_.get());
    api_.log = &hostLog;
    api_.output = &hostOutput;
    api_.log_release = &hostLogRelease;
    api_.complete = &hostComplete;
    api_.post = &hostPost;
    api_.schedule = &hostSchedule;
    api_.cancel_timer = &hostCancelTimer;
  }

  ~LibraryBackend() override {
    if (instance_ != nullptr) {
      plugin_->descriptor->destroy(instance_);
    }
    dropPending(this);
    delete worker_log_;
  }
  LibraryBackend(const LibraryBackend&) = delete;
  LibraryBackend& operator=(const LibraryBackend&) = delete;

  Result<void> create(const BackendContext& context) {
    worker_log_ = new LogRef{context.worker_log};
    Json json = {{"worker_name", context.worker_name},
                 {"state_directory", context.state_directory},
                 {"options", context.options}};
    const std::string text = json.dump();
    poolworker_buffer error{nullptr, 0};
    const poolworker_status status = plugin_->descriptor->create(
        &api_, text.data(), text.size(), toHost(worker_log_), &instance_, &error);
    std::string message = takeBuffer(*plugin_, error);
    if (status != POOLWORKER_OK || instance_ == nullptr) {
      instance_ = nullptr;
      return pluginError(*plugin_, "create",
                         status == POOLWORKER_OK ? POOLWORKER_ERR_INTERNAL : status,
                         std::move(message));
    }
    return success();
  }

  void start(const StartRequest& request, std::shared_ptr<LogSink> log,
             Callback<RunHandle> done) override {
    const std::string text = plugin::toJson(request).dump();
    auto plugin = plugin_;
    auto completion =
        pending([plugin, done = std::move(done)](poolworker_status status, std::string data) {
          if (status != POOLWORKER_OK) {
            done(pluginError(*plugin, "start", status, std::move(data)));
            return;
          }
          auto parsed = plugin::parseObject(data, who(*plugin) + "'s start result");
          if (!parsed) {
            done(std::move(parsed).error());
            return;
          }
          auto handle = plugin::runHandleFromJson(*parsed, who(*plugin) + "'s start result");
          if (handle) {
            handle->backend = plugin->descriptor->name;
          }
          done(std::move(handle));
        });
    plugin_->descriptor->start(instance_, text.data(), text.size(), toHost(new LogRef{log}),
                               completion);
  }

  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log,
            Callback<Outcome> done) override {
    const std::string text = plugin::toJson(handle).dump();
    auto plugin = plugin_;
    auto completion =
        pending([plugin, done = std::move(done)](poolworker_status status, std::string data) {
          if (status != POOLWORKER_OK) {
            done(pluginError(*plugin, "wait", status, std::move(data)));
            return;
          }
          auto parsed = plugin::parseObject(data, who(*plugin) + "'s wait result");
          if (!parsed) {
            done(std::move(parsed).error());
            return;
          }
          done(plugin::outcomeFromJson(*parsed, who(*plugin) + "'s wait result"));
        });
    plugin_->descriptor->wait(instance_, text.data(), text.size(), toHost(new LogRef{log}),
                              completion);
  }

  void kill(const RunHandle& handle, std::chrono::milliseconds grace,
            Callback<void> done) override {
    const std::string text = plugin::toJson(handle).dump();
    auto plugin = plugin_;
    auto completion =
        pending([plugin, done = std::move(done)](poolworker_status status, std::string data) {
          if (status != POOLWORKER_OK) {
            done(pluginError(*plugin, "kill", status, std::move(data)));
            return;
          }
          done(success());
        });
    plugin_->descriptor->kill(instance_, text.data(), text.size(),
                              static_cast<uint64_t>(std::max<int64_t>(0, grace.count())),
                              completion);
  }

  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
               Callback<Recovery> done) override {
    const std::string text = plugin::toJson(handle).dump();
    auto plugin = plugin_;
    auto completion =
        pending([plugin, done = std::move(done)](poolworker_status status, std::string data) {
          if (status != POOLWORKER_OK) {
            done(pluginError(*plugin, "recover", status, std::move(data)));
            return;
          }
          auto parsed = plugin::parseObject(data, who(*plugin) + "'s recover result");
          if (!parsed) {
            done(std::move(parsed).error());
            return;
          }
          done(plugin::recoveryFromJson(*parsed, who(*plugin) + "'s recover result"));
        });
    plugin_->descriptor->recover(instance_, text.data(), text.size(), toHost(new LogRef{log}),
                                 completion);
  }

  void check(Callback<void> done) override {
    auto plugin = plugin_;
    auto completion =
        pending([plugin, done = std::move(done)](poolworker_status status, std::string data) {
          if (status != POOLWORKER_OK) {
            done(pluginError(*plugin, "check", status, std::move(data)));
            return;
          }
          done(success());
        });
    plugin_->descriptor->check(instance_, completion);
  }

  Result<Json> preview(const StartRequest& request) override {
    const std::string text = plugin::toJson(request).dump();
    poolworker_buffer out{nullptr, 0};
    const poolworker_status status =
        plugin_->descriptor->preview(instance_, text.data(), text.size(), &out);
    std::string data = takeBuffer(*plugin_, out);
    if (status != POOLWORKER_OK) {
      return pluginError(*plugin_, "preview", status, std::move(data));
    }
    Json parsed = Json::parse(data, nullptr, false);
    if (parsed.is_discarded()) {
      return makeError(ErrorKind::Internal, who(*plugin_) + "'s preview is not valid JSON");
    }
    return parsed;
  }

  void shutdown() override { plugin_->descriptor->shutdown(instance_); }

 private:
  // A completion whose result reaches `fn` on the event loop, as the Backend contract wants.
  template <typename Fn>
  poolworker_completion_host* pending(Fn fn) {
    auto shared = std::make_shared<Fn>(std::move(fn));
    asio::io_context* io = &io_;
    return newPending(this, [io, shared](poolworker_status status, std::string data) {
      asio::post(*io, [shared, status, data = std::move(data)]() mutable {
        (*shared)(status, std::move(data));
      });
    });
  }

  asio::io_context& io_;
  std::shared_ptr<const Plugin> plugin_;
  std::unique_ptr<HostState> state_;
  poolworker_host_api api_{};
  poolworker_instance* instance_ = nullptr;
  LogRef* worker_log_ = nullptr;
};

class LibraryFactory final : public BackendFactory {
 public:
  LibraryFactory(asio::io_context& io, std::shared_ptr<const Plugin> plugin)
      : io_(io), plugin_(std::move(plugin)) {}

  BackendInfo info() const override {
    BackendInfo info;
    info.name = plugin_->descriptor->name;
    info.version = plugin_->descriptor->version;
    info.origin = plugin_->origin;
    info.description = plugin_->descriptor->description;
    info.options = plugin_->options;
    return info;
  }

  Json defaultBaseJobTemplate() const override { return plugin_->default_template; }

  Result<BackendPtr> create(const BackendContext& context) override {
    if (!context.worker_log) {
      return makeError(ErrorKind::InvalidConfiguration, who(*plugin_) + " needs the worker's log");
    }
    auto backend = std::make_unique<LibraryBackend>(io_, plugin_);
    if (auto created = backend->create(context); !created) {
      return std::move(created).error();
    }
    return BackendPtr(std::move(backend));
  }

 private:
  asio::io_context& io_;
  std::shared_ptr<const Plugin> plugin_;
};

Error refuse(const std::string& origin, const std::string& why) {
  return makeError(ErrorKind::InvalidConfiguration, "plugin " + origin + ": " + why);
}

}  // namespace

Result<BackendFactoryPtr> adaptPlugin(asio::io_context& io, const poolworker_plugin* descriptor,
                                      const std::string& origin) {
  if (descriptor == nullptr) {
    return refuse(origin,
                  "its entry function returned no descriptor (it refused to work with "
                  "ABI " +
                      std::to_string(POOLWORKER_PLUGIN_ABI_MAJOR) + "." +
                      std::to_string(POOLWORKER_PLUGIN_ABI_MINOR) + ")");
  }
  if (descriptor->abi_major != POOLWORKER_PLUGIN_ABI_MAJOR) {
    return refuse(origin, "built for plugin ABI " + std::to_string(descriptor->abi_major) + "." +
                              std::to_string(descriptor->abi_minor) + "; this poolworker loads " +
                              "ABI " + std::to_string(POOLWORKER_PLUGIN_ABI_MAJOR) + ".x only");
  }
  if (descriptor->abi_minor > POOLWORKER_PLUGIN_ABI_MINOR) {
    return refuse(origin, "built for plugin ABI " + std::to_string(descriptor->abi_major) + "." +
                              std::to_string(descriptor->abi_minor) +
                              ", newer than this poolworker's " +
                              std::to_string(POOLWORKER_PLUGIN_ABI_MAJOR) + "." +
                              std::to_string(POOLWORKER_PLUGIN_ABI_MINOR) + "; upgrade poolworker");
  }
  if (descriptor->struct_size < kDescriptorSizeV1_0) {
    return refuse(origin, "its descriptor is " + std::to_string(descriptor->struct_size) +
                              " bytes, smaller than ABI 1.0's " +
                              std::to_string(kDescriptorSizeV1_0));
  }
  const bool complete = descriptor->name != nullptr && descriptor->version != nullptr &&
                        descriptor->description != nullptr &&
                        descriptor->default_template_json != nullptr &&
                        descriptor->options_json != nullptr && descriptor->create != nullptr &&
                        descriptor->destroy != nullptr && descriptor->start != nullptr &&
                        descriptor->wait != nullptr && descriptor->kill != nullptr &&
                        descriptor->recover != nullptr && descriptor->check != nullptr &&
                        descriptor->preview != nullptr && descriptor->shutdown != nullptr &&
                        descriptor->free_buffer != nullptr;
  if (!complete) {
    return refuse(origin, "its descriptor leaves a required field or function empty");
  }
  if (auto valid = checkBackendName(descriptor->name); !valid) {
    return refuse(origin, valid.error().message);
  }
  auto plugin = std::make_shared<Plugin>();
  plugin->descriptor = descriptor;
  plugin->origin = origin;
  plugin->default_template = Json::parse(descriptor->default_template_json, nullptr, false);
  if (!plugin->default_template.is_object() ||
      !plugin->default_template.contains("job_configuration") ||
      !plugin->default_template.contains("variables")) {
    return refuse(origin,
                  "its default_template_json is not a JSON object with "
                  "'job_configuration' and 'variables'");
  }
  Json options = Json::parse(descriptor->options_json, nullptr, false);
  if (options.is_discarded()) {
    return refuse(origin, "its options_json is not valid JSON");
  }
  auto specs = plugin::optionsFromJson(options, "its options_json");
  if (!specs) {
    return refuse(origin, specs.error().message);
  }
  plugin->options = std::move(specs).value();
  return BackendFactoryPtr(std::make_unique<LibraryFactory>(io, std::move(plugin)));
}

Result<BackendFactoryPtr> loadLibraryPlugin(asio::io_context& io, const std::string& path) {
  // RTLD_NODELETE: the code of a plugin stays mapped until the process exits, whatever
  // happens to the handle, so no run, timer or thread of it can outlive its code.
  void* library = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (library == nullptr) {
    const char* error = ::dlerror();
    return refuse(path, std::string("cannot be loaded: ") + (error ? error : "unknown error"));
  }
  void* symbol = ::dlsym(library, POOLWORKER_PLUGIN_ENTRY_SYMBOL);
  if (symbol == nullptr) {
    // Name the ABI a library was built for when it exports another major's entry symbol.
    for (int major = 0; major < 10; ++major) {
      if (major == POOLWORKER_PLUGIN_ABI_MAJOR) {
        continue;
      }
      const std::string other = "poolworker_plugin_v" + std::to_string(major);
      if (::dlsym(library, other.c_str()) != nullptr) {
        return refuse(path, "built for plugin ABI major " + std::to_string(major) +
                                " (it exports " + other + "); this poolworker loads ABI major " +
                                std::to_string(POOLWORKER_PLUGIN_ABI_MAJOR) + " (" +
                                POOLWORKER_PLUGIN_ENTRY_SYMBOL + ")");
      }
    }
    return refuse(path, std::string("does not export ") + POOLWORKER_PLUGIN_ENTRY_SYMBOL +
                            ": not a poolworker backend plugin, or built without "
                            "POOLWORKER_PLUGIN(...) / default symbol visibility");
  }
  auto entry = reinterpret_cast<poolworker_plugin_entry_fn>(symbol);
  return adaptPlugin(io, entry(POOLWORKER_PLUGIN_ABI_MAJOR, POOLWORKER_PLUGIN_ABI_MINOR), path);
}

}  // namespace poolworker::backends::plugins
