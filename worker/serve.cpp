#include "worker/serve.h"

namespace poolworker::serve {
namespace {

// The server's explanation of a refused request, for messages.
std::string describe(const Error& error) { return error.message; }

}  // namespace

ServeSource::ServeSource(prefect::PrefectClient& client, ServeFile file, Json base_job_template,
                         bool pause_on_shutdown)
    : client_(client),
      file_(std::move(file)),
      base_job_template_(std::move(base_job_template)),
      pause_on_shutdown_(pause_on_shutdown) {}

asio::awaitable<Result<void>> ServeSource::registerAll() {
  std::vector<std::string> ids;
  for (const auto& spec : file_.deployments) {
    const std::string full_name = spec.flow_name + "/" + spec.name;
    // POST /flows/ answers with the existing flow of that name, or creates it.
    Json flow_body = {{"name", spec.flow_name}};
    prefect::CallOptions flow_options("/flows/");
    auto flow = co_await client_.call(prefect::Method::Post, "/flows/", flow_body, flow_options);
    if (!flow) {
      co_return makeError(flow.error().kind,
                          file_.path + ":" + std::to_string(spec.line) + ": flow '" +
                              spec.flow_name + "' could not be created: " + describe(flow.error()),
                          flow.error().http_status);
    }
    const std::string flow_id = flow->value("id", "");
    // POST /deployments/ upserts by (flow, name): the schedules are replaced, and `paused`
    // false resumes a deployment paused when this file was last served.
    Json body = deploymentBody(spec, flow_id);
    prefect::CallOptions options("/deployments/");
    auto created = co_await client_.call(prefect::Method::Post, "/deployments/", body, options);
    if (!created) {
      co_return makeError(created.error().kind,
                          file_.path + ":" + std::to_string(spec.line) + ": deployment '" +
                              full_name + "' could not be registered: " + describe(created.error()),
                          created.error().http_status);
    }
    const std::string id = created->value("id", "");
    ids.push_back(id);
    log_.info("Registered deployment '" + full_name + "' (" + id + ") with " +
              std::to_string(spec.schedules.size()) + " schedule(s)");
  }
  ids_ = std::move(ids);
  index_by_id_.clear();
  for (size_t i = 0; i < ids_.size(); ++i) {
    index_by_id_[ids_[i]] = i;
  }
  registered_ = true;
  log_.info("Serving " + std::to_string(ids_.size()) + " deployment(s) from " + file_.path +
            "; start a run with: prefect deployment run '" + file_.deployments[0].flow_name + "/" +
            file_.deployments[0].name + "'");
  co_return success();
}

asio::awaitable<Result<void>> ServeSource::sync(bool at_startup) {
  (void)at_startup;
  if (!registered_) {
    co_return co_await registerAll();
  }
  auto health = co_await client_.health();
  if (!health) {
    co_return health.error();
  }
  co_return success();
}

asio::awaitable<Result<Json>> ServeSource::scheduledRuns(
    std::chrono::system_clock::time_point before) {
  if (!registered_) {
    co_return Json::array();
  }
  Json body = {{"deployment_ids", ids_}, {"scheduled_before", prefect::formatTimestamp(before)}};
  prefect::CallOptions options("/deployments/get_scheduled_flow_runs");
  co_return co_await client_.call(prefect::Method::Post, "/deployments/get_scheduled_flow_runs",
                                  body, options);
}

std::optional<int> ServeSource::limitFor(const std::string& deployment_id) const {
  auto it = index_by_id_.find(deployment_id);
  if (it == index_by_id_.end()) {
    return std::nullopt;
  }
  return file_.deployments[it->second].concurrency_limit;
}

Json ServeSource::preparationPool() const { return {{"base_job_template", base_job_template_}}; }

Json ServeSource::preparedDeployment(const Json& deployment) const {
  Json out = deployment.is_object() ? deployment : Json::object();
  auto it = index_by_id_.find(out.value("id", ""));
  if (it != index_by_id_.end()) {
    out["job_variables"] = jobVariables(file_.deployments[it->second]);
  }
  return out;
}

asio::awaitable<void> ServeSource::stop() {
  if (!registered_ || !pause_on_shutdown_) {
    co_return;
  }
  for (size_t i = 0; i < ids_.size(); ++i) {
    Json body = {{"paused", true}};
    prefect::CallOptions options("/deployments/{id}");
    auto paused =
        co_await client_.call(prefect::Method::Patch,
                              "/deployments/" + prefect::encodePathSegment(ids_[i]), body, options);
    const std::string full_name = file_.deployments[i].flow_name + "/" + file_.deployments[i].name;
    if (paused) {
      log_.info("Paused deployment '" + full_name + "'");
    } else {
      log_.warn("could not pause deployment '" + full_name + "': " + paused.error().message);
    }
  }
}

}  // namespace poolworker::serve
