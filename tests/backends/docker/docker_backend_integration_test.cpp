// The Docker backend against the machine's real Docker engine: containers are created, started,
// followed, stopped and recovered for real, from the locally built test image (no registry).
//
// Without a Docker engine these tests skip, saying why. Where the engine is expected (tests/run.sh
// sets POOLWORKER_REQUIRE_DOCKER=1 when /var/run/docker.sock exists) a missing engine or test
// image fails them instead, so that a machine with Docker never passes by skipping.

#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/docker/docker_backend.h"
#include "backends/docker/engine_client.h"
#include "backends/docker/factory.h"
#include "backends/docker/job_config.h"
#include "tests/backends/docker/docker_test_support.h"
#include "tests/test_support.h"

namespace poolworker::backends::docker {
namespace {

using docker_testing::await;
using docker_testing::RecordingSink;
using docker_testing::runUntil;
using docker_testing::TestExecutor;

// Built by tests/docker/build-test-images.sh.
constexpr char kTestImage[] = "poolworker-test/base:bookworm";
constexpr char kSocket[] = "/var/run/docker.sock";
// Every container, network and volume made here carries this label, for cleanup.
constexpr char kTestLabel[] = "io.poolworker.integration-test";

bool requireDocker() {
  const char* value = std::getenv("POOLWORKER_REQUIRE_DOCKER");
  return value != nullptr && std::string(value) == "1";
}

std::string randomSuffix() {
  static std::mt19937_64 random(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 10; ++i) {
    out.push_back(kHex[random() % 16]);
  }
  return out;
}

namespace asio = boost::asio;
using ErrorCode = boost::system::error_code;
using Tcp = asio::ip::tcp;
using UnixSocket = asio::local::stream_protocol::socket;
using TlsStream = asio::ssl::stream<Tcp::socket>;

/// One forwarded connection: bytes both ways between a TCP (or TLS) client and the engine's
/// unix socket, until either side closes.
template <typename Downstream>
class ForwardedConnection : public std::enable_shared_from_this<ForwardedConnection<Downstream>> {
 public:
  template <typename... Args>
  explicit ForwardedConnection(UnixSocket up, Args&&... down)
      : down_(std::forward<Args>(down)...), up_(std::move(up)) {}

  void start() {
    if constexpr (std::is_same_v<Downstream, TlsStream>) {
      down_.async_handshake(asio::ssl::stream_base::server,
                            [self = this->shared_from_this()](const ErrorCode& ec) {
                              if (!ec) {
                                self->pumpUp();
                                self->pumpDown();
                              }
                            });
    } else {
      pumpUp();
      pumpDown();
    }
  }

 private:
  // client -> engine
  void pumpUp() {
    down_.async_read_some(asio::buffer(from_client_),
                          [self = this->shared_from_this()](const ErrorCode& ec, std::size_t n) {
                            if (ec) {
                              ErrorCode ignored;
                              self->up_.shutdown(asio::socket_base::shutdown_send, ignored);
                              return;
                            }
                            asio::async_write(self->up_, asio::buffer(self->from_client_.data(), n),
                                              [self](const ErrorCode& write_ec, std::size_t) {
                                                if (!write_ec) {
                                                  self->pumpUp();
                                                }
                                              });
                          });
  }

  // engine -> client; the engine's close becomes the client's end of stream (close_notify first
  // for TLS, as the Docker daemon sends it).
  void pumpDown() {
    up_.async_read_some(asio::buffer(from_engine_),
                        [self = this->shared_from_this()](const ErrorCode& ec, std::size_t n) {
                          if (ec) {
                            self->closeDown();
                            return;
                          }
                          asio::async_write(self->down_, asio::buffer(self->from_engine_.data(), n),
                                            [self](const ErrorCode& write_ec, std::size_t) {
                                              if (!write_ec) {
                                                self->pumpDown();
                                              }
                                            });
                        });
  }

  void closeDown() {
    auto& socket = down_.lowest_layer();
    if constexpr (std::is_same_v<Downstream, TlsStream>) {
      ErrorCode ignored;
      socket.cancel(ignored);
      down_.async_shutdown([self = this->shared_from_this()](const ErrorCode&) {
        ErrorCode unused;
        self->down_.lowest_layer().close(unused);
      });
    } else {
      ErrorCode ignored;
      socket.shutdown(asio::socket_base::shutdown_both, ignored);
      socket.close(ignored);
    }
  }

  Downstream down_;
  UnixSocket up_;
  std::array<char, 16384> from_client_{};
  std::array<char, 16384> from_engine_{};
};

/// Listens on 127.0.0.1 and forwards every connection to a unix socket: the machine's engine as
/// a `tcp://` engine, with TLS (a server certificate, client certificates required) when given
/// a context.
class EngineForwarder {
 public:
  EngineForwarder(asio::io_context& io, std::string socket_path, asio::ssl::context* tls)
      : io_(io),
        socket_path_(std::move(socket_path)),
        tls_(tls),
        acceptor_(io, Tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    accept();
  }
  ~EngineForwarder() {
    ErrorCode ignored;
    acceptor_.close(ignored);
  }

  unsigned short port() const { return acceptor_.local_endpoint().port(); }

 private:
  void accept() {
    acceptor_.async_accept([this](const ErrorCode& ec, Tcp::socket socket) {
      if (ec) {
        return;
      }
      UnixSocket up(io_);
      ErrorCode connect_ec;
      up.connect(asio::local::stream_protocol::endpoint(socket_path_), connect_ec);
      if (!connect_ec) {
        if (tls_ != nullptr) {
          std::make_shared<ForwardedConnection<TlsStream>>(std::move(up), std::move(socket), *tls_)
              ->start();
        } else {
          std::make_shared<ForwardedConnection<Tcp::socket>>(std::move(up), std::move(socket))
              ->start();
        }
      }
      accept();
    });
  }

  asio::io_context& io_;
  std::string socket_path_;
  asio::ssl::context* tls_;
  Tcp::acceptor acceptor_;
};

/// Sets an environment variable for the life of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      previous_ = old;
    }
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (previous_) {
      ::setenv(name_, previous_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> previous_;
};

class DockerBackendIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    struct stat info {};
    const bool has_socket = ::stat(kSocket, &info) == 0 && S_ISSOCK(info.st_mode);
    if (!has_socket) {
      if (requireDocker()) {
        FAIL() << "POOLWORKER_REQUIRE_DOCKER=1 but there is no Docker engine socket at " << kSocket;
      }
      GTEST_SKIP() << "no Docker engine on this machine (" << kSocket
                   << " does not exist): the Docker integration tests are skipped";
    }
    auto endpoint = common::parseHttpEndpoint(std::string("unix://") + kSocket);
    ASSERT_TRUE(endpoint.ok());
    endpoint_ = *endpoint;
    engine_ = std::make_shared<EngineClient>(io_, endpoint_, EngineClientOptions{});
    auto image = call("GET", std::string("/images/") + kTestImage + "/json");
    if (!image.ok()) {
      if (requireDocker()) {
        FAIL() << "POOLWORKER_REQUIRE_DOCKER=1 but the Docker engine at " << endpoint_.url
               << " does not answer: " << image.error().message;
      }
      GTEST_SKIP() << "the Docker engine at " << endpoint_.url
                   << " does not answer (the Docker integration tests are skipped): "
                   << image.error().message;
    }
    if (image->status == 404) {
      if (requireDocker()) {
        FAIL() << "the test image " << kTestImage
               << " does not exist: run tests/docker/build-test-images.sh";
      }
      GTEST_SKIP() << "the test image " << kTestImage
                   << " does not exist (tests/docker/build-test-images.sh builds it)";
    }
    ASSERT_EQ(image->status, 200) << image->body;
    backend_ = makeBackend();
  }

  void TearDown() override {
    if (backend_) {
      backend_->shutdown();
      backend_.reset();
    }
    if (engine_) {
      for (const auto& id : containers_) {
        (void)call("DELETE", "/containers/" + id + "?force=1&v=1");
      }
      for (const auto& name : networks_) {
        (void)call("DELETE", "/networks/" + name);
      }
      engine_->shutdown();
      io_.restart();
      io_.poll();
    }
  }

  std::unique_ptr<DockerBackend> makeBackend(std::string host = "") {
    DockerBackendSettings settings;
    if (host.empty()) {
      settings.endpoint = endpoint_;
    } else {
      auto parsed = common::parseHttpEndpoint(host);
      EXPECT_TRUE(parsed.ok());
      settings.endpoint = *parsed;
    }
    settings.timeout = std::chrono::seconds(60);
    settings.working_directory = "/";
    return std::make_unique<DockerBackend>(io_, executor_, settings);
  }

  /// A direct engine request, for what the test checks or cleans up.
  Result<common::HttpResponse> call(const std::string& method, const std::string& path,
                                    std::optional<Json> body = std::nullopt) {
    return await<common::HttpResponse>(io_, [&](Callback<common::HttpResponse> done) {
      engine_->request(method, path, std::move(body), std::move(done));
    });
  }

  Json inspect(const std::string& id) {
    auto answer = call("GET", "/containers/" + id + "/json");
    if (!answer.ok() || answer->status != 200) {
      return Json();
    }
    return Json::parse(answer->body, nullptr, false);
  }

  /// A configuration as the worker prepares it, for a container of the test image.
  StartRequest request(const std::string& command, Json extra = Json::object()) {
    StartRequest request;
    request.run.flow_run_id = "00000000-0000-4000-8000-" + randomSuffix() + "00";
    request.run.flow_run_name = "it-" + randomSuffix();
    request.run.flow_name = "integration";
    request.run.work_pool_name = "integration-pool";
    request.run.worker_name = "integration-worker";
    request.run.api_url = "http://127.0.0.1:4200/api";
    request.configuration = Json::object();
    request.configuration["image"] = kTestImage;
    request.configuration["command"] = command;
    request.configuration["env"] = {{"PREFECT_API_URL", "http://127.0.0.1:4200/api"},
                                    {"PREFECT__FLOW_RUN_ID", request.run.flow_run_id}};
    request.configuration["labels"] = {{"prefect.io/flow-run-id", request.run.flow_run_id},
                                       {kTestLabel, "1"}};
    request.configuration["name"] = request.run.flow_run_name;
    request.configuration["stream_output"] = true;
    for (const auto& [key, value] : extra.items()) {
      request.configuration[key] = value;
    }
    return request;
  }

  Result<RunHandle> start(const StartRequest& request, const std::shared_ptr<LogSink>& sink,
                          DockerBackend* backend = nullptr) {
    DockerBackend* target = backend != nullptr ? backend : backend_.get();
    auto handle = await<RunHandle>(
        io_, [&](Callback<RunHandle> done) { target->start(request, sink, std::move(done)); });
    if (handle.ok()) {
      containers_.push_back(handle->data["container_id"].get<std::string>());
    }
    return handle;
  }

  Result<Outcome> wait(const RunHandle& handle, const std::shared_ptr<LogSink>& sink,
                       DockerBackend* backend = nullptr) {
    DockerBackend* target = backend != nullptr ? backend : backend_.get();
    return await<Outcome>(
        io_, [&](Callback<Outcome> done) { target->wait(handle, sink, std::move(done)); });
  }

  /// Containers of this test run with `label=value`, created or not.
  std::vector<std::string> containersLabelled(const std::string& label, const std::string& value) {
    const std::string filters =
        common::urlEncode(Json{{"label", Json::array({label + "=" + value})}}.dump());
    auto answer = call("GET", "/containers/json?all=1&filters=" + filters);
    std::vector<std::string> ids;
    if (answer.ok() && answer->status == 200) {
      for (const auto& item : Json::parse(answer->body)) {
        ids.push_back(item["Id"].get<std::string>());
      }
    }
    return ids;
  }

  boost::asio::io_context io_;
  TestExecutor executor_{io_};
  common::HttpEndpoint endpoint_;
  std::shared_ptr<EngineClient> engine_;
  std::unique_ptr<DockerBackend> backend_;
  std::vector<std::string> containers_;
  std::vector<std::string> networks_;
};

TEST_F(DockerBackendIntegration, RunsAContainerStreamsItsOutputAndReportsItsExitCode) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(request("sh -c 'echo to-stdout; echo to-stderr >&2; exit 0'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;

  const std::string id = handle->data["container_id"];
  EXPECT_EQ(id.size(), 64u);
  EXPECT_EQ(handle->backend, "docker");
  EXPECT_EQ(handle->infrastructure_pid, "http+docker://localhost:" + id);

  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  EXPECT_EQ(sink->out(), "to-stdout\n");
  EXPECT_EQ(sink->err(), "to-stderr\n");
}

TEST_F(DockerBackendIntegration, CreatesTheContainerWithPrefectsLabelsEnvVolumesAndLimits) {
  poolworker::testing::TempDir dir;
  { std::ofstream(dir.path() / "in.txt") << "from the host\n"; }
  auto sink = std::make_shared<RecordingSink>();
  auto req = request("sh -c 'cat /data/in.txt; echo \"E2E=$E2E_VALUE\"'",
                     {{"volumes", Json::array({dir.path().string() + ":/data:ro"})},
                      {"mem_limit", "256m"},
                      {"network_mode", "none"}});
  req.configuration["env"]["E2E_VALUE"] = "a value with spaces";
  req.configuration["labels"]["custom-label"] = "custom";
  auto handle = start(req, sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  EXPECT_EQ(sink->out(), "from the host\nE2E=a value with spaces\n");

  const Json container = inspect(handle->data["container_id"]);
  ASSERT_TRUE(container.is_object());
  EXPECT_EQ(container["Name"], "/" + req.run.flow_run_name);
  const Json& labels = container["Config"]["Labels"];
  EXPECT_EQ(labels["io.prefect.flow-run-id"], req.run.flow_run_id);
  EXPECT_EQ(labels["io.prefect.version"], kPrefectVersion);
  EXPECT_EQ(labels["custom-label"], "custom");
  EXPECT_EQ(container["HostConfig"]["NetworkMode"], "none");
  EXPECT_EQ(container["HostConfig"]["Memory"], 256 * 1024 * 1024);
  EXPECT_EQ(container["HostConfig"]["Binds"], Json::array({dir.path().string() + ":/data:ro"}));
  EXPECT_EQ(container["Config"]["Cmd"],
            Json::array({"sh", "-c", "cat /data/in.txt; echo \"E2E=$E2E_VALUE\""}));
}

TEST_F(DockerBackendIntegration, ExitCodeComesFromTheWaitEvenWhenTheEngineRemovesTheContainer) {
  // Prefect's worker reports 0 here: without stream_output it reads the exit code from an
  // inspect made while the container still ran, and auto_remove removes it before any other.
  auto sink = std::make_shared<RecordingSink>();
  auto handle =
      start(request("sh -c 'exit 3'", {{"stream_output", false}, {"auto_remove", true}}), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 3);
  // The engine removes it shortly after the exit.
  const std::string id = handle->data["container_id"];
  EXPECT_TRUE(runUntil(
      io_, [&] { return inspect(id).is_null(); }, std::chrono::seconds(30)));
}

TEST_F(DockerBackendIntegration, OutputOfAFastContainerIsNotLost) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(request("sh -c 'seq 1 2000; echo done >&2'", {{"auto_remove", true}}), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 0);
  std::string expected;
  for (int i = 1; i <= 2000; ++i) {
    expected += std::to_string(i) + "\n";
  }
  EXPECT_EQ(sink->out(), expected);
  EXPECT_EQ(sink->err(), "done\n");
}

TEST_F(DockerBackendIntegration, KillStopsPolitelyFirst) {
  auto sink = std::make_shared<RecordingSink>();
  // The shell exits 7 on SIGTERM: the stop must send it before any SIGKILL.
  auto handle = start(
      request("sh -c 'trap \"echo got-term; exit 7\" TERM; echo ready; while :; do sleep 0.2; "
              "done'"),
      sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(runUntil(
      io_, [&] { return sink->out().find("ready") != std::string::npos; },
      std::chrono::seconds(60)));
  std::optional<Result<Outcome>> outcome;
  backend_->wait(*handle, sink,
                 [&](Result<Outcome> result) { outcome.emplace(std::move(result)); });
  auto killed = await<void>(io_, [&](Callback<void> done) {
    backend_->kill(*handle, std::chrono::seconds(20), std::move(done));
  });
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  ASSERT_TRUE(runUntil(io_, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  EXPECT_EQ((*outcome)->exit_code, 7);
  EXPECT_NE(sink->out().find("got-term"), std::string::npos) << sink->out();
}

TEST_F(DockerBackendIntegration, KillForcesAContainerThatIgnoresTheStopAfterTheGrace) {
  auto sink = std::make_shared<RecordingSink>();
  // PID 1 ignores SIGTERM unless it handles it: only SIGKILL ends this one. The stop waits for
  // "ready": a signal that arrives while the engine is still setting the process up kills it.
  auto handle = start(request("sh -c 'echo ready; exec sleep 600'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(runUntil(
      io_, [&] { return sink->out().find("ready") != std::string::npos; },
      std::chrono::seconds(60)));
  std::optional<Result<Outcome>> outcome;
  backend_->wait(*handle, sink,
                 [&](Result<Outcome> result) { outcome.emplace(std::move(result)); });
  const auto before = std::chrono::steady_clock::now();
  auto killed = await<void>(io_, [&](Callback<void> done) {
    backend_->kill(*handle, std::chrono::seconds(1), std::move(done));
  });
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  ASSERT_TRUE(runUntil(io_, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  EXPECT_EQ((*outcome)->exit_code, 137);
  EXPECT_GE(std::chrono::steady_clock::now() - before, std::chrono::milliseconds(900));

  // A container that is gone already is a successful kill.
  (void)call("DELETE",
             "/containers/" + handle->data["container_id"].get<std::string>() + "?force=1");
  auto again = await<void>(io_, [&](Callback<void> done) {
    backend_->kill(*handle, std::chrono::seconds(1), std::move(done));
  });
  EXPECT_TRUE(again.ok()) << again.error().message;
}

TEST_F(DockerBackendIntegration, ANewBackendRecoversARunningContainerAndFollowsItToItsEnd) {
  auto sink = std::make_shared<RecordingSink>();
  poolworker::testing::TempDir dir;
  ::chmod(dir.path().c_str(), 0777);
  // The container waits for a file the test creates once the first backend is gone.
  auto handle =
      start(request("sh -c 'echo before; while [ ! -e /ctl/go ]; do sleep 0.1; done; echo after; "
                    "exit 5'",
                    {{"volumes", Json::array({dir.path().string() + ":/ctl"})}}),
            sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(runUntil(
      io_, [&] { return sink->out().find("before") != std::string::npos; },
      std::chrono::seconds(60)));
  // The worker stops: the backend goes, the container keeps running.
  backend_->shutdown();
  backend_.reset();

  // The journal keeps the handle as JSON; a new worker reads it back.
  RunHandle journalled;
  journalled.backend = handle->backend;
  journalled.infrastructure_pid = handle->infrastructure_pid;
  journalled.data = Json::parse(handle->data.dump());
  backend_ = makeBackend();
  auto second = std::make_shared<RecordingSink>();
  auto recovery = await<Recovery>(io_, [&](Callback<Recovery> done) {
    backend_->recover(journalled, second, std::move(done));
  });
  ASSERT_TRUE(recovery.ok()) << recovery.error().message;
  EXPECT_TRUE(recovery->running);

  std::optional<Result<Outcome>> outcome;
  backend_->wait(journalled, second,
                 [&](Result<Outcome> result) { outcome.emplace(std::move(result)); });
  // Let the wait and the log stream connect, then release the container.
  docker_testing::runFor(io_, std::chrono::seconds(1));
  { std::ofstream(dir.path() / "go") << "go\n"; }
  ASSERT_TRUE(runUntil(io_, [&] { return outcome.has_value(); }));
  ASSERT_TRUE(outcome->ok()) << outcome->error().message;
  EXPECT_EQ((*outcome)->exit_code, 5);
  EXPECT_NE(second->out().find("after"), std::string::npos) << second->out();

  // Once it has ended, recovery reports how it ended.
  auto ended = await<Recovery>(io_, [&](Callback<Recovery> done) {
    backend_->recover(journalled, second, std::move(done));
  });
  ASSERT_TRUE(ended.ok()) << ended.error().message;
  EXPECT_FALSE(ended->running);
  EXPECT_EQ(ended->outcome.exit_code, 5);

  // Removed: nothing left to recover.
  (void)call("DELETE",
             "/containers/" + journalled.data["container_id"].get<std::string>() + "?force=1");
  auto gone = await<Recovery>(io_, [&](Callback<Recovery> done) {
    backend_->recover(journalled, second, std::move(done));
  });
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().kind, ErrorKind::NotFound);
}

TEST_F(DockerBackendIntegration, RecoversFromTheInfrastructurePidAloneAsPrefectWritesIt) {
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(request("sh -c 'exit 4'"), sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto outcome = wait(*handle, sink);
  ASSERT_TRUE(outcome.ok());
  RunHandle from_prefect;
  from_prefect.backend = "docker";
  from_prefect.infrastructure_pid = handle->infrastructure_pid;
  auto recovery = await<Recovery>(io_, [&](Callback<Recovery> done) {
    backend_->recover(from_prefect, sink, std::move(done));
  });
  ASSERT_TRUE(recovery.ok()) << recovery.error().message;
  EXPECT_FALSE(recovery->running);
  EXPECT_EQ(recovery->outcome.exit_code, 4);
}

TEST_F(DockerBackendIntegration, AMissingImageWithPullPolicyNeverFailsTheStartClearly) {
  auto sink = std::make_shared<RecordingSink>();
  const std::string image = "poolworker-test/does-not-exist:" + randomSuffix();
  auto req = request("true", {{"image", image}, {"image_pull_policy", "Never"}});
  auto handle = start(req, sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InfrastructureFailed);
  EXPECT_NE(handle.error().message.find("'" + image + "'"), std::string::npos)
      << handle.error().message;
  EXPECT_NE(handle.error().message.find("'Never'"), std::string::npos) << handle.error().message;
  EXPECT_TRUE(containersLabelled("io.prefect.flow-run-id", req.run.flow_run_id).empty());
}

TEST_F(DockerBackendIntegration, ABadVolumeFailsBeforeAnythingIsCreated) {
  auto sink = std::make_shared<RecordingSink>();
  auto req = request("true", {{"volumes", Json::array({"$(pwd)/data:/data"})}});
  auto handle = start(req, sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_NE(handle.error().message.find("job variable 'volumes'"), std::string::npos)
      << handle.error().message;
  EXPECT_TRUE(containersLabelled("io.prefect.flow-run-id", req.run.flow_run_id).empty());

  // A volume the engine refuses (a bind of a path that is not absolute in the container).
  auto refused = request(
      "true",
      {{"volumes", Json::array({"/tmp:/data:ro"})},
       {"container_create_kwargs",
        {{"mounts", Json::array({{{"Type", "bind"}, {"Source", "/tmp"}, {"Target", "/data"}}})}}}});
  auto answer = start(refused, sink);
  ASSERT_FALSE(answer.ok());
  EXPECT_NE(answer.error().message.find("/data"), std::string::npos) << answer.error().message;
  EXPECT_TRUE(containersLabelled("io.prefect.flow-run-id", refused.run.flow_run_id).empty());
}

TEST_F(DockerBackendIntegration, AnUnknownNetworkFailsTheStartAndLeavesNoContainer) {
  auto sink = std::make_shared<RecordingSink>();
  const std::string network = "poolworker-missing-" + randomSuffix();
  auto req = request("true", {{"networks", Json::array({network})}});
  auto handle = start(req, sink);
  ASSERT_FALSE(handle.ok());
  EXPECT_NE(handle.error().message.find("network '" + network + "' does not exist"),
            std::string::npos)
      << handle.error().message;
  EXPECT_TRUE(containersLabelled("io.prefect.flow-run-id", req.run.flow_run_id).empty());

  // An unknown second network fails after the container was created: it is removed again.
  const std::string real = "poolworker-it-" + randomSuffix();
  auto created =
      call("POST", "/networks/create", Json{{"Name", real}, {"Labels", {{kTestLabel, "1"}}}});
  ASSERT_TRUE(created.ok() && created->status == 201) << (created.ok() ? created->body : "");
  networks_.push_back(real);
  auto second = request("true", {{"networks", Json::array({real, network})}});
  auto failed = start(second, sink);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.error().message.find("network '" + network + "' does not exist"),
            std::string::npos)
      << failed.error().message;
  EXPECT_TRUE(containersLabelled("io.prefect.flow-run-id", second.run.flow_run_id).empty());

  // Two real networks: the container is on both.
  const std::string other = "poolworker-it-" + randomSuffix();
  created =
      call("POST", "/networks/create", Json{{"Name", other}, {"Labels", {{kTestLabel, "1"}}}});
  ASSERT_TRUE(created.ok() && created->status == 201);
  networks_.push_back(other);
  auto both = start(request("sleep 0.5", {{"networks", Json::array({real, other})}}), sink);
  ASSERT_TRUE(both.ok()) << both.error().message;
  const Json container = inspect(both->data["container_id"]);
  ASSERT_TRUE(container.is_object());
  EXPECT_TRUE(container["NetworkSettings"]["Networks"].contains(real));
  EXPECT_TRUE(container["NetworkSettings"]["Networks"].contains(other));
  auto outcome = wait(*both, sink);
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(outcome->exit_code, 0);
}

TEST_F(DockerBackendIntegration, ATakenNameIsRetriedWithASuffix) {
  auto sink = std::make_shared<RecordingSink>();
  auto first = request("true");
  auto handle = start(first, sink);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  auto second = request("true");
  second.configuration["name"] = first.configuration["name"];
  auto again = start(second, sink);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->data["name"], first.configuration["name"].get<std::string>() + "-1");
  EXPECT_TRUE(wait(*handle, sink).ok());
  EXPECT_TRUE(wait(*again, sink).ok());
}

TEST_F(DockerBackendIntegration, AnEngineThatIsNotRunningFailsTheRunNotTheWorker) {
  auto backend = makeBackend("unix:///nonexistent/poolworker-docker.sock");
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(request("true"), sink, backend.get());
  ASSERT_FALSE(handle.ok());
  EXPECT_NE(handle.error().message.find(
                "cannot reach the Docker engine at unix:///nonexistent/poolworker-docker.sock"),
            std::string::npos)
      << handle.error().message;
  auto checked = await<void>(io_, [&](Callback<void> done) { backend->check(std::move(done)); });
  EXPECT_FALSE(checked.ok());
  backend->shutdown();

  auto ok = await<void>(io_, [&](Callback<void> done) { backend_->check(std::move(done)); });
  EXPECT_TRUE(ok.ok()) << ok.error().message;
}

TEST_F(DockerBackendIntegration, SpeaksToAnEngineOverTcp) {
  EngineForwarder forwarder(io_, kSocket, nullptr);
  const std::string host = "tcp://127.0.0.1:" + std::to_string(forwarder.port());
  auto backend = makeBackend(host);
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(request("sh -c 'echo over-tcp; exit 6'"), sink, backend.get());
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  const std::string id = handle->data["container_id"];
  EXPECT_EQ(handle->infrastructure_pid,
            "http://127.0.0.1:" + std::to_string(forwarder.port()) + ":" + id);
  EXPECT_EQ(handle->data["engine"], host);
  auto outcome = wait(*handle, sink, backend.get());
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 6);
  EXPECT_EQ(sink->out(), "over-tcp\n");
  backend->shutdown();
}

TEST_F(DockerBackendIntegration, SpeaksTlsWithClientCertificatesFromDockerCertPath) {
  poolworker::testing::TempDir certs;
  const std::string dir = certs.path().string();
  // A CA, a server certificate for localhost and a client certificate, as `docker` expects
  // them in DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem).
  const std::string script =
      "cd '" + dir +
      "' && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 "
      "-subj /CN=poolworker-test-ca"
      " && openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr "
      "-subj /CN=localhost"
      " && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext"
      " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial "
      "-out server.pem -days 2 -extfile server.ext"
      " && openssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj /CN=client"
      " && printf 'extendedKeyUsage=clientAuth\\n' > client.ext"
      " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial "
      "-out cert.pem -days 2 -extfile client.ext";
  if (std::system(("(" + script + ") > /dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "the openssl command cannot make test certificates";
  }
  asio::ssl::context server_tls(asio::ssl::context::tls_server);
  server_tls.use_certificate_chain_file(dir + "/server.pem");
  server_tls.use_private_key_file(dir + "/server-key.pem", asio::ssl::context::pem);
  server_tls.load_verify_file(dir + "/ca.pem");
  server_tls.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
  EngineForwarder forwarder(io_, kSocket, &server_tls);
  const std::string port = std::to_string(forwarder.port());

  // The factory finds the engine as docker-py and the Docker CLI do.
  ScopedEnv docker_host("DOCKER_HOST", "tcp://localhost:" + port);
  ScopedEnv tls_verify("DOCKER_TLS_VERIFY", "1");
  ScopedEnv cert_path("DOCKER_CERT_PATH", dir);
  BackendContext context;
  context.executor = &executor_;
  auto created = makeFactory(io_)->create(context);
  ASSERT_TRUE(created.ok()) << created.error().message;
  auto* backend = dynamic_cast<DockerBackend*>(created->get());
  ASSERT_NE(backend, nullptr);

  auto checked = await<void>(io_, [&](Callback<void> done) { backend->check(std::move(done)); });
  ASSERT_TRUE(checked.ok()) << checked.error().message;
  auto sink = std::make_shared<RecordingSink>();
  auto handle = start(request("sh -c 'echo over-tls; echo err >&2; exit 2'"), sink, backend);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  EXPECT_EQ(handle->infrastructure_pid,
            "https://localhost:" + port + ":" + handle->data["container_id"].get<std::string>());
  auto outcome = wait(*handle, sink, backend);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->exit_code, 2);
  EXPECT_EQ(sink->out(), "over-tls\n");
  EXPECT_EQ(sink->err(), "err\n");
  EXPECT_EQ(sink->messages().find("broke"), std::string::npos) << sink->messages();
  backend->shutdown();

  // Without the client certificate the engine refuses the connection: a clear error.
  poolworker::testing::TempDir ca_only;
  std::filesystem::copy_file(dir + "/ca.pem", ca_only.path() / "ca.pem");
  ScopedEnv only_ca("DOCKER_CERT_PATH", ca_only.path().string());
  auto refused_backend = makeFactory(io_)->create(context);
  ASSERT_TRUE(refused_backend.ok()) << refused_backend.error().message;
  auto refused =
      await<void>(io_, [&](Callback<void> done) { (*refused_backend)->check(std::move(done)); });
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("localhost:" + port), std::string::npos)
      << refused.error().message;
  (*refused_backend)->shutdown();
}

TEST_F(DockerBackendIntegration, TheFactoryReadsDockerHostAndBuildsAWorkingBackend) {
  const char* previous = std::getenv("DOCKER_HOST");
  const std::string saved = previous != nullptr ? previous : "";
  ::setenv("DOCKER_HOST", (std::string("unix://") + kSocket).c_str(), 1);
  auto factory = makeFactory(io_);
  BackendContext context;
  context.executor = &executor_;
  auto backend = factory->create(context);
  if (previous != nullptr) {
    ::setenv("DOCKER_HOST", saved.c_str(), 1);
  } else {
    ::unsetenv("DOCKER_HOST");
  }
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  auto checked = await<void>(io_, [&](Callback<void> done) { (*backend)->check(std::move(done)); });
  EXPECT_TRUE(checked.ok()) << checked.error().message;
  (*backend)->shutdown();
}

}  // namespace
}  // namespace poolworker::backends::docker
