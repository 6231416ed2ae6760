#include "worker/templating.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <limits>
#include <set>
#include <utility>

#include "worker/py_repr.h"

namespace poolworker::templating {
namespace {

constexpr std::string_view kBlockPrefix = "prefect.blocks.";
constexpr std::string_view kVariablePrefix = "prefect.variables.";
constexpr std::string_view kEnvVarPrefix = "$";

// CPython refuses to parse decimal strings longer than this (sys.int_info.default_max_str_digits)
// and get_from_dict then treats the segment as a dict key.
constexpr std::size_t kMaxIntDigits = 4300;

struct Match {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t name_begin = 0;
  std::size_t name_end = 0;

  std::string_view fullText(std::string_view text) const { return text.substr(begin, end - begin); }
  std::string_view name(std::string_view text) const {
    return text.substr(name_begin, name_end - name_begin);
  }
};

bool isAsciiNameChar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-' || c == '[' || c == ']' || c == '$';
}

void skipSpaces(std::string_view text, std::size_t& pos) {
  while (pos < text.size()) {
    const py::DecodedCodePoint cp = py::decodeUtf8(text, pos);
    if (!cp.valid || !py::isSpace(cp.value)) {
      return;
    }
    pos += cp.length;
  }
}

// The regex `{{\s*([\w.\-\[\]$]+)\s*}}` never needs to backtrack: its character classes are
// disjoint, so a greedy scan from each `{{` finds exactly what Python's re.findall finds.
std::vector<Match> scan(std::string_view text) {
  std::vector<Match> matches;
  std::size_t pos = 0;
  while ((pos = text.find("{{", pos)) != std::string_view::npos) {
    std::size_t i = pos + 2;
    skipSpaces(text, i);
    const std::size_t name_begin = i;
    while (i < text.size()) {
      const auto c = static_cast<unsigned char>(text[i]);
      if (c < 0x80) {
        if (!isAsciiNameChar(c)) {
          break;
        }
        ++i;
        continue;
      }
      const py::DecodedCodePoint cp = py::decodeUtf8(text, i);
      if (!cp.valid || !py::isWordChar(cp.value)) {
        break;
      }
      i += cp.length;
    }
    const std::size_t name_end = i;
    if (name_end > name_begin) {
      skipSpaces(text, i);
      if (text.substr(i, 2) == "}}") {
        matches.push_back({pos, i + 2, name_begin, name_end});
        pos = i + 2;
        continue;
      }
    }
    ++pos;
  }
  return matches;
}

bool isWholeValue(const std::vector<Match>& matches, std::string_view text) {
  return matches.size() == 1 && matches[0].begin == 0 && matches[0].end == text.size();
}

std::string replaceAll(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) {
      out.append(text.substr(pos));
      return out;
    }
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
}

std::vector<std::string> splitDots(std::string_view text, std::size_t max_splits) {
  std::vector<std::string> parts;
  std::size_t pos = 0;
  while (parts.size() < max_splits) {
    const std::size_t dot = text.find('.', pos);
    if (dot == std::string_view::npos) {
      break;
    }
    parts.emplace_back(text.substr(pos, dot - pos));
    pos = dot + 1;
  }
  parts.emplace_back(text.substr(pos));
  return parts;
}

// Python's int(segment): surrounding whitespace, one sign, digits from any script, single
// underscores between digits. Values beyond int64 saturate: no container is that large.
std::optional<std::int64_t> parsePythonInt(std::string_view segment) {
  std::string ascii;
  for (std::size_t pos = 0; pos < segment.size();) {
    const py::DecodedCodePoint cp = py::decodeUtf8(segment, pos);
    if (!cp.valid) {
      return std::nullopt;
    }
    if (py::isSpace(cp.value)) {
      ascii.push_back(' ');
    } else if (const int digit = py::decimalValue(cp.value); digit >= 0) {
      ascii.push_back(static_cast<char>('0' + digit));
    } else if (cp.value < 0x80) {
      ascii.push_back(static_cast<char>(cp.value));
    } else {
      return std::nullopt;
    }
    pos += cp.length;
  }
  std::string_view s = ascii;
  while (!s.empty() && s.front() == ' ') {
    s.remove_prefix(1);
  }
  while (!s.empty() && s.back() == ' ') {
    s.remove_suffix(1);
  }
  bool negative = false;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  if (s.empty() || s.front() == '_' || s.back() == '_') {
    return std::nullopt;
  }
  constexpr std::uint64_t kLimit =
      static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t magnitude = 0;
  std::size_t digits = 0;
  char previous = '\0';
  for (char c : s) {
    if (c == '_') {
      if (previous == '_') {
        return std::nullopt;
      }
    } else if (c >= '0' && c <= '9') {
      ++digits;
      magnitude = magnitude > kLimit / 10 ? kLimit : std::min(kLimit, magnitude * 10 + (c - '0'));
    } else {
      return std::nullopt;
    }
    previous = c;
  }
  if (digits > kMaxIntDigits) {
    return std::nullopt;
  }
  const auto value = static_cast<std::int64_t>(magnitude);
  return negative ? -value : value;
}

std::optional<Json> indexString(const std::string& text, std::int64_t index) {
  std::vector<std::pair<std::size_t, std::size_t>> code_points;
  for (std::size_t pos = 0; pos < text.size();) {
    const py::DecodedCodePoint cp = py::decodeUtf8(text, pos);
    code_points.emplace_back(pos, cp.length);
    pos += cp.length;
  }
  const auto count = static_cast<std::int64_t>(code_points.size());
  const std::int64_t at = index < 0 ? index + count : index;
  if (at < 0 || at >= count) {
    return std::nullopt;
  }
  const auto& [offset, length] = code_points[static_cast<std::size_t>(at)];
  return Json(text.substr(offset, length));
}

std::optional<Json> lookupEnv(std::string_view name, const EnvLookup& env) {
  while (!name.empty() && name.front() == '$') {
    name.remove_prefix(1);
  }
  if (!env) {
    return std::nullopt;
  }
  std::optional<std::string> value = env(std::string(name));
  if (!value) {
    return std::nullopt;
  }
  return Json(std::move(*value));
}

std::optional<Json> applyToString(const std::string& text, const Json& values, bool remove_notset,
                                  const EnvLookup& env) {
  const std::vector<Match> matches = scan(text);
  if (matches.empty()) {
    return Json(text);
  }
  if (isWholeValue(matches, text) &&
      placeholderType(matches[0].name(text)) == PlaceholderType::Standard) {
    return getFromDict(values, matches[0].name(text));
  }
  std::string out;
  std::size_t pos = 0;
  for (const Match& match : matches) {
    out.append(text, pos, match.begin - pos);
    pos = match.end;
    const std::string_view name = match.name(text);
    std::optional<Json> value;
    switch (placeholderType(name)) {
      case PlaceholderType::Standard:
        value = getFromDict(values, name);
        break;
      case PlaceholderType::EnvVar:
        value = lookupEnv(name, env);
        break;
      case PlaceholderType::BlockDocument:
      case PlaceholderType::Variable:
        out.append(match.fullText(text));
        continue;
    }
    if (value) {
      out += py::str(*value);
    } else if (!remove_notset) {
      out.append(match.fullText(text));
    }
  }
  out.append(text, pos, std::string::npos);
  return Json(std::move(out));
}

// ---------------------------------------------------------------------------------------------
// Block documents and variables.

struct BlockName {
  std::string slug;
  std::string document;
  std::optional<std::string> keypath;
};

std::optional<BlockName> parseBlockName(std::string_view name) {
  // Prefect removes every occurrence of the prefix, not only the leading one, then splits on
  // the first two dots.
  const std::vector<std::string> parts = splitDots(replaceAll(name, kBlockPrefix, ""), 2);
  if (parts.size() < 2) {
    return std::nullopt;
  }
  BlockName out{parts[0], parts[1], std::nullopt};
  if (parts.size() == 3) {
    out.keypath = parts[2];
  }
  return out;
}

std::string variableName(std::string_view name) { return replaceAll(name, kVariablePrefix, ""); }

std::string describeWhere(const std::string& where) {
  return where.empty() ? std::string("job configuration") : "job configuration '" + where + "'";
}

std::string childPath(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

std::string indexPath(const std::string& where, std::size_t index) {
  return where + "[" + std::to_string(index) + "]";
}

Error invalid(const std::string& where, const std::string& what) {
  return makeError(ErrorKind::InvalidConfiguration, describeWhere(where) + ": " + what);
}

Result<Json> resolveBlockPlaceholder(std::string_view full_match, std::string_view name,
                                     const ResolvedReferences& resolved, const std::string& where) {
  const std::optional<BlockName> block = parseBlockName(name);
  if (!block) {
    return invalid(where, "block placeholder '" + std::string(full_match) +
                              "' is invalid: expected "
                              "prefect.blocks.<block-type-slug>.<block-document-name>");
  }
  auto it = resolved.blocks_by_slug_name.find({block->slug, block->document});
  if (it == resolved.blocks_by_slug_name.end()) {
    return invalid(where, "block placeholder '" + std::string(full_match) +
                              "' refers to block document '" + block->document + "' of type '" +
                              block->slug + "', which does not exist (it may have been deleted)");
  }
  const Json* data = &it->second;
  if (data->is_object() && data->size() == 1 && data->contains("value")) {
    const bool keypath_in_value =
        block->keypath && (*block->keypath == "value" || block->keypath->rfind("value.", 0) == 0 ||
                           block->keypath->rfind("value[", 0) == 0);
    if (!keypath_in_value) {
      data = &(*data)["value"];
    }
  }
  if (!block->keypath) {
    return *data;
  }
  std::optional<Json> value = getFromDict(*data, *block->keypath);
  if (!value) {
    return invalid(where, "block placeholder '" + std::string(full_match) + "': keypath '" +
                              *block->keypath + "' was not found in the data of block document '" +
                              block->document + "' of type '" + block->slug + "'");
  }
  return std::move(*value);
}

Result<Json> resolveBlocksIn(const Json& tmpl, const ResolvedReferences& resolved,
                             const std::string& where) {
  if (tmpl.is_object()) {
    if (auto ref = tmpl.find("$ref"); ref != tmpl.end()) {
      if (!ref->is_object()) {
        return invalid(where,
                       "'$ref' must be an object like {\"block_document_id\": \"<id>\"}, got " +
                           std::string(py::typeName(*ref)));
      }
      auto id = ref->find("block_document_id");
      if (id != ref->end() && py::truthy(*id)) {
        if (!id->is_string()) {
          return invalid(where, "'$ref.block_document_id' must be a string, got " +
                                    std::string(py::typeName(*id)));
        }
        const std::string& block_id = id->get_ref<const std::string&>();
        auto doc = resolved.blocks_by_id.find(block_id);
        if (doc == resolved.blocks_by_id.end()) {
          return invalid(where, "'$ref' refers to block document '" + block_id +
                                    "', which does not exist (it may have been deleted)");
        }
        return doc->second;
      }
    }
    Json out = Json::object();
    for (const auto& [key, value] : tmpl.items()) {
      auto item = resolveBlocksIn(value, resolved, childPath(where, key));
      if (!item) {
        return item.error();
      }
      out[key] = std::move(item).value();
    }
    return out;
  }
  if (tmpl.is_array()) {
    Json out = Json::array();
    std::size_t index = 0;
    for (const auto& value : tmpl) {
      auto item = resolveBlocksIn(value, resolved, indexPath(where, index++));
      if (!item) {
        return item.error();
      }
      out.push_back(std::move(item).value());
    }
    return out;
  }
  if (!tmpl.is_string()) {
    return tmpl;
  }
  const std::string& text = tmpl.get_ref<const std::string&>();
  const std::vector<Match> matches = scan(text);
  bool has_block = false;
  for (const Match& match : matches) {
    has_block = has_block || placeholderType(match.name(text)) == PlaceholderType::BlockDocument;
  }
  if (!has_block) {
    return tmpl;
  }
  if (isWholeValue(matches, text)) {
    return resolveBlockPlaceholder(text, matches[0].name(text), resolved, where);
  }
  std::string out;
  std::size_t pos = 0;
  for (const Match& match : matches) {
    out.append(text, pos, match.begin - pos);
    pos = match.end;
    if (placeholderType(match.name(text)) != PlaceholderType::BlockDocument) {
      out.append(match.fullText(text));
      continue;
    }
    auto value = resolveBlockPlaceholder(match.fullText(text), match.name(text), resolved, where);
    if (!value) {
      return value.error();
    }
    if (value->is_structured()) {
      return invalid(where, "block placeholder '" + std::string(match.fullText(text)) +
                                "' resolved to a " + std::string(py::typeName(*value)) +
                                ", which cannot be used inside a longer string; refer to a "
                                "scalar attribute instead (e.g. '.value' or '.url')");
    }
    out += py::str(*value);
  }
  out.append(text, pos, std::string::npos);
  return Json(std::move(out));
}

Json resolveVariablesIn(const Json& tmpl, const std::map<std::string, Json>& variables) {
  if (tmpl.is_object()) {
    Json out = Json::object();
    for (const auto& [key, value] : tmpl.items()) {
      out[key] = resolveVariablesIn(value, variables);
    }
    return out;
  }
  if (tmpl.is_array()) {
    Json out = Json::array();
    for (const auto& value : tmpl) {
      out.push_back(resolveVariablesIn(value, variables));
    }
    return out;
  }
  if (!tmpl.is_string()) {
    return tmpl;
  }
  const std::string& text = tmpl.get_ref<const std::string&>();
  const std::vector<Match> matches = scan(text);
  bool has_variable = false;
  for (const Match& match : matches) {
    has_variable = has_variable || placeholderType(match.name(text)) == PlaceholderType::Variable;
  }
  if (!has_variable) {
    return tmpl;
  }
  if (isWholeValue(matches, text)) {
    auto it = variables.find(variableName(matches[0].name(text)));
    return it == variables.end() ? Json("") : it->second;
  }
  std::string out;
  std::size_t pos = 0;
  for (const Match& match : matches) {
    out.append(text, pos, match.begin - pos);
    pos = match.end;
    if (placeholderType(match.name(text)) != PlaceholderType::Variable) {
      out.append(match.fullText(text));
      continue;
    }
    auto it = variables.find(variableName(match.name(text)));
    if (it != variables.end()) {
      out += py::str(it->second);
    }
  }
  out.append(text, pos, std::string::npos);
  return Json(std::move(out));
}

class ReferenceCollector {
 public:
  void visit(const Json& value) {
    if (value.is_object()) {
      if (auto ref = value.find("$ref"); ref != value.end()) {
        if (!ref->is_object()) {
          return;  // resolveBlocks reports it.
        }
        auto id = ref->find("block_document_id");
        if (id != ref->end() && py::truthy(*id)) {
          if (id->is_string()) {
            add(refs_.block_document_ids, id->get<std::string>());
          }
          return;
        }
      }
      for (const auto& item : value) {
        visit(item);
      }
    } else if (value.is_array()) {
      for (const auto& item : value) {
        visit(item);
      }
    } else if (value.is_string()) {
      const std::string& text = value.get_ref<const std::string&>();
      for (const Match& match : scan(text)) {
        const std::string_view name = match.name(text);
        const PlaceholderType type = placeholderType(name);
        if (type == PlaceholderType::BlockDocument) {
          if (auto block = parseBlockName(name)) {
            add(refs_.block_slug_names, std::make_pair(block->slug, block->document));
          }
        } else if (type == PlaceholderType::Variable) {
          add(refs_.variable_names, variableName(name));
        }
      }
    }
  }

  References take() { return std::move(refs_); }

 private:
  template <typename T>
  static void add(std::vector<T>& list, T item) {
    for (const auto& existing : list) {
      if (existing == item) {
        return;
      }
    }
    list.push_back(std::move(item));
  }

  References refs_;
};

}  // namespace

PlaceholderType placeholderType(std::string_view name) {
  if (name.rfind(kBlockPrefix, 0) == 0) {
    return PlaceholderType::BlockDocument;
  }
  if (name.rfind(kVariablePrefix, 0) == 0) {
    return PlaceholderType::Variable;
  }
  if (name.rfind(kEnvVarPrefix, 0) == 0) {
    return PlaceholderType::EnvVar;
  }
  return PlaceholderType::Standard;
}

std::vector<Placeholder> findPlaceholders(std::string_view text) {
  std::vector<Placeholder> out;
  std::set<std::string_view> seen;
  for (const Match& match : scan(text)) {
    if (!seen.insert(match.fullText(text)).second) {
      continue;
    }
    const std::string_view name = match.name(text);
    out.push_back({std::string(match.fullText(text)), std::string(name), placeholderType(name)});
  }
  return out;
}

std::optional<Json> getFromDict(const Json& values, std::string_view dotted_path) {
  std::string path;
  path.reserve(dotted_path.size());
  for (char c : dotted_path) {
    if (c == '[') {
      path.push_back('.');
    } else if (c != ']') {
      path.push_back(c);
    }
  }
  const Json* current = &values;
  std::optional<Json> owned;  // a character taken out of a string
  for (const std::string& segment : splitDots(path, std::numeric_limits<std::size_t>::max())) {
    if (const std::optional<std::int64_t> index = parsePythonInt(segment)) {
      if (current->is_array()) {
        const auto size = static_cast<std::int64_t>(current->size());
        const std::int64_t at = *index < 0 ? *index + size : *index;
        if (at < 0 || at >= size) {
          return std::nullopt;
        }
        current = &(*current)[static_cast<std::size_t>(at)];
      } else if (current->is_string()) {
        owned = indexString(current->get_ref<const std::string&>(), *index);
        if (!owned) {
          return std::nullopt;
        }
        current = &*owned;
      } else {
        return std::nullopt;  // a dict has no integer keys; scalars cannot be indexed
      }
    } else {
      if (!current->is_object()) {
        return std::nullopt;
      }
      auto it = current->find(segment);
      if (it == current->end()) {
        return std::nullopt;
      }
      current = &*it;
    }
  }
  return *current;
}

const EnvLookup& processEnvironment() {
  static const EnvLookup kLookup = [](const std::string& name) -> std::optional<std::string> {
    if (name.empty()) {
      return std::nullopt;
    }
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      return std::nullopt;
    }
    return std::string(value);
  };
  return kLookup;
}

EnvLookup fixedEnvironment(std::map<std::string, std::string> variables) {
  return [variables = std::move(variables)](const std::string& name) -> std::optional<std::string> {
    auto it = variables.find(name);
    if (it == variables.end()) {
      return std::nullopt;
    }
    return it->second;
  };
}

std::optional<Json> applyValues(const Json& tmpl, const Json& values, bool remove_notset,
                                const EnvLookup& env) {
  if (tmpl.is_string()) {
    return applyToString(tmpl.get_ref<const std::string&>(), values, remove_notset, env);
  }
  if (tmpl.is_object()) {
    Json out = Json::object();
    for (const auto& [key, value] : tmpl.items()) {
      std::optional<Json> item = applyValues(value, values, remove_notset, env);
      if (item) {
        out[key] = std::move(*item);
      } else if (!remove_notset) {
        out[key] = value;
      }
    }
    return out;
  }
  if (tmpl.is_array()) {
    Json out = Json::array();
    for (const auto& value : tmpl) {
      std::optional<Json> item = applyValues(value, values, remove_notset, env);
      if (item) {
        out.push_back(std::move(*item));
      }
    }
    return out;
  }
  return tmpl;
}

References collectReferences(const Json& config) {
  ReferenceCollector collector;
  collector.visit(config);
  return collector.take();
}

Result<Json> resolveBlocks(const Json& config, const ResolvedReferences& resolved) {
  try {
    return resolveBlocksIn(config, resolved, "");
  } catch (const std::exception& e) {
    return makeError(ErrorKind::Internal,
                     std::string("resolving block documents failed: ") + e.what());
  }
}

Json resolveVariables(const Json& config, const std::map<std::string, Json>& variables) {
  return resolveVariablesIn(config, variables);
}

Result<Json> resolveReferences(const Json& config, const ResolvedReferences& resolved) {
  auto blocks = resolveBlocks(config, resolved);
  if (!blocks) {
    return blocks;
  }
  return resolveVariables(*blocks, resolved.variables);
}

}  // namespace poolworker::templating
