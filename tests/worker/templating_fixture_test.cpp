// Differential test: every case of tests/fixtures/templating/cases.json against the result that
// Prefect 3.8.8's own Python code gave (expected.json, written by generate.py in that folder).

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/test_support.h"
#include "worker/job_variables.h"
#include "worker/py_repr.h"
#include "worker/templating.h"

namespace poolworker {
namespace {

struct Fixture {
  Json cases = Json::array();
  Json results = Json::object();
  std::string load_error;
};

Json parseFile(const std::string& relative, std::string& error) {
  std::ifstream in(testing::sourcePath(relative), std::ios::binary);
  if (!in) {
    error += "cannot read " + relative + "; ";
    return Json();
  }
  std::ostringstream text;
  text << in.rdbuf();
  Json parsed = Json::parse(text.str(), nullptr, false);
  if (parsed.is_discarded()) {
    error += relative + " is not valid JSON; ";
  }
  return parsed;
}

// Loaded once, before the parameterised tests are instantiated, so it must not fail a test.
const Fixture& fixture() {
  static const Fixture kFixture = [] {
    Fixture f;
    Json cases = parseFile("tests/fixtures/templating/cases.json", f.load_error);
    Json expected = parseFile("tests/fixtures/templating/expected.json", f.load_error);
    if (cases.is_object() && cases.contains("cases")) {
      f.cases = cases["cases"];
    }
    if (expected.is_object() && expected.contains("results")) {
      f.results = expected["results"];
    }
    return f;
  }();
  return kFixture;
}

std::vector<std::size_t> caseIndexes() {
  std::vector<std::size_t> out(fixture().cases.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = i;
  }
  return out;
}

Json valueOr(const Json& c, const char* key, const Json& fallback) {
  auto it = c.find(key);
  return it == c.end() ? fallback : *it;
}

Json notSetOr(const std::optional<Json>& value) {
  return value ? Json{{"value", *value}} : Json{{"notset", true}};
}

template <typename T>
Json errorOr(const Result<T>& result) {
  if (!result) {
    return Json{{"error", result.error().message}};
  }
  return Json{{"value", result.value()}};
}

templating::EnvLookup caseEnv(const Json& c) {
  std::map<std::string, std::string> env;
  const Json vars = valueOr(c, "env", Json::object());
  for (const auto& [key, value] : vars.items()) {
    env[key] = value.get<std::string>();
  }
  return templating::fixedEnvironment(std::move(env));
}

const char* typeName(templating::PlaceholderType type) {
  switch (type) {
    case templating::PlaceholderType::Standard:
      return "STANDARD";
    case templating::PlaceholderType::BlockDocument:
      return "BLOCK_DOCUMENT";
    case templating::PlaceholderType::Variable:
      return "VARIABLE";
    case templating::PlaceholderType::EnvVar:
      return "ENV_VAR";
  }
  return "?";
}

templating::ResolvedReferences serverData(const Json& c) {
  templating::ResolvedReferences data;
  const Json by_id = valueOr(c, "blocks_by_id", Json::object());
  const Json by_name = valueOr(c, "blocks_by_slug_name", Json::array());
  const Json variables = valueOr(c, "variables", Json::object());
  for (const auto& [id, doc] : by_id.items()) {
    data.blocks_by_id[id] = doc;
  }
  for (const auto& entry : by_name) {
    data.blocks_by_slug_name[{entry[0].get<std::string>(), entry[1].get<std::string>()}] = entry[2];
  }
  for (const auto& [name, value] : variables.items()) {
    data.variables[name] = value;
  }
  return data;
}

// The worker's way: fetch only what collectReferences names, blocks first, then the variables
// named by the configuration and by the block data that the blocks pass brought in.
Result<Json> resolveLikeTheWorker(const Json& config, const templating::ResolvedReferences& all) {
  templating::ResolvedReferences fetched;
  const templating::References first = templating::collectReferences(config);
  for (const auto& id : first.block_document_ids) {
    if (auto it = all.blocks_by_id.find(id); it != all.blocks_by_id.end()) {
      fetched.blocks_by_id.insert(*it);
    }
  }
  for (const auto& key : first.block_slug_names) {
    if (auto it = all.blocks_by_slug_name.find(key); it != all.blocks_by_slug_name.end()) {
      fetched.blocks_by_slug_name.insert(*it);
    }
  }
  auto blocks = templating::resolveBlocks(config, fetched);
  if (!blocks) {
    return blocks;
  }
  const templating::References second = templating::collectReferences(*blocks);
  for (const auto* names : {&first.variable_names, &second.variable_names}) {
    for (const auto& name : *names) {
      if (auto it = all.variables.find(name); it != all.variables.end()) {
        fetched.variables.insert(*it);
      }
    }
  }
  return templating::resolveVariables(*blocks, fetched.variables);
}

Json run(const Json& c) {
  const std::string kind = c["kind"].get<std::string>();
  if (kind == "str") {
    return Json{{"value", py::str(c["value"])}};
  }
  if (kind == "repr") {
    return Json{{"value", py::repr(c["value"])}};
  }
  if (kind == "find") {
    std::vector<Json> found;
    for (const auto& p : templating::findPlaceholders(c["text"].get<std::string>())) {
      found.push_back(Json::array({p.full_match, p.name, typeName(p.type)}));
    }
    std::sort(found.begin(), found.end());
    return Json{{"value", found}};
  }
  if (kind == "get") {
    return notSetOr(templating::getFromDict(c["values"], c["path"].get<std::string>()));
  }
  if (kind == "apply") {
    return notSetOr(templating::applyValues(
        c["template"], c["values"], valueOr(c, "remove_notset", true).get<bool>(), caseEnv(c)));
  }
  if (kind == "defaults") {
    return Json{{"value", jobvars::variableDefaults(c["variables"])}};
  }
  if (kind == "merge") {
    return Json{{"value", jobvars::mergeJobVariables(c["deployment"], c["flow_run"])}};
  }
  if (kind == "render") {
    Json merged = jobvars::mergeJobVariables(c["deployment"], c["flow_run"]);
    return errorOr(jobvars::renderJobConfiguration(c["template"], merged, caseEnv(c)));
  }
  if (kind == "render_values") {
    return errorOr(jobvars::renderJobConfiguration(c["template"], c["job_variables"], caseEnv(c)));
  }
  if (kind == "resolve") {
    const templating::ResolvedReferences all = serverData(c);
    Json direct = errorOr(templating::resolveReferences(c["config"], all));
    Json staged = errorOr(resolveLikeTheWorker(c["config"], all));
    EXPECT_EQ(direct.contains("error"), staged.contains("error")) << staged.dump();
    if (!direct.contains("error")) {
      EXPECT_EQ(direct, staged) << "resolution from collectReferences differs";
    }
    return direct;
  }
  if (kind == "coerce") {
    auto coerced = jobvars::coerceBaseConfiguration(c["config"]);
    if (!coerced) {
      return Json{{"error", coerced.error().message}};
    }
    Json picked = Json::object();
    for (const char* field : {"command", "env", "labels", "name"}) {
      picked[field] = (*coerced)[field];
    }
    return Json{{"value", picked}};
  }
  if (kind == "lax_bool") {
    return errorOr(jobvars::laxBool(c["value"], "stream_output"));
  }
  ADD_FAILURE() << "unknown case kind " << kind;
  return Json();
}

class TemplatingFixture : public ::testing::TestWithParam<std::size_t> {};

TEST_P(TemplatingFixture, MatchesPrefect) {
  const Json& c = fixture().cases[GetParam()];
  const std::string name = c["name"].get<std::string>();
  ASSERT_TRUE(fixture().results.contains(name)) << "no expected result; re-run generate.py";
  const Json& expected = fixture().results[name];
  const Json actual = run(c);
  SCOPED_TRACE("case: " + c.dump());
  if (expected.contains("error")) {
    EXPECT_TRUE(actual.contains("error"))
        << "Prefect raised " << expected["error"] << " but we returned " << actual.dump();
    return;
  }
  ASSERT_FALSE(actual.contains("error")) << actual["error"];
  if (expected.contains("alternatives")) {
    // Prefect's result depends on the hash seed here; ours must be one of its results.
    bool found = false;
    for (const auto& alternative : expected["alternatives"]) {
      found = found || alternative == actual;
    }
    EXPECT_TRUE(found) << "got " << actual.dump() << ", Prefect gives one of "
                       << expected["alternatives"].dump();
    return;
  }
  EXPECT_EQ(actual, expected) << "got      " << actual.dump() << "\nexpected " << expected.dump();
}

INSTANTIATE_TEST_SUITE_P(Prefect388, TemplatingFixture, ::testing::ValuesIn(caseIndexes()),
                         [](const ::testing::TestParamInfo<std::size_t>& case_info) {
                           return fixture().cases[case_info.param]["name"].get<std::string>();
                         });

TEST(TemplatingFixtureFiles, LoadAndCoverEveryKind) {
  ASSERT_TRUE(fixture().load_error.empty()) << fixture().load_error;
  EXPECT_GE(fixture().cases.size(), 100u);
  EXPECT_EQ(fixture().results.size(), fixture().cases.size())
      << "expected.json is stale: re-run tests/fixtures/templating/generate.py";
  std::set<std::string> kinds;
  std::set<std::string> names;
  for (const auto& c : fixture().cases) {
    kinds.insert(c["kind"].get<std::string>());
    EXPECT_TRUE(names.insert(c["name"].get<std::string>()).second) << c["name"];
  }
  const std::set<std::string> all_kinds = {"str",    "repr",     "find",   "get",
                                           "apply",  "defaults", "merge",  "render_values",
                                           "render", "resolve",  "coerce", "lax_bool"};
  EXPECT_EQ(kinds, all_kinds);
}

}  // namespace
}  // namespace poolworker
