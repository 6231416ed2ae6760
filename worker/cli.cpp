#include "worker/cli.h"

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include <boost/asio/signal_set.hpp>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include "backends/plugins/loader.h"
#include "backends/registry.h"
#include "worker/async.h"
#include "worker/exit_codes.h"
#include "worker/logging.h"
#include "worker/metrics.h"
#include "worker/prefect_client.h"
#include "worker/run_preparation.h"
#include "worker/serve.h"
#include "worker/service_notify.h"
#include "worker/version.h"
#include "worker/worker.h"

namespace poolworker::cli {
namespace {

struct OptionDef {
  std::string long_name;  // without dashes
  char short_name = 0;
  bool takes_value = true;
};

const std::map<std::string, std::vector<OptionDef>>& commandOptions() {
  static const std::map<std::string, std::vector<OptionDef>> kOptions = {
      {"start",
       {{"pool", 'p'},
        {"work-queue", 'q'},
        {"name", 'n'},
        {"limit", 'l'},
        {"prefetch-seconds", 0},
        {"run-once", 0, false},
        {"type", 't'},
        {"base-job-template", 0},
        {"with-healthcheck", 0, false},
        {"create-pool-if-not-found", 0, false},
        {"no-create-pool-if-not-found", 0, false},
        {"install-policy", 0},
        {"config", 'c'},
        {"state-dir", 0},
        {"log-level", 0},
        {"log-format", 0},
        {"plugin-dir", 0},
        {"help", 'h', false}}},
      {"serve",
       {{"limit", 'l'},
        {"query-seconds", 0},
        {"prefetch-seconds", 0},
        {"no-pause-on-shutdown", 0, false},
        {"run-once", 0, false},
        {"name", 'n'},
        {"with-healthcheck", 0, false},
        {"config", 'c'},
        {"state-dir", 0},
        {"log-level", 0},
        {"log-format", 0},
        {"help", 'h', false}}},
      {"template", {{"type", 't'}, {"plugin-dir", 0}, {"help", 'h', false}}},
      {"render",
       {{"pool", 'p'},
        {"deployment", 'd'},
        {"flow-run", 'f'},
        {"job-variables", 'j'},
        {"infrastructure", 0, false},
        {"config", 'c'},
        {"plugin-dir", 0},
        {"help", 'h', false}}},
      {"backends", {{"plugin-dir", 0}, {"help", 'h', false}}},
  };
  return kOptions;
}

Error usage(const std::string& message) {
  return makeError(ErrorKind::InvalidConfiguration, message);
}

Result<void> apply(Command& cmd, const std::string& option, const std::string& value) {
  StartFlags& f = cmd.start;
  if (option == "pool") {
    f.pool = value;
  } else if (option == "work-queue") {
    f.work_queues.push_back(value);
  } else if (option == "name") {
    f.name = value;
  } else if (option == "limit") {
    f.limit = value;
  } else if (option == "prefetch-seconds") {
    f.prefetch_seconds = value;
  } else if (option == "run-once") {
    f.run_once = true;
  } else if (option == "type") {
    f.type = value;
    cmd.type = value;
  } else if (option == "base-job-template") {
    f.base_job_template = value;
  } else if (option == "with-healthcheck") {
    f.with_healthcheck = true;
  } else if (option == "create-pool-if-not-found") {
    f.create_pool_if_not_found = true;
  } else if (option == "no-create-pool-if-not-found") {
    f.create_pool_if_not_found = false;
  } else if (option == "install-policy") {
    // Accepted for compatibility with `prefect worker start`; poolworker installs nothing.
  } else if (option == "config") {
    f.config_file = value;
  } else if (option == "state-dir") {
    f.state_dir = value;
  } else if (option == "log-level") {
    f.log_level = value;
  } else if (option == "log-format") {
    f.log_format = value;
  } else if (option == "plugin-dir") {
    f.plugin_dirs.push_back(value);
  } else if (option == "deployment") {
    cmd.deployment = value;
  } else if (option == "flow-run") {
    cmd.flow_run = value;
  } else if (option == "job-variables") {
    cmd.job_variables = value;
  } else if (option == "no-pause-on-shutdown") {
    cmd.no_pause_on_shutdown = true;
  } else if (option == "query-seconds") {
    cmd.query_seconds = value;
  } else if (option == "infrastructure") {
    cmd.infrastructure = true;
  } else if (option == "help") {
    cmd.help_topic = cmd.name;
    cmd.name = "help";
  }
  return success();
}

}  // namespace

Result<Command> parse(const std::vector<std::string>& args) {
  Command cmd;
  size_t i = 0;
  if (args.empty()) {
    cmd.name = "help";
    return cmd;
  }
  const std::string& first = args[0];
  if (first == "--help" || first == "-h" || first == "help") {
    cmd.name = "help";
    if (args.size() > 1) {
      cmd.help_topic = args[1] == "worker" && args.size() > 2 ? args[2] : args[1];
    }
    return cmd;
  }
  if (first == "--version" || first == "-V" || first == "version") {
    cmd.name = "version";
    return cmd;
  }
  // `poolworker worker start` reads like `prefect worker start`.
  if (first == "worker") {
    if (args.size() < 2 || args[1] != "start") {
      return usage("unknown command 'worker" + (args.size() > 1 ? " " + args[1] : "") +
                   "'; did you mean 'poolworker start'?");
    }
    i = 2;
    cmd.name = "start";
  } else {
    cmd.name = first;
    i = 1;
  }
  auto options = commandOptions().find(cmd.name);
  if (options == commandOptions().end()) {
    return usage("unknown command '" + cmd.name +
                 "'. Commands: start, serve, template, render, backends. "
                 "See 'poolworker --help'.");
  }
  const std::string command_name = cmd.name;
  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    std::string name;
    std::optional<std::string> inline_value;
    const OptionDef* def = nullptr;
    if (arg.rfind("--", 0) == 0 && arg.size() > 2) {
      name = arg.substr(2);
      if (auto eq = name.find('='); eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      for (const auto& d : options->second) {
        if (d.long_name == name) {
          def = &d;
        }
      }
    } else if (arg.size() >= 2 && arg[0] == '-' && arg[1] != '-') {
      for (const auto& d : options->second) {
        if (d.short_name == arg[1]) {
          def = &d;
          name = d.long_name;
        }
      }
      if (def != nullptr && arg.size() > 2) {
        inline_value = arg.substr(2);
      }
      if (def == nullptr) {
        name = arg.substr(1);
      }
    } else if (command_name == "serve" && cmd.serve_file.empty()) {
      cmd.serve_file = arg;
      continue;
    } else {
      return usage("unexpected argument '" + arg + "' for 'poolworker " + command_name +
                   "'. See 'poolworker " + command_name + " --help'.");
    }
    if (def == nullptr) {
      return usage("unknown option '" + arg + "' for 'poolworker " + command_name +
                   "'. See 'poolworker " + command_name + " --help'.");
    }
    std::string value;
    if (def->takes_value) {
      if (inline_value) {
        value = *inline_value;
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return usage("option '--" + def->long_name + "' needs a value");
      }
    } else if (inline_value) {
      return usage("option '--" + def->long_name + "' takes no value");
    }
    if (auto applied = apply(cmd, def->long_name, value); !applied) {
      return applied.error();
    }
    if (cmd.name == "help") {
      return cmd;
    }
  }
  if (cmd.name == "serve" && cmd.serve_file.empty()) {
    return usage("'poolworker serve' needs a deployment file: poolworker serve FILE.yaml");
  }
  return cmd;
}

std::string helpText(const std::string& command) {
  if (command == "start") {
    return R"(Usage: poolworker start --pool NAME [OPTIONS]

Start a worker that polls a Prefect work pool and runs its flow runs: a drop-in
for `prefect worker start`, with the same flags and PREFECT_* settings.

Options:
  -p, --pool NAME              Work pool to poll (required).
  -q, --work-queue NAME        Work queue to poll; repeat for several. Default: all.
  -n, --name NAME              Worker name. Default: "<Type>Worker <uuid>".
  -l, --limit N                Most flow runs running at once. Default: no limit.
      --prefetch-seconds N     Claim runs due within N seconds
                               (PREFECT_WORKER_PREFETCH_SECONDS, default 10).
      --run-once               Poll once, wait for the runs taken, then exit.
  -t, --type TYPE              Worker type (process, ...). Default: the pool's type,
                               or process when the pool has to be created.
      --base-job-template FILE JSON template used when the worker creates the pool.
      --with-healthcheck       Serve /health, /health/live, /health/ready and
                               /metrics on PREFECT_WORKER_WEBSERVER_HOST:PORT
                               (default 0.0.0.0:8080).
      --no-create-pool-if-not-found
                               Do not create a missing pool.
  -c, --config FILE            YAML config file (or POOLWORKER_CONFIG).
      --plugin-dir DIR         Load backend plugins from DIR; repeat for several
                               (POOLWORKER_PLUGIN_DIR, plugin_dirs in the config file).
                               See docs/plugins.md.
      --state-dir DIR          Where runs are journalled, so that a restarted worker
                               follows them (POOLWORKER_STATE_DIR).
      --log-level LEVEL        trace, debug, info, warning, error (default info).
      --log-format FORMAT      text or json (default text).
  -h, --help                   Show this help.

Settings (environment): PREFECT_API_URL (required), PREFECT_API_KEY,
PREFECT_API_AUTH_STRING, PREFECT_WORKER_QUERY_SECONDS (10),
PREFECT_WORKER_HEARTBEAT_SECONDS (30), PREFECT_WORKER_PREFETCH_SECONDS (10),
PREFECT_WORKER_WEBSERVER_HOST/PORT, PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
PREFECT_API_SSL_CERT_FILE, PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES.
Precedence: flags > environment > config file > Prefect profile > defaults.

Signals: SIGTERM or SIGINT stops claiming and exits, leaving running flows to the
next worker; a second one cancels the running flows first.
)";
  }
  if (command == "serve") {
    return R"(Usage: poolworker serve FILE.yaml [OPTIONS]

Register the deployments listed in FILE.yaml with Prefect as `flow.serve` does (no
work pool), then run their scheduled and ad-hoc runs in local processes with the
Prefect engine. The file is checked completely (entrypoints, cron strings, time
zones, intervals) before anything is registered. See docs/serve.md.

Options:
  -l, --limit N                Most flow runs running at once (also `limit:` in the
                               file; PREFECT_RUNNER_PROCESS_LIMIT; default 5).
      --query-seconds N        Seconds between polls for scheduled runs
                               (PREFECT_RUNNER_POLL_FREQUENCY, default 10).
      --prefetch-seconds N     Start runs due within N seconds (default 10).
      --no-pause-on-shutdown   Leave the schedules active when stopping (also
                               `pause_on_shutdown: false` in the file).
      --run-once               Poll once, wait for the runs taken, then exit.
  -n, --name NAME              Name of this process in logs (default: the file's
                               `name:`, else serve-<file name>).
      --with-healthcheck       Serve /health and /metrics as `start` does.
  -c, --config FILE            YAML config file of `start` (API settings, backends).
      --state-dir DIR          Where runs are journalled (POOLWORKER_STATE_DIR).
      --log-level LEVEL        trace, debug, info, warning, error (default info).
      --log-format FORMAT      text or json (default text).
  -h, --help                   Show this help.

On start the deployments are registered and their schedules resumed; on SIGTERM or
SIGINT their schedules are paused unless --no-pause-on-shutdown. Running flows are
treated as by `start`: the first signal leaves them running (a restarted `serve`
with the same state directory follows them), a second one cancels them.
Exit codes: 0 after a stop, 1 when start-up failed, 2 for a bad command line or file.
)";
  }
  if (command == "template") {
    return R"(Usage: poolworker template --type TYPE [--plugin-dir DIR]

Print the default base job template of a worker type, as JSON. Pools created with
`prefect work-pool create --type TYPE` get the same template.
)";
  }
  if (command == "render") {
    return R"(Usage: poolworker render --pool NAME (--deployment FLOW/DEPLOYMENT | --flow-run ID)
                         [--job-variables JSON] [--infrastructure]

Print the job configuration a run would get: the pool's base job template with the
deployment's and the flow run's job variables applied, blocks and variables
resolved, and Prefect's environment and labels added. Secrets are masked.
With --infrastructure, print what the pool type's backend would create from it
instead (a container's create body, a Kubernetes Job manifest); nothing is created.
Needs PREFECT_API_URL (and credentials) like `start`.
)";
  }
  if (command == "backends") {
    return R"(Usage: poolworker backends [--plugin-dir DIR]

List the backends (worker types) this poolworker can run, with version and origin:
"built-in", or the path of the plugin it was loaded from. --plugin-dir (repeatable,
or POOLWORKER_PLUGIN_DIR) adds the plugins of a directory; refused plugins are
listed on stderr with the reason.
)";
  }
  return R"(poolworker: a small, fast worker for Prefect 3 work pools.

Usage: poolworker COMMAND [OPTIONS]

Commands:
  start       Poll a work pool and run its flow runs (like `prefect worker start`).
  serve       Register deployments from a file and run them here (like `flow.serve`).
  template    Print the default base job template of a worker type.
  render      Show the job configuration a deployment's run would get.
  backends    List the available backends.

Options:
  -h, --help     Show help (also: poolworker COMMAND --help).
  -V, --version  Show the version.

Replace `prefect worker start --pool my-pool` with `poolworker start --pool my-pool`.
)";
}

namespace {

std::string userAgent() { return std::string("poolworker/") + version() + " (API 0.8.4)"; }

void initRuntime() { ::signal(SIGPIPE, SIG_IGN); }

// Plugins for the commands that resolve no full settings (`template`, `backends`): the flags,
// else POOLWORKER_PLUGIN_DIRS or POOLWORKER_PLUGIN_DIR (comma-separated).
std::vector<std::string> pluginDirsOf(const Command& cmd) {
  if (!cmd.start.plugin_dirs.empty()) {
    return cmd.start.plugin_dirs;
  }
  std::vector<std::string> dirs;
  const Environment env = currentEnvironment();
  for (const char* name : {"POOLWORKER_PLUGIN_DIRS", "POOLWORKER_PLUGIN_DIR"}) {
    auto it = env.find(name);
    if (it == env.end() || it->second.empty()) {
      continue;
    }
    std::string rest = it->second;
    size_t comma;
    while ((comma = rest.find(',')) != std::string::npos) {
      if (comma > 0) {
        dirs.push_back(rest.substr(0, comma));
      }
      rest.erase(0, comma + 1);
    }
    if (!rest.empty()) {
      dirs.push_back(rest);
    }
    break;
  }
  return dirs;
}

// Loads the plugins of `dirs` into `registry`; says what was refused (and, to the log, what
// was loaded). A refused plugin never stops poolworker: the others, and the built-in
// backends, stay usable.
void loadPlugins(backends::BackendRegistry& registry, asio::io_context& io,
                 const std::vector<std::string>& dirs, bool to_log) {
  if (dirs.empty()) {
    return;
  }
  auto report = backends::plugins::loadPlugins(registry, io, dirs);
  static const logging::Logger kLog("plugins");
  for (const auto& line : report.loaded) {
    if (to_log) {
      kLog.info("loaded " + line);
    }
  }
  for (const auto& line : report.refused) {
    if (to_log) {
      kLog.error(line);
    } else {
      std::fprintf(stderr, "poolworker: %s\n", line.c_str());
    }
  }
}

// Makes the run source of `serve` once the client and backends exist; null for `start`.
using SourceMaker =
    std::function<std::unique_ptr<RunSource>(prefect::PrefectClient&, backends::BackendRegistry&)>;

int runWorker(Settings settings, const SourceMaker& make_source) {
  logging::setup(settings.log_level, settings.log_format);
  initRuntime();

  asio::io_context io;
  Metrics metrics;
  backends::BackendRegistry registry;
  if (auto registered = backends::registerBuiltinBackends(registry, io); !registered) {
    std::fprintf(stderr, "poolworker: %s\n", registered.error().message.c_str());
    return exit_codes::kStartupFailure;
  }
  loadPlugins(registry, io, settings.plugin_dirs, true);
  prefect::PrefectClient client(io, settings.api, userAgent());
  std::unique_ptr<RunSource> source = make_source ? make_source(client, registry) : nullptr;
  Worker worker(io, std::move(settings), client, registry, metrics);
  worker.setRunSource(source.get());
  worker.onStarted([] {
    service::notify("READY=1");
    // Start-up (settings, templates, plugins, the first answers) leaves freed memory scattered
    // in the heap; hand its pages back rather than keep them resident while idle.
    ::malloc_trim(0);
  });

  int signals_seen = 0;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int signo) {
        if (ec) {
          return;
        }
        ++signals_seen;
        static const logging::Logger kLog("worker");
        const char* name = signo == SIGINT ? "SIGINT" : "SIGTERM";
        if (signals_seen == 1) {
          kLog.info(std::string("Received ") + name +
                    ": stopping. Send it again to cancel the running flow runs.");
          service::notify("STOPPING=1");
          worker.requestStop(StopMode::Drain);
        } else if (signals_seen == 2) {
          kLog.info(std::string("Received ") + name +
                    " again: cancelling the running flow runs, then exiting.");
          worker.requestStop(StopMode::Cancel);
        } else {
          kLog.warn("Received a third signal: exiting now.");
          std::_Exit(130);
        }
        signals.async_wait(on_signal);
      };
  signals.async_wait(on_signal);

  // systemd's watchdog (WatchdogSec=) is fed only while the last pool sync and heartbeat
  // reached the Prefect API, so that systemd restarts a worker that has lost it for longer
  // than the unit allows; a worker that merely has nothing to do keeps being fed.
  asio::steady_timer watchdog(io);
  std::function<void()> feed_watchdog;
  if (const auto watchdog_period = service::watchdogPeriod()) {
    const auto period = *watchdog_period / 2;
    feed_watchdog = [&watchdog, &worker, &feed_watchdog, period] {
      watchdog.expires_after(period);
      watchdog.async_wait([&worker, &feed_watchdog](const boost::system::error_code& ec) {
        if (ec) {
          return;
        }
        if (worker.apiHealthy()) {
          service::notify("WATCHDOG=1");
        }
        feed_watchdog();
      });
    };
    feed_watchdog();
  }

  int exit_code = exit_codes::kOk;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        exit_code = co_await worker.run();
        signals.cancel();
        watchdog.cancel();
        io.stop();
      },
      asio::detached);
  io.run();
  return exit_code;
}

int runStart(const Command& cmd) {
  auto settings = resolveSettings(cmd.start, currentEnvironment());
  if (!settings) {
    std::fprintf(stderr, "poolworker: %s\n", settings.error().message.c_str());
    return exit_codes::kUsage;
  }
  return runWorker(std::move(settings).value(), nullptr);
}

std::optional<double> positiveSeconds(const std::string& text) {
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size() && v > 0) {
      return v;
    }
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

int runServe(const Command& cmd) {
  auto file = serve::loadServeFile(cmd.serve_file, serve::defaultCheckEnvironment());
  if (!file) {
    std::fprintf(stderr, "poolworker serve: %s\n", file.error().message.c_str());
    return exit_codes::kUsage;
  }
  const Environment env = currentEnvironment();
  std::string stem = std::filesystem::path(cmd.serve_file).stem().string();
  StartFlags flags = cmd.start;
  // The journal of a serve process is keyed like a pool's, by a name no pool can clash with.
  flags.pool = "serve-" + (file->name.empty() ? stem : file->name);
  auto settings = resolveSettings(flags, env);
  if (!settings) {
    std::fprintf(stderr, "poolworker serve: %s\n", settings.error().message.c_str());
    return exit_codes::kUsage;
  }
  if (!flags.name) {
    settings->name = file->name.empty() ? "serve-" + stem : file->name;
  }
  if (!flags.limit) {
    // flow.serve's default: PREFECT_RUNNER_PROCESS_LIMIT, 5 unless set.
    settings->limit = 5;
    if (file->limit) {
      settings->limit = file->limit;
    } else if (auto it = env.find("PREFECT_RUNNER_PROCESS_LIMIT"); it != env.end()) {
      auto n = positiveSeconds(it->second);
      if (!n || *n != static_cast<int>(*n)) {
        std::fprintf(stderr,
                     "poolworker serve: PREFECT_RUNNER_PROCESS_LIMIT='%s' is not a "
                     "positive whole number\n",
                     it->second.c_str());
        return exit_codes::kUsage;
      }
      settings->limit = static_cast<int>(*n);
    }
  }
  std::optional<std::string> query = cmd.query_seconds;
  std::string query_source = "--query-seconds";
  if (!query) {
    if (auto it = env.find("PREFECT_RUNNER_POLL_FREQUENCY"); it != env.end()) {
      query = it->second;
      query_source = "PREFECT_RUNNER_POLL_FREQUENCY";
    }
  }
  if (query) {
    auto seconds = positiveSeconds(*query);
    if (!seconds) {
      std::fprintf(stderr, "poolworker serve: %s='%s' must be a positive number of seconds\n",
                   query_source.c_str(), query->c_str());
      return exit_codes::kUsage;
    }
    settings->query_seconds = *seconds;
  } else {
    settings->query_seconds = 10;
  }
  const bool pause = !cmd.no_pause_on_shutdown && file->pause_on_shutdown.value_or(true);
  SourceMaker make = [&file, pause](prefect::PrefectClient& client,
                                    backends::BackendRegistry& registry) {
    BackendFactory* process = registry.find("process");
    Json base_job_template = process != nullptr ? process->defaultBaseJobTemplate() : Json();
    return std::make_unique<serve::ServeSource>(client, std::move(file).value(),
                                                std::move(base_job_template), pause);
  };
  return runWorker(std::move(settings).value(), make);
}

int runTemplate(const Command& cmd) {
  asio::io_context io;
  backends::BackendRegistry registry;
  if (auto registered = backends::registerBuiltinBackends(registry, io); !registered) {
    std::fprintf(stderr, "poolworker: %s\n", registered.error().message.c_str());
    return exit_codes::kStartupFailure;
  }
  loadPlugins(registry, io, pluginDirsOf(cmd), false);
  if (cmd.type.empty()) {
    std::fprintf(stderr, "poolworker: template needs --type (one of: %s)\n",
                 registry.names().c_str());
    return exit_codes::kUsage;
  }
  BackendFactory* factory = registry.find(cmd.type);
  if (factory == nullptr) {
    std::fprintf(stderr, "poolworker: no backend for worker type '%s'; available: %s\n",
                 cmd.type.c_str(), registry.names().c_str());
    return exit_codes::kUsage;
  }
  std::cout << factory->defaultBaseJobTemplate().dump(2) << "\n";
  return exit_codes::kOk;
}

int runBackends(const Command& cmd) {
  asio::io_context io;
  backends::BackendRegistry registry;
  if (auto registered = backends::registerBuiltinBackends(registry, io); !registered) {
    std::fprintf(stderr, "poolworker: %s\n", registered.error().message.c_str());
    return exit_codes::kStartupFailure;
  }
  loadPlugins(registry, io, pluginDirsOf(cmd), false);
  std::printf("%-16s %-10s %-12s %s\n", "TYPE", "VERSION", "ORIGIN", "DESCRIPTION");
  for (BackendFactory* factory : registry.list()) {
    BackendInfo info = factory->info();
    std::printf("%-16s %-10s %-12s %s\n", info.name.c_str(), info.version.c_str(),
                info.origin.c_str(), info.description.c_str());
  }
  return exit_codes::kOk;
}

bool looksLikeUuid(const std::string& s) {
  return s.size() == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-';
}

int runRender(const Command& cmd) {
  if (cmd.deployment.empty() == cmd.flow_run.empty()) {
    std::fprintf(stderr, "poolworker: render needs exactly one of --deployment or --flow-run\n");
    return exit_codes::kUsage;
  }
  Json run_vars = Json::object();
  if (!cmd.job_variables.empty()) {
    run_vars = Json::parse(cmd.job_variables, nullptr, false);
    if (run_vars.is_discarded() || !run_vars.is_object()) {
      std::fprintf(stderr, "poolworker: --job-variables must be a JSON object\n");
      return exit_codes::kUsage;
    }
  }
  auto settings = resolveSettings(cmd.start, currentEnvironment());
  if (!settings) {
    std::fprintf(stderr, "poolworker: %s\n", settings.error().message.c_str());
    return exit_codes::kUsage;
  }
  if (settings->api.url.empty()) {
    std::fprintf(stderr, "poolworker: PREFECT_API_URL must be set to render a job configuration\n");
    return exit_codes::kUsage;
  }
  logging::setup("warning", settings->log_format);
  initRuntime();
  asio::io_context io;
  backends::BackendRegistry registry;
  (void)backends::registerBuiltinBackends(registry, io);
  loadPlugins(registry, io, settings->plugin_dirs, false);
  prefect::PrefectClient client(io, settings->api, userAgent());
  int exit_code = exit_codes::kOk;
  const Settings& s = *settings;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto fail = [&](const std::string& message) {
          std::fprintf(stderr, "poolworker: %s\n",
                       maskSecrets(message, {&s.api.key, &s.api.auth_string}).c_str());
          exit_code = exit_codes::kStartupFailure;
        };
        auto pool = co_await client.readWorkPool(s.pool);
        if (!pool) {
          fail(pool.error().kind == ErrorKind::NotFound ? "work pool '" + s.pool + "' not found"
                                                        : pool.error().message);
          co_return;
        }
        Json pool_json = *pool;
        if (!pool_json.contains("base_job_template") || pool_json["base_job_template"].empty()) {
          if (BackendFactory* f = registry.find(pool_json.value("type", ""))) {
            pool_json["base_job_template"] = f->defaultBaseJobTemplate();
          }
        }
        Json flow_run;
        Json deployment;
        if (!cmd.flow_run.empty()) {
          auto fr = co_await client.readFlowRun(cmd.flow_run);
          if (!fr) {
            fail(fr.error().message);
            co_return;
          }
          flow_run = *fr;
          if (!run_vars.empty()) {
            flow_run["job_variables"] = run_vars;
          }
        }
        std::string deployment_ref = cmd.flow_run.empty() ? cmd.deployment
                                     : flow_run.value("deployment_id", Json()).is_string()
                                         ? flow_run["deployment_id"].get<std::string>()
                                         : "";
        if (!deployment_ref.empty()) {
          Result<Json> dep = makeError(ErrorKind::Internal, "");
          if (looksLikeUuid(deployment_ref)) {
            dep = co_await client.readDeployment(deployment_ref);
          } else {
            auto slash = deployment_ref.find('/');
            if (slash == std::string::npos) {
              fail("--deployment must be FLOW_NAME/DEPLOYMENT_NAME or a deployment id");
              co_return;
            }
            dep = co_await client.readDeploymentByName(deployment_ref.substr(0, slash),
                                                       deployment_ref.substr(slash + 1));
          }
          if (!dep) {
            fail(dep.error().kind == ErrorKind::NotFound
                     ? "deployment '" + deployment_ref + "' not found"
                     : dep.error().message);
            co_return;
          }
          deployment = *dep;
        }
        if (flow_run.is_null()) {
          flow_run = {{"id", "00000000-0000-0000-0000-000000000000"},
                      {"name", "rendered-run"},
                      {"flow_id", deployment.value("flow_id", "")},
                      {"deployment_id", deployment.value("id", "")},
                      {"job_variables", run_vars}};
        }
        Json flow;
        if (std::string flow_id = flow_run.value("flow_id", ""); !flow_id.empty()) {
          if (auto f = co_await client.readFlow(flow_id)) {
            flow = *f;
          }
        }
        PreparationContext ctx;
        ctx.pool = pool_json;
        ctx.flow_run = flow_run;
        ctx.deployment = deployment;
        ctx.flow = flow;
        ctx.worker_name = s.name.empty() ? "poolworker-render" : s.name;
        ctx.settings_env = s.prefect_settings;
        ctx.api_url = s.api.url;
        auto prepared = co_await prepareRun(client, ctx);
        if (!prepared) {
          fail("the job configuration cannot be built: " + prepared.error().message);
          co_return;
        }
        std::vector<std::string> secrets = prepared->secrets;
        if (!s.api.key.empty()) {
          secrets.push_back(s.api.key.reveal());
        }
        if (!s.api.auth_string.empty()) {
          secrets.push_back(s.api.auth_string.reveal());
        }
        Json shown = prepared->request.configuration;
        if (cmd.infrastructure) {
          const std::string type = pool_json.value("type", "");
          BackendFactory* factory = registry.find(type);
          if (factory == nullptr) {
            fail("no backend serves pool type '" + type + "'");
            co_return;
          }
          AsioExecutor executor(io);
          BackendContext context;
          context.executor = &executor;
          context.worker_name = ctx.worker_name;
          auto backend = factory->create(context);
          if (!backend) {
            fail(backend.error().message);
            co_return;
          }
          auto preview = (*backend)->preview(prepared->request);
          (*backend)->shutdown();
          if (!preview) {
            fail(preview.error().message);
            co_return;
          }
          shown = std::move(preview).value();
        }
        shown = maskSecretsInJson(shown, secrets);
        std::cout << shown.dump(2) << "\n";
      },
      [&](std::exception_ptr) { io.stop(); });
  io.run();
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto cmd = parse(args);
  if (!cmd) {
    std::fprintf(stderr, "poolworker: %s\n", cmd.error().message.c_str());
    return exit_codes::kUsage;
  }
  if (cmd->name == "help") {
    std::cout << helpText(cmd->help_topic);
    return exit_codes::kOk;
  }
  if (cmd->name == "version") {
    std::cout << "poolworker " << version() << " (Prefect API 0.8.4; follows Prefect "
              << kPrefectCompatVersion << ")\n";
    return exit_codes::kOk;
  }
  if (cmd->name == "start") {
    return runStart(*cmd);
  }
  if (cmd->name == "serve") {
    return runServe(*cmd);
  }
  if (cmd->name == "template") {
    return runTemplate(*cmd);
  }
  if (cmd->name == "render") {
    return runRender(*cmd);
  }
  if (cmd->name == "backends") {
    return runBackends(*cmd);
  }
  std::fprintf(stderr, "poolworker: unknown command '%s'\n", cmd->name.c_str());
  return exit_codes::kUsage;
}

}  // namespace poolworker::cli
