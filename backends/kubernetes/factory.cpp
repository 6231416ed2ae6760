#include "backends/kubernetes/factory.h"

#include <string>

#include "backends/kubernetes/kubernetes_backend.h"

extern const char kKubernetesDefaultTemplate[];

namespace poolworker::backends::kubernetes {
namespace {

class KubernetesBackendFactory final : public BackendFactory {
 public:
  explicit KubernetesBackendFactory(boost::asio::io_context& io) : io_(io) {}

  BackendInfo info() const override {
    BackendInfo info;
    info.name = "kubernetes";
    info.version = POOLWORKER_VERSION;
    info.origin = "built-in";
    info.description =
        "Runs each flow run as a Kubernetes Job through the Kubernetes API, as Prefect's "
        "Kubernetes worker does";
    return info;
  }

  Json defaultBaseJobTemplate() const override {
    return Json::parse(kKubernetesDefaultTemplate, nullptr, false);
  }

  Result<BackendPtr> create(const BackendContext& context) override {
    if (context.executor == nullptr) {
      return makeError(ErrorKind::InvalidConfiguration, "the Kubernetes backend needs an executor");
    }
    KubernetesBackendSettings settings;
    settings.worker_name = context.worker_name;
    settings.environment = ConnectionEnvironment::fromProcess();
    settings.worker_log = context.worker_log;
    return BackendPtr(
        std::make_unique<KubernetesBackend>(io_, *context.executor, std::move(settings)));
  }

 private:
  boost::asio::io_context& io_;
};

}  // namespace

BackendFactoryPtr makeFactory(boost::asio::io_context& io) {
  return std::make_unique<KubernetesBackendFactory>(io);
}

}  // namespace poolworker::backends::kubernetes
