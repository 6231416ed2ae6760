#include "worker/job_variables.h"

#include <string>

#include <gtest/gtest.h>

#include "tests/test_support.h"

namespace poolworker::jobvars {
namespace {

Json j(const char* text) { return Json::parse(text); }

Json processTemplate() {
  return Json::parse(testing::readFile(testing::sourcePath("templates/process.json")));
}

void setDefault(Json& tmpl, const char* variable, Json value) {
  tmpl["variables"]["properties"][variable]["default"] = std::move(value);
}

// Steps 1 to 6 the way the worker chains them.
Json render(const Json& tmpl, const char* deployment, const char* flow_run) {
  const Json merged = mergeJobVariables(j(deployment), j(flow_run));
  auto out = renderJobConfiguration(tmpl, merged, templating::fixedEnvironment({}));
  EXPECT_TRUE(out) << out.error().message;
  return out ? *out : Json();
}

std::string renderError(const Json& tmpl, const Json& job_variables) {
  auto out = renderJobConfiguration(tmpl, job_variables, templating::fixedEnvironment({}));
  EXPECT_FALSE(out) << out->dump();
  if (out) {
    return {};
  }
  EXPECT_EQ(out.error().kind, ErrorKind::InvalidConfiguration);
  return out.error().message;
}

// ----------------------------------------------------------------------------------------------
// Step 1

TEST(MergeJobVariables, FlowRunEnvMergesIntoDeploymentEnv) {
  EXPECT_EQ(mergeJobVariables(j(R"({"env": {"A": "1", "B": "2"}, "image": "x"})"),
                              j(R"({"env": {"B": "3", "C": "4"}, "image": "y"})")),
            j(R"({"env": {"A": "1", "B": "3", "C": "4"}, "image": "y"})"));
}

TEST(MergeJobVariables, OtherKeysAreReplacedWhole) {
  EXPECT_EQ(mergeJobVariables(j(R"({"env": {"A": "1"}, "k": {"a": 1, "b": 2}})"),
                              j(R"({"k": {"b": 3}})")),
            j(R"({"env": {"A": "1"}, "k": {"b": 3}})"));
}

TEST(MergeJobVariables, WithoutADeploymentEnvObjectTheFlowRunEnvReplaces) {
  EXPECT_EQ(mergeJobVariables(j(R"({"image": "x"})"), j(R"({"env": {"A": "1"}})")),
            j(R"({"image": "x", "env": {"A": "1"}})"));
  EXPECT_EQ(mergeJobVariables(j(R"({"env": "notdict", "a": 1})"), j(R"({"env": {"A": "1"}})")),
            j(R"({"env": {"A": "1"}, "a": 1})"));
  EXPECT_EQ(mergeJobVariables(j(R"({"env": null})"), j(R"({"env": {"A": "1"}})")),
            j(R"({"env": {"A": "1"}})"));
  EXPECT_EQ(mergeJobVariables(j(R"({"a": 1})"), j(R"({"env": null})")),
            j(R"({"a": 1, "env": null})"));
}

TEST(MergeJobVariables, KeyOrderFollowsPythonDictUpdate) {
  const Json merged = mergeJobVariables(j(R"({"a": 1, "env": {"X": "1"}, "b": 2})"),
                                        j(R"({"c": 3, "a": 9, "env": {"Y": "2", "X": "0"}})"));
  EXPECT_EQ(merged.dump(), R"({"a":9,"env":{"X":"0","Y":"2"},"b":2,"c":3})");
}

TEST(MergeJobVariables, MissingSidesCountAsEmpty) {
  EXPECT_EQ(mergeJobVariables(Json(), j(R"({"env": {"A": "1"}})")), j(R"({"env": {"A": "1"}})"));
  EXPECT_EQ(mergeJobVariables(j(R"({"a": 1})"), Json()), j(R"({"a": 1})"));
  EXPECT_EQ(mergeJobVariables(Json(), Json()), Json::object());
  EXPECT_EQ(mergeJobVariables(j(R"({"env": {"A": "1"}})"), j(R"({"env": {}})")),
            j(R"({"env": {"A": "1"}})"));
}

TEST(MergeJobVariables, NonObjectFlowRunEnvIsIgnoredWhenTheDeploymentHasEnv) {
  EXPECT_EQ(mergeJobVariables(j(R"({"env": {"A": "1"}})"), j(R"({"env": null, "b": 2})")),
            j(R"({"env": {"A": "1"}, "b": 2})"));
}

// ----------------------------------------------------------------------------------------------
// Step 2

TEST(VariableDefaults, OnlyNonNullDefaults) {
  EXPECT_EQ(variableDefaults(processTemplate()["variables"]), j(R"({"stream_output": true})"));
  EXPECT_EQ(variableDefaults(j(R"({"properties": {
                "a": {"default": null}, "b": {"default": false}, "c": {"default": 0},
                "d": {"default": ""}, "e": {"type": "string"}, "f": {"default": {"x": [1]}},
                "g": true}})")),
            j(R"({"b": false, "c": 0, "d": "", "f": {"x": [1]}})"));
  EXPECT_EQ(variableDefaults(j(R"({"type": "object"})")), Json::object());
  EXPECT_EQ(variableDefaults(Json()), Json::object());
}

// ----------------------------------------------------------------------------------------------
// Section 5.3, worked examples A to F

TEST(RenderJobConfiguration, ExampleA_NothingSet) {
  EXPECT_EQ(render(processTemplate(), "{}", "{}"), j(R"({"stream_output": true})"));
}

TEST(RenderJobConfiguration, ExampleB_EnvFromEveryLayer) {
  Json tmpl = processTemplate();
  setDefault(tmpl, "env", j(R"({"POOL": "1", "SHARED": "pool"})"));
  setDefault(tmpl, "working_dir", "/srv/flows");
  const Json out = render(tmpl, R"({"env": {"SHARED": "dep", "DEP": "x"}, "stream_output": false})",
                          R"({"env": {"RUN": "y"}, "working_dir": "/tmp/run"})");
  EXPECT_EQ(out.dump(), j(R"({"env": {"POOL": "1", "SHARED": "dep", "DEP": "x", "RUN": "y"},
                  "stream_output": false, "working_dir": "/tmp/run"})")
                            .dump());
}

TEST(RenderJobConfiguration, ExampleC_HardCodedEnvIsTemplatedToo) {
  Json tmpl = processTemplate();
  setDefault(tmpl, "env", j(R"({"B": "2"})"));
  tmpl["job_configuration"]["env"] = j(R"({"A": "1", "LIT": "{{ name }}"})");
  const Json out = render(tmpl, R"({"env": {"C": "3"}, "name": "nm"})", "{}");
  EXPECT_EQ(out.dump(), j(R"({"env": {"A": "1", "LIT": "nm", "B": "2", "C": "3"}, "name": "nm",
                  "stream_output": true})")
                            .dump());
}

TEST(RenderJobConfiguration, ExampleD_DottedEnvKey) {
  EXPECT_EQ(render(processTemplate(), R"({"env.A": "1"})", R"({"env": {"B": "2"}})"),
            j(R"({"env": {"A": "1", "B": "2"}, "stream_output": true})"));
}

TEST(RenderJobConfiguration, ExampleE_Command) {
  EXPECT_EQ(render(processTemplate(), R"({"command": "python my.py"})", R"({"env": {"R": "1"}})"),
            j(R"({"command": "python my.py", "env": {"R": "1"}, "stream_output": true})"));
}

TEST(RenderJobConfiguration, ExampleF_ExplicitNullOverridesDefault) {
  Json tmpl = processTemplate();
  setDefault(tmpl, "working_dir", "/srv");
  EXPECT_EQ(render(tmpl, R"({"working_dir": null})", "{}"),
            j(R"({"stream_output": true, "working_dir": null})"));
}

// ----------------------------------------------------------------------------------------------
// Steps 3 to 6, rule by rule

TEST(RenderJobConfiguration, PoolEnvSurvivesADeploymentEnv) {
  Json tmpl = processTemplate();
  setDefault(tmpl, "env", j(R"({"SHARED": "pool", "P": "1"})"));
  tmpl["job_configuration"]["env"] = j(R"({"SHARED": "hard", "H": "1"})");
  const Json out = render(tmpl, R"({"env": {"SHARED": "dep", "D": "1"}})",
                          R"({"env": {"SHARED": "run", "R": "1"}})");
  EXPECT_EQ(out["env"].dump(), R"({"SHARED":"run","H":"1","P":"1","D":"1","R":"1"})");
}

TEST(RenderJobConfiguration, EnvDefaultIsAddedEvenWithoutAnEnvKey) {
  auto out = renderJobConfiguration(j(R"({"job_configuration": {"a": 1},
            "variables": {"properties": {"env": {"default": {"X": "1"}}}}})"),
                                    Json::object());
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(*out, j(R"({"a": 1, "env": {"X": "1"}})"));
}

TEST(RenderJobConfiguration, DottedKeys) {
  const Json tmpl = j(R"({"job_configuration": {"a": "{{ a }}", "x": "{{ x }}", "b": "{{ a[0] }}"},
                          "variables": {"properties": {"a": {"default": {"k": 1, "m": 2}}}}})");
  auto out = renderJobConfiguration(tmpl, j(R"({"a.k": 9, "a.n.o": 3, "x.y[0]": 1})"));
  ASSERT_TRUE(out) << out.error().message;
  // The expanded "a" replaces the default whole: only step 4's own merge is deep.
  EXPECT_EQ(*out, j(R"({"a": {"k": 9, "n": {"o": 3}}, "x": {"y": {"0": 1}}})"));

  out = renderJobConfiguration(tmpl, j(R"({"a.k": 9, "a": {"m": 5}})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"a": {"k": 9, "m": 5}})"));

  out = renderJobConfiguration(tmpl, j(R"({"a.k": 9, "a": 5})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"a": 5})"));

  // A key with brackets but no dot is a plain key, which {{ a[0] }} cannot address.
  out = renderJobConfiguration(tmpl, j(R"({"a[0]": 1})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"a": {"k": 1, "m": 2}})"));
}

TEST(RenderJobConfiguration, PlainEnvWinsOverDottedEnvPerKey) {
  EXPECT_EQ(render(processTemplate(), R"({"env.A": "1", "env": {"A": "2", "B": "3"}})", "{}"),
            j(R"({"env": {"A": "2", "B": "3"}, "stream_output": true})"));
  EXPECT_EQ(render(processTemplate(), R"({"env": {"B": "2"}, "env.A": "1"})", "{}")["env"].dump(),
            R"({"A":"1","B":"2"})");
}

TEST(RenderJobConfiguration, DottedKeyThroughAScalarIsAnError) {
  const std::string message =
      renderError(processTemplate(), j(R"({"env.A": "1", "env.A.B": "2"})"));
  EXPECT_NE(message.find("'env.A.B'"), std::string::npos) << message;
  EXPECT_NE(message.find("'env.A'"), std::string::npos) << message;
}

TEST(RenderJobConfiguration, EnvThatIsNotAnObject) {
  Json tmpl = processTemplate();
  tmpl["job_configuration"]["env"] = j(R"({"H": "1"})");
  EXPECT_NE(renderError(tmpl, j(R"({"env": "oops"})")).find("job variable 'env'"),
            std::string::npos);
  setDefault(tmpl, "env", "S");
  EXPECT_NE(renderError(tmpl, Json::object()).find("variable 'env'"), std::string::npos);

  // With the "{{ env }}" placeholder the value is simply copied.
  auto out = renderJobConfiguration(processTemplate(), j(R"({"env": null})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"env": null, "stream_output": true})"));
}

TEST(RenderJobConfiguration, EmptyJobVariableEnv) {
  Json tmpl = processTemplate();
  EXPECT_EQ(render(tmpl, R"({"env": {}})", "{}"), j(R"({"env": {}, "stream_output": true})"));
  tmpl["job_configuration"]["env"] = j(R"({"H": "1"})");
  EXPECT_EQ(render(tmpl, R"({"env": {}})", "{}"),
            j(R"({"env": {"H": "1"}, "stream_output": true})"));
}

TEST(RenderJobConfiguration, EnvPlaceholdersOnlyWhereLiteralInTheTemplate) {
  const Json tmpl = j(R"({"job_configuration": {"home": "{{ $T_HOME }}/x", "d": "{{ d }}"},
                          "variables": {"properties": {"d": {"default": "{{ $T_HOME }}"}}}})");
  auto out = renderJobConfiguration(tmpl, Json::object(),
                                    templating::fixedEnvironment({{"T_HOME", "/home/u"}}));
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"home": "/home/u/x", "d": "{{ $T_HOME }}"})"));
}

TEST(RenderJobConfiguration, ReferencesPassThroughForTheLaterPasses) {
  const Json tmpl = j(R"({"job_configuration": {"token": "{{ token }}", "creds": "{{ creds }}"},
      "variables": {"properties": {
          "token": {"default": "{{ prefect.blocks.secret.tok }}"},
          "creds": {"default": {"$ref": {"block_document_id": "abc"}}}}}})");
  auto out = renderJobConfiguration(tmpl, Json::object());
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"token": "{{ prefect.blocks.secret.tok }}",
                         "creds": {"$ref": {"block_document_id": "abc"}}})"));
}

TEST(RenderJobConfiguration, MalformedTemplates) {
  EXPECT_NE(renderError(j("[1]"), Json::object()).find("must be an object, got list"),
            std::string::npos);
  EXPECT_NE(renderError(j(R"({"variables": {}})"), Json::object()).find("'job_configuration'"),
            std::string::npos);
  EXPECT_NE(renderError(j(R"({"job_configuration": {}})"), Json::object()).find("'variables'"),
            std::string::npos);
  EXPECT_NE(renderError(j(R"({"job_configuration": [], "variables": {}})"), Json::object())
                .find("'job_configuration' must be an object"),
            std::string::npos);
  EXPECT_NE(renderError(j(R"({"job_configuration": {}, "variables": {"properties": null}})"),
                        Json::object())
                .find("'variables.properties'"),
            std::string::npos);
  EXPECT_NE(renderError(j(R"({"job_configuration": {}, "variables": {"properties": {"a": true}}})"),
                        Json::object())
                .find("variable 'a'"),
            std::string::npos);
  EXPECT_NE(renderError(j(R"({"job_configuration": {}, "variables": {}})"), j("[]"))
                .find("job variables must be an object"),
            std::string::npos);
}

TEST(RenderJobConfiguration, VariablesWithoutProperties) {
  auto out = renderJobConfiguration(j(R"({"job_configuration": {"a": "{{ a }}", "b": "c"},
                                          "variables": {}})"),
                                    j(R"({"a": 1})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, j(R"({"a": 1, "b": "c"})"));
}

TEST(ExpandDottedKeysAndDeepMerge, Directly) {
  auto out = expandDottedKeys(j(R"({"a.b.c": 1, "a.b.d": 2, "a.e": 3, "f": 4})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(out->dump(), R"({"a":{"b":{"c":1,"d":2},"e":3},"f":4})");
  EXPECT_EQ(deepMerge(j(R"({"a": {"x": 1, "y": {"z": 1}}, "b": 1})"),
                      j(R"({"a": {"y": {"w": 2}}, "c": 3})"))
                .dump(),
            R"({"a":{"x":1,"y":{"z":1,"w":2}},"b":1,"c":3})");
  EXPECT_EQ(deepMerge(j(R"({"a": {"x": 1}})"), j(R"({"a": 5})")), j(R"({"a": 5})"));
  EXPECT_FALSE(expandDottedKeys(j("[]")));
}

// ----------------------------------------------------------------------------------------------
// Step 8

Json coerced(const char* config) {
  auto out = coerceBaseConfiguration(j(config));
  EXPECT_TRUE(out) << out.error().message;
  return out ? *out : Json();
}

std::string coerceError(const char* config) {
  auto out = coerceBaseConfiguration(j(config));
  EXPECT_FALSE(out) << out->dump();
  if (out) {
    return {};
  }
  EXPECT_EQ(out.error().kind, ErrorKind::InvalidConfiguration);
  return out.error().message;
}

TEST(CoerceBaseConfiguration, ModelDefaults) {
  EXPECT_EQ(coerced("{}"), j(R"({"command": null, "env": {}, "labels": {}, "name": null})"));
  EXPECT_EQ(
      coerced(R"({"stream_output": true})"),
      j(R"({"stream_output": true, "command": null, "env": {}, "labels": {}, "name": null})"));
}

TEST(CoerceBaseConfiguration, Command) {
  EXPECT_EQ(coerced(R"({"command": ""})")["command"], Json());
  EXPECT_EQ(coerced(R"({"command": "python x.py"})")["command"], Json("python x.py"));
  EXPECT_EQ(coerced(R"({"command": null})")["command"], Json());
  EXPECT_EQ(coerceError(R"({"command": 5})"),
            "job configuration 'command' must be a string, got int");
  EXPECT_NE(coerceError(R"({"command": ["python"]})").find("got list"), std::string::npos);
}

TEST(CoerceBaseConfiguration, EnvValuesBecomePythonStr) {
  const Json env = coerced(R"({"env": {"A": 1, "B": true, "C": null, "D": {"k": [1, 2.5]},
      "E": "s", "F": 1.0, "G": [], "H": 1e16, "I": "", "J": false}})")["env"];
  EXPECT_EQ(env, j(R"({"A": "1", "B": "True", "C": null, "D": "{'k': [1, 2.5]}", "E": "s",
                       "F": "1.0", "G": "[]", "H": "1e+16", "I": "", "J": "False"})"));
  EXPECT_NE(coerceError(R"({"env": null})").find("'env' must be an object, got NoneType"),
            std::string::npos);
  EXPECT_NE(coerceError(R"({"env": "A=1"})").find("got str"), std::string::npos);
}

TEST(CoerceBaseConfiguration, LabelsMustBeStrings) {
  EXPECT_EQ(coerced(R"({"labels": {"a": "b"}})")["labels"], j(R"({"a": "b"})"));
  EXPECT_EQ(coerceError(R"({"labels": {"team": 1}})"),
            "job configuration label 'team' must be a string, got int");
  EXPECT_NE(coerceError(R"({"labels": {"a": null}})").find("'a'"), std::string::npos);
  EXPECT_NE(coerceError(R"({"labels": null})").find("'labels'"), std::string::npos);
}

TEST(CoerceBaseConfiguration, Name) {
  EXPECT_EQ(coerced(R"({"name": ""})")["name"], Json(""));
  EXPECT_EQ(coerced(R"({"name": "n"})")["name"], Json("n"));
  EXPECT_NE(coerceError(R"({"name": 5})").find("'name'"), std::string::npos);
  EXPECT_NE(coerceError(R"({"name": true})").find("got bool"), std::string::npos);
}

TEST(CoerceBaseConfiguration, OtherKeysPassThrough) {
  EXPECT_EQ(coerced(R"({"stream_output": "yes", "working_dir": "/x", "volumes": [1]})").dump(),
            R"({"stream_output":"yes","working_dir":"/x","volumes":[1],"command":null,"env":{},)"
            R"("labels":{},"name":null})");
  EXPECT_NE(coerceError("[]").find("must be an object"), std::string::npos);
}

TEST(LaxBool, AcceptsWhatPydanticAccepts) {
  for (const char* text : {"true", "1", "1.0", "\"TRUE\"", "\"Yes\"", "\"on\"", "\"t\"", "\"y\"",
                           "\"1\"", "\"tRuE\""}) {
    auto out = laxBool(j(text), "stream_output");
    ASSERT_TRUE(out) << text;
    EXPECT_TRUE(*out) << text;
  }
  for (const char* text :
       {"false", "0", "0.0", "\"false\"", "\"Off\"", "\"F\"", "\"N\"", "\"no\"", "\"0\""}) {
    auto out = laxBool(j(text), "stream_output");
    ASSERT_TRUE(out) << text;
    EXPECT_FALSE(*out) << text;
  }
}

TEST(LaxBool, RejectsTheRestNamingTheField) {
  for (const char* text : {"2", "-1", "1.5", "\" true\"", "\"\"", "null", "[]", "{}", "\"2\"",
                           "\"1.0\"", "\"yes \"", "18446744073709551615"}) {
    auto out = laxBool(j(text), "stream_output");
    ASSERT_FALSE(out) << text;
    EXPECT_EQ(out.error().kind, ErrorKind::InvalidConfiguration);
    EXPECT_NE(out.error().message.find("'stream_output'"), std::string::npos);
  }
}

}  // namespace
}  // namespace poolworker::jobvars
