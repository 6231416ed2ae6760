#include "backends/common/shell_split.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace poolworker::backends::common {
namespace {

struct SplitCase {
  std::string input;
  std::vector<std::string> expected;
  std::string error;  // empty when the split succeeds
};

// Expected values were produced once by CPython 3.11's shlex.split(input) (errors lower-cased).
const std::vector<SplitCase>& cases() {
  static const std::vector<SplitCase> kCases = {
      {"", {}, ""},
      {"   ", {}, ""},
      {"a", {"a"}, ""},
      {"a b  c", {"a", "b", "c"}, ""},
      {" \t a\tb\nc\r d ", {"a", "b", "c", "d"}, ""},
      {"a\vb\fc", {"a\vb\fc"}, ""},
      {"'a b'", {"a b"}, ""},
      {"\"a b\"", {"a b"}, ""},
      {"a'b c'd", {"ab cd"}, ""},
      {"a\"b c\"d", {"ab cd"}, ""},
      {"''", {""}, ""},
      {"\"\"", {""}, ""},
      {"''''", {""}, ""},
      {"'' a", {"", "a"}, ""},
      {"a \"\" b", {"a", "", "b"}, ""},
      {"x \"\" \"\"", {"x", "", ""}, ""},
      {"a\\ b", {"a b"}, ""},
      {"\\a\\b", {"ab"}, ""},
      {"a\\\\b", {"a\\b"}, ""},
      {"'a\\b'", {"a\\b"}, ""},
      {"\"a\\b\"", {"a\\b"}, ""},
      {"\"a\\\\b\"", {"a\\b"}, ""},
      {"\"a\\\"b\"", {"a\"b"}, ""},
      {"\"a\\$b\"", {"a\\$b"}, ""},
      {"\"a\\`b\"", {"a\\`b"}, ""},
      {"'a\\'", {"a\\"}, ""},
      {"\"it's\"", {"it's"}, ""},
      {"'say \"hi\"'", {"say \"hi\""}, ""},
      {"\"a'b\"'c\"d'", {"a'bc\"d"}, ""},
      {"a#b", {"a#b"}, ""},
      {"# not a comment", {"#", "not", "a", "comment"}, ""},
      {"a # b", {"a", "#", "b"}, ""},
      {"x=1 y='2 3'", {"x=1", "y=2 3"}, ""},
      {"python -m prefect.engine", {"python", "-m", "prefect.engine"}, ""},
      {"sh -c 'echo \"$HOME\" && exit 3'", {"sh", "-c", "echo \"$HOME\" && exit 3"}, ""},
      {"a\\'b", {"a'b"}, ""},
      {"a\\\"b", {"a\"b"}, ""},
      {"\\\\", {"\\"}, ""},
      {"\\ ", {" "}, ""},
      {"a\\\nb", {"a\nb"}, ""},
      {"\"a\nb\"", {"a\nb"}, ""},
      {"h\xc3\xa9llo w\xc3\xb6rld", {"h\xc3\xa9llo", "w\xc3\xb6rld"}, ""},
      {"'\xc3\xa9'\"\xc3\xbc\"", {"\xc3\xa9\xc3\xbc"}, ""},
      {"a;b|c&d", {"a;b|c&d"}, ""},
      {"(a) {b} <c> >d", {"(a)", "{b}", "<c>", ">d"}, ""},
      {"*.py ~/x $HOME", {"*.py", "~/x", "$HOME"}, ""},
      {"\"\\n\\t\"", {"\\n\\t"}, ""},
      {"'\\n'", {"\\n"}, ""},
      {"a\"\"b", {"ab"}, ""},
      {"a''b", {"ab"}, ""},
      {"'a'\"b\"c", {"abc"}, ""},
      {"--opt=\"a b\" 'c'\\ d", {"--opt=a b", "c d"}, ""},
      {"'unterminated", {}, "no closing quotation"},
      {"\"unterminated", {}, "no closing quotation"},
      {"trailing\\", {}, "no escaped character"},
      {"a 'b", {}, "no closing quotation"},
      {"\"a\\\"", {}, "no closing quotation"},
      {"\\", {}, "no escaped character"},
      {"\"a\\", {}, "no escaped character"},
      {"\"a\\\\", {}, "no closing quotation"},
      {"'a\\", {}, "no closing quotation"},
  };
  return kCases;
}

TEST(ShellSplit, MatchesPythonShlexSplit) {
  for (const auto& c : cases()) {
    SCOPED_TRACE("input: [" + c.input + "]");
    auto words = shellSplit(c.input);
    if (c.error.empty()) {
      ASSERT_TRUE(words.ok()) << words.error().message;
      EXPECT_EQ(*words, c.expected);
    } else {
      ASSERT_FALSE(words.ok());
      EXPECT_EQ(words.error().kind, ErrorKind::InvalidConfiguration);
      EXPECT_EQ(words.error().message, c.error);
    }
  }
}

TEST(ShellSplit, KeepsEmbeddedBytesOfLongArguments) {
  std::string long_word(100000, 'x');
  auto words = shellSplit("cmd '" + long_word + "' tail");
  ASSERT_TRUE(words.ok());
  ASSERT_EQ(words->size(), 3u);
  EXPECT_EQ((*words)[1], long_word);
  EXPECT_EQ((*words)[2], "tail");
}

}  // namespace
}  // namespace poolworker::backends::common
