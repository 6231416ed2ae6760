#include "backends/docker/pull_stream.h"

#include <cctype>

namespace poolworker::backends::docker {

Result<void> PullStreamParser::feed(std::string_view data) {
  for (const char c : data) {
    if (depth_ == 0) {
      if (std::isspace(static_cast<unsigned char>(c)) != 0) {
        continue;
      }
      if (c != '{') {
        return makeError(ErrorKind::Internal, "the Docker engine's pull progress for " + image_ +
                                                  " is not a stream of JSON objects");
      }
    }
    pending_.push_back(c);
    if (in_string_) {
      if (escaped_) {
        escaped_ = false;
      } else if (c == '\\') {
        escaped_ = true;
      } else if (c == '"') {
        in_string_ = false;
      }
      continue;
    }
    if (c == '"') {
      in_string_ = true;
    } else if (c == '{' || c == '[') {
      ++depth_;
    } else if (c == '}' || c == ']') {
      --depth_;
      if (depth_ == 0) {
        std::string text;
        text.swap(pending_);
        if (auto handled = handle(text); !handled) {
          return handled;
        }
      }
    }
  }
  return success();
}

Result<void> PullStreamParser::finish() const {
  if (depth_ != 0 || !pending_.empty()) {
    return makeError(ErrorKind::InfrastructureFailed,
                     "Docker pull failed for " + image_ + ": the progress stream ended mid-object");
  }
  return success();
}

Result<void> PullStreamParser::handle(std::string_view text) {
  const Json object = Json::parse(text, nullptr, false);
  if (!object.is_object()) {
    return makeError(ErrorKind::Internal,
                     "the Docker engine's pull progress for " + image_ + " holds invalid JSON");
  }
  ++objects_;
  if (const auto error = object.find("error"); error != object.end()) {
    std::string message = error->is_string() ? error->get<std::string>() : error->dump();
    return makeError(ErrorKind::InfrastructureFailed,
                     "Docker pull failed for " + image_ + ": " + message);
  }
  if (const auto status = object.find("status"); status != object.end() && status->is_string()) {
    last_status_ = status->get<std::string>();
  }
  return success();
}

}  // namespace poolworker::backends::docker
