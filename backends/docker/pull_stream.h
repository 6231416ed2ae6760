#pragma once

/// @file
/// @brief Reads the progress stream of `POST /images/create` (an image pull).

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::backends::docker {

/// @brief Parses the pull's stream of JSON objects (`{"status": ..., "id": ...}`,
/// `{"error": ..., "errorDetail": ...}`), whatever separates them and wherever the reads cut
/// them. Any object with an `error` key fails the pull, as it does for Prefect since it stopped
/// trusting the high-level pull.
class PullStreamParser {
 public:
  /// @brief A parser for the pull of `image` (named in errors).
  explicit PullStreamParser(std::string image) : image_(std::move(image)) {}

  /// @brief Parses the next bytes.
  /// @return an `InfrastructureFailed` error ("Docker pull failed for <image>: <error>") at the
  ///   first object with an `error` key, or an `Internal` error for text that is not JSON.
  Result<void> feed(std::string_view data);

  /// @brief Checks the end of the stream: a truncated object is an error.
  Result<void> finish() const;

  /// @brief The last `status` seen, e.g. "Status: Downloaded newer image for x:1".
  const std::string& lastStatus() const { return last_status_; }

  /// @brief Number of objects read.
  std::size_t objects() const { return objects_; }

 private:
  Result<void> handle(std::string_view text);

  std::string image_;
  std::string pending_;  // the object being read, from its '{'
  int depth_ = 0;        // braces and brackets open in `pending_`
  bool in_string_ = false;
  bool escaped_ = false;
  std::string last_status_;
  std::size_t objects_ = 0;
};

}  // namespace poolworker::backends::docker
