#ifndef POOLWORKER_PLUGIN_H
#define POOLWORKER_PLUGIN_H

/**
 * @file
 * @brief The stable C ABI of shared-library backend plugins.
 *
 * A backend plugin is a shared library (`*.so`) in one of poolworker's plugin directories
 * (`--plugin-dir`, `plugin_dirs` in the config file, `POOLWORKER_PLUGIN_DIR`). It exports one
 * symbol, `poolworker_plugin_v1`, which returns a table of function pointers: the plugin's
 * descriptor. Everything that crosses the boundary is plain C: integers, UTF-8 strings with a
 * length, opaque pointers and function pointers. Structured data (job configurations, run
 * handles, outcomes) crosses as UTF-8 JSON text, the shapes of which are those of the C++ API in
 * `backend.h` and `run.h` and are spelled out in `docs/plugins.md`.
 *
 * Authors writing C++ do not use this header directly: `plugin_cpp.h` adapts a
 * `poolworker::BackendFactory` to it with one macro.
 *
 * ## Versions
 * `POOLWORKER_PLUGIN_ABI_MAJOR` changes when a change breaks existing plugins; poolworker loads
 * only plugins built for its own major. `POOLWORKER_PLUGIN_ABI_MINOR` grows when something is
 * added at the end of a table: a plugin built for an older minor still loads, and each side
 * checks `struct_size` before it touches a field the other side may not have. The entry symbol
 * carries the major in its name, so a library built for another major is refused before any of
 * its code runs. `tests/plugins/abi_version_test.cpp` fails when this header changes without a
 * version bump.
 *
 * ## Ownership
 * - Names ending in `_host` are objects owned by poolworker; a plugin only passes them back.
 * - `poolworker_instance` is owned by the plugin (made by `create`, freed by `destroy`).
 * - Strings given to a function are borrowed for the duration of the call; copy what you keep.
 * - A `poolworker_buffer` filled by the plugin (results of `create` and `preview`) is freed by
 *   poolworker with the plugin's own `free_buffer`, so that both sides may use different
 *   allocators.
 * - The descriptor and its strings must stay valid until the process exits: poolworker never
 *   unloads a plugin.
 *
 * ## Threads
 * poolworker calls every function of the descriptor on its event-loop thread, one at a time.
 * Those functions must not block: a plugin that waits for something does so on a thread of its
 * own, or polls with `schedule`. Completions (`complete`) and the log functions may be called
 * from any thread. Tasks given to `post` and `schedule` run on the event-loop thread.
 *
 * ## Errors
 * No C++ exception, `longjmp` or signal may cross the boundary. Failures are a
 * `poolworker_status` plus a UTF-8 message written for the user who will read it in the run's
 * logs.
 */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Major version of this ABI. A plugin is loaded only when its major equals poolworker's. */
#define POOLWORKER_PLUGIN_ABI_MAJOR 1
/** Minor version of this ABI: grows with each backward-compatible addition. */
#define POOLWORKER_PLUGIN_ABI_MINOR 0
/** Name of the entry symbol of this major version, as given to `dlsym`. */
#define POOLWORKER_PLUGIN_ENTRY_SYMBOL "poolworker_plugin_v1"

/** Makes a symbol visible from a library built with `-fvisibility=hidden`. */
#if defined(__GNUC__)
#define POOLWORKER_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define POOLWORKER_PLUGIN_EXPORT
#endif

/**
 * @brief Outcome of a call: success, or what kind of failure it was.
 *
 * The same kinds as `poolworker::ErrorKind`; the worker's reaction depends on them (see
 * `result.h`): a transient failure is retried, an infrastructure failure or an invalid
 * configuration crashes the run with the message, and so on.
 */
typedef int32_t poolworker_status;
enum {
  POOLWORKER_OK = 0,                        /**< Success. */
  POOLWORKER_ERR_TRANSIENT = 1,             /**< May go away by itself; retried. */
  POOLWORKER_ERR_INFRASTRUCTURE = 2,        /**< The infrastructure could not run the flow. */
  POOLWORKER_ERR_RUN_FAILED = 3,            /**< The user's flow ran and failed. */
  POOLWORKER_ERR_INVALID_CONFIGURATION = 4, /**< Bad job configuration or option. */
  POOLWORKER_ERR_NOT_FOUND = 5,             /**< The run or object does not exist. */
  POOLWORKER_ERR_UNAUTHORIZED = 6,          /**< Credentials were refused. */
  POOLWORKER_ERR_UNSUPPORTED = 7,           /**< The operation is not implemented. */
  POOLWORKER_ERR_CANCELLED = 8,             /**< Abandoned: the worker stops, a deadline passed. */
  POOLWORKER_ERR_INTERNAL = 9               /**< A bug or an unexpected answer. */
};

/** @brief Severity of a log message; the levels of `poolworker::LogLevel`. */
typedef int32_t poolworker_log_level;
enum {
  POOLWORKER_LOG_DEBUG = 0,
  POOLWORKER_LOG_INFO = 1,
  POOLWORKER_LOG_WARNING = 2,
  POOLWORKER_LOG_ERROR = 3
};

/**
 * @brief Bytes allocated by the plugin and handed to poolworker, which releases them with the
 * descriptor's `free_buffer` once it has read them. `data` need not be NUL-terminated.
 */
typedef struct poolworker_buffer {
  char* data;
  size_t size;
} poolworker_buffer;

/** @brief poolworker itself, as the host functions see it. Owned by poolworker. */
typedef struct poolworker_host poolworker_host;
/**
 * @brief The log of one run (or of the worker). Owned by poolworker; a plugin that receives
 * one from `start`, `wait` or `recover` holds a reference that it gives back with
 * `log_release` exactly once, when it no longer writes to it.
 */
typedef struct poolworker_log_host poolworker_log_host;
/**
 * @brief One pending asynchronous call. Owned by poolworker; the plugin ends it with
 * `complete` exactly once, after which it must not be used.
 */
typedef struct poolworker_completion_host poolworker_completion_host;
/** @brief One backend instance. Owned by the plugin: made by `create`, freed by `destroy`. */
typedef struct poolworker_instance poolworker_instance;

/** @brief A task for the event-loop thread. */
typedef void (*poolworker_task_fn)(void* user_data);

/**
 * @brief What poolworker offers a plugin instance. Given to `create`; valid until `destroy`
 * has returned.
 */
typedef struct poolworker_host_api {
  /** sizeof(poolworker_host_api) as poolworker was built; fields past it do not exist. */
  uint32_t struct_size;
  /** The ABI version poolworker was built with. */
  uint32_t abi_major;
  uint32_t abi_minor;
  /** Passed back to `post`, `schedule` and `cancel_timer`. */
  poolworker_host* host;

  /** Writes a message about the run to its log (the worker's log and the run's Prefect logs).
   *  Any thread. The message must not contain secrets. */
  void (*log)(poolworker_log_host* log, poolworker_log_level level, const char* message,
              size_t size);
  /** Copies a chunk of the infrastructure's own output (stdout when `is_stderr` is 0) to the
   *  worker's output. Any thread. Chunks need not be whole lines. */
  void (*output)(poolworker_log_host* log, const char* chunk, size_t size, int32_t is_stderr);
  /** Gives back a log reference received from `start`, `wait` or `recover`. Any thread. */
  void (*log_release)(poolworker_log_host* log);

  /** Ends a pending call. Any thread, exactly once per completion. On `POOLWORKER_OK`, `data`
   *  holds the call's JSON result (see each call); otherwise the error message. poolworker
   *  copies `data` before it returns. */
  void (*complete)(poolworker_completion_host* completion, poolworker_status status,
                   const char* data, size_t size);

  /** Runs `task(user_data)` on the event-loop thread, soon and never inline. Any thread. A task
   *  posted while the worker exits may never run. */
  void (*post)(poolworker_host* host, poolworker_task_fn task, void* user_data);
  /** Runs `task(user_data)` on the event-loop thread once `delay_ms` have passed. Event-loop
   *  thread only. Returns a timer id, never 0. */
  uint64_t (*schedule)(poolworker_host* host, uint64_t delay_ms, poolworker_task_fn task,
                       void* user_data);
  /** Stops a timer. Event-loop thread only. Returns 1 when the task had not run and now never
   *  will (the plugin then frees its `user_data`), 0 when it had already run. */
  int32_t (*cancel_timer)(poolworker_host* host, uint64_t timer_id);
} poolworker_host_api;

/**
 * @brief A plugin's descriptor: who it is and its functions. Returned by the entry symbol;
 * must stay valid, unchanged, until the process exits.
 *
 * JSON shapes (all UTF-8 objects unless said otherwise):
 * - request (`start`, `preview`): {"run": {flow_run_id, flow_run_name, flow_id, flow_name,
 *   deployment_id, deployment_name, work_pool_name, work_pool_id, worker_name, api_url},
 *   "configuration": {...the run's job configuration...}}
 * - handle (result of `start`; argument of `wait`, `kill`, `recover`): {"backend": name,
 *   "infrastructure_pid": string, "data": {...plugin's own...}}. A handle from `start` need
 *   only hold `infrastructure_pid` and `data`; poolworker adds `backend`.
 * - outcome (result of `wait`): {"exit_code": integer or null, "detail": string}
 * - recovery (result of `recover`): {"running": bool, "exit_code": integer or null,
 *   "detail": string}
 * - `kill` and `check` results are ignored (an empty string will do).
 */
typedef struct poolworker_plugin {
  /** sizeof(poolworker_plugin) as the plugin was built. */
  uint32_t struct_size;
  /** The ABI version the plugin was built with (POOLWORKER_PLUGIN_ABI_MAJOR/MINOR). */
  uint32_t abi_major;
  uint32_t abi_minor;

  /** Worker type the plugin serves, e.g. "slurm": a work pool's `type`. Letters, digits,
   *  '-' and '_'. Must not be the name of a built-in backend. */
  const char* name;
  /** Version of the plugin itself, e.g. "1.2.0". */
  const char* version;
  /** One line about what it runs flows on. */
  const char* description;
  /** The default base job template of pools of this type: a JSON object with
   *  `job_configuration` and `variables`, as Prefect's own workers have. */
  const char* default_template_json;
  /** The options the plugin accepts under `backends.<name>` in the config file: a JSON array
   *  of {"key", "type", "default", "description"}. Any other key is refused by poolworker. */
  const char* options_json;

  /**
   * @brief Creates an instance.
   * @param host what poolworker offers; valid until `destroy` has returned.
   * @param context_json {"worker_name": string, "state_directory": string (a directory of this
   *        instance's own, kept across restarts), "options": {...checked, with defaults...}}.
   * @param worker_log the worker's own log, for messages about no single run; valid until
   *        `destroy` has returned; never released.
   * @param out receives the instance on success.
   * @param error receives a message (allocated by the plugin) on failure.
   */
  poolworker_status (*create)(const poolworker_host_api* host, const char* context_json,
                              size_t context_size, poolworker_log_host* worker_log,
                              poolworker_instance** out, poolworker_buffer* error);
  /** Frees an instance. Afterwards the plugin must not call `complete` for any of its pending
   *  calls, nor use any host object: poolworker forgets them. */
  void (*destroy)(poolworker_instance* instance);

  /** Creates a run's infrastructure and completes with a handle as soon as it exists. `log` is
   *  a reference the plugin releases. See `Backend::start`. */
  void (*start)(poolworker_instance* instance, const char* request_json, size_t request_size,
                poolworker_log_host* log, poolworker_completion_host* done);
  /** Completes with the outcome once the run's infrastructure has ended. See `Backend::wait`. */
  void (*wait)(poolworker_instance* instance, const char* handle_json, size_t handle_size,
               poolworker_log_host* log, poolworker_completion_host* done);
  /** Stops a run: politely, then by force after `grace_ms`. See `Backend::kill`. */
  void (*kill)(poolworker_instance* instance, const char* handle_json, size_t handle_size,
               uint64_t grace_ms, poolworker_completion_host* done);
  /** Re-attaches to a run journalled by an earlier worker. See `Backend::recover`. */
  void (*recover)(poolworker_instance* instance, const char* handle_json, size_t handle_size,
                  poolworker_log_host* log, poolworker_completion_host* done);
  /** Checks that the infrastructure can take runs. See `Backend::check`. */
  void (*check)(poolworker_instance* instance, poolworker_completion_host* done);
  /** Describes what `start` would create, without creating anything. Synchronous. On success
   *  `out` holds JSON, otherwise the message. See `Backend::preview`. */
  poolworker_status (*preview)(poolworker_instance* instance, const char* request_json,
                               size_t request_size, poolworker_buffer* out);
  /** Stops the instance's background work before `destroy`; runs keep going. */
  void (*shutdown)(poolworker_instance* instance);
  /** Frees a buffer the plugin filled. */
  void (*free_buffer)(poolworker_buffer* buffer);
} poolworker_plugin;

/**
 * @brief The entry symbol's type. poolworker calls it once, after loading the library.
 * @param host_abi_major, host_abi_minor the ABI version poolworker was built with.
 * @return the descriptor, or NULL when the plugin cannot work with this host (poolworker then
 *         refuses it, saying so).
 */
typedef const poolworker_plugin* (*poolworker_plugin_entry_fn)(uint32_t host_abi_major,
                                                               uint32_t host_abi_minor);

#ifdef __cplusplus
}
#endif

#endif /* POOLWORKER_PLUGIN_H */
