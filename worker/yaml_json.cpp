#include "worker/yaml_json.h"

#include <string>

#include <yaml-cpp/yaml.h>

namespace poolworker {

Json yamlScalar(const YAML::Node& node) {
  // Quoted scalars stay strings; plain ones become numbers or booleans where YAML 1.2 says so.
  const std::string& text = node.Scalar();
  if (node.Tag() == "!") {
    return Json(text);
  }
  if (text == "true" || text == "True" || text == "TRUE") {
    return Json(true);
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    return Json(false);
  }
  if (text == "null" || text == "~" || text.empty()) {
    return Json(nullptr);
  }
  try {
    size_t used = 0;
    long long n = std::stoll(text, &used);
    if (used == text.size()) {
      return Json(n);
    }
    double d = std::stod(text, &used);
    if (used == text.size()) {
      return Json(d);
    }
  } catch (const std::exception&) {
  }
  return Json(text);
}

Json yamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& item : node) {
        out[item.first.Scalar()] = yamlToJson(item.second);
      }
      return out;
    }
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const auto& item : node) {
        out.push_back(yamlToJson(item));
      }
      return out;
    }
    case YAML::NodeType::Scalar:
      return yamlScalar(node);
    default:
      return Json(nullptr);
  }
}

}  // namespace poolworker
