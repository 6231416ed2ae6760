// The plugin's factory, exported through the C ABI with POOLWORKER_PLUGIN.

#include <filesystem>

#include <poolworker/plugin_cpp.h>

#include "simple_process_backend.h"

namespace simple_process {
namespace {

using poolworker::ErrorKind;
using poolworker::Json;
using poolworker::makeError;

class Factory final : public poolworker::BackendFactory {
 public:
  poolworker::BackendInfo info() const override {
    poolworker::BackendInfo info;
    info.name = "simple-process";
    info.version = "1.0.0";
    info.description = "Example shared-library plugin: runs each flow run as a local process";
    info.options = {
        poolworker::OptionSpec{"python", "string", "python3",
                               "Interpreter of the default command '<python> -m prefect.engine'."},
        poolworker::OptionSpec{"poll_interval_ms", "integer", 250,
                               "How often running processes are checked, in milliseconds."},
    };
    return info;
  }

  Json defaultBaseJobTemplate() const override { return Json::parse(defaultTemplate()); }

  poolworker::Result<poolworker::BackendPtr> create(
      const poolworker::BackendContext& context) override {
    Settings settings;
    settings.state_directory = context.state_directory;
    if (settings.state_directory.empty()) {
      return makeError(ErrorKind::InvalidConfiguration, "simple-process needs a state directory");
    }
    const Json& options = context.options;
    if (auto it = options.find("python"); it != options.end() && !it->is_null()) {
      if (!it->is_string() || it->get<std::string>().empty()) {
        return makeError(ErrorKind::InvalidConfiguration,
                         "backends.simple-process.python must be a non-empty string");
      }
      settings.python = it->get<std::string>();
    }
    if (auto it = options.find("poll_interval_ms"); it != options.end() && !it->is_null()) {
      int ms = 0;
      if (it->is_number_integer()) {
        ms = it->get<int>();
      } else if (it->is_string()) {
        ms = std::atoi(it->get<std::string>().c_str());
      }
      if (ms <= 0) {
        return makeError(ErrorKind::InvalidConfiguration,
                         "backends.simple-process.poll_interval_ms must be a positive integer");
      }
      settings.poll_interval = std::chrono::milliseconds(ms);
    }
    return poolworker::BackendPtr(
        std::make_unique<SimpleProcessBackend>(*context.executor, std::move(settings)));
  }
};

}  // namespace
}  // namespace simple_process

POOLWORKER_PLUGIN(simple_process::Factory)
