#include "backends/registry.h"

namespace poolworker::backends {

Result<void> BackendRegistry::add(BackendFactoryPtr factory) {
  std::string name = factory->info().name;
  if (name.empty()) {
    return makeError(ErrorKind::InvalidConfiguration, "a backend has an empty name");
  }
  if (factories_.contains(name)) {
    return makeError(ErrorKind::InvalidConfiguration, "a backend named '" + name +
                                                          "' is already registered (from " +
                                                          factories_.at(name)->info().origin + ")");
  }
  factories_.emplace(std::move(name), std::move(factory));
  return success();
}

BackendFactory* BackendRegistry::find(const std::string& name) const {
  auto it = factories_.find(name);
  return it == factories_.end() ? nullptr : it->second.get();
}

std::vector<BackendFactory*> BackendRegistry::list() const {
  std::vector<BackendFactory*> out;
  out.reserve(factories_.size());
  for (const auto& [name, factory] : factories_) {
    out.push_back(factory.get());
  }
  return out;
}

std::string BackendRegistry::names() const {
  std::string out;
  for (const auto& [name, factory] : factories_) {
    if (!out.empty()) {
      out += ", ";
    }
    out += name;
  }
  return out;
}

}  // namespace poolworker::backends
