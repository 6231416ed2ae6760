#include "backends/docker/volumes.h"

#include <cctype>
#include <regex>

namespace poolworker::backends::docker {
namespace {

bool startsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

bool endsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

Error invalid(const std::string& why) {
  return makeError(ErrorKind::InvalidConfiguration, "job variable 'volumes': " + why);
}

std::string_view trim(std::string_view text) {
  // Python's str.strip(): ASCII whitespace (and a few more that do not matter here).
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!text.empty() && space(text.front())) {
    text.remove_prefix(1);
  }
  while (!text.empty() && space(text.back())) {
    text.remove_suffix(1);
  }
  return text;
}

}  // namespace

bool isRelativeBindSource(std::string_view source) {
  return source == "." || source == ".." || startsWith(source, "./") || startsWith(source, "../") ||
         startsWith(source, ".\\") || startsWith(source, "..\\");
}

Result<std::string> validateVolume(std::string_view volume) {
  const std::string vol(trim(volume));
  if (vol.empty()) {
    return invalid("a volume cannot be empty");
  }
  // Groups: 1 anonymous container path; 2 host part; 3 container path; 4 options.
  static const std::regex kPattern(
      R"(^(?:(/[^:]+)|((?:[A-Za-z]:\\|\\\\|/)?[^:]+):(/?[^:]+)(?::(.+))?)$)");
  std::smatch match;
  if (!std::regex_match(vol, match, kPattern)) {
    return invalid("'" + std::string(volume) +
                   "' is not a volume; expected '/host/path:/container/path[:ro|rw]', "
                   "'name:/container/path[:ro|rw]' or '/container/path'");
  }
  if (match[1].matched) {
    return vol;
  }
  const std::string host = match[2].str();
  const std::string container_path = match[3].str();
  static const std::regex kDrive(R"(^[A-Za-z]:\\)");
  const bool bind = startsWith(host, "/") || std::regex_search(host, kDrive) ||
                    startsWith(host, "\\\\") || isRelativeBindSource(host);
  if (bind) {
    if (!startsWith(container_path, "/")) {
      return invalid("'" + std::string(volume) +
                     "': the container path of a bind mount must be absolute");
    }
  } else {
    static const std::regex kName(R"(^[a-zA-Z0-9][a-zA-Z0-9_.-]*$)");
    if (!std::regex_match(host, kName)) {
      return invalid("'" + std::string(volume) + "': '" + host +
                     "' is not a volume name; names match [a-zA-Z0-9][a-zA-Z0-9_.-]*. Shell "
                     "expressions such as $(pwd) are not evaluated: use an absolute host path or "
                     "an explicit relative one such as './dir'");
    }
  }
  if (match[4].matched) {
    const std::string options = match[4].str();
    if (options != "ro" && options != "rw") {
      return invalid("'" + std::string(volume) + "': the option '" + options +
                     "' is neither 'ro' nor 'rw'");
    }
  }
  return vol;
}

std::string resolveRelativeBind(std::string_view volume, const std::filesystem::path& base) {
  const auto colon = volume.find(':');
  if (colon == std::string_view::npos) {
    return std::string(volume);
  }
  const std::string_view source = volume.substr(0, colon);
  if (!isRelativeBindSource(source)) {
    return std::string(volume);
  }
  const std::filesystem::path resolved = (base / std::string(source)).lexically_normal();
  std::string text = resolved.string();
  // lexically_normal keeps a trailing separator for "." ("/base/"); Python's abspath does not.
  while (text.size() > 1 && text.back() == '/') {
    text.pop_back();
  }
  return text + std::string(volume.substr(colon));
}

std::string containerPathOfVolume(std::string_view volume) {
  // docker-py's _host_volume_from_bind, with ntpath.splitdrive for "C:" prefixes.
  std::string_view drive;
  std::string_view rest = volume;
  if (volume.size() >= 2 && volume[1] == ':' &&
      std::isalpha(static_cast<unsigned char>(volume[0])) != 0) {
    drive = volume.substr(0, 2);
    rest = volume.substr(2);
  }
  const auto colon = rest.find(':');
  if (colon == std::string_view::npos) {
    return std::string(drive) + std::string(rest);
  }
  const std::string_view tail = rest.substr(colon + 1);
  if (tail == "ro" || tail == "rw") {
    return std::string(drive) + std::string(rest.substr(0, colon));
  }
  if (endsWith(tail, ":ro") || endsWith(tail, ":rw")) {
    return std::string(tail.substr(0, tail.size() - 3));
  }
  return std::string(tail);
}

}  // namespace poolworker::backends::docker
