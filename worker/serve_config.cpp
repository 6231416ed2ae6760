#include "worker/serve_config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "worker/yaml_json.h"

namespace poolworker::serve {
namespace {

namespace fs = std::filesystem;

Error invalid(const std::string& message) {
  return makeError(ErrorKind::InvalidConfiguration, message);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) {
    return {};
  }
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(s);
  while (std::getline(in, item, sep)) {
    out.push_back(item);
  }
  if (!s.empty() && s.back() == sep) {
    out.emplace_back();
  }
  return out;
}

// ---- Cron -----------------------------------------------------------------------------------

struct CronField {
  const char* name;
  int min;
  int max;
  const std::array<const char*, 12>* names;  // index + min = value
};

const std::array<const char*, 12> kMonthNames = {"jan", "feb", "mar", "apr", "may", "jun",
                                                 "jul", "aug", "sep", "oct", "nov", "dec"};
const std::array<const char*, 12> kDayNames = {"sun", "mon", "tue", "wed", "thu", "fri",
                                               "sat", "",    "",    "",    "",    ""};

std::optional<int> cronValue(const std::string& text, const CronField& field) {
  if (text.empty()) {
    return std::nullopt;
  }
  if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); })) {
    if (text.size() > 4) {
      return std::nullopt;
    }
    int v = std::stoi(text);
    if (v < field.min || v > field.max) {
      return std::nullopt;
    }
    return v;
  }
  if (field.names != nullptr) {
    std::string l = lower(text);
    for (size_t i = 0; i < field.names->size(); ++i) {
      if (*(*field.names)[i] != '\0' && l == (*field.names)[i]) {
        return static_cast<int>(i) + (field.names == &kMonthNames ? 1 : 0);
      }
    }
  }
  return std::nullopt;
}

std::string checkCronItem(const std::string& item, const CronField& field, bool day_of_month,
                          bool day_of_week) {
  const std::string where = std::string(" in the ") + field.name + " field";
  if (item.empty()) {
    return "an empty list item" + where;
  }
  std::string base = item;
  if (auto slash = item.find('/'); slash != std::string::npos) {
    std::string step = item.substr(slash + 1);
    base = item.substr(0, slash);
    if (step.empty() ||
        !std::all_of(step.begin(), step.end(), [](unsigned char c) { return std::isdigit(c); }) ||
        step.size() > 4 || std::stoi(step) == 0) {
      return "'" + item + "': the step must be a positive number" + where;
    }
  }
  if (base == "*" || base == "?") {
    return {};
  }
  if (day_of_month && (base == "L" || base == "l")) {
    return {};
  }
  if (day_of_week) {
    if (auto hash = base.find('#'); hash != std::string::npos) {
      auto day = cronValue(base.substr(0, hash), field);
      std::string nth = base.substr(hash + 1);
      if (!day || nth.size() != 1 || nth[0] < '1' || nth[0] > '5') {
        return "'" + item + "' is not DAY#N with N from 1 to 5" + where;
      }
      return {};
    }
    if (base.size() > 1 && (base.back() == 'L' || base.back() == 'l') &&
        cronValue(base.substr(0, base.size() - 1), field)) {
      return {};
    }
  }
  if (auto dash = base.find('-'); dash != std::string::npos && dash > 0) {
    auto from = cronValue(base.substr(0, dash), field);
    auto to = cronValue(base.substr(dash + 1), field);
    if (!from || !to) {
      return "'" + item + "' is not a range of values from " + std::to_string(field.min) + " to " +
             std::to_string(field.max) + where;
    }
    return {};
  }
  if (!cronValue(base, field)) {
    return "'" + base + "' is not a value from " + std::to_string(field.min) + " to " +
           std::to_string(field.max) + where;
  }
  return {};
}

// ---- Python source --------------------------------------------------------------------------

// The text between the parenthesis at `open` and its match, or npos.
size_t matchingParen(const std::string& text, size_t open) {
  int depth = 0;
  char quote = 0;
  for (size_t i = open; i < text.size(); ++i) {
    char c = text[i];
    if (quote != 0) {
      if (c == '\\') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '#') {
      while (i < text.size() && text[i] != '\n') {
        ++i;
      }
    } else if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if (c == ')' || c == ']' || c == '}') {
      if (--depth == 0) {
        return i;
      }
    }
  }
  return std::string::npos;
}

// Splits on top-level commas.
std::vector<std::string> splitTopLevel(const std::string& text) {
  std::vector<std::string> out;
  int depth = 0;
  char quote = 0;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quote != 0) {
      cur += c;
      if (c == '\\' && i + 1 < text.size()) {
        cur += text[++i];
      } else if (c == quote) {
        quote = 0;
      }
      continue;
    }
    if (c == '#') {
      while (i < text.size() && text[i] != '\n') {
        ++i;
      }
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if (c == ')' || c == ']' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 0) {
      out.push_back(trim(cur));
      cur.clear();
      continue;
    }
    cur += c;
  }
  if (!trim(cur).empty()) {
    out.push_back(trim(cur));
  }
  return out;
}

// A Python literal (numbers, strings, True/False/None, lists and dicts of them) as JSON.
std::optional<Json> pythonLiteral(const std::string& raw) {
  std::string text = trim(raw);
  if (text == "None") {
    return Json(nullptr);
  }
  if (text == "True" || text == "False") {
    return Json(text == "True");
  }
  if (text.size() >= 2 && (text[0] == '"' || text[0] == '\'') && text.back() == text[0] &&
      text.find('\\') == std::string::npos && text.find(text[0], 1) == text.size() - 1) {
    return Json(text.substr(1, text.size() - 2));
  }
  static const std::regex kInt(R"(^-?\d+$)");
  static const std::regex kFloat(R"(^-?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)$)");
  if (std::regex_match(text, kInt) && text.size() < 18) {
    return Json(std::stoll(text));
  }
  if (std::regex_match(text, kFloat)) {
    return Json(std::stod(text));
  }
  if (text.size() >= 2 && (text[0] == '[' || text[0] == '(') &&
      text.back() == (text[0] == '[' ? ']' : ')')) {
    Json out = Json::array();
    for (const auto& item : splitTopLevel(text.substr(1, text.size() - 2))) {
      auto v = pythonLiteral(item);
      if (!v) {
        return std::nullopt;
      }
      out.push_back(*v);
    }
    return out;
  }
  if (text.size() >= 2 && text[0] == '{' && text.back() == '}') {
    Json out = Json::object();
    for (const auto& item : splitTopLevel(text.substr(1, text.size() - 2))) {
      size_t colon = std::string::npos;
      char quote = 0;
      for (size_t i = 0; i < item.size(); ++i) {
        if (quote != 0) {
          quote = item[i] == quote ? 0 : quote;
        } else if (item[i] == '\'' || item[i] == '"') {
          quote = item[i];
        } else if (item[i] == ':') {
          colon = i;
          break;
        }
      }
      if (colon == std::string::npos) {
        return std::nullopt;
      }
      auto key = pythonLiteral(item.substr(0, colon));
      auto value = pythonLiteral(item.substr(colon + 1));
      if (!key || !key->is_string() || !value) {
        return std::nullopt;
      }
      out[key->get<std::string>()] = *value;
    }
    return out;
  }
  return std::nullopt;
}

// The JSON schema of a simple annotation, or null when a text read cannot tell.
Json annotationSchema(const std::string& raw) {
  std::string a = trim(raw);
  static const std::map<std::string, Json> kSimple = {
      {"int", {{"type", "integer"}}},
      {"float", {{"type", "number"}}},
      {"str", {{"type", "string"}}},
      {"bool", {{"type", "boolean"}}},
      {"list", {{"items", Json::object()}, {"type", "array"}}},
      {"List", {{"items", Json::object()}, {"type", "array"}}},
      {"dict", {{"additionalProperties", true}, {"type", "object"}}},
      {"Dict", {{"additionalProperties", true}, {"type", "object"}}},
  };
  if (auto it = kSimple.find(a); it != kSimple.end()) {
    return it->second;
  }
  // X | None and Optional[X]
  std::string inner;
  static const std::regex kOrNone(R"(^(.+?)\s*\|\s*None$)");
  static const std::regex kOptional(R"(^(?:typing\.)?Optional\[(.+)\]$)");
  std::smatch m;
  if (std::regex_match(a, m, kOrNone) || std::regex_match(a, m, kOptional)) {
    Json one = annotationSchema(m[1].str());
    if (one.is_null()) {
      return Json();
    }
    return {{"anyOf", {one, {{"type", "null"}}}}};
  }
  static const std::regex kListOf(R"(^(?:list|List)\[(.+)\]$)");
  if (std::regex_match(a, m, kListOf)) {
    Json item = annotationSchema(m[1].str());
    if (item.is_null()) {
      return Json();
    }
    return {{"items", item}, {"type", "array"}};
  }
  static const std::regex kDictOf(R"(^(?:dict|Dict)\[\s*str\s*,(.+)\]$)");
  if (std::regex_match(a, m, kDictOf)) {
    Json value = annotationSchema(m[1].str());
    if (value.is_null()) {
      return Json();
    }
    return {{"additionalProperties", value}, {"type", "object"}};
  }
  return Json();
}

Json parameterSchema(const std::string& params_text) {
  Json properties = Json::object();
  Json required = Json::array();
  int position = 0;
  for (const auto& raw : splitTopLevel(params_text)) {
    std::string param = trim(raw);
    if (param == "/" || param.empty()) {
      continue;
    }
    if (param[0] == '*') {
      // The bare `*` marker, *args and **kwargs: a text read cannot describe them.
      continue;
    }
    std::string name = param;
    std::string annotation;
    std::optional<std::string> default_text;
    // Split off the default at the first top-level '='.
    {
      int depth = 0;
      char quote = 0;
      for (size_t i = 0; i < param.size(); ++i) {
        char c = param[i];
        if (quote != 0) {
          quote = c == quote ? 0 : quote;
        } else if (c == '\'' || c == '"') {
          quote = c;
        } else if (c == '(' || c == '[' || c == '{') {
          ++depth;
        } else if (c == ')' || c == ']' || c == '}') {
          --depth;
        } else if (c == '=' && depth == 0) {
          default_text = trim(param.substr(i + 1));
          name = trim(param.substr(0, i));
          break;
        }
      }
    }
    if (auto colon = name.find(':'); colon != std::string::npos) {
      annotation = trim(name.substr(colon + 1));
      name = trim(name.substr(0, colon));
    }
    Json prop = Json::object();
    if (!annotation.empty()) {
      Json schema = annotationSchema(annotation);
      if (schema.is_object()) {
        prop.update(schema);
      }
    }
    if (default_text) {
      if (auto value = pythonLiteral(*default_text)) {
        prop["default"] = *value;
      }
    } else {
      required.push_back(name);
    }
    prop["position"] = position++;
    prop["title"] = name;
    // Keys in the order Prefect's (pydantic's) schema has them: sorted.
    std::map<std::string, Json> sorted;
    for (const auto& [key, value] : prop.items()) {
      sorted[key] = value;
    }
    Json ordered = Json::object();
    for (auto& [key, value] : sorted) {
      ordered[key] = std::move(value);
    }
    properties[name] = std::move(ordered);
  }
  Json schema = {{"title", "Parameters"}, {"type", "object"}, {"properties", properties}};
  if (!required.empty()) {
    schema["required"] = required;
  }
  return schema;
}

// ---- The YAML file --------------------------------------------------------------------------

class Reader {
 public:
  Reader(std::string path, std::string folder, const CheckEnvironment& env)
      : path_(std::move(path)), folder_(std::move(folder)), env_(env) {}

  std::string at(const YAML::Node& node) const {
    return path_ + ":" + std::to_string(node.Mark().line + 1);
  }
  std::string at(const YAML::Node& node, const std::string& key) const {
    return at(node) + ": '" + key + "'";
  }

  Result<void> onlyKeys(const YAML::Node& map, const std::string& what,
                        const std::set<std::string>& known) const {
    for (const auto& item : map) {
      const std::string key = item.first.Scalar();
      if (!known.contains(key)) {
        std::string list;
        for (const auto& k : known) {
          list += (list.empty() ? "" : ", ") + k;
        }
        return invalid(at(item.first, key) + ": unknown key in " + what + " (known: " + list + ")");
      }
    }
    return success();
  }

  Result<std::string> string(const YAML::Node& parent, const char* key) const {
    const YAML::Node node = parent[key];
    if (!node.IsScalar()) {
      return invalid(at(node.IsDefined() ? node : parent, key) + ": must be a string");
    }
    return node.Scalar();
  }

  Result<bool> boolean(const YAML::Node& parent, const char* key) const {
    const YAML::Node node = parent[key];
    Json v = node.IsScalar() ? yamlScalar(node) : Json();
    if (!v.is_boolean()) {
      return invalid(at(node, key) + ": must be true or false");
    }
    return v.get<bool>();
  }

  Result<int> positiveInt(const YAML::Node& parent, const char* key) const {
    const YAML::Node node = parent[key];
    Json v = node.IsScalar() ? yamlScalar(node) : Json();
    if (!v.is_number_integer() || v.get<long long>() < 1 || v.get<long long>() > 1000000) {
      return invalid(at(node, key) + ": must be a whole number of at least 1");
    }
    return static_cast<int>(v.get<long long>());
  }

  Result<std::string> timezone(const YAML::Node& parent) const {
    auto tz = string(parent, "timezone");
    if (!tz) {
      return tz;
    }
    if (!timezoneExists(*tz, env_.zoneinfo_dir)) {
      return invalid(at(parent["timezone"], "timezone") + ": unknown time zone '" + *tz +
                     "' (not in the time zone database " + env_.zoneinfo_dir +
                     "; use an IANA name such as America/New_York or UTC)");
    }
    return tz;
  }

  Result<ScheduleSpec> schedule(const YAML::Node& node, const std::string& what) const {
    if (!node.IsMap()) {
      return invalid(at(node) + ": " + what +
                     " must be a mapping with one of cron, interval, rrule");
    }
    ScheduleSpec spec;
    int kinds = (node["cron"] ? 1 : 0) + (node["interval"] ? 1 : 0) + (node["rrule"] ? 1 : 0);
    if (kinds != 1) {
      return invalid(at(node) + ": " + what +
                     " must have exactly one of 'cron', 'interval' or 'rrule'");
    }
    Json schedule = Json::object();
    if (node["cron"]) {
      if (auto ok =
              onlyKeys(node, what, {"cron", "timezone", "day_or", "active", "parameters", "slug"});
          !ok) {
        return ok.error();
      }
      auto cron = string(node, "cron");
      if (!cron) {
        return cron.error();
      }
      if (std::string problem = checkCron(*cron); !problem.empty()) {
        return invalid(at(node["cron"], "cron") + ": invalid cron string '" + *cron +
                       "': " + problem);
      }
      schedule["cron"] = *cron;
      schedule["timezone"] = nullptr;
      schedule["day_or"] = true;
      if (node["day_or"]) {
        auto day_or = boolean(node, "day_or");
        if (!day_or) {
          return day_or.error();
        }
        schedule["day_or"] = *day_or;
      }
    } else if (node["interval"]) {
      if (auto ok = onlyKeys(
              node, what, {"interval", "anchor_date", "timezone", "active", "parameters", "slug"});
          !ok) {
        return ok.error();
      }
      const YAML::Node iv = node["interval"];
      Json seconds = iv.IsScalar() ? yamlScalar(iv) : Json();
      if (!seconds.is_number() || seconds.get<double>() <= 0) {
        return invalid(at(iv, "interval") +
                       ": must be a positive number of seconds, e.g. 'interval: 3600'");
      }
      schedule["interval"] = seconds.get<double>();
      if (node["anchor_date"]) {
        auto anchor = string(node, "anchor_date");
        if (!anchor) {
          return anchor.error();
        }
        if (!isIsoDateTime(*anchor)) {
          return invalid(at(node["anchor_date"], "anchor_date") + ": '" + *anchor +
                         "' is not an ISO 8601 date-time such as 2026-01-01T00:00:00Z");
        }
        schedule["anchor_date"] = *anchor;
      }
      schedule["timezone"] = nullptr;
    } else {
      if (auto ok = onlyKeys(node, what, {"rrule", "timezone", "active", "parameters", "slug"});
          !ok) {
        return ok.error();
      }
      auto rrule = string(node, "rrule");
      if (!rrule) {
        return rrule.error();
      }
      if (std::string problem = checkRrule(*rrule); !problem.empty()) {
        return invalid(at(node["rrule"], "rrule") + ": invalid rrule: " + problem);
      }
      schedule["rrule"] = *rrule;
      schedule["timezone"] = nullptr;
    }
    if (node["timezone"]) {
      auto tz = timezone(node);
      if (!tz) {
        return tz.error();
      }
      schedule["timezone"] = *tz;
    }
    if (node["interval"] && !node["timezone"]) {
      schedule.erase("timezone");  // Prefect infers it from the anchor date.
    }
    spec.schedule = std::move(schedule);
    if (node["active"]) {
      auto active = boolean(node, "active");
      if (!active) {
        return active.error();
      }
      spec.active = *active;
    }
    if (node["parameters"]) {
      if (!node["parameters"].IsMap()) {
        return invalid(at(node["parameters"], "parameters") + ": must be a mapping");
      }
      spec.parameters = yamlToJson(node["parameters"]);
    }
    if (node["slug"]) {
      auto slug = string(node, "slug");
      if (!slug) {
        return slug.error();
      }
      spec.slug = *slug;
    }
    return spec;
  }

  Result<DeploymentSpec> deployment(const YAML::Node& node, size_t index) const {
    const std::string what = "deployments[" + std::to_string(index) + "]";
    if (!node.IsMap()) {
      return invalid(at(node) + ": " + what + " must be a mapping");
    }
    if (auto ok =
            onlyKeys(node, "a deployment",
                     {"name", "entrypoint", "working_dir", "flow_name", "description", "version",
                      "tags", "parameters", "parameter_openapi_schema", "enforce_parameter_schema",
                      "concurrency_limit", "schedules", "schedule", "job"});
        !ok) {
      return ok.error();
    }
    DeploymentSpec spec;
    spec.line = node.Mark().line + 1;
    if (!node["name"]) {
      return invalid(at(node) + ": " + what + " needs a 'name'");
    }
    auto name = string(node, "name");
    if (!name) {
      return name.error();
    }
    if (name->empty() || name->find('/') != std::string::npos ||
        name->find('%') != std::string::npos) {
      return invalid(at(node["name"], "name") + ": deployment name '" + *name +
                     "' must be non-empty and contain no '/' or '%'");
    }
    spec.name = *name;
    const std::string dep = "deployment '" + spec.name + "'";

    std::string dir = folder_;
    if (node["working_dir"]) {
      auto wd = string(node, "working_dir");
      if (!wd) {
        return wd.error();
      }
      fs::path p(*wd);
      dir = (p.is_absolute() ? p : fs::path(folder_) / p).lexically_normal().string();
      std::error_code ec;
      if (!fs::is_directory(dir, ec)) {
        return invalid(at(node["working_dir"], "working_dir") + ": " + dep +
                       ": working directory '" + dir + "' does not exist");
      }
    }
    if (dir.size() > 1 && dir.back() == '/') {
      dir.pop_back();
    }
    spec.working_dir = dir;

    if (!node["entrypoint"]) {
      return invalid(at(node) + ": " + dep + " needs an 'entrypoint' (path/file.py:function)");
    }
    auto entrypoint = string(node, "entrypoint");
    if (!entrypoint) {
      return entrypoint.error();
    }
    const std::string ep_at = at(node["entrypoint"], "entrypoint") + ": " + dep;
    auto colon = entrypoint->rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == entrypoint->size()) {
      return invalid(ep_at + ": entrypoint '" + *entrypoint + "' must be 'path/file.py:function'");
    }
    const std::string file = entrypoint->substr(0, colon);
    const std::string function = entrypoint->substr(colon + 1);
    static const std::regex kIdentifier(R"(^[A-Za-z_][A-Za-z0-9_]*$)");
    if (!std::regex_match(function, kIdentifier)) {
      return invalid(ep_at + ": '" + function + "' is not a Python function name");
    }
    fs::path file_path = fs::path(file).is_absolute() ? fs::path(file) : fs::path(dir) / file;
    std::ifstream in(file_path);
    std::error_code ec;
    if (!fs::is_regular_file(file_path, ec) || !in) {
      return invalid(ep_at + ": file '" + file_path.lexically_normal().string() +
                     "' does not exist or cannot be read (relative to the working directory " +
                     dir + ")");
    }
    std::stringstream source;
    source << in.rdbuf();
    FunctionInfo info = inspectFunction(source.str(), function);
    if (!info.found) {
      return invalid(ep_at + ": no top-level 'def " + function + "(' in " +
                     file_path.lexically_normal().string());
    }
    spec.entrypoint = *entrypoint;

    if (node["flow_name"]) {
      auto flow_name = string(node, "flow_name");
      if (!flow_name) {
        return flow_name.error();
      }
      spec.flow_name = *flow_name;
    } else if (!info.flow_name.empty()) {
      spec.flow_name = info.flow_name;
    } else {
      spec.flow_name = function;
      std::replace(spec.flow_name.begin(), spec.flow_name.end(), '_', '-');
    }
    spec.parameter_openapi_schema = info.parameter_schema;

    for (const char* key : {"description", "version"}) {
      if (node[key]) {
        const YAML::Node v = node[key];
        if (!v.IsScalar()) {
          return invalid(at(v, key) + ": must be a string");
        }
        (std::string(key) == "description" ? spec.description : spec.version) = v.Scalar();
      }
    }
    if (node["tags"]) {
      const YAML::Node tags = node["tags"];
      if (!tags.IsSequence()) {
        return invalid(at(tags, "tags") + ": must be a list of strings");
      }
      for (const auto& tag : tags) {
        if (!tag.IsScalar()) {
          return invalid(at(tag, "tags") + ": must be a list of strings");
        }
        spec.tags.push_back(tag.Scalar());
      }
    }
    if (node["parameters"]) {
      if (!node["parameters"].IsMap()) {
        return invalid(at(node["parameters"], "parameters") + ": must be a mapping");
      }
      spec.parameters = yamlToJson(node["parameters"]);
    }
    if (node["parameter_openapi_schema"]) {
      if (!node["parameter_openapi_schema"].IsMap()) {
        return invalid(at(node["parameter_openapi_schema"], "parameter_openapi_schema") +
                       ": must be a mapping (a JSON schema)");
      }
      spec.parameter_openapi_schema = yamlToJson(node["parameter_openapi_schema"]);
    }
    if (node["enforce_parameter_schema"]) {
      auto enforce = boolean(node, "enforce_parameter_schema");
      if (!enforce) {
        return enforce.error();
      }
      spec.enforce_parameter_schema = *enforce;
    }
    if (node["concurrency_limit"]) {
      const YAML::Node cl = node["concurrency_limit"];
      if (cl.IsMap()) {
        if (auto ok = onlyKeys(cl, "concurrency_limit",
                               {"limit", "collision_strategy", "grace_period_seconds"});
            !ok) {
          return ok.error();
        }
        auto limit = positiveInt(cl, "limit");
        if (!limit) {
          return limit.error();
        }
        spec.concurrency_limit = *limit;
        Json options = Json::object();
        if (cl["collision_strategy"]) {
          auto strategy = string(cl, "collision_strategy");
          if (!strategy) {
            return strategy.error();
          }
          if (*strategy != "ENQUEUE" && *strategy != "CANCEL_NEW") {
            return invalid(at(cl["collision_strategy"], "collision_strategy") +
                           ": must be ENQUEUE or CANCEL_NEW");
          }
          options["collision_strategy"] = *strategy;
        } else {
          options["collision_strategy"] = "ENQUEUE";
        }
        if (cl["grace_period_seconds"]) {
          auto grace = positiveInt(cl, "grace_period_seconds");
          if (!grace) {
            return grace.error();
          }
          if (*grace < 60 || *grace > 86400) {
            return invalid(at(cl["grace_period_seconds"], "grace_period_seconds") +
                           ": must be between 60 and 86400");
          }
          options["grace_period_seconds"] = *grace;
        }
        spec.concurrency_options = options;
      } else {
        auto limit = positiveInt(node, "concurrency_limit");
        if (!limit) {
          return limit.error();
        }
        spec.concurrency_limit = *limit;
      }
    }
    if (node["schedule"] && node["schedules"]) {
      return invalid(at(node["schedule"], "schedule") + ": " + dep +
                     ": give 'schedule' or 'schedules', not both");
    }
    if (node["schedule"]) {
      auto one = schedule(node["schedule"], "schedule");
      if (!one) {
        return one.error();
      }
      spec.schedules.push_back(std::move(one).value());
    }
    if (node["schedules"]) {
      const YAML::Node list = node["schedules"];
      if (!list.IsSequence()) {
        return invalid(at(list, "schedules") + ": must be a list of schedules");
      }
      size_t i = 0;
      for (const auto& item : list) {
        auto one = schedule(item, "schedules[" + std::to_string(i++) + "]");
        if (!one) {
          return one.error();
        }
        spec.schedules.push_back(std::move(one).value());
      }
    }
    if (node["job"]) {
      const YAML::Node job = node["job"];
      if (!job.IsMap()) {
        return invalid(at(job, "job") + ": must be a mapping with env, command, python");
      }
      if (auto ok = onlyKeys(job, "job", {"env", "command", "python"}); !ok) {
        return ok.error();
      }
      if (job["env"]) {
        if (!job["env"].IsMap()) {
          return invalid(at(job["env"], "env") + ": must be a mapping of names to strings");
        }
        for (const auto& item : job["env"]) {
          Json v = item.second.IsScalar() ? yamlScalar(item.second) : Json("x");
          if (item.second.IsNull() || (item.second.IsScalar() && v.is_null())) {
            spec.job.env[item.first.Scalar()] = nullptr;
          } else if (item.second.IsScalar()) {
            spec.job.env[item.first.Scalar()] = item.second.Scalar();
          } else {
            return invalid(at(item.second, item.first.Scalar()) +
                           ": an environment value must be a string");
          }
        }
      }
      if (job["command"]) {
        auto command = string(job, "command");
        if (!command) {
          return command.error();
        }
        if (trim(*command).empty()) {
          return invalid(at(job["command"], "command") + ": must not be empty");
        }
        spec.job.command = *command;
      }
      if (job["python"]) {
        auto python = string(job, "python");
        if (!python) {
          return python.error();
        }
        if (python->empty()) {
          return invalid(at(job["python"], "python") + ": must not be empty");
        }
        spec.job.python = *python;
      }
    }
    return spec;
  }

  Result<ServeFile> file(const YAML::Node& root) const {
    ServeFile out;
    out.path = path_;
    if (!root.IsMap()) {
      return invalid(path_ + ": must be a YAML mapping with a 'deployments' list");
    }
    if (auto ok = onlyKeys(root, "the file", {"name", "pause_on_shutdown", "limit", "deployments"});
        !ok) {
      return ok.error();
    }
    if (root["name"]) {
      auto name = string(root, "name");
      if (!name) {
        return name.error();
      }
      out.name = *name;
    }
    if (root["pause_on_shutdown"]) {
      auto pause = boolean(root, "pause_on_shutdown");
      if (!pause) {
        return pause.error();
      }
      out.pause_on_shutdown = *pause;
    }
    if (root["limit"]) {
      auto limit = positiveInt(root, "limit");
      if (!limit) {
        return limit.error();
      }
      out.limit = *limit;
    }
    const YAML::Node list = root["deployments"];
    if (!list || !list.IsSequence() || list.size() == 0) {
      return invalid(at(list ? list : root, "deployments") +
                     ": must be a non-empty list of deployments");
    }
    std::set<std::pair<std::string, std::string>> seen;
    size_t i = 0;
    for (const auto& item : list) {
      auto spec = deployment(item, i++);
      if (!spec) {
        return spec.error();
      }
      if (!seen.insert({spec->flow_name, spec->name}).second) {
        return invalid(at(item) + ": deployment '" + spec->flow_name + "/" + spec->name +
                       "' appears twice");
      }
      out.deployments.push_back(std::move(spec).value());
    }
    return out;
  }

 private:
  std::string path_;
  std::string folder_;
  const CheckEnvironment& env_;
};

}  // namespace

CheckEnvironment defaultCheckEnvironment() {
  CheckEnvironment env;
  const char* tzdir = std::getenv("TZDIR");
  env.zoneinfo_dir = tzdir != nullptr && *tzdir != '\0' ? tzdir : "/usr/share/zoneinfo";
  return env;
}

std::string checkCron(const std::string& cron) {
  std::string text = trim(cron);
  if (text.empty()) {
    return "it is empty";
  }
  if (text[0] == '@') {
    static const std::set<std::string> kAliases = {"@yearly", "@annually", "@monthly", "@weekly",
                                                   "@daily",  "@midnight", "@hourly"};
    return kAliases.contains(lower(text)) ? std::string()
                                          : "unknown alias '" + text +
                                                "' (known: @yearly, @annually, @monthly, "
                                                "@weekly, @daily, @midnight, @hourly)";
  }
  std::vector<std::string> fields;
  std::istringstream in(text);
  for (std::string f; in >> f;) {
    fields.push_back(f);
  }
  if (fields.size() != 5 && fields.size() != 6) {
    return "it has " + std::to_string(fields.size()) +
           " fields; a cron string has 5 (minute hour day-of-month month day-of-week)";
  }
  for (const auto& f : fields) {
    std::string l = lower(f);
    if (l == "r" || l == "h" || l.find("h(") != std::string::npos) {
      return "random and hashed expressions (R, H) are not supported";
    }
  }
  const CronField kFields[6] = {{"minute", 0, 59, nullptr},        {"hour", 0, 23, nullptr},
                                {"day-of-month", 1, 31, nullptr},  {"month", 1, 12, &kMonthNames},
                                {"day-of-week", 0, 7, &kDayNames}, {"second", 0, 59, nullptr}};
  for (size_t i = 0; i < fields.size(); ++i) {
    for (const auto& item : split(fields[i], ',')) {
      if (std::string problem = checkCronItem(item, kFields[i], i == 2, i == 4); !problem.empty()) {
        return problem;
      }
    }
  }
  return {};
}

std::string checkRrule(const std::string& rrule) {
  if (rrule.size() > 6500) {
    return "it is longer than 6500 characters";
  }
  static const std::set<std::string> kFreq = {"YEARLY", "MONTHLY",  "WEEKLY",  "DAILY",
                                              "HOURLY", "MINUTELY", "SECONDLY"};
  static const std::set<std::string> kParts = {
      "FREQ",    "INTERVAL",   "COUNT",     "UNTIL",     "BYSECOND",    "BYMINUTE",  "BYHOUR",
      "BYDAY",   "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO",  "BYMONTH",     "BYSETPOS",  "WKST",
      "DTSTART", "TZID",       "BYEASTER",  "BYWEEKDAY", "BYNMONTHDAY", "BYNWEEKDAY"};
  auto checkRule = [&](const std::string& rule) -> std::string {
    bool has_freq = false;
    for (const auto& part : split(rule, ';')) {
      auto eq = part.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == part.size()) {
        return "'" + part + "' is not NAME=VALUE";
      }
      std::string name = part.substr(0, eq);
      std::string value = part.substr(eq + 1);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
      if (!kParts.contains(name)) {
        return "unknown rule part '" + name + "'";
      }
      if (name == "FREQ") {
        std::string v = value;
        std::transform(v.begin(), v.end(), v.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        if (!kFreq.contains(v)) {
          return "FREQ=" + value +
                 " is not one of YEARLY, MONTHLY, WEEKLY, DAILY, HOURLY, MINUTELY, SECONDLY";
        }
        has_freq = true;
      }
    }
    return has_freq ? std::string() : "the rule has no FREQ";
  };
  std::string text = trim(rrule);
  if (text.empty()) {
    return "it is empty";
  }
  bool any_rule = false;
  for (auto line : split(text, '\n')) {
    line = trim(line);
    if (line.empty()) {
      continue;
    }
    std::string upper = line;
    std::transform(upper.begin(), upper.end(), upper.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    if (upper.rfind("RRULE:", 0) == 0 || upper.rfind("EXRULE:", 0) == 0) {
      if (std::string problem = checkRule(line.substr(line.find(':') + 1)); !problem.empty()) {
        return problem;
      }
      any_rule = true;
    } else if (upper.rfind("DTSTART", 0) == 0 || upper.rfind("EXDATE", 0) == 0 ||
               upper.rfind("RDATE", 0) == 0) {
      if (line.find(':') == std::string::npos) {
        return "'" + line + "' has no ':'";
      }
      any_rule = any_rule || upper.rfind("RDATE", 0) == 0;
    } else if (upper.find('=') != std::string::npos && upper.find(':') == std::string::npos) {
      if (std::string problem = checkRule(line); !problem.empty()) {
        return problem;
      }
      any_rule = true;
    } else {
      return "unknown line '" + line + "'";
    }
  }
  return any_rule ? std::string() : "it has no RRULE or RDATE";
}

bool timezoneExists(const std::string& name, const std::string& zoneinfo_dir) {
  if (name.empty() || name[0] == '/' || name.find("..") != std::string::npos ||
      name.find('\\') != std::string::npos) {
    return false;
  }
  std::error_code ec;
  const fs::path file = fs::path(zoneinfo_dir) / name;
  if (!fs::is_regular_file(file, ec)) {
    return false;
  }
  std::ifstream in(file, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && std::string(magic, 4) == "TZif";
}

bool isIsoDateTime(const std::string& text) {
  static const std::regex kIso(
      R"(^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$)");
  return std::regex_match(text, kIso);
}

FunctionInfo inspectFunction(const std::string& source, const std::string& function) {
  FunctionInfo info;
  const std::regex def("(^|\\n)(async[ \\t]+)?def[ \\t]+" + function + "[ \\t]*\\(");
  std::smatch m;
  if (!std::regex_search(source, m, def)) {
    return info;
  }
  info.found = true;
  const size_t def_start = static_cast<size_t>(m.position(0)) + m[1].length();
  const size_t open = static_cast<size_t>(m.position(0) + m.length(0)) - 1;
  const size_t close = matchingParen(source, open);
  info.parameter_schema = parameterSchema(
      close == std::string::npos ? std::string() : source.substr(open + 1, close - open - 1));

  // The decorators right above the def, multi-line ones included: going upward, a line belongs
  // to them while a parenthesis opened above it is still unclosed, or when it starts with '@'.
  std::vector<std::string> lines = split(source.substr(0, def_start), '\n');
  std::string decorators;
  int depth = 0;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    const std::string line = trim(*it);
    for (char c : line) {
      depth += (c == ')' || c == ']') ? 1 : (c == '(' || c == '[') ? -1 : 0;
    }
    if (depth > 0 || (!line.empty() && line[0] == '@')) {
      decorators = line + "\n" + decorators;
      depth = std::max(depth, 0);
      continue;
    }
    if (!line.empty() || !decorators.empty() || it != lines.rbegin()) {
      break;
    }
  }
  static const std::regex kFlowName(
      R"re(@(?:[A-Za-z_][A-Za-z0-9_]*\.)*flow\s*\([^@]*?\bname\s*=\s*(?:"([^"]*)"|'([^']*)'))re");
  std::smatch n;
  if (std::regex_search(decorators, n, kFlowName)) {
    info.flow_name = n[1].matched ? n[1].str() : n[2].str();
  }
  return info;
}

Result<ServeFile> parseServeFile(const std::string& text, const std::string& path,
                                 const CheckEnvironment& env) {
  std::string folder = fs::absolute(fs::path(path)).parent_path().lexically_normal().string();
  Reader reader(path, folder, env);
  try {
    YAML::Node root = YAML::Load(text);
    if (root.IsNull()) {
      return invalid(path + ": the file is empty; it must list 'deployments'");
    }
    return reader.file(root);
  } catch (const YAML::Exception& e) {
    return invalid(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                   std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
}

Result<ServeFile> loadServeFile(const std::string& path, const CheckEnvironment& env) {
  std::ifstream in(path);
  if (!in) {
    return invalid("cannot read the deployment file '" + path + "'");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parseServeFile(ss.str(), path, env);
}

Json schedulesJson(const DeploymentSpec& spec) {
  Json out = Json::array();
  for (const auto& s : spec.schedules) {
    Json item = {{"schedule", s.schedule},
                 {"active", s.active},
                 {"max_scheduled_runs", nullptr},
                 {"parameters", s.parameters},
                 {"slug", s.slug ? Json(*s.slug) : Json(nullptr)}};
    out.push_back(std::move(item));
  }
  return out;
}

Json deploymentBody(const DeploymentSpec& spec, const std::string& flow_id) {
  Json body = {
      {"name", spec.name},
      {"flow_id", flow_id},
      {"version", spec.version.empty() ? Json(nullptr) : Json(spec.version)},
      {"description", spec.description.empty() ? Json(nullptr) : Json(spec.description)},
      {"tags", spec.tags},
      {"parameters", spec.parameters},
      {"schedules", schedulesJson(spec)},
      {"concurrency_limit", spec.concurrency_limit ? Json(*spec.concurrency_limit) : Json(nullptr)},
      {"path", spec.working_dir},
      {"entrypoint", spec.entrypoint},
      {"storage_document_id", nullptr},
      {"infrastructure_document_id", nullptr},
      {"parameter_openapi_schema",
       spec.parameter_openapi_schema.is_object() ? spec.parameter_openapi_schema : Json::object()},
      {"enforce_parameter_schema", spec.enforce_parameter_schema},
      {"job_variables", Json::object()},
      {"paused", false},
  };
  if (spec.concurrency_options.is_object()) {
    body["concurrency_options"] = spec.concurrency_options;
  }
  return body;
}

Json jobVariables(const DeploymentSpec& spec) {
  Json vars = {{"working_dir", spec.working_dir}};
  if (!spec.job.env.empty()) {
    vars["env"] = spec.job.env;
  }
  if (!spec.job.command.empty()) {
    vars["command"] = spec.job.command;
  } else if (!spec.job.python.empty()) {
    // Single quotes keep an interpreter path with spaces one word for the shell-like split.
    std::string quoted = "'";
    for (char c : spec.job.python) {
      quoted += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    }
    vars["command"] = quoted + "' -m prefect.engine";
  }
  return vars;
}

}  // namespace poolworker::serve
