#include "backends/docker/image_ref.h"

#include <array>
#include <cstdint>

namespace poolworker::backends::docker {
namespace {

Error invalid(const std::string& message) {
  return makeError(ErrorKind::InvalidConfiguration, message);
}

void splitTag(std::string_view part, std::string& name, ImageRef& ref) {
  if (const auto at = part.find('@'); at != std::string_view::npos) {
    name = std::string(part.substr(0, at));
    ref.tag = std::string(part.substr(at + 1));
    ref.digest = true;
  } else if (const auto colon = part.rfind(':'); colon != std::string_view::npos) {
    name = std::string(part.substr(0, colon));
    ref.tag = std::string(part.substr(colon + 1));
  } else {
    name = std::string(part);
  }
}

std::string base64(std::string_view data, bool url_safe) {
  static constexpr char kStandard[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  static constexpr char kUrlSafe[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const char* table = url_safe ? kUrlSafe : kStandard;
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  while (i + 3 <= data.size()) {
    const std::uint32_t n = (std::uint32_t{static_cast<unsigned char>(data[i])} << 16U) |
                            (std::uint32_t{static_cast<unsigned char>(data[i + 1])} << 8U) |
                            std::uint32_t{static_cast<unsigned char>(data[i + 2])};
    out.push_back(table[(n >> 18U) & 63U]);
    out.push_back(table[(n >> 12U) & 63U]);
    out.push_back(table[(n >> 6U) & 63U]);
    out.push_back(table[n & 63U]);
    i += 3;
  }
  const size_t left = data.size() - i;
  if (left > 0) {
    std::uint32_t n = std::uint32_t{static_cast<unsigned char>(data[i])} << 16U;
    if (left == 2) {
      n |= std::uint32_t{static_cast<unsigned char>(data[i + 1])} << 8U;
    }
    out.push_back(table[(n >> 18U) & 63U]);
    out.push_back(table[(n >> 12U) & 63U]);
    out.push_back(left == 2 ? table[(n >> 6U) & 63U] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> decodeBase64(std::string_view text) {
  std::array<int, 256> values{};
  values.fill(-1);
  const std::string_view alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t i = 0; i < alphabet.size(); ++i) {
    values[static_cast<unsigned char>(alphabet[i])] = static_cast<int>(i);
  }
  values[static_cast<unsigned char>('-')] = 62;
  values[static_cast<unsigned char>('_')] = 63;
  std::string out;
  std::uint32_t buffer = 0;
  int bits = 0;
  for (const char c : text) {
    if (c == '=' || c == '\n' || c == '\r' || c == ' ') {
      continue;
    }
    const int v = values[static_cast<unsigned char>(c)];
    if (v < 0) {
      return std::nullopt;
    }
    buffer = (buffer << 6U) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> static_cast<unsigned>(bits)) & 0xFFU));
    }
  }
  return out;
}

// docker-py's convert_to_hostname: drops the scheme and any path.
std::string hostnameOf(std::string_view url) {
  if (const auto scheme = url.find("://"); scheme != std::string_view::npos) {
    url = url.substr(scheme + 3);
  }
  return std::string(url.substr(0, url.find('/')));
}

std::string resolveIndexName(std::string name) {
  if (name == "index.docker.io") {
    return "docker.io";
  }
  return name;
}

}  // namespace

ImageRef parseImageRef(std::string_view image) {
  ImageRef ref;
  std::string name;
  const auto slash = image.find('/');
  if (slash == std::string_view::npos) {
    splitTag(image, name, ref);
    ref.repository = name;
  } else {
    splitTag(image.substr(slash + 1), name, ref);
    ref.repository = std::string(image.substr(0, slash)) + "/" + name;
  }
  return ref;
}

std::string registryOf(std::string_view repository) {
  const auto slash = repository.find('/');
  if (slash == std::string_view::npos) {
    return "docker.io";
  }
  const std::string_view first = repository.substr(0, slash);
  if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
      first == "localhost") {
    return resolveIndexName(std::string(first));
  }
  return "docker.io";
}

const char* pullPolicyName(PullPolicy policy) {
  switch (policy) {
    case PullPolicy::IfNotPresent:
      return "IfNotPresent";
    case PullPolicy::Always:
      return "Always";
    case PullPolicy::IfPossible:
      return "IfPossible";
    case PullPolicy::Never:
      return "Never";
  }
  return "IfNotPresent";
}

Result<std::optional<PullPolicy>> parsePullPolicy(const Json& value) {
  if (value.is_null()) {
    return std::optional<PullPolicy>();
  }
  if (value.is_string()) {
    for (const PullPolicy policy : {PullPolicy::IfNotPresent, PullPolicy::Always,
                                    PullPolicy::IfPossible, PullPolicy::Never}) {
      if (value.get<std::string>() == pullPolicyName(policy)) {
        return std::optional<PullPolicy>(policy);
      }
    }
  }
  return invalid("job variable 'image_pull_policy': " + value.dump() +
                 " is not one of 'IfNotPresent', 'Always', 'IfPossible', 'Never' or null");
}

PullPolicy effectivePullPolicy(std::optional<PullPolicy> configured, const ImageRef& image) {
  if (configured) {
    return *configured;
  }
  if (image.tag.empty() || image.tag == "latest") {
    return PullPolicy::Always;
  }
  return PullPolicy::IfNotPresent;
}

Result<std::optional<RegistryCredentials>> parseRegistryCredentials(const Json& value) {
  if (value.is_null()) {
    return std::optional<RegistryCredentials>();
  }
  if (!value.is_object()) {
    return invalid(std::string("job variable 'registry_credentials' must be a "
                               "DockerRegistryCredentials block, not ") +
                   value.type_name());
  }
  RegistryCredentials credentials;
  const auto field = [&](const char* key, std::string& out) -> Result<void> {
    const auto it = value.find(key);
    if (it == value.end() || !it->is_string() || it->get<std::string>().empty()) {
      return invalid(std::string("job variable 'registry_credentials': '") + key +
                     "' is missing or not a string");
    }
    out = it->get<std::string>();
    return success();
  };
  for (const auto& [key, target] :
       {std::pair<const char*, std::string*>{"username", &credentials.username},
        {"password", &credentials.password},
        {"registry_url", &credentials.registry_url}}) {
    if (auto ok = field(key, *target); !ok) {
      return ok.error();
    }
  }
  if (const auto it = value.find("reauth"); it != value.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return invalid("job variable 'registry_credentials': 'reauth' must be true or false");
    }
    credentials.reauth = it->get<bool>();
  }
  return std::optional<RegistryCredentials>(std::move(credentials));
}

std::string encodeRegistryAuth(const Json& auth_config) { return base64(auth_config.dump(), true); }

Json authConfigOf(const RegistryCredentials& credentials) {
  Json auth = Json::object();
  auth["username"] = credentials.username;
  auth["password"] = credentials.password;
  auth["serveraddress"] = credentials.registry_url;
  return auth;
}

std::optional<Json> authFromDockerConfig(const Json& config, std::string_view registry) {
  if (!config.is_object()) {
    return std::nullopt;
  }
  const auto auths = config.find("auths");
  if (auths == config.end() || !auths->is_object()) {
    return std::nullopt;
  }
  const std::string wanted = resolveIndexName(std::string(registry));
  const Json* entry = nullptr;
  std::string address;
  for (const auto& [key, value] : auths->items()) {
    if (key == wanted || resolveIndexName(hostnameOf(key)) == wanted) {
      entry = &value;
      address = key;
      break;
    }
  }
  if (entry == nullptr || !entry->is_object()) {
    return std::nullopt;
  }
  Json auth = Json::object();
  if (const auto token = entry->find("identitytoken");
      token != entry->end() && token->is_string() && !token->get<std::string>().empty()) {
    auth["IdentityToken"] = token->get<std::string>();
    return auth;
  }
  const auto encoded = entry->find("auth");
  if (encoded == entry->end() || !encoded->is_string()) {
    return std::nullopt;
  }
  const auto decoded = decodeBase64(encoded->get<std::string>());
  if (!decoded) {
    return std::nullopt;
  }
  const auto colon = decoded->find(':');
  if (colon == std::string::npos) {
    return std::nullopt;
  }
  auth["username"] = decoded->substr(0, colon);
  auth["password"] = decoded->substr(colon + 1);
  auth["serveraddress"] = address;
  return auth;
}

}  // namespace poolworker::backends::docker
