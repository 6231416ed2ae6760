#pragma once

// Prometheus metrics of the worker: counters, gauges and histograms with labels, rendered in the
// Prometheus text exposition format for /metrics.

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace poolworker {

/// @brief Label names and values of one series, e.g. {{"endpoint", "/flow_runs/{id}"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

/// @brief A registry of metrics. Thread-safe.
class Metrics {
 public:
  enum class Type { Counter, Gauge, Histogram };

  /// @brief Declares a metric (name without the `poolworker_` prefix) with its help text.
  void describe(const std::string& name, Type type, const std::string& help);

  /// @brief Adds `value` to a counter (or gauge).
  void inc(const std::string& name, const Labels& labels = {}, double value = 1);
  /// @brief Sets a gauge.
  void set(const std::string& name, const Labels& labels, double value);
  /// @brief Records one observation in a histogram.
  void observe(const std::string& name, const Labels& labels, double value);
  /// @brief Registers a gauge computed when /metrics is read.
  void gaugeFunction(const std::string& name, const std::string& help,
                     std::function<double()> compute);

  /// @brief Current value of a counter or gauge series (0 when absent). For tests and health.
  double value(const std::string& name, const Labels& labels = {}) const;

  /// @brief Everything, in Prometheus text format 0.0.4.
  std::string render() const;

 private:
  struct Histogram {
    std::vector<double> bucket_counts;
    double sum = 0;
    double count = 0;
  };
  struct Family {
    Type type = Type::Counter;
    std::string help;
    std::map<Labels, double> values;
    std::map<Labels, Histogram> histograms;
    std::function<double()> compute;
  };

  Family& family(const std::string& name, Type type);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

}  // namespace poolworker
