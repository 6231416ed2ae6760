#pragma once

/// @file
/// @brief Volume strings of the `volumes` job variable: checked before anything is created,
/// then turned into the container's binds and volume paths as docker-py does.

#include <filesystem>
#include <string>
#include <string_view>

#include <poolworker/result.h>

namespace poolworker::backends::docker {

/// @brief Checks one volume string with the rules of prefect-docker's `assert_volume_str`:
/// an anonymous volume `/ctr`; a bind mount `/host:/ctr`, `./rel:/ctr`, `C:\dir:/ctr` or
/// `\\server\share:/ctr`; or a named volume `name:/ctr` (name `[a-zA-Z0-9][a-zA-Z0-9_.-]*`);
/// each optionally followed by `:ro` or `:rw`.
/// @param volume the string as written by the user.
/// @return the string without surrounding whitespace, or `InvalidConfiguration` saying what is
///   wrong ("job variable 'volumes': ...").
Result<std::string> validateVolume(std::string_view volume);

/// @brief True when a bind source is an explicit relative path: `.`, `..`, or a path
/// starting with `./`, `../`, `.\` or `..\`.
bool isRelativeBindSource(std::string_view source);

/// @brief Resolves an explicit relative bind source against `base` (the worker's working
/// directory), as Prefect's Docker worker does; other volumes are returned unchanged.
std::string resolveRelativeBind(std::string_view volume, const std::filesystem::path& base);

/// @brief The path inside the container of a bind string, as docker-py computes it for the
/// create body's `Volumes`: `/host:/ctr:ro` gives `/ctr`, `/ctr` gives `/ctr`.
std::string containerPathOfVolume(std::string_view volume);

}  // namespace poolworker::backends::docker
