#include "worker/run_preparation.h"

#include <cstdio>
#include <ctime>
#include <regex>

#include "worker/job_variables.h"
#include "worker/prefect_client.h"
#include "worker/templating.h"

namespace poolworker {
namespace {

std::string str(const Json& obj, const char* key) {
  if (!obj.is_object()) {
    return {};
  }
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

void collectStrings(const Json& value, std::vector<std::string>& out) {
  if (value.is_string()) {
    const auto& s = value.get_ref<const std::string&>();
    if (s.size() >= 4) {
      out.push_back(s);
    }
  } else if (value.is_structured()) {
    for (const auto& item : value) {
      collectStrings(item, out);
    }
  }
}

std::string maskString(std::string text, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets) {
    if (secret.size() < 4) {
      continue;
    }
    size_t pos = 0;
    while ((pos = text.find(secret, pos)) != std::string::npos) {
      text.replace(pos, secret.size(), "********");
      pos += 8;
    }
  }
  return text;
}

}  // namespace

std::string pythonIsoformatUtc(const std::string& timestamp) {
  static const std::regex kIso(
      R"(^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$)");
  std::smatch m;
  if (!std::regex_match(timestamp, m, kIso)) {
    return timestamp;
  }
  std::tm tm{};
  tm.tm_year = std::stoi(m[1]) - 1900;
  tm.tm_mon = std::stoi(m[2]) - 1;
  tm.tm_mday = std::stoi(m[3]);
  tm.tm_hour = std::stoi(m[4]);
  tm.tm_min = std::stoi(m[5]);
  tm.tm_sec = std::stoi(m[6]);
  std::time_t t = timegm(&tm);
  long micros = 0;
  if (m[7].matched) {
    std::string frac = m[7].str();
    frac = (frac + "000000").substr(0, 6);
    micros = std::stol(frac);
  }
  if (m[8].matched && m[8].str() != "Z") {
    std::string off = m[8].str();
    int sign = off[0] == '-' ? -1 : 1;
    off.erase(std::remove(off.begin(), off.end(), ':'), off.end());
    int hours = std::stoi(off.substr(1, 2));
    int minutes = std::stoi(off.substr(3, 2));
    t -= sign * (hours * 3600 + minutes * 60);
  }
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &utc);
  std::string out = buf;
  if (micros != 0) {
    char frac[16];
    std::snprintf(frac, sizeof(frac), ".%06ld", micros);
    out += frac;
  }
  return out + "+00:00";
}

RunContext makeRunContext(const PreparationContext& ctx) {
  RunContext run;
  run.flow_run_id = str(ctx.flow_run, "id");
  run.flow_run_name = str(ctx.flow_run, "name");
  run.flow_id = str(ctx.flow_run, "flow_id");
  run.flow_name = str(ctx.flow, "name");
  run.deployment_id = str(ctx.flow_run, "deployment_id");
  run.deployment_name = str(ctx.deployment, "name");
  run.work_pool_name = str(ctx.pool, "name");
  run.work_pool_id = str(ctx.pool, "id");
  run.worker_name = ctx.worker_name;
  run.api_url = ctx.api_url;
  return run;
}

Result<Json> prepareConfiguration(Json configuration, const PreparationContext& ctx) {
  auto coerced = jobvars::coerceBaseConfiguration(std::move(configuration));
  if (!coerced) {
    return coerced.error();
  }
  Json config = std::move(coerced).value();
  RunContext run = makeRunContext(ctx);

  Json env = Json::object();
  for (const auto& [name, value] : ctx.settings_env) {
    env[name] = value;
  }
  env["PREFECT__FLOW_RUN_ID"] = run.flow_run_id;
  if (!ctx.worker_id.empty()) {
    env["PREFECT__WORKER_ID"] = ctx.worker_id;
  }
  env["PREFECT__WORKER_NAME"] = ctx.worker_name;
  if (!run.flow_id.empty()) {
    env["PREFECT__FLOW_ID"] = run.flow_id;
  }
  if (!run.flow_name.empty()) {
    env["PREFECT__FLOW_NAME"] = run.flow_name;
  }
  if (!run.deployment_id.empty()) {
    env["PREFECT__DEPLOYMENT_ID"] = run.deployment_id;
  }
  if (!run.deployment_name.empty()) {
    env["PREFECT__DEPLOYMENT_NAME"] = run.deployment_name;
  }
  if (config.contains("env") && config["env"].is_object()) {
    for (const auto& [key, value] : config["env"].items()) {
      env[key] = value;
    }
  }
  Json clean_env = Json::object();
  for (const auto& [key, value] : env.items()) {
    if (!value.is_null()) {
      clean_env[key] = value;
    }
  }
  config["env"] = std::move(clean_env);

  Json labels = Json::object();
  labels["prefect.io/flow-run-id"] = run.flow_run_id;
  labels["prefect.io/flow-run-name"] = run.flow_run_name;
  labels["prefect.io/version"] = kPrefectCompatVersion;
  if (!run.work_pool_name.empty()) {  // `serve` runs have no work pool.
    labels["prefect.io/work-pool-name"] = run.work_pool_name;
    labels["prefect.io/work-pool-id"] = run.work_pool_id;
  }
  labels["prefect.io/worker-name"] = ctx.worker_name;
  if (ctx.flow.is_object()) {
    labels["prefect.io/flow-id"] = str(ctx.flow, "id");
    labels["prefect.io/flow-name"] = run.flow_name;
  }
  if (ctx.deployment.is_object()) {
    labels["prefect.io/deployment-id"] = str(ctx.deployment, "id");
    labels["prefect.io/deployment-name"] = run.deployment_name;
    std::string updated = str(ctx.deployment, "updated");
    if (!updated.empty()) {
      labels["prefect.io/deployment-updated"] = pythonIsoformatUtc(updated);
    }
  }
  if (config.contains("labels") && config["labels"].is_object()) {
    for (const auto& [key, value] : config["labels"].items()) {
      labels[key] = value;
    }
  }
  config["labels"] = std::move(labels);

  if (config.contains("name") && config["name"].is_string() &&
      !config["name"].get<std::string>().empty()) {
    Json values = {{"ctx",
                    {{"flow", ctx.flow.is_object() ? ctx.flow : Json::object()},
                     {"flow_run", ctx.flow_run.is_object() ? ctx.flow_run : Json::object()}}}};
    auto rendered = templating::applyValues(config["name"], values, true);
    if (rendered) {
      config["name"] = *rendered;
    }
  }
  if (!config.contains("name") || config["name"].is_null() ||
      (config["name"].is_string() && config["name"].get<std::string>().empty())) {
    config["name"] = run.flow_run_name;
  }
  return config;
}

asio::awaitable<Result<PreparedRun>> prepareRun(prefect::PrefectClient& client,
                                                const PreparationContext& ctx) {
  const std::string pool_name = str(ctx.pool, "name");
  Json base_job_template =
      ctx.pool.is_object() ? ctx.pool.value("base_job_template", Json::object()) : Json::object();
  Json deployment_vars =
      ctx.deployment.is_object() ? ctx.deployment.value("job_variables", Json()) : Json();
  if (!deployment_vars.is_object()) {
    deployment_vars = Json::object();
  }
  Json run_vars = ctx.flow_run.is_object() ? ctx.flow_run.value("job_variables", Json()) : Json();
  if (!run_vars.is_object()) {
    run_vars = Json::object();
  }
  Json job_variables = jobvars::mergeJobVariables(deployment_vars, run_vars);
  auto rendered = jobvars::renderJobConfiguration(base_job_template, job_variables);
  if (!rendered) {
    co_return makeError(rendered.error().kind,
                        "the base job template of work pool '" + pool_name +
                            "' could not be applied: " + rendered.error().message);
  }

  PreparedRun prepared;
  for (const char* name : {"PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"}) {
    if (auto it = ctx.settings_env.find(name); it != ctx.settings_env.end()) {
      prepared.secrets.push_back(it->second);
    }
  }

  templating::References refs = templating::collectReferences(*rendered);
  templating::ResolvedReferences resolved;
  for (const auto& id : refs.block_document_ids) {
    auto doc = co_await client.readBlockDocument(id);
    if (!doc) {
      if (doc.error().kind == ErrorKind::NotFound) {
        continue;  // resolveReferences names the missing document.
      }
      co_return makeError(doc.error().kind,
                          "block document " + id + " could not be read: " + doc.error().message);
    }
    Json data = doc->value("data", Json::object());
    collectStrings(data, prepared.secrets);
    resolved.blocks_by_id[id] = std::move(data);
  }
  for (const auto& [slug, name] : refs.block_slug_names) {
    auto doc = co_await client.readBlockDocumentByName(slug, name);
    if (!doc) {
      if (doc.error().kind == ErrorKind::NotFound) {
        continue;
      }
      co_return makeError(doc.error().kind, "block document '" + slug + "/" + name +
                                                "' could not be read: " + doc.error().message);
    }
    Json data = doc->value("data", Json::object());
    collectStrings(data, prepared.secrets);
    resolved.blocks_by_slug_name[{slug, name}] = std::move(data);
  }
  for (const auto& name : refs.variable_names) {
    auto variable = co_await client.readVariable(name);
    if (!variable) {
      if (variable.error().kind == ErrorKind::NotFound) {
        continue;
      }
      co_return makeError(variable.error().kind,
                          "variable '" + name + "' could not be read: " + variable.error().message);
    }
    resolved.variables[name] = variable->value("value", Json(nullptr));
  }
  auto resolved_config = templating::resolveReferences(*rendered, resolved);
  if (!resolved_config) {
    co_return resolved_config.error();
  }
  auto config = prepareConfiguration(std::move(resolved_config).value(), ctx);
  if (!config) {
    co_return config.error();
  }
  prepared.request.run = makeRunContext(ctx);
  prepared.request.configuration = std::move(config).value();
  co_return prepared;
}

Json maskSecretsInJson(const Json& value, const std::vector<std::string>& secrets) {
  if (value.is_string()) {
    return maskString(value.get<std::string>(), secrets);
  }
  if (value.is_object()) {
    Json out = Json::object();
    for (const auto& [key, item] : value.items()) {
      out[key] = maskSecretsInJson(item, secrets);
    }
    return out;
  }
  if (value.is_array()) {
    Json out = Json::array();
    for (const auto& item : value) {
      out.push_back(maskSecretsInJson(item, secrets));
    }
    return out;
  }
  return value;
}

}  // namespace poolworker
