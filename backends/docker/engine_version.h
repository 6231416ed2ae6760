#pragma once

/// @file
/// @brief Docker Engine API version negotiation: which `/v<version>` prefix to speak, read from
/// the engine's unversioned `GET /version` answer, never pinned.

#include <string>
#include <string_view>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::backends::docker {

/// @brief The newest Engine API version this backend was tested against (Docker Engine 20.10).
inline constexpr char kNewestTestedApiVersion[] = "1.41";

/// @brief The oldest Engine API version this backend can work with: `POST /containers/{id}/wait`
/// with a `condition` needs 1.30 (Docker Engine 17.06).
inline constexpr char kOldestSupportedApiVersion[] = "1.30";

/// @brief What the engine says about itself in `GET /version`.
struct EngineVersion {
  std::string version;          ///< Engine release, e.g. "20.10.24+dfsg1".
  std::string api_version;      ///< Newest API version it speaks, e.g. "1.41".
  std::string min_api_version;  ///< Oldest API version it accepts, e.g. "1.12".
  std::string os;               ///< "linux" or "windows".
};

/// @brief Reads the answer of `GET /version`.
/// @param body the JSON body.
/// @return the versions, or `Internal` when `ApiVersion` is missing.
Result<EngineVersion> parseEngineVersion(std::string_view body);

/// @brief Compares dotted version numbers numerically, component by component ("1.9" < "1.10";
/// missing components count as 0). Each component is read up to its first non-digit, so
/// "20.10.24+dfsg1" compares as 20.10.24 and "20.10.0-ce" as 20.10.0.
/// @return negative, zero or positive, as `a` is older than, equal to or newer than `b`.
int compareVersions(std::string_view a, std::string_view b);

/// @brief Chooses the API version to speak with an engine: its `ApiVersion` capped at `newest`,
/// but never below its `MinAPIVersion` (Docker 29 refuses anything older than 1.44).
/// @param engine what the engine reported.
/// @param newest the newest version this client was tested with.
/// @return the version, or `InfrastructureFailed` when the engine is older than
///   `kOldestSupportedApiVersion`.
Result<std::string> negotiateApiVersion(const EngineVersion& engine,
                                        std::string_view newest = kNewestTestedApiVersion);

/// @brief True when the engine release maps `host-gateway` in extra hosts (20.10.0 and newer).
bool supportsHostGateway(std::string_view engine_version);

}  // namespace poolworker::backends::docker
