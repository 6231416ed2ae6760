#include "backends/docker/byte_size.h"

#include <cctype>
#include <cmath>
#include <string>

namespace poolworker::backends::docker {
namespace {

bool isAlpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }
bool isDigit(char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }

// Python's float(): optional sign, digits with at most one point, optional exponent, and
// surrounding whitespace. Enough for sizes; "inf" and "nan" are refused as no size.
bool parseDecimal(std::string_view text, double& out) {
  size_t begin = 0;
  size_t end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin])) != 0) {
    ++begin;
  }
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1])) != 0) {
    --end;
  }
  const std::string trimmed(text.substr(begin, end - begin));
  if (trimmed.empty()) {
    return false;
  }
  size_t i = 0;
  if (trimmed[i] == '+' || trimmed[i] == '-') {
    ++i;
  }
  bool digits = false;
  bool point = false;
  for (; i < trimmed.size(); ++i) {
    if (isDigit(trimmed[i]) || trimmed[i] == '_') {
      digits = digits || isDigit(trimmed[i]);
    } else if (trimmed[i] == '.' && !point) {
      point = true;
    } else {
      break;
    }
  }
  if (!digits) {
    return false;
  }
  if (i < trimmed.size() && (trimmed[i] == 'e' || trimmed[i] == 'E')) {
    size_t j = i + 1;
    if (j < trimmed.size() && (trimmed[j] == '+' || trimmed[j] == '-')) {
      ++j;
    }
    if (j >= trimmed.size() || !isDigit(trimmed[j])) {
      return false;
    }
    while (j < trimmed.size() && isDigit(trimmed[j])) {
      ++j;
    }
    i = j;
  }
  if (i != trimmed.size()) {
    return false;
  }
  std::string plain;
  for (const char c : trimmed) {
    if (c != '_') {
      plain.push_back(c);
    }
  }
  try {
    out = std::stod(plain);
  } catch (...) {
    return false;
  }
  return std::isfinite(out);
}

}  // namespace

Result<std::int64_t> parseByteSize(const Json& value, std::string_view what) {
  if (value.is_number_integer()) {
    return value.get<std::int64_t>();
  }
  if (value.is_number_float()) {
    return static_cast<std::int64_t>(value.get<double>());
  }
  if (!value.is_string()) {
    return makeError(ErrorKind::InvalidConfiguration,
                     std::string(what) +
                         " must be a string such as '512m' or a number of bytes, not " +
                         value.type_name());
  }
  std::string text = value.get<std::string>();
  if (text.empty()) {
    return std::int64_t{0};
  }
  if (text.size() >= 2 && isAlpha(text[text.size() - 2]) && isAlpha(text.back()) &&
      (text.back() == 'b' || text.back() == 'B')) {
    text.pop_back();
  }
  const char suffix = static_cast<char>(std::tolower(static_cast<unsigned char>(text.back())));
  double multiplier = 1;
  std::string digits = text;
  if (!isDigit(suffix)) {
    switch (suffix) {
      case 'b':
        multiplier = 1;
        break;
      case 'k':
        multiplier = 1024.0;
        break;
      case 'm':
        multiplier = 1024.0 * 1024.0;
        break;
      case 'g':
        multiplier = 1024.0 * 1024.0 * 1024.0;
        break;
      default:
        return makeError(ErrorKind::InvalidConfiguration,
                         std::string(what) + ": '" + value.get<std::string>() +
                             "' should end with one of the units b, k, m or g");
    }
    digits.pop_back();
  }
  double number = 0;
  if (!parseDecimal(digits, number)) {
    return makeError(
        ErrorKind::InvalidConfiguration,
        std::string(what) + ": '" + value.get<std::string>() + "' is not a number of bytes");
  }
  const double bytes = number * multiplier;
  if (bytes >= 9.2e18 || bytes <= -9.2e18) {
    return makeError(ErrorKind::InvalidConfiguration,
                     std::string(what) + ": '" + value.get<std::string>() + "' is too large");
  }
  return static_cast<std::int64_t>(bytes);
}

}  // namespace poolworker::backends::docker
