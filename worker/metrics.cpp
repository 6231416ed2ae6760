#include "worker/metrics.h"

#include <cmath>
#include <sstream>

namespace poolworker {
namespace {

constexpr double kBuckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
constexpr const char* kPrefix = "poolworker_";

std::string escapeLabel(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string labelText(const Labels& labels, const std::string& extra = {}) {
  if (labels.empty() && extra.empty()) {
    return {};
  }
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) {
      out += ",";
    }
    first = false;
    out += k + "=\"" + escapeLabel(v) + "\"";
  }
  if (!extra.empty()) {
    if (!first) {
      out += ",";
    }
    out += extra;
  }
  return out + "}";
}

std::string number(double v) {
  if (std::isinf(v)) {
    return v > 0 ? "+Inf" : "-Inf";
  }
  std::ostringstream s;
  s.precision(15);
  s << v;
  return s.str();
}

const char* typeName(Metrics::Type t) {
  switch (t) {
    case Metrics::Type::Counter:
      return "counter";
    case Metrics::Type::Gauge:
      return "gauge";
    case Metrics::Type::Histogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

Metrics::Family& Metrics::family(const std::string& name, Type type) {
  auto [it, inserted] = families_.try_emplace(name);
  if (inserted) {
    it->second.type = type;
  }
  return it->second;
}

void Metrics::describe(const std::string& name, Type type, const std::string& help) {
  std::lock_guard lock(mu_);
  Family& f = family(name, type);
  f.type = type;
  f.help = help;
}

void Metrics::inc(const std::string& name, const Labels& labels, double value) {
  std::lock_guard lock(mu_);
  family(name, Type::Counter).values[labels] += value;
}

void Metrics::set(const std::string& name, const Labels& labels, double value) {
  std::lock_guard lock(mu_);
  family(name, Type::Gauge).values[labels] = value;
}

void Metrics::observe(const std::string& name, const Labels& labels, double value) {
  std::lock_guard lock(mu_);
  Histogram& h = family(name, Type::Histogram).histograms[labels];
  if (h.bucket_counts.empty()) {
    h.bucket_counts.assign(std::size(kBuckets), 0);
  }
  for (size_t i = 0; i < std::size(kBuckets); ++i) {
    if (value <= kBuckets[i]) {
      h.bucket_counts[i] += 1;
    }
  }
  h.sum += value;
  h.count += 1;
}

void Metrics::gaugeFunction(const std::string& name, const std::string& help,
                            std::function<double()> compute) {
  std::lock_guard lock(mu_);
  Family& f = family(name, Type::Gauge);
  f.type = Type::Gauge;
  f.help = help;
  f.compute = std::move(compute);
}

double Metrics::value(const std::string& name, const Labels& labels) const {
  std::function<double()> compute;
  {
    std::lock_guard lock(mu_);
    auto it = families_.find(name);
    if (it == families_.end()) {
      return 0;
    }
    if (!it->second.compute) {
      auto v = it->second.values.find(labels);
      return v == it->second.values.end() ? 0 : v->second;
    }
    compute = it->second.compute;
  }
  return compute();
}

std::string Metrics::render() const {
  std::ostringstream out;
  std::lock_guard lock(mu_);
  for (const auto& [name, f] : families_) {
    std::string full = kPrefix + name;
    if (!f.help.empty()) {
      out << "# HELP " << full << " " << f.help << "\n";
    }
    out << "# TYPE " << full << " " << typeName(f.type) << "\n";
    if (f.compute) {
      out << full << " " << number(f.compute()) << "\n";
      continue;
    }
    for (const auto& [labels, v] : f.values) {
      out << full << labelText(labels) << " " << number(v) << "\n";
    }
    for (const auto& [labels, h] : f.histograms) {
      for (size_t i = 0; i < std::size(kBuckets); ++i) {
        out << full << "_bucket" << labelText(labels, "le=\"" + number(kBuckets[i]) + "\"") << " "
            << number(h.bucket_counts[i]) << "\n";
      }
      out << full << "_bucket" << labelText(labels, "le=\"+Inf\"") << " " << number(h.count)
          << "\n";
      out << full << "_sum" << labelText(labels) << " " << number(h.sum) << "\n";
      out << full << "_count" << labelText(labels) << " " << number(h.count) << "\n";
    }
  }
  return out.str();
}

}  // namespace poolworker
