#include "backends/docker/engine_version.h"

#include <algorithm>
#include <cctype>
#include <vector>

namespace poolworker::backends::docker {
namespace {

std::vector<long> components(std::string_view version) {
  std::vector<long> out;
  size_t i = 0;
  while (i < version.size()) {
    long value = 0;
    bool digits = false;
    while (i < version.size() && std::isdigit(static_cast<unsigned char>(version[i])) != 0) {
      if (value < 1000000000L) {
        value = value * 10 + (version[i] - '0');
      }
      digits = true;
      ++i;
    }
    if (!digits) {
      break;
    }
    out.push_back(value);
    if (i < version.size() && version[i] == '.') {
      ++i;
      continue;
    }
    break;
  }
  return out;
}

std::string stringField(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

int compareVersions(std::string_view a, std::string_view b) {
  const auto left = components(a);
  const auto right = components(b);
  const size_t n = std::max(left.size(), right.size());
  for (size_t i = 0; i < n; ++i) {
    const long x = i < left.size() ? left[i] : 0;
    const long y = i < right.size() ? right[i] : 0;
    if (x != y) {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

Result<EngineVersion> parseEngineVersion(std::string_view body) {
  const Json json = Json::parse(body, nullptr, false);
  if (!json.is_object()) {
    return makeError(ErrorKind::Internal,
                     "the Docker engine's /version answer is not a JSON object");
  }
  EngineVersion version;
  version.version = stringField(json, "Version");
  version.api_version = stringField(json, "ApiVersion");
  version.min_api_version = stringField(json, "MinAPIVersion");
  version.os = stringField(json, "Os");
  if (version.api_version.empty()) {
    return makeError(ErrorKind::Internal, "the Docker engine's /version answer has no ApiVersion");
  }
  return version;
}

Result<std::string> negotiateApiVersion(const EngineVersion& engine, std::string_view newest) {
  std::string chosen = engine.api_version;
  if (compareVersions(chosen, newest) > 0) {
    chosen = std::string(newest);
  }
  if (!engine.min_api_version.empty() && compareVersions(chosen, engine.min_api_version) < 0) {
    chosen = engine.min_api_version;
  }
  if (compareVersions(chosen, kOldestSupportedApiVersion) < 0) {
    return makeError(ErrorKind::InfrastructureFailed,
                     "the Docker engine (version " +
                         (engine.version.empty() ? std::string("unknown") : engine.version) +
                         ") speaks Engine API " + engine.api_version + "; poolworker needs " +
                         kOldestSupportedApiVersion + " or newer (Docker Engine 17.06+)");
  }
  return chosen;
}

bool supportsHostGateway(std::string_view engine_version) {
  return compareVersions(engine_version, "20.10.0") >= 0;
}

}  // namespace poolworker::backends::docker
