#pragma once

/// @file
/// @brief Names Prefect's Docker worker gives things: Docker-style labels, container names and
/// the `infrastructure_pid` of a container.

#include <optional>
#include <string>
#include <string_view>

#include <poolworker/json.h>

namespace poolworker::backends::docker {

/// @brief Converts labels to Docker's reverse-DNS style: a key `a.b/c` becomes `b.a.c`
/// (`prefect.io/flow-run-id` becomes `io.prefect.flow-run-id`); keys without `/` are kept.
/// Order is kept; a later key that converts to an earlier one's name replaces its value.
/// @param labels an object of strings.
Json toDockerLabels(const Json& labels);

/// @brief The container name for a run, as prefect-docker slugifies it: runs of characters
/// other than `[a-zA-Z0-9_.-]` become one `-`, case is kept, at most 250 characters, and
/// leading `_`, `-` and `.` are dropped. Apostrophes separate words; HTML character references
/// (`&amp;`, `&#38;`) are decoded first. Non-ASCII characters count as separators (Python
/// transliterates them, `é` to `e`; this does not).
/// @return the name, or nullopt when nothing is left (the engine then picks a name).
std::optional<std::string> slugifyContainerName(std::string_view name);

/// @brief The base URL docker-py reports for an engine address: `http+docker://localhost` for a
/// unix socket, `http://host:port` or `https://host:port` for TCP.
/// @param engine_url the engine address, as `HttpEndpoint::url`.
/// @param tls whether TCP connections use TLS.
std::string dockerBaseUrl(std::string_view engine_url, bool tls);

/// @brief The `infrastructure_pid` of a container: `<base url>:<container id>`.
std::string infrastructurePid(std::string_view base_url, std::string_view container_id);

/// @brief Splits an `infrastructure_pid` on its last colon into base URL and container id.
/// @return the two parts; the base URL is empty when there is no colon.
std::pair<std::string, std::string> splitInfrastructurePid(std::string_view pid);

}  // namespace poolworker::backends::docker
