#include "backends/kubernetes/manifest.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <vector>

#include "backends/common/shell_split.h"

namespace poolworker::backends::kubernetes {
namespace {

constexpr char kSigtermVariable[] = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR";
constexpr char kDefaultCommand[] = "prefect flow-run execute";
constexpr char kPrefectVersion[] = "3.8.8";

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

// python-slugify with a custom pattern, for ASCII text: quotes become separators, every run of
// characters outside `allowed` becomes one "-", then "-" is trimmed and the result cut.
std::string slugify(const std::string& text, bool lowercase, std::size_t max_length,
                    bool (*allowed)(char)) {
  std::string out;
  bool dash = false;
  for (char c : text) {
    if (lowercase) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    const bool keep = static_cast<unsigned char>(c) < 0x80 && c != '\'' && allowed(c);
    if (!keep || c == '-') {
      dash = true;
      continue;
    }
    if (dash && !out.empty()) {
      out.push_back('-');
    }
    dash = false;
    out.push_back(c);
  }
  if (max_length > 0 && out.size() > max_length) {
    out.resize(max_length);
    while (!out.empty() && out.back() == '-') {
      out.pop_back();
    }
  }
  return out;
}

std::string stripChars(const std::string& text, const char* chars) {
  const auto first = text.find_first_not_of(chars);
  if (first == std::string::npos) {
    return {};
  }
  const auto last = text.find_last_not_of(chars);
  return text.substr(first, last - first + 1);
}

bool alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
bool labelNameChar(char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; }
bool labelPrefixChar(char c) { return alnum(c) || c == '-' || c == '.'; }
bool nameChar(char c) { return alnum(c) || c == '-'; }

std::string asString(const Json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

// Python's repr of a JSON scalar, as Prefect's validation messages print values.
std::string pyRepr(const Json& value) {
  if (value.is_string()) {
    return "'" + value.get<std::string>() + "'";
  }
  return value.dump();
}

void checkAgainst(const Json& actual, const Json& base, const std::string& path,
                  std::vector<std::string>& missing, std::vector<std::string>& incompatible) {
  if (base.is_object()) {
    if (!actual.is_object()) {
      incompatible.push_back(path + " must have value " + base.dump());
      return;
    }
    for (const auto& [key, value] : base.items()) {
      const std::string child = path + "/" + key;
      if (!actual.contains(key)) {
        missing.push_back(child);
      } else {
        checkAgainst(actual.at(key), value, child, missing, incompatible);
      }
    }
    return;
  }
  if (base.is_array()) {
    if (!actual.is_array()) {
      incompatible.push_back(path + " must have value " + base.dump());
      return;
    }
    for (std::size_t i = 0; i < base.size(); ++i) {
      const std::string child = path + "/" + std::to_string(i);
      if (i >= actual.size()) {
        missing.push_back(child);
      } else {
        checkAgainst(actual.at(i), base.at(i), child, missing, incompatible);
      }
    }
    return;
  }
  if (actual != base) {
    incompatible.push_back(path + " must have value " + pyRepr(base));
  }
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    out += (out.empty() ? "" : ", ") + item;
  }
  return out;
}

Json slugifiedLabels(const Json& first, const Json& second) {
  Json merged = first.is_object() ? first : Json::object();
  if (second.is_object()) {
    for (const auto& [key, value] : second.items()) {
      merged[key] = value;
    }
  }
  Json out = Json::object();
  for (const auto& [key, value] : merged.items()) {
    out[slugifyLabelKey(key)] = slugifyLabelValue(asString(value));
  }
  return out;
}

bool hasPlaceholder(const std::string& text) {
  const auto open = text.find("{{");
  return open != std::string::npos && text.find("}}", open) != std::string::npos;
}

}  // namespace

std::string slugifyLabelKey(const std::string& key) {
  std::string prefix;
  std::string name = key;
  bool has_prefix = false;
  if (const auto slash = key.find('/'); slash != std::string::npos) {
    prefix = key.substr(0, slash);
    name = key.substr(slash + 1);
    has_prefix = true;
  }
  std::string name_slug = stripChars(slugify(name, false, 63, labelNameChar), "_-.");
  if (name_slug.empty()) {
    name_slug = name;
  }
  if (!has_prefix || prefix.empty()) {
    return name_slug;
  }
  std::string prefix_slug = stripChars(slugify(prefix, false, 253, labelPrefixChar), "_-.");
  if (prefix_slug.empty()) {
    prefix_slug = prefix;
  }
  return prefix_slug + "/" + name_slug;
}

std::string slugifyLabelValue(const std::string& value) {
  std::string slug = stripChars(slugify(value, false, 63, labelNameChar), "_-.");
  return slug.empty() ? value : slug;
}

std::string slugifyName(const std::string& name) { return slugify(name, true, 45, nameChar); }

Result<Json> validateJobManifest(Json manifest, const std::string& namespace_) {
  if (!manifest.is_object()) {
    return invalid("job_manifest must be an object (a Kubernetes Job), not " +
                   std::string(manifest.type_name()));
  }
  if (!manifest.contains("metadata")) {
    manifest["metadata"] = Json::object();
  }
  Json& metadata = manifest["metadata"];
  if (metadata.is_object()) {
    if (!metadata.contains("annotations")) {
      metadata["annotations"] = Json::object();
    }
    if (!metadata.contains("labels")) {
      metadata["labels"] = Json::object();
    }
    if (!metadata.contains("namespace")) {
      metadata["namespace"] = namespace_;
    }
  }
  const Json base = {{"apiVersion", "batch/v1"},
                     {"kind", "Job"},
                     {"metadata", {{"annotations", Json::object()}, {"labels", Json::object()}}},
                     {"spec",
                      {{"template",
                        {{"spec",
                          {{"parallelism", 1},
                           {"completions", 1},
                           {"restartPolicy", "Never"},
                           {"containers", Json::array({{{"name", kContainerName}}})}}}}}}}};
  std::vector<std::string> missing;
  std::vector<std::string> incompatible;
  checkAgainst(manifest, base, "", missing, incompatible);
  // metadata.annotations and .labels only need to exist: any content is fine.
  std::erase_if(incompatible, [](const std::string& item) {
    return item.rfind("/metadata/annotations/", 0) == 0 || item.rfind("/metadata/labels/", 0) == 0;
  });
  std::sort(missing.begin(), missing.end());
  std::sort(incompatible.begin(), incompatible.end());
  if (!missing.empty()) {
    return invalid("Job is missing required attributes at the following paths: " + join(missing));
  }
  if (!incompatible.empty()) {
    return invalid("Job has incompatible values for the following attributes: " +
                   join(incompatible));
  }
  return manifest;
}

Result<Json> prepareJobManifest(const Json& configuration, const RunContext& run) {
  if (!configuration.is_object()) {
    return invalid("the job configuration must be an object");
  }
  std::string namespace_ = "default";
  if (const auto it = configuration.find("namespace"); it != configuration.end()) {
    if (!it->is_string() || it->get<std::string>().empty()) {
      return invalid("namespace must be a non-empty string, not " + it->dump());
    }
    namespace_ = it->get<std::string>();
  }
  auto validated = validateJobManifest(configuration.value("job_manifest", Json()), namespace_);
  if (!validated) {
    return validated.error();
  }
  Json manifest = std::move(validated).value();
  if (!manifest["spec"].is_object() || !manifest["spec"]["template"].is_object() ||
      !manifest["spec"]["template"]["spec"].is_object()) {
    return invalid("job_manifest.spec.template.spec must be an object");
  }
  Json& container = manifest["spec"]["template"]["spec"]["containers"][0];
  if (!container.is_object()) {
    return invalid("job_manifest: the first container must be an object");
  }

  // Labels: the worker's prefect.io/* labels and the user's, plus the Kubernetes worker's own.
  Json labels = configuration.value("labels", Json::object());
  if (!labels.is_object()) {
    return invalid("labels must be an object of strings, not " + labels.dump());
  }
  Json own = {{"app.kubernetes.io/managed-by", "prefect"},
              {"app.kubernetes.io/part-of", "prefect"},
              {"app.kubernetes.io/version", slugifyLabelValue(kPrefectVersion)}};
  if (!run.deployment_id.empty() && !run.deployment_name.empty()) {
    own["app.kubernetes.io/name"] = slugifyLabelValue(run.deployment_name);
  } else if (!run.flow_name.empty()) {
    own["app.kubernetes.io/name"] = slugifyLabelValue(run.flow_name);
  }
  for (const auto& [key, value] : own.items()) {
    if (!labels.contains(key)) {
      labels[key] = value;
    }
  }

  // Env: an object of strings from the worker; valueFrom entries may come as a list.
  Json env = configuration.value("env", Json::object());
  Json env_list = Json::array();
  if (env.is_object()) {
    const auto behaviour = env.find(kSigtermVariable);
    const Json& backoff =
        manifest["spec"].contains("backoffLimit") ? manifest["spec"]["backoffLimit"] : Json();
    const bool zero = backoff.is_number() && backoff.get<double>() == 0;
    if (zero) {
      if (behaviour == env.end() || behaviour->is_null() ||
          (behaviour->is_string() && behaviour->get<std::string>().empty())) {
        env[kSigtermVariable] = "reschedule";
      }
    } else {
      env[kSigtermVariable] = "relinquish";
    }
    for (const auto& [key, value] : env.items()) {
      env_list.push_back(
          {{"name", key}, {"value", value.is_string() ? value : Json(asString(value))}});
    }
  } else if (env.is_array()) {
    env_list = env;
  } else if (!env.is_null()) {
    return invalid("env must be an object of strings, not " + env.dump());
  }
  if (container.contains("env") && container["env"].is_array()) {
    std::set<std::string> names;
    for (const auto& entry : env_list) {
      if (entry.is_object() && entry.contains("name") && entry["name"].is_string()) {
        names.insert(entry["name"].get<std::string>());
      }
    }
    for (const auto& entry : container["env"]) {
      const bool named = entry.is_object() && entry.contains("name") && entry["name"].is_string();
      if (!named || names.count(entry["name"].get<std::string>()) == 0) {
        env_list.push_back(entry);
      }
    }
  }
  container["env"] = std::move(env_list);

  Json& metadata = manifest["metadata"];
  metadata["labels"] = slugifiedLabels(metadata.value("labels", Json::object()), labels);

  Json annotations = metadata.value("annotations", Json::object());
  if (!annotations.is_object()) {
    annotations = Json::object();
  }
  if (const auto it = configuration.find("annotations"); it != configuration.end()) {
    if (it->is_object()) {
      for (const auto& [key, value] : it->items()) {
        annotations[key] = value;
      }
    } else if (!it->is_null()) {
      return invalid("annotations must be an object of strings, not " + it->dump());
    }
  }
  Json slug_annotations = Json::object();
  for (const auto& [key, value] : annotations.items()) {
    slug_annotations[slugifyLabelKey(key)] = value;
  }
  metadata["annotations"] = slug_annotations;

  if (!container.contains("image")) {
    container["image"] = kDefaultImage;
  }

  const Json args = container.contains("args") ? container["args"] : Json();
  if (args.is_null() || args.is_string()) {
    auto argv = common::shellSplit(args.is_null() ? kDefaultCommand : args.get<std::string>());
    if (!argv) {
      return invalid("command: " + argv.error().message);
    }
    container["args"] = *argv;
  } else if (!args.is_array()) {
    return invalid("Invalid job manifest template: 'command' must be a string or list.");
  }

  const std::string generate_name =
      metadata.contains("generateName") && metadata["generateName"].is_string()
          ? metadata["generateName"].get<std::string>()
          : std::string();
  if (generate_name.empty() || hasPlaceholder(generate_name) || generate_name == "-" ||
      generate_name == "None-") {
    std::string prefix;
    if (const auto it = configuration.find("name"); it != configuration.end() && it->is_string()) {
      prefix = slugifyName(it->get<std::string>());
    }
    metadata["generateName"] = (prefix.empty() ? std::string("prefect-job") : prefix) + "-";
  }

  Json& pod_template = manifest["spec"]["template"];
  Json pod_metadata = pod_template.value("metadata", Json::object());
  if (!pod_metadata.is_object()) {
    pod_metadata = Json::object();
  }
  pod_metadata["labels"] = slugifiedLabels(pod_metadata.value("labels", Json::object()), labels);
  if (!slug_annotations.empty()) {
    Json pod_annotations = pod_metadata.value("annotations", Json::object());
    if (!pod_annotations.is_object()) {
      pod_annotations = Json::object();
    }
    for (const auto& [key, value] : slug_annotations.items()) {
      pod_annotations[key] = value;
    }
    pod_metadata["annotations"] = pod_annotations;
  }
  pod_template["metadata"] = pod_metadata;
  return manifest;
}

}  // namespace poolworker::backends::kubernetes
