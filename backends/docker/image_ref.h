#pragma once

/// @file
/// @brief Image references, the image pull policy and registry credentials, as Prefect's Docker
/// worker and docker-py handle them.

#include <optional>
#include <string>
#include <string_view>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::backends::docker {

/// @brief An image reference split for `POST /images/create?fromImage=...&tag=...`.
struct ImageRef {
  std::string repository;  ///< Everything before the tag or digest, e.g. "registry:5000/a/b".
  std::string tag;         ///< Tag or digest ("sha256:..."), empty when none was given.
  bool digest = false;     ///< True when `tag` is a digest.
};

/// @brief Splits an image reference like Prefect's `parse_image_tag`: only the part after the
/// first `/` may hold the tag, so a registry port is not mistaken for one
/// ("registry:5000/a/b:tag" gives "registry:5000/a/b" and "tag"); `@` introduces a digest.
ImageRef parseImageRef(std::string_view image);

/// @brief The registry an image comes from, as docker-py resolves it: the first path component
/// when it contains `.` or `:` or is `localhost`, else "docker.io".
std::string registryOf(std::string_view repository);

/// @brief When the backend pulls the image.
enum class PullPolicy {
  IfNotPresent,  ///< Pull only when the engine does not have the image.
  Always,        ///< Always pull.
  IfPossible,    ///< Try to pull; on failure, use the local image if there is one.
  Never,         ///< Never contact a registry.
};

/// @brief The policy's name as written in job variables, e.g. "IfNotPresent".
const char* pullPolicyName(PullPolicy policy);

/// @brief Reads the `image_pull_policy` job variable.
/// @return the policy, nullopt for null or absent, or `InvalidConfiguration`.
Result<std::optional<PullPolicy>> parsePullPolicy(const Json& value);

/// @brief The policy in effect: the configured one, else the Kubernetes rule Prefect follows:
/// a `latest` tag or no tag means `Always`, anything else (a digest too) `IfNotPresent`.
PullPolicy effectivePullPolicy(std::optional<PullPolicy> configured, const ImageRef& image);

/// @brief Credentials for a registry (the `DockerRegistryCredentials` block).
struct RegistryCredentials {
  std::string username;      ///< User name.
  std::string password;      ///< Password or token. Secret.
  std::string registry_url;  ///< Registry address, e.g. "index.docker.io" or "ghcr.io".
  bool reauth = true;        ///< Log in again before every pull.
};

/// @brief Reads the `registry_credentials` job variable (a resolved block document).
/// @return the credentials, nullopt for null or absent, or `InvalidConfiguration`.
Result<std::optional<RegistryCredentials>> parseRegistryCredentials(const Json& value);

/// @brief Encodes an auth configuration for the `X-Registry-Auth` header: URL-safe base64 of
/// its JSON, as docker-py sends it.
std::string encodeRegistryAuth(const Json& auth_config);

/// @brief The body of `POST /auth` and of the `X-Registry-Auth` header for `credentials`.
Json authConfigOf(const RegistryCredentials& credentials);

/// @brief Finds ambient credentials for `registry` in a Docker CLI `config.json` (`auths`
/// entries with `auth` = base64 "user:password", or an `identitytoken`), matching keys the way
/// docker-py does ("https://index.docker.io/v1/" is Docker Hub). Credential helpers are not
/// run.
/// @param config the parsed config file.
/// @param registry as returned by `registryOf`.
/// @return the auth configuration to encode, or nullopt.
std::optional<Json> authFromDockerConfig(const Json& config, std::string_view registry);

}  // namespace poolworker::backends::docker
