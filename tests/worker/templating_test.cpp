#include "worker/templating.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <stdlib.h>

namespace poolworker::templating {
namespace {

Json j(const char* text) { return Json::parse(text); }

std::optional<Json> render(const Json& tmpl, const Json& values, bool remove_notset = true,
                           std::map<std::string, std::string> env = {}) {
  return applyValues(tmpl, values, remove_notset, fixedEnvironment(std::move(env)));
}

std::vector<std::string> fullMatches(std::string_view text) {
  std::vector<std::string> out;
  for (const auto& p : findPlaceholders(text)) {
    out.push_back(p.full_match);
  }
  return out;
}

// ----------------------------------------------------------------------------------------------
// 7.1 Placeholder syntax

TEST(FindPlaceholders, SyntaxAndWhitespace) {
  EXPECT_EQ(fullMatches("{{x}}"), std::vector<std::string>{"{{x}}"});
  EXPECT_EQ(fullMatches("{{ x }}"), std::vector<std::string>{"{{ x }}"});
  const auto found = findPlaceholders("{{  a-b.c[0]  }}");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].name, "a-b.c[0]");
  EXPECT_TRUE(findPlaceholders("{{ a b }}").empty());
  EXPECT_TRUE(findPlaceholders("{{}}").empty());
  EXPECT_TRUE(findPlaceholders("{{ }}").empty());
  EXPECT_TRUE(findPlaceholders("{{ x }").empty());
  EXPECT_TRUE(findPlaceholders("{{ a+b }}").empty());
  EXPECT_TRUE(findPlaceholders("{{ x | upper }}").empty());
  EXPECT_EQ(fullMatches("{{\tx\n}}"), std::vector<std::string>{"{{\tx\n}}"});
  EXPECT_EQ(fullMatches("{{\u00a0x\u3000}}"), std::vector<std::string>{"{{\u00a0x\u3000}}"});
}

TEST(FindPlaceholders, BracesAroundAMatch) {
  EXPECT_EQ(fullMatches("{{{ x }}}"), std::vector<std::string>{"{{ x }}"});
  EXPECT_EQ(fullMatches("{{ x }}}}"), std::vector<std::string>{"{{ x }}"});
  EXPECT_EQ(fullMatches("{{ {{ x }} }}"), std::vector<std::string>{"{{ x }}"});
}

TEST(FindPlaceholders, DistinctInOrderOfFirstAppearance) {
  EXPECT_EQ(fullMatches("{{ b }} {{ a }} {{ b }} {{a}}"),
            (std::vector<std::string>{"{{ b }}", "{{ a }}", "{{a}}"}));
}

TEST(FindPlaceholders, UnicodeNames) {
  const auto found = findPlaceholders("{{ ü.ñ }} {{ 中文 }} {{ \u00b2 }} {{ 😀 }}");
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0].name, "ü.ñ");
  EXPECT_EQ(found[1].name, "中文");
  EXPECT_EQ(found[2].name, "\u00b2");
}

TEST(FindPlaceholders, TypesByPrefix) {
  const auto found = findPlaceholders(
      "{{ prefect.blocks.secret.x }}{{ prefect.variables.y }}{{ $HOME }}{{ a$b }}"
      "{{ prefect.blocks }}{{ prefect.variablesx }}{{ plain }}");
  ASSERT_EQ(found.size(), 7u);
  EXPECT_EQ(found[0].type, PlaceholderType::BlockDocument);
  EXPECT_EQ(found[1].type, PlaceholderType::Variable);
  EXPECT_EQ(found[2].type, PlaceholderType::EnvVar);
  EXPECT_EQ(found[3].type, PlaceholderType::Standard);
  EXPECT_EQ(found[4].type, PlaceholderType::Standard);
  EXPECT_EQ(found[5].type, PlaceholderType::Standard);
  EXPECT_EQ(found[6].type, PlaceholderType::Standard);
}

// ----------------------------------------------------------------------------------------------
// 7.2 get_from_dict

TEST(GetFromDict, DottedPathsAndIndexes) {
  const Json values = j(R"({"a": {"b": {"c": [1, 2, 3, 4]}}, "x": "abc", "u": "日本語"})");
  EXPECT_EQ(getFromDict(values, "a.b.c[1]"), Json(2));
  EXPECT_EQ(getFromDict(values, "a.b.c.1"), Json(2));
  EXPECT_EQ(getFromDict(values, "a.b.c.-1"), Json(4));
  EXPECT_EQ(getFromDict(values, "a.b.c[-4]"), Json(1));
  EXPECT_EQ(getFromDict(values, "a.b.c[-5]"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "a.b.c[4]"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "x.0"), Json("a"));
  EXPECT_EQ(getFromDict(values, "x.-1"), Json("c"));
  EXPECT_EQ(getFromDict(values, "x[0][0]"), Json("a"));
  EXPECT_EQ(getFromDict(values, "x.3"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "u.1"), Json("本"));
  EXPECT_EQ(getFromDict(values, "a.b"), j(R"({"c": [1, 2, 3, 4]})"));
}

TEST(GetFromDict, WhatCannotBeAddressed) {
  EXPECT_EQ(getFromDict(j(R"({"x": {"0": "zero"}})"), "x.0"), std::nullopt);
  EXPECT_EQ(getFromDict(j(R"({"x": {"a.b": 1}})"), "x.a.b"), std::nullopt);
  EXPECT_EQ(getFromDict(j(R"({"a.b": 1})"), "a.b"), std::nullopt);
  EXPECT_EQ(getFromDict(j(R"({"x": 5})"), "x.y"), std::nullopt);
  EXPECT_EQ(getFromDict(j(R"({"x": true})"), "x.0"), std::nullopt);
  EXPECT_EQ(getFromDict(j(R"({"x": [1]})"), "x.a"), std::nullopt);
  EXPECT_EQ(getFromDict(j(R"({"x": null})"), "x.y"), std::nullopt);
}

TEST(GetFromDict, NullIsSet) { EXPECT_EQ(getFromDict(j(R"({"x": null})"), "x"), Json()); }

TEST(GetFromDict, SegmentsThatPythonIntAccepts) {
  const Json values = j(R"({"x": [10, 20, 30, 40, 50, 50, 50, 50, 50, 50, 50, 11]})");
  EXPECT_EQ(getFromDict(values, "x.+1"), Json(20));
  EXPECT_EQ(getFromDict(values, "x.1_1"), Json(11));
  EXPECT_EQ(getFromDict(values, "x.00"), Json(10));
  EXPECT_EQ(getFromDict(values, "x.-0"), Json(10));
  EXPECT_EQ(getFromDict(values, "x. 1"), Json(20));
  EXPECT_EQ(getFromDict(values, "x.\u0661"), Json(20));  // Arabic-Indic one
  EXPECT_EQ(getFromDict(values, "x.\uff12"), Json(30));  // fullwidth two
  EXPECT_EQ(getFromDict(values, "x.1_"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "x._1"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "x.1__1"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "x.0x1"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "x.99999999999999999999999"), std::nullopt);
  EXPECT_EQ(getFromDict(values, "x.-99999999999999999999"), std::nullopt);
}

TEST(GetFromDict, BracketsAndEmptySegments) {
  EXPECT_EQ(getFromDict(j(R"({"x0": {"": 7}})"), "x]0["), Json(7));
  EXPECT_EQ(getFromDict(j(R"({"a": {"": 5}})"), "a."), Json(5));
  EXPECT_EQ(getFromDict(j(R"({"": 3})"), ""), Json(3));
  EXPECT_EQ(getFromDict(j(R"({"x": [[1, 2], [3, {"y": "z"}]]})"), "x[1][1].y"), Json("z"));
}

TEST(GetFromDict, TopLevelArray) { EXPECT_EQ(getFromDict(j("[5, 6]"), "1"), Json(6)); }

// ----------------------------------------------------------------------------------------------
// 7.3 / 7.4 apply_values

TEST(ApplyValues, WorkedExamplesOfTheContract) {
  EXPECT_EQ(render("{{ x }}", j(R"({"x": 5})")), Json(5));
  EXPECT_EQ(render("{{x}}", j(R"({"x": [1, 2]})")), j("[1, 2]"));
  EXPECT_EQ(render("{{ x }}", j("{}")), std::nullopt);
  EXPECT_EQ(render("{{ x }}", j(R"({"x": null})")), Json());
  EXPECT_EQ(render(" {{ x }}", j(R"({"x": 5})")), Json(" 5"));
  EXPECT_EQ(render("a-{{ x }}", j(R"({"x": true})")), Json("a-True"));
  EXPECT_EQ(render("a-{{ x }}", j(R"({"x": null})")), Json("a-None"));
  EXPECT_EQ(render("a-{{ x }}", j(R"({"x": {"k": 1}})")), Json("a-{'k': 1}"));
  EXPECT_EQ(render("a-{{ x }}", j(R"({"x": [1, "b"]})")), Json("a-[1, 'b']"));
  EXPECT_EQ(render("a-{{ x }}-{{ y }}", j(R"({"x": 1})")), Json("a-1-"));
  EXPECT_EQ(render("a-{{ x }}-{{ y }}", j(R"({"x": 1})"), false), Json("a-1-{{ y }}"));
  EXPECT_EQ(render(j(R"({"a": "{{ x }}", "b": "{{ y }}", "c": 3})"), j(R"({"x": 1})")),
            j(R"({"a": 1, "c": 3})"));
  EXPECT_EQ(render(j(R"(["{{ x }}", "{{ y }}", "lit"])"), j(R"({"x": 1})")), j(R"([1, "lit"])"));
  EXPECT_EQ(render("{{ x.y[1] }}", j(R"({"x": {"y": [10, 20]}})")), Json(20));
  EXPECT_EQ(render("{{ a-b }}", j(R"({"a-b": 7})")), Json(7));
  EXPECT_EQ(render("{{ x }}{{ x }}", j(R"({"x": "z"})")), Json("zz"));
  EXPECT_EQ(render("{{ $MYVAR }}", j("{}"), true, {{"MYVAR", "hello"}}), Json("hello"));
  EXPECT_EQ(render("{{ $NOPE }}", j("{}")), Json(""));
  EXPECT_EQ(render("p-{{ $MYVAR }}", j("{}"), true, {{"MYVAR", "hello"}}), Json("p-hello"));
  EXPECT_EQ(render("{{ prefect.variables.foo }}", j("{}")), Json("{{ prefect.variables.foo }}"));
  EXPECT_EQ(render("x {{ prefect.variables.foo }} {{ a }}", j(R"({"a": 1})")),
            Json("x {{ prefect.variables.foo }} 1"));
  EXPECT_EQ(render("{{ x }}", j(R"({"x": "{{ y }}", "y": 1})")), Json("{{ y }}"));
}

TEST(ApplyValues, SinglePassNeverRescansSubstitutedText) {
  // Python gives "2-2" or "2-{{ b }}" depending on PYTHONHASHSEED; we always give the second.
  EXPECT_EQ(render("{{ b }}-{{ a }}", j(R"({"a": "{{ b }}", "b": 2})")), Json("2-{{ b }}"));
  EXPECT_EQ(render("{{ x }}{{ y }}", j(R"({"x": "{{ y }}", "y": "Y"})")), Json("{{ y }}Y"));
  EXPECT_EQ(render("{{ a }}", j(R"({"a": "{{ $HOME }}"})"), true, {{"HOME", "/root"}}),
            Json("{{ $HOME }}"));
  EXPECT_EQ(render("{{{{ y }} x }}", j(R"({"x": 1})")), Json("{{ x }}"));
}

TEST(ApplyValues, ScalarsUnchanged) {
  EXPECT_EQ(render(Json(), j(R"({"x": 1})")), Json());
  EXPECT_EQ(render(Json(5), j(R"({"x": 1})")), Json(5));
  EXPECT_EQ(render(Json(true), j(R"({"x": 1})")), Json(true));
  EXPECT_EQ(render(Json(1.5), j(R"({"x": 1})")), Json(1.5));
  EXPECT_EQ(render("no placeholders", j(R"({"x": 1})")), Json("no placeholders"));
  EXPECT_EQ(render("{{ a b }}", j(R"({"a": 1})")), Json("{{ a b }}"));
}

TEST(ApplyValues, WholeValueNeedsTheExactText) {
  EXPECT_EQ(render("{{ x }} ", j(R"({"x": 5})")), Json("5 "));
  EXPECT_EQ(render("{{\n x \t}}", j(R"({"x": 5})")), Json(5));
  EXPECT_EQ(render("{{ x }}-{{x}}", j(R"({"x": 1})")), Json("1-1"));
  EXPECT_EQ(render("{{{ x }}}", j(R"({"x": 1})")), Json("{1}"));
}

TEST(ApplyValues, WholeValueKeepsJsonTypes) {
  EXPECT_EQ(render("{{ x }}", j(R"({"x": 1.0})")), j("1.0"));
  EXPECT_TRUE(render("{{ x }}", j(R"({"x": 1.0})"))->is_number_float());
  EXPECT_EQ(render("{{ x }}", j(R"({"x": ""})")), Json(""));
  EXPECT_EQ(render("{{ x }}", j(R"({"x": false})")), Json(false));
  EXPECT_EQ(render("{{ x }}", j(R"({"x": {}})")), Json::object());
  EXPECT_EQ(render("{{ x }}", j(R"({"x": [{"a": null}, {"b": [1, {"c": true}]}]})")),
            j(R"([{"a": null}, {"b": [1, {"c": true}]}])"));
  EXPECT_EQ(render("{{ x[0] }}", j(R"({"x": [["a"]]})")), j(R"(["a"])"));
  EXPECT_EQ(render("{{ x.0 }}", j(R"({"x": "abc"})")), Json("a"));
}

TEST(ApplyValues, PartialUsesPythonStr) {
  EXPECT_EQ(render("v{{ x }}", j(R"({"x": 1.0})")), Json("v1.0"));
  EXPECT_EQ(render("v{{ x }}", j(R"({"x": 1e-05})")), Json("v1e-05"));
  EXPECT_EQ(render("v{{ x }}", j(R"({"x": 1e16})")), Json("v1e+16"));
  EXPECT_EQ(render("v{{ x }}", j(R"({"x": 18446744073709551615})")), Json("v18446744073709551615"));
  EXPECT_EQ(render("n={{ a }}", j(R"({"a": 0})")), Json("n=0"));
  EXPECT_EQ(render("l={{ a }}", j(R"({"a": []})")), Json("l=[]"));
  EXPECT_EQ(render("a{{ x }}", j(R"({"x": ""})")), Json("a"));
  EXPECT_EQ(render("v={{ d }}", j(R"({"d": {"k": "it's"}})")), Json(R"(v={'k': "it's"})"));
  EXPECT_EQ(render("pre {{ env }}", j(R"({"env": {"A": "1"}})")), Json("pre {'A': '1'}"));
}

TEST(ApplyValues, RemoveNotsetFalseKeepsTemplatesButStillDropsArrayItems) {
  EXPECT_EQ(render("{{ x }}", j("{}"), false), std::nullopt);
  EXPECT_EQ(render(j(R"({"a": "{{ x }}", "b": "{{ y }}", "c": 3})"), j(R"({"x": 1})"), false),
            j(R"({"a": 1, "b": "{{ y }}", "c": 3})"));
  EXPECT_EQ(render(j(R"(["{{ x }}", "{{ y }}", "lit"])"), j(R"({"x": 1})"), false),
            j(R"([1, "lit"])"));
  EXPECT_EQ(render(j(R"({"a": ["{{ x }}", {"b": "{{ x }}"}]})"), j("{}"), false),
            j(R"({"a": [{"b": "{{ x }}"}]})"));
  EXPECT_EQ(render("{{ a }}/{{ b }}/{{ a }}", j(R"({"b": 2})"), false), Json("{{ a }}/2/{{ a }}"));
  EXPECT_EQ(render("{{ $NOPE }}", j("{}"), false), Json("{{ $NOPE }}"));
  EXPECT_EQ(render("{{ a }}/{{ b }}/{{ a }}", j(R"({"b": 2})")), Json("/2/"));
}

TEST(ApplyValues, ObjectsKeepKeyOrderAndKeysAreNotTemplated) {
  const auto out = render(j(R"({"z": "{{ x }}", "{{ x }}": "v", "a": "{{ missing }}", "m": 1})"),
                          j(R"({"x": 1})"));
  ASSERT_TRUE(out);
  EXPECT_EQ(out->dump(), R"({"z":1,"{{ x }}":"v","m":1})");
}

TEST(ApplyValues, NestedStructures) {
  EXPECT_EQ(render(j(R"({"a": [{"b": "{{ x }}"}, {"c": "{{ y }}"}, ["{{ y }}", "{{ x }}"]]})"),
                   j(R"({"x": 1})")),
            j(R"({"a": [{"b": 1}, {}, [1]]})"));
  EXPECT_EQ(render(j(R"({"a": {"b": {"c": "{{ v }}"}}})"), j("{}")), j(R"({"a": {"b": {}}})"));
  EXPECT_EQ(render(j(R"(["{{ a }}", "b-{{ a }}", "{{ c }}", 3, null, ["{{ c }}"]])"),
                   j(R"({"a": false})")),
            j(R"([false, "b-False", 3, null, []])"));
}

TEST(ApplyValues, EnvironmentPlaceholders) {
  const std::map<std::string, std::string> env = {{"MYVAR", "hello"}, {"EMPTY", ""}};
  EXPECT_EQ(render("{{ $$MYVAR }}", j("{}"), true, env), Json("hello"));
  EXPECT_EQ(render("[{{ $EMPTY }}]", j("{}"), true, env), Json("[]"));
  EXPECT_EQ(render("a{{ $ }}b", j("{}"), true, env), Json("ab"));
  // Env vars come from the environment, never from the values.
  EXPECT_EQ(render("{{ $X }}", j(R"({"$X": "v"})"), true, env), Json(""));
  EXPECT_EQ(render(j(R"({"home": "{{ $MYVAR }}/x", "k": "{{ $NOPE }}"})"), j("{}"), true, env),
            j(R"({"home": "hello/x", "k": ""})"));
}

TEST(ApplyValues, ProcessEnvironmentIsTheDefault) {
  ASSERT_EQ(setenv("POOLWORKER_TEMPLATING_TEST_VAR", "from-env", 1), 0);
  EXPECT_EQ(applyValues("x={{ $POOLWORKER_TEMPLATING_TEST_VAR }}", j("{}")), Json("x=from-env"));
  unsetenv("POOLWORKER_TEMPLATING_TEST_VAR");
  EXPECT_EQ(applyValues("x={{ $POOLWORKER_TEMPLATING_TEST_VAR }}", j("{}")), Json("x="));
  EXPECT_EQ(processEnvironment()(""), std::nullopt);
}

TEST(ApplyValues, BlockAndVariablePlaceholdersAreLeftForLater) {
  EXPECT_EQ(render("{{ prefect.blocks.secret.tok }}",
                   j(R"({"prefect": {"blocks": {"secret": {"tok": 1}}}})")),
            Json("{{ prefect.blocks.secret.tok }}"));
  EXPECT_EQ(render("{{ prefect.blocks.s.t }}:{{ $U }}:{{ prefect.variables.v }}", j("{}"), true,
                   {{"U", "u"}}),
            Json("{{ prefect.blocks.s.t }}:u:{{ prefect.variables.v }}"));
  EXPECT_EQ(render("{{ prefect.variables.foo }}", j("{}"), false),
            Json("{{ prefect.variables.foo }}"));
}

TEST(ApplyValues, UnicodeAndWindowsPaths) {
  EXPECT_EQ(render("héllo {{ name }}", j(R"({"name": "wörld"})")), Json("héllo wörld"));
  EXPECT_EQ(render("{{ ünï }}", j(R"({"ünï": 1})")), Json(1));
  EXPECT_EQ(render("<{{ 名前 }}>", j(R"({"名前": "値"})")), Json("<値>"));
  EXPECT_EQ(render("{{ x }}", j(R"({"x": "C:\\Users\\me"})")), Json("C:\\Users\\me"));
  EXPECT_EQ(render("cd {{ x }}", j(R"({"x": "C:\\Users\\me"})")), Json("cd C:\\Users\\me"));
  EXPECT_EQ(render("v={{ d }}", j(R"({"d": {"p": "C:\\x"}})")), Json(R"(v={'p': 'C:\\x'})"));
}

TEST(ApplyValues, ValuesThatAreNotAnObject) {
  EXPECT_EQ(render("{{ x }}", j("[1, 2]")), std::nullopt);
  EXPECT_EQ(render("{{ 1 }}", j("[1, 2]")), Json(2));
  EXPECT_EQ(render("{{ x }}", Json()), std::nullopt);
}

// ----------------------------------------------------------------------------------------------
// 7.5 References

TEST(CollectReferences, FindsEveryKindOnceInOrder) {
  const Json config = j(R"({
    "a": {"$ref": {"block_document_id": "id1"}},
    "b": ["{{ prefect.blocks.secret.tok }}", "x-{{ prefect.blocks.json.cfg.a.b }}-y"],
    "c": {"d": "{{ prefect.variables.v }} and {{ prefect.variables.w }}"},
    "e": "{{ prefect.blocks.secret.tok }}{{ prefect.variables.v }}",
    "f": [{"$ref": {"block_document_id": "id2"}}, {"$ref": {"block_document_id": "id1"}}],
    "g": "{{ prefect.blocks.toofew }} {{ plain }} {{ $HOME }}",
    "h": {"$ref": {"block_document_id": ""}, "i": "{{ prefect.variables.inside }}"},
    "k": {"$ref": {"block_document_id": "id3"}, "ignored": "{{ prefect.variables.no }}"}
  })");
  const References refs = collectReferences(config);
  EXPECT_EQ(refs.block_document_ids, (std::vector<std::string>{"id1", "id2", "id3"}));
  using Pair = std::pair<std::string, std::string>;
  EXPECT_EQ(refs.block_slug_names, (std::vector<Pair>{{"secret", "tok"}, {"json", "cfg"}}));
  EXPECT_EQ(refs.variable_names, (std::vector<std::string>{"v", "w", "inside"}));
}

TEST(CollectReferences, StripsEveryPrefixOccurrenceLikePrefect) {
  const References refs = collectReferences(j(R"(["{{ prefect.blocks.secret.prefect.blocks.tok }}",
            "{{ prefect.variables.prefect.variables.v }}"])"));
  using Pair = std::pair<std::string, std::string>;
  EXPECT_EQ(refs.block_slug_names, (std::vector<Pair>{{"secret", "tok"}}));
  EXPECT_EQ(refs.variable_names, (std::vector<std::string>{"v"}));
}

ResolvedReferences sampleServer() {
  ResolvedReferences r;
  r.blocks_by_id["id1"] = j(R"({"username": "u", "password": "p"})");
  r.blocks_by_slug_name[{"secret", "tok"}] = j(R"({"value": "s3cr3t"})");
  r.blocks_by_slug_name[{"json", "cfg"}] = j(R"({"value": {"a": {"b": [1, 2]}, "values": 3}})");
  r.blocks_by_slug_name[{"creds", "reg"}] = j(R"({"username": "u", "registry_url": "r.io"})");
  r.blocks_by_slug_name[{"json", "flag"}] = j(R"({"value": true})");
  r.blocks_by_slug_name[{"json", "n"}] = j(R"({"value": 1.0})");
  r.blocks_by_slug_name[{"string", "s"}] = j(R"({"value": "abc"})");
  r.blocks_by_slug_name[{"string", "var"}] = j(R"({"value": "{{ prefect.variables.v }}"})");
  r.variables["v"] = Json("V");
  r.variables["obj"] = j(R"({"k": [1, null]})");
  r.variables["num"] = Json(5);
  r.variables["nil"] = Json();
  return r;
}

Json resolved(const char* config) {
  auto out = resolveReferences(j(config), sampleServer());
  EXPECT_TRUE(out) << out.error().message;
  return out ? *out : Json();
}

std::string resolveError(const char* config) {
  auto out = resolveReferences(j(config), sampleServer());
  EXPECT_FALSE(out) << out->dump();
  if (out) {
    return {};
  }
  EXPECT_EQ(out.error().kind, ErrorKind::InvalidConfiguration);
  return out.error().message;
}

TEST(ResolveBlocks, RefObjectsBecomeTheDocumentData) {
  EXPECT_EQ(resolved(R"({"c": {"$ref": {"block_document_id": "id1"}, "other": 1}})"),
            j(R"({"c": {"username": "u", "password": "p"}})"));
  EXPECT_EQ(resolved(R"({"l": [{"$ref": {"block_document_id": "id1"}}, 2]})"),
            j(R"({"l": [{"username": "u", "password": "p"}, 2]})"));
  EXPECT_EQ(resolved(R"({"c": {"$ref": {"block_document_id": ""}, "x": 1}})"),
            j(R"({"c": {"$ref": {"block_document_id": ""}, "x": 1}})"));
  EXPECT_EQ(resolved(R"({"c": {"$ref": {"other": "x"}}})"),
            j(R"({"c": {"$ref": {"other": "x"}}})"));
}

TEST(ResolveBlocks, RefErrors) {
  const std::string missing = resolveError(R"({"c": {"$ref": {"block_document_id": "id9"}}})");
  EXPECT_NE(missing.find("'id9'"), std::string::npos) << missing;
  EXPECT_NE(missing.find("job configuration 'c'"), std::string::npos) << missing;
  EXPECT_NE(resolveError(R"({"c": {"$ref": "id1"}})").find("'$ref' must be an object"),
            std::string::npos);
  EXPECT_NE(resolveError(R"({"c": {"$ref": null}})").find("got NoneType"), std::string::npos);
  EXPECT_NE(resolveError(R"({"c": {"$ref": {"block_document_id": 5}}})").find("must be a string"),
            std::string::npos);
}

TEST(ResolveBlocks, WholeStringKeepsTheJsonTypeAndUnwrapsValue) {
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.secret.tok }}"})"), j(R"({"t": "s3cr3t"})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.json.cfg.a.b[1] }}"})"), j(R"({"t": 2})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.json.cfg.a }}"})"), j(R"({"t": {"b": [1, 2]}})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.json.cfg.value.a.b }}"})"), j(R"({"t": [1, 2]})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.json.cfg.value }}"})"),
            j(R"({"t": {"a": {"b": [1, 2]}, "values": 3}})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.json.cfg.values }}"})"), j(R"({"t": 3})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.json.flag }}"})"), j(R"({"t": true})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.creds.reg }}"})"),
            j(R"({"t": {"username": "u", "registry_url": "r.io"}})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.creds.reg.username }}"})"), j(R"({"t": "u"})"));
  EXPECT_EQ(resolved(R"({"t": "{{ prefect.blocks.string.s.0 }}"})"), j(R"({"t": "a"})"));
}

TEST(ResolveBlocks, InlineUsesPythonStrOfScalars) {
  EXPECT_EQ(resolved(R"({"u": "https://{{ prefect.blocks.secret.tok }}/x"})"),
            j(R"({"u": "https://s3cr3t/x"})"));
  EXPECT_EQ(resolved(R"({"u": "{{ prefect.blocks.json.flag }}/{{ prefect.blocks.json.n }}"})"),
            j(R"({"u": "True/1.0"})"));
  EXPECT_EQ(resolved(R"({"u": "{{ prefect.blocks.secret.tok }}{{ prefect.blocks.secret.tok }}"})"),
            j(R"({"u": "s3cr3ts3cr3t"})"));
  EXPECT_EQ(
      resolved(R"({"u": "{{ prefect.blocks.secret.tok }}-{{ prefect.variables.v }}-{{ x }}"})"),
      j(R"({"u": "s3cr3t-V-{{ x }}"})"));
}

TEST(ResolveBlocks, ErrorsNameThePlaceholderAndWhereItIs) {
  std::string message = resolveError(R"({"a": [{"u": "v={{ prefect.blocks.json.cfg }}"}]})");
  EXPECT_NE(message.find("'{{ prefect.blocks.json.cfg }}'"), std::string::npos) << message;
  EXPECT_NE(message.find("a dict"), std::string::npos) << message;
  EXPECT_NE(message.find("job configuration 'a[0].u'"), std::string::npos) << message;

  message = resolveError(R"({"u": "v={{ prefect.blocks.json.cfg.a.b }}"})");
  EXPECT_NE(message.find("a list"), std::string::npos) << message;

  message = resolveError(R"({"x": "{{ prefect.blocks.json.cfg.a.c }}"})");
  EXPECT_NE(message.find("keypath 'a.c'"), std::string::npos) << message;

  message = resolveError(R"({"x": "{{ prefect.blocks.secret }}"})");
  EXPECT_NE(message.find("prefect.blocks.<block-type-slug>.<block-document-name>"),
            std::string::npos)
      << message;

  message = resolveError(R"({"x": "a-{{ prefect.blocks.secret.gone }}"})");
  EXPECT_NE(message.find("'gone' of type 'secret'"), std::string::npos) << message;
  EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << "no block data in messages";
}

TEST(ResolveBlocks, BlockDataIsNotRescannedForBlocks) {
  ResolvedReferences server = sampleServer();
  server.blocks_by_slug_name[{"string", "a"}] = j(R"({"value": "{{ prefect.blocks.string.s }}"})");
  auto out = resolveBlocks(j(R"({"x": "{{ prefect.blocks.string.a }}"})"), server);
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(*out, j(R"({"x": "{{ prefect.blocks.string.s }}"})"));
}

TEST(ResolveVariables, WholeInlineAndMissing) {
  EXPECT_EQ(resolved(R"({"x": "{{ prefect.variables.v }}"})"), j(R"({"x": "V"})"));
  EXPECT_EQ(resolved(R"({"x": "{{ prefect.variables.obj }}"})"), j(R"({"x": {"k": [1, null]}})"));
  EXPECT_EQ(resolved(R"({"x": "{{ prefect.variables.nil }}"})"), j(R"({"x": null})"));
  EXPECT_EQ(resolved(R"({"x": "{{ prefect.variables.gone }}", "y": 1})"),
            j(R"({"x": "", "y": 1})"));
  EXPECT_EQ(resolved(R"({"x": "a-{{ prefect.variables.gone }}-b"})"), j(R"({"x": "a--b"})"));
  EXPECT_EQ(resolved(R"({"x": "n={{ prefect.variables.num }}/{{ prefect.variables.nil }}"})"),
            j(R"({"x": "n=5/None"})"));
  EXPECT_EQ(resolved(R"({"x": "o={{ prefect.variables.obj }}"})"),
            j(R"({"x": "o={'k': [1, None]}"})"));
  EXPECT_EQ(resolved(R"({"{{ prefect.variables.v }}": ["{{ prefect.variables.v }}"]})"),
            j(R"({"{{ prefect.variables.v }}": ["V"]})"));
}

TEST(ResolveReferences, VariablesInsideBlockDataAreResolvedAfterBlocks) {
  EXPECT_EQ(resolved(R"({"x": "{{ prefect.blocks.string.var }}"})"), j(R"({"x": "V"})"));
  // A worker that fetches only what collectReferences names needs a second look after blocks.
  const Json config = j(R"({"x": "{{ prefect.blocks.string.var }}"})");
  EXPECT_TRUE(collectReferences(config).variable_names.empty());
  auto blocks = resolveBlocks(config, sampleServer());
  ASSERT_TRUE(blocks);
  EXPECT_EQ(collectReferences(*blocks).variable_names, std::vector<std::string>{"v"});
}

TEST(ResolveReferences, LeavesEverythingElseAlone) {
  EXPECT_EQ(resolved(R"({"a": "{{ x }}", "b": "{{ $HOME }}", "c": [1, {"d": null}], "e": 1.5})"),
            j(R"({"a": "{{ x }}", "b": "{{ $HOME }}", "c": [1, {"d": null}], "e": 1.5})"));
}

}  // namespace
}  // namespace poolworker::templating
