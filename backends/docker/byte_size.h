#pragma once

/// @file
/// @brief Memory sizes as docker-py reads them (`mem_limit`, `memswap_limit`, `shm_size`).

#include <cstdint>
#include <string_view>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::backends::docker {

/// @brief Reads a size the way docker-py's `parse_bytes` does: an integer is a number of bytes;
/// a string is a number (decimals allowed) with an optional unit `b`, `k`, `m` or `g` (any
/// case, powers of 1024, an extra trailing `b` or `B` allowed: "128mb"), "-1" stays -1, and an
/// empty string is 0.
/// @param value a JSON integer or string.
/// @param what names the value in the error, e.g. "job variable 'mem_limit'".
/// @return the number of bytes, or `InvalidConfiguration`.
Result<std::int64_t> parseByteSize(const Json& value, std::string_view what);

}  // namespace poolworker::backends::docker
