#pragma once

/// @file
/// @brief How Prefect's Docker worker lets a container reach a Prefect API on the worker's host:
/// the network mode it infers, the API URL it rewrites and the extra host it adds.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <poolworker/json.h>

namespace poolworker::backends::docker {

/// @brief The host of a URL as Prefect reads it: the network location up to its first `:`
/// ("http://127.0.0.1:4200/api" gives "127.0.0.1"); empty when the URL has no `//`.
std::string urlHost(std::string_view url);

/// @brief The network mode of the container (prefect-docker `get_network_mode`): the
/// configured one if any; none when `networks` is not empty; `host` on Linux when the API URL's
/// host is `localhost` or `127.0.0.1`; otherwise none (the engine's default).
/// @param configured the `network_mode` job variable.
/// @param networks the `networks` job variable.
/// @param api_url the PREFECT_API_URL the container gets.
/// @param linux whether the engine runs Linux containers on the worker's host.
std::optional<std::string> inferNetworkMode(const std::optional<std::string>& configured,
                                            const std::vector<std::string>& networks,
                                            std::string_view api_url, bool linux);

/// @brief Replaces every `localhost` and `127.0.0.1` in an API URL with `host.docker.internal`,
/// so that a container on a bridge network reaches the worker's host.
std::string rewriteLocalApiUrl(std::string_view url);

/// @brief Whether the container needs `host.docker.internal:host-gateway` (prefect-docker
/// `get_extra_hosts`): on Linux, when `env` has no PREFECT_API_URL or one that mentions
/// localhost, 127.0.0.1 or host.docker.internal.
/// @param env the container's environment (an object of strings).
/// @param linux whether the engine runs on Linux.
bool wantsHostGateway(const Json& env, bool linux);

}  // namespace poolworker::backends::docker
