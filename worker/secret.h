#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace poolworker {

/// @brief A credential (API key, auth string, password) that never prints itself.
///
/// The value is only reachable through `reveal()`, so that every place that puts a secret on the
/// wire or into a child's environment is easy to find, and a secret cannot reach a log line by
/// accident through a formatter.
class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}

  /// @brief The secret itself. Only for HTTP headers and child environments.
  const std::string& reveal() const { return value_; }
  bool empty() const { return value_.empty(); }

  /// @brief A placeholder fit for logs: "********" when set, "" when empty.
  std::string masked() const { return value_.empty() ? std::string() : std::string(kMask); }

  /// @brief What secrets are replaced with in rendered output and logs.
  static constexpr std::string_view kMask = "********";

 private:
  std::string value_;
};

/// @brief Replaces every occurrence of each non-empty `secret` (and of its Basic-auth base64
/// form) in `text` with the mask. Used on error messages and rendered output that might echo a
/// value back.
std::string maskSecrets(std::string text, std::initializer_list<const Secret*> secrets);

}  // namespace poolworker
