#include "backends/docker/naming.h"

#include <cctype>
#include <utility>
#include <vector>

namespace poolworker::backends::docker {
namespace {

bool allowed(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '.' || c == '-';
}

void appendUtf8(std::string& out, unsigned long code) {
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else {
    // Not ASCII: becomes a separator later anyway.
    out.push_back('\x80');
  }
}

// The named references Python's html.entities knows that map to ASCII, plus nbsp.
bool namedEntity(std::string_view name, unsigned long& code) {
  static const std::pair<std::string_view, unsigned long> kNames[] = {
      {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"nbsp", 0xA0}};
  for (const auto& [entity, value] : kNames) {
    if (name == entity) {
      code = value;
      return true;
    }
  }
  return false;
}

std::string decodeEntities(std::string_view text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '&') {
      const auto semi = text.find(';', i + 1);
      if (semi != std::string_view::npos && semi > i + 1) {
        const std::string_view body = text.substr(i + 1, semi - i - 1);
        unsigned long code = 0;
        bool ok = false;
        if (body[0] == '#' && body.size() > 1) {
          const bool hex = body[1] == 'x' || body[1] == 'X';
          const std::string_view digits = body.substr(hex ? 2 : 1);
          ok = !digits.empty() && digits.size() <= 7;
          for (const char c : digits) {
            const bool digit = hex ? std::isxdigit(static_cast<unsigned char>(c)) != 0
                                   : std::isdigit(static_cast<unsigned char>(c)) != 0;
            if (!digit) {
              ok = false;
              break;
            }
          }
          if (ok) {
            code = std::stoul(std::string(digits), nullptr, hex ? 16 : 10);
          }
        } else {
          ok = namedEntity(body, code);
        }
        if (ok) {
          appendUtf8(out, code);
          i = semi + 1;
          continue;
        }
      }
    }
    out.push_back(text[i]);
    ++i;
  }
  return out;
}

}  // namespace

Json toDockerLabels(const Json& labels) {
  Json out = Json::object();
  if (!labels.is_object()) {
    return out;
  }
  for (const auto& [key, value] : labels.items()) {
    const auto slash = key.find('/');
    if (slash == std::string::npos) {
      out[key] = value;
      continue;
    }
    const std::string ns = key.substr(0, slash);
    std::vector<std::string> parts;
    size_t start = 0;
    while (true) {
      const auto dot = ns.find('.', start);
      parts.push_back(ns.substr(start, dot - start));
      if (dot == std::string::npos) {
        break;
      }
      start = dot + 1;
    }
    std::string converted;
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
      if (!converted.empty() || it != parts.rbegin()) {
        converted.push_back('.');
      }
      converted += *it;
    }
    out[converted + "." + key.substr(slash + 1)] = value;
  }
  return out;
}

std::optional<std::string> slugifyContainerName(std::string_view name) {
  if (name.empty()) {
    return std::nullopt;
  }
  std::string text;
  for (const char c : name) {
    text.push_back(c == '\'' ? '-' : c);
  }
  text = decodeEntities(text);
  // Commas between digits vanish ("1,000" is "1000"), as python-slugify does.
  std::string cleaned;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == ',' && i > 0 && i + 1 < text.size() &&
        std::isdigit(static_cast<unsigned char>(text[i - 1])) != 0 &&
        std::isdigit(static_cast<unsigned char>(text[i + 1])) != 0) {
      continue;
    }
    cleaned.push_back(text[i]);
  }
  std::string slug;
  bool separator = false;
  for (const char c : cleaned) {
    if (allowed(c)) {
      if (separator) {
        slug.push_back('-');
        separator = false;
      }
      slug.push_back(c);
    } else {
      separator = true;
    }
  }
  if (separator) {
    slug.push_back('-');
  }
  // Collapse runs of '-' (the input may contain them) and trim them at both ends.
  std::string collapsed;
  for (const char c : slug) {
    if (c == '-' && !collapsed.empty() && collapsed.back() == '-') {
      continue;
    }
    collapsed.push_back(c);
  }
  const auto first = collapsed.find_first_not_of('-');
  if (first == std::string::npos) {
    return std::nullopt;
  }
  collapsed = collapsed.substr(first, collapsed.find_last_not_of('-') - first + 1);
  constexpr size_t kMaxLength = 250;
  if (collapsed.size() >= kMaxLength) {
    collapsed.resize(kMaxLength);
    while (!collapsed.empty() && collapsed.back() == '-') {
      collapsed.pop_back();
    }
  }
  const auto start = collapsed.find_first_not_of("_-.");
  if (start == std::string::npos) {
    return std::nullopt;
  }
  return collapsed.substr(start);
}

std::string dockerBaseUrl(std::string_view engine_url, bool tls) {
  if (engine_url.substr(0, 7) == "unix://") {
    return "http+docker://localhost";
  }
  const auto scheme = engine_url.find("://");
  const std::string_view authority =
      scheme == std::string_view::npos ? engine_url : engine_url.substr(scheme + 3);
  return std::string(tls ? "https://" : "http://") + std::string(authority);
}

std::string infrastructurePid(std::string_view base_url, std::string_view container_id) {
  return std::string(base_url) + ":" + std::string(container_id);
}

std::pair<std::string, std::string> splitInfrastructurePid(std::string_view pid) {
  const auto colon = pid.rfind(':');
  if (colon == std::string_view::npos) {
    return {std::string(), std::string(pid)};
  }
  return {std::string(pid.substr(0, colon)), std::string(pid.substr(colon + 1))};
}

}  // namespace poolworker::backends::docker
