#pragma once

// Settings of `poolworker start`: the flags and PREFECT_* settings of `prefect worker start`,
// plus poolworker's own, resolved with the rule flags > environment > config file > Prefect
// profile > defaults.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "worker/secret.h"

namespace poolworker {

/// @brief Settings of the connection to the Prefect API.
struct ApiSettings {
  std::string url;     ///< PREFECT_API_URL, without a trailing slash.
  Secret key;          ///< PREFECT_API_KEY (Prefect Cloud, Bearer).
  Secret auth_string;  ///< PREFECT_API_AUTH_STRING (self-hosted, Basic).
  double request_timeout_seconds = 60;
  int max_retries = 5;
  double retry_jitter_factor = 0.2;
  /// Base of the exponential retry delay: attempt n waits base * 2^n seconds (Prefect: 1).
  double retry_base_seconds = 1.0;
  std::vector<int> retry_extra_codes;
  bool csrf_support_enabled = true;
  Json custom_headers = Json::object();
  std::string cloud_api_url = "https://api.prefect.cloud/api";
  bool tls_insecure_skip_verify = false;
  std::string ssl_cert_file;  ///< CA bundle; empty = the system's.

  /// @brief True when `url` points at Prefect Cloud.
  bool isCloud() const;
};

/// @brief Everything `poolworker start` runs with.
struct Settings {
  // What `prefect worker start` takes as flags.
  std::string pool;
  std::vector<std::string> work_queues;
  std::string name;          ///< Worker name; generated when empty.
  std::optional<int> limit;  ///< --limit; empty = unlimited.
  double prefetch_seconds = 10;
  bool run_once = false;
  std::string type;  ///< Worker type; empty = the pool's type.
  std::string base_job_template_path;
  bool with_healthcheck = false;
  bool create_pool_if_not_found = true;

  ApiSettings api;

  double query_seconds = 10;      ///< PREFECT_WORKER_QUERY_SECONDS.
  double heartbeat_seconds = 30;  ///< PREFECT_WORKER_HEARTBEAT_SECONDS.
  std::string webserver_host = "0.0.0.0";
  int webserver_port = 8080;

  // poolworker's own.
  std::string state_dir;  ///< Run journal; see defaultStateDirectory().
  double cancellation_poll_seconds = 10;
  double kill_grace_seconds = 30;
  int max_starting = 32;     ///< Claimed runs being prepared and started at once.
  double drain_seconds = 0;  ///< On SIGTERM, how long running flows may go on; 0 = leave them to
                             ///< the next worker at once.
  std::string log_level = "info";
  std::string log_format = "text";        ///< "text" or "json".
  Json backend_options = Json::object();  ///< backends.<name>.<option>
  std::vector<std::string> plugin_dirs;

  /// Every Prefect setting that was explicitly set (environment, config file, profile), as
  /// PREFECT_* variables. Passed to each run, as Prefect passes its settings to flow runs.
  std::map<std::string, std::string> prefect_settings;
  /// Where each resolved setting came from ("flag", "environment", "config file", ...), for
  /// `--help`-style diagnostics and tests.
  std::map<std::string, std::string> sources;
};

/// @brief The raw values of the command line of `poolworker start` (only those given).
struct StartFlags {
  std::optional<std::string> pool;
  std::vector<std::string> work_queues;
  std::optional<std::string> name;
  std::optional<std::string> limit;
  std::optional<std::string> prefetch_seconds;
  bool run_once = false;
  std::optional<std::string> type;
  std::optional<std::string> base_job_template;
  bool with_healthcheck = false;
  std::optional<bool> create_pool_if_not_found;
  std::optional<std::string> config_file;
  std::optional<std::string> state_dir;
  std::optional<std::string> log_level;
  std::optional<std::string> log_format;
  std::vector<std::string> plugin_dirs;
};

/// @brief The process environment as a map (injectable for tests).
using Environment = std::map<std::string, std::string>;

/// @brief Reads the current process environment.
Environment currentEnvironment();

/// @brief Resolves the settings from flags, environment, the YAML config file named by
/// `--config` (or POOLWORKER_CONFIG) and the active Prefect profile.
/// @return the settings, or an `InvalidConfiguration` error naming the setting, its source and
/// the problem (for a YAML file: file, line and key).
Result<Settings> resolveSettings(const StartFlags& flags, const Environment& env);

/// @brief Where runs are journalled when no state directory is configured:
/// $STATE_DIRECTORY (systemd), else /var/lib/poolworker for root, else
/// $XDG_STATE_HOME/poolworker or ~/.local/state/poolworker.
std::string defaultStateDirectory(const Environment& env);

}  // namespace poolworker
