#pragma once

/// @file
/// @brief The Docker backend: each flow run is a container on a Docker engine, created and
/// followed through the Engine API like Prefect's Docker worker does, minus its known bugs.

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include <poolworker/backend.h>

#include "backends/common/http_client.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::docker {

/// @brief Settings of one Docker backend instance, from its options.
struct DockerBackendSettings {
  /// Where the engine listens (`host`, `tls_verify`, `cert_path`).
  common::HttpEndpoint endpoint;
  /// Deadline of ordinary engine requests (`timeout`).
  std::chrono::milliseconds timeout{60000};
  /// Engine API version to speak instead of negotiating one (`api_version`); empty: negotiate.
  std::string api_version;
  /// The Docker CLI config file read for ambient registry credentials; empty: none.
  std::filesystem::path docker_config;
  /// Directory that explicit relative bind sources (`./data:/data`) are resolved against.
  std::filesystem::path working_directory;
};

/// @brief Runs flow runs as Docker containers.
///
/// `start` negotiates the Engine API version (once), pulls the image as the pull policy says,
/// creates the container (retrying a taken name as `<name>-1`, `-2`, ...), connects the extra
/// networks, registers a `wait?condition=next-exit` and, with `stream_output`, attaches to the
/// container's output before starting it: so neither the exit code nor the first line of
/// output can be lost, even when the engine removes the container (`auto_remove`). Anything
/// created is removed again when a later step fails.
///
/// The handle's `infrastructure_pid` is `http+docker://localhost:<container id>` for a unix
/// socket engine (what Prefect writes), `<http|https>://host:port:<id>` for TCP; its data holds
/// the container id, the engine address, the name, `auto_remove`, `stream_output` and `tty`.
///
/// `wait` completes with the exit code of the wait answer (`StatusCode`). A wait connection
/// that breaks while the container runs is re-established (after inspecting the container,
/// with backoff). Output is decoded from the engine's multiplexed stream and written to the
/// run's `LogSink::output`, stdout and stderr apart.
///
/// Every operation is asynchronous on the worker's event loop: no thread per run; each running
/// container holds one wait connection and, with `stream_output`, one output connection.
class DockerBackend final : public Backend {
 public:
  /// @brief Creates a backend.
  /// @param io the event loop that runs the backend's requests; outlives the backend.
  /// @param executor the worker's executor on that loop; outlives the backend.
  /// @param settings the resolved settings.
  DockerBackend(boost::asio::io_context& io, Executor& executor, DockerBackendSettings settings);
  ~DockerBackend() override;
  DockerBackend(const DockerBackend&) = delete;
  DockerBackend& operator=(const DockerBackend&) = delete;

  void start(const StartRequest& request, std::shared_ptr<LogSink> log,
             Callback<RunHandle> done) override;
  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Outcome> done) override;
  void kill(const RunHandle& handle, std::chrono::milliseconds grace, Callback<void> done) override;
  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
               Callback<Recovery> done) override;

  /// @brief Succeeds when the engine answers `GET /_ping` and its API version is negotiated.
  void check(Callback<void> done) override;

  /// @brief What `start` would send, without contacting the engine: `{"image", "name",
  /// "pull_policy", "create", "networks"}` (see `previewOf`). The body is built for the
  /// negotiated engine when one is known, else for Engine API 1.41 and Docker 20.10. Values are
  /// not redacted; the caller hides secrets before printing.
  Result<Json> preview(const StartRequest& request) override;

  /// @brief Abandons every request in flight: pending callbacks complete with `Cancelled`.
  /// Containers keep running; a later worker recovers them.
  void shutdown() override;

 private:
  class Core;
  std::shared_ptr<Core> core_;
};

}  // namespace poolworker::backends::docker
