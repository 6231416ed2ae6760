#include "backends/docker/networking.h"

#include <regex>

namespace poolworker::backends::docker {
namespace {

std::string replaceAll(std::string text, std::string_view from, std::string_view to) {
  size_t pos = 0;
  while ((pos = text.find(from, pos)) != std::string::npos) {
    text.replace(pos, from.size(), to);
    pos += to.size();
  }
  return text;
}

}  // namespace

std::string urlHost(std::string_view url) {
  // urllib.parse.urlparse: the scheme ends at the first ':', then "//" starts the netloc, which
  // runs to the first '/', '?' or '#'.
  const auto colon = url.find(':');
  std::string_view rest = url;
  if (colon != std::string_view::npos) {
    rest = url.substr(colon + 1);
  }
  if (rest.substr(0, 2) != "//") {
    return {};
  }
  rest.remove_prefix(2);
  const std::string_view netloc = rest.substr(0, rest.find_first_of("/?#"));
  return std::string(netloc.substr(0, netloc.find(':')));
}

std::optional<std::string> inferNetworkMode(const std::optional<std::string>& configured,
                                            const std::vector<std::string>& networks,
                                            std::string_view api_url, bool linux) {
  if (configured && !configured->empty()) {
    return configured;
  }
  if (!networks.empty()) {
    return std::nullopt;
  }
  if (!api_url.empty()) {
    const std::string host = urlHost(api_url);
    if (linux && (host == "127.0.0.1" || host == "localhost")) {
      return std::string("host");
    }
  }
  return std::nullopt;
}

std::string rewriteLocalApiUrl(std::string_view url) {
  return replaceAll(replaceAll(std::string(url), "localhost", "host.docker.internal"), "127.0.0.1",
                    "host.docker.internal");
}

bool wantsHostGateway(const Json& env, bool linux) {
  if (!linux) {
    return false;
  }
  const auto it = env.is_object() ? env.find("PREFECT_API_URL") : env.end();
  if (!env.is_object() || it == env.end()) {
    return true;
  }
  if (!it->is_string()) {
    return false;
  }
  // Prefect's own pattern, unescaped dots and all, so that the same URLs qualify.
  static const std::regex kLocal(".*(localhost)|(127.0.0.1)|(host.docker.internal).*");
  return std::regex_search(it->get<std::string>(), kLocal);
}

}  // namespace poolworker::backends::docker
