#include "worker/job_variables.h"

#include <array>
#include <cctype>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "worker/py_repr.h"

namespace poolworker::jobvars {
namespace {

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

// Python's `a | b` on dicts: a's keys in their order with b's values winning, then b's new keys.
Json dictUnion(Json base, const Json& overlay) {
  for (const auto& [key, value] : overlay.items()) {
    base[key] = value;
  }
  return base;
}

std::vector<std::string> splitKeyPath(std::string_view key) {
  std::vector<std::string> parts(1);
  for (char c : key) {
    if (c == '.' || c == '[') {
      parts.emplace_back();
    } else if (c != ']') {
      parts.back().push_back(c);
    }
  }
  return parts;
}

// Prefect's set_in_dict: creates missing levels, and refuses to go through a non-object.
Result<void> setInDict(Json& target, const std::string& dotted_key, const Json& value) {
  const std::vector<std::string> keys = splitKeyPath(dotted_key);
  Json* current = &target;
  std::string walked;
  for (std::size_t i = 0; i + 1 < keys.size(); ++i) {
    walked += (i == 0 ? "" : ".") + keys[i];
    auto it = current->find(keys[i]);
    if (it == current->end()) {
      current = &((*current)[keys[i]] = Json::object());
    } else if (it->is_object()) {
      current = &*it;
    } else {
      std::string message = "job variable '" + dotted_key + "' cannot be applied: '";
      message += walked;
      message += "' already holds a ";
      message += py::typeName(*it);
      message += ", not an object";
      return invalid(std::move(message));
    }
  }
  (*current)[keys.back()] = value;
  return success();
}

std::string describeType(const Json& value) { return std::string(py::typeName(value)); }

Result<Json> coerceOptionalString(const Json& value, std::string_view field) {
  if (value.is_null() || value.is_string()) {
    return value;
  }
  return invalid("job configuration '" + std::string(field) + "' must be a string, got " +
                 describeType(value));
}

Result<Json> coerce(Json config) {
  if (!config.is_object()) {
    return invalid("job configuration must be an object, got " + describeType(config));
  }

  auto command = coerceOptionalString(config.value("command", Json()), "command");
  if (!command) {
    return command.error();
  }
  if (command->is_string() && command->get_ref<const std::string&>().empty()) {
    *command = nullptr;
  }
  config["command"] = std::move(command).value();

  if (auto env = config.find("env"); env == config.end()) {
    config["env"] = Json::object();
  } else if (!env->is_object()) {
    return invalid("job configuration 'env' must be an object, got " + describeType(*env));
  } else {
    for (auto& [key, value] : env->items()) {
      if (!value.is_null() && !value.is_string()) {
        value = py::str(value);
      }
    }
  }

  if (auto labels = config.find("labels"); labels == config.end()) {
    config["labels"] = Json::object();
  } else if (!labels->is_object()) {
    return invalid("job configuration 'labels' must be an object, got " + describeType(*labels));
  } else {
    for (const auto& [key, value] : labels->items()) {
      if (!value.is_string()) {
        return invalid("job configuration label '" + key + "' must be a string, got " +
                       describeType(value));
      }
    }
  }

  auto name = coerceOptionalString(config.value("name", Json()), "name");
  if (!name) {
    return name.error();
  }
  config["name"] = std::move(name).value();
  return config;
}

Result<Json> render(const Json& base_job_template, const Json& job_variables,
                    const templating::EnvLookup& env) {
  if (!base_job_template.is_object()) {
    return invalid("the base job template must be an object, got " +
                   describeType(base_job_template));
  }
  for (const char* section : {"job_configuration", "variables"}) {
    auto it = base_job_template.find(section);
    if (it == base_job_template.end()) {
      return invalid("the base job template has no '" + std::string(section) + "' object");
    }
    if (!it->is_object()) {
      return invalid("the base job template's '" + std::string(section) +
                     "' must be an object, got " + describeType(*it));
    }
  }
  const Json& variables_schema = base_job_template["variables"];
  if (auto properties = variables_schema.find("properties"); properties != variables_schema.end()) {
    if (!properties->is_object()) {
      return invalid("the base job template's 'variables.properties' must be an object, got " +
                     describeType(*properties));
    }
    for (const auto& [key, schema] : properties->items()) {
      if (!schema.is_object()) {
        return invalid("the base job template's variable '" + key +
                       "' must have an object schema, got " + describeType(schema));
      }
    }
  }
  if (!job_variables.is_object()) {
    return invalid("job variables must be an object, got " + describeType(job_variables));
  }

  Json base = base_job_template["job_configuration"];
  Json values = variableDefaults(variables_schema);

  // The env default is merged before the job variables replace it, so that a deployment's env
  // adds to the pool's env instead of dropping it.
  if (auto default_env = values.find("env");
      default_env != values.end() && py::truthy(*default_env)) {
    auto base_env = base.find("env");
    if (base_env != base.end() && base_env->is_object()) {
      if (!default_env->is_object()) {
        return invalid(
            "the default of the base job template's variable 'env' must be an object, "
            "got " +
            describeType(*default_env));
      }
      *base_env = dictUnion(*base_env, *default_env);
    } else {
      base["env"] = *default_env;
    }
  }

  auto expanded = expandDottedKeys(job_variables);
  if (!expanded) {
    return expanded.error();
  }
  for (const auto& [key, value] : expanded->items()) {
    values[key] = value;
  }

  if (auto base_env = base.find("env"); base_env != base.end() && base_env->is_object()) {
    if (auto value_env = values.find("env"); value_env != values.end() && py::truthy(*value_env)) {
      if (!value_env->is_object()) {
        return invalid("job variable 'env' must be an object, got " + describeType(*value_env));
      }
      *base_env = dictUnion(*base_env, *value_env);
    }
  }

  std::optional<Json> configuration = templating::applyValues(base, values, true, env);
  return configuration ? std::move(*configuration) : Json::object();
}

bool asciiEqualsLower(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) {
    return false;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != lower[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

Json mergeJobVariables(const Json& deployment_vars, const Json& flow_run_vars) {
  Json merged = deployment_vars.is_object() ? deployment_vars : Json::object();
  Json flow_run = flow_run_vars.is_object() ? flow_run_vars : Json::object();
  if (auto env = merged.find("env"); env != merged.end() && env->is_object()) {
    if (auto run_env = flow_run.find("env"); run_env != flow_run.end()) {
      if (run_env->is_object()) {
        for (const auto& [key, value] : run_env->items()) {
          (*env)[key] = value;
        }
      }
      flow_run.erase("env");
    }
  }
  for (const auto& [key, value] : flow_run.items()) {
    merged[key] = value;
  }
  return merged;
}

Json variableDefaults(const Json& variables_schema) {
  Json defaults = Json::object();
  if (!variables_schema.is_object()) {
    return defaults;
  }
  auto properties = variables_schema.find("properties");
  if (properties == variables_schema.end() || !properties->is_object()) {
    return defaults;
  }
  for (const auto& [key, schema] : properties->items()) {
    if (!schema.is_object()) {
      continue;
    }
    auto value = schema.find("default");
    if (value != schema.end() && !value->is_null()) {
      defaults[key] = *value;
    }
  }
  return defaults;
}

Json deepMerge(const Json& base, const Json& overlay) {
  if (!base.is_object() || !overlay.is_object()) {
    return overlay;
  }
  Json result = base;
  for (const auto& [key, value] : overlay.items()) {
    auto existing = result.find(key);
    if (existing != result.end() && existing->is_object() && value.is_object()) {
      *existing = deepMerge(*existing, value);
    } else {
      result[key] = value;
    }
  }
  return result;
}

Result<Json> expandDottedKeys(const Json& job_variables) {
  if (!job_variables.is_object()) {
    return invalid("job variables must be an object, got " + describeType(job_variables));
  }
  Json expanded = Json::object();
  for (const auto& [key, value] : job_variables.items()) {
    if (key.find('.') != std::string::npos) {
      if (auto set = setInDict(expanded, key, value); !set) {
        return set.error();
      }
    }
  }
  // Plain keys are applied last so that {"env": {...}} wins over "env.X" for the same name.
  for (const auto& [key, value] : job_variables.items()) {
    if (key.find('.') != std::string::npos) {
      continue;
    }
    auto existing = expanded.find(key);
    if (existing != expanded.end() && existing->is_object() && value.is_object()) {
      *existing = deepMerge(*existing, value);
    } else {
      expanded[key] = value;
    }
  }
  return expanded;
}

Result<Json> renderJobConfiguration(const Json& base_job_template, const Json& job_variables,
                                    const templating::EnvLookup& env) {
  try {
    return render(base_job_template, job_variables, env);
  } catch (const std::exception& e) {
    return makeError(ErrorKind::Internal,
                     std::string("applying the base job template failed: ") + e.what());
  }
}

Result<Json> coerceBaseConfiguration(Json config) {
  try {
    return coerce(std::move(config));
  } catch (const std::exception& e) {
    return makeError(ErrorKind::Internal,
                     std::string("coercing the job configuration failed: ") + e.what());
  }
}

Result<bool> laxBool(const Json& value, std::string_view field) {
  switch (value.type()) {
    case Json::value_t::boolean:
      return value.get<bool>();
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: {
      const double number = value.get<double>();
      if (number == 0.0 || number == 1.0) {
        return number == 1.0;
      }
      break;
    }
    case Json::value_t::string: {
      static constexpr std::array<std::string_view, 6> kTrue = {"true", "1", "yes", "on", "t", "y"};
      static constexpr std::array<std::string_view, 6> kFalse = {"false", "0", "no",
                                                                 "off",   "f", "n"};
      const auto& text = value.get_ref<const std::string&>();
      for (std::string_view word : kTrue) {
        if (asciiEqualsLower(text, word)) {
          return true;
        }
      }
      for (std::string_view word : kFalse) {
        if (asciiEqualsLower(text, word)) {
          return false;
        }
      }
      break;
    }
    default:
      break;
  }
  std::string shown = value.is_structured() ? describeType(value) : py::repr(value);
  return invalid("job configuration '" + std::string(field) +
                 "' must be a boolean (true/false, 0/1, \"yes\"/\"no\", \"on\"/\"off\"), got " +
                 shown);
}

}  // namespace poolworker::jobvars
