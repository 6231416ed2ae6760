#include "worker/py_repr.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <gtest/gtest.h>

namespace poolworker::py {
namespace {

Json parse(const char* text) { return Json::parse(text); }

TEST(PyStr, ScalarsLikePython) {
  EXPECT_EQ(str(Json(true)), "True");
  EXPECT_EQ(str(Json(false)), "False");
  EXPECT_EQ(str(Json(nullptr)), "None");
  EXPECT_EQ(str(Json(5)), "5");
  EXPECT_EQ(str(Json(-5)), "-5");
  EXPECT_EQ(str(Json("abc")), "abc");
  EXPECT_EQ(str(Json("")), "");
  EXPECT_EQ(str(Json("it's")), "it's");
}

TEST(PyStr, IntegersAtTheEdgesOfSixtyFourBits) {
  EXPECT_EQ(str(parse("9223372036854775807")), "9223372036854775807");
  EXPECT_EQ(str(parse("-9223372036854775808")), "-9223372036854775808");
  const Json unsigned_max = parse("18446744073709551615");
  ASSERT_TRUE(unsigned_max.is_number_unsigned());
  EXPECT_EQ(str(unsigned_max), "18446744073709551615");
  EXPECT_EQ(str(parse("9223372036854775808")), "9223372036854775808");
  EXPECT_EQ(str(Json(std::numeric_limits<std::uint64_t>::max())), "18446744073709551615");
}

TEST(PyStr, FloatsUseShortestRoundTripRepr) {
  EXPECT_EQ(str(parse("1.0")), "1.0");
  EXPECT_EQ(str(parse("-0.0")), "-0.0");
  EXPECT_EQ(str(parse("0.1")), "0.1");
  EXPECT_EQ(str(parse("1e-05")), "1e-05");
  EXPECT_EQ(str(parse("0.0001")), "0.0001");
  EXPECT_EQ(str(parse("1.5e16")), "1.5e+16");
  EXPECT_EQ(str(parse("1e16")), "1e+16");
  EXPECT_EQ(str(parse("1e15")), "1000000000000000.0");
  EXPECT_EQ(str(parse("9999999999999998.0")), "9999999999999998.0");
  EXPECT_EQ(str(parse("123456789012345.6")), "123456789012345.6");
  EXPECT_EQ(str(parse("1e22")), "1e+22");
  EXPECT_EQ(str(parse("1e300")), "1e+300");
  EXPECT_EQ(str(parse("5e-324")), "5e-324");
  EXPECT_EQ(str(parse("0.30000000000000004")), "0.30000000000000004");
  EXPECT_EQ(str(parse("1.7976931348623157e308")), "1.7976931348623157e+308");
  EXPECT_EQ(str(parse("100.0")), "100.0");
  EXPECT_EQ(str(parse("12345678901234567.0")), "1.2345678901234568e+16");
  EXPECT_EQ(str(parse("-1.5e-10")), "-1.5e-10");
  EXPECT_EQ(str(parse("0.00012345")), "0.00012345");
  EXPECT_EQ(str(parse("2.5")), "2.5");
  // Exponent notation is a float in Python's json module too.
  EXPECT_EQ(str(parse("1e2")), "100.0");
}

TEST(PyStr, NonFiniteFloats) {
  EXPECT_EQ(reprFloat(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(reprFloat(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(reprFloat(std::nan("")), "nan");
  EXPECT_EQ(str(Json(std::numeric_limits<double>::infinity())), "inf");
}

TEST(PyStr, ContainersAreReprs) {
  EXPECT_EQ(str(parse(R"({"k": 1, "x": [true, null]})")), "{'k': 1, 'x': [True, None]}");
  EXPECT_EQ(str(parse(R"([1, "b"])")), "[1, 'b']");
  EXPECT_EQ(str(parse("{}")), "{}");
  EXPECT_EQ(str(parse("[]")), "[]");
  EXPECT_EQ(str(parse(R"([{"a": 1}, {"b": [2, {"c": null}]}, [], {}])")),
            "[{'a': 1}, {'b': [2, {'c': None}]}, [], {}]");
  EXPECT_EQ(str(parse(R"({"q": "it's \"x\""})")), R"({'q': 'it\'s "x"'})");
  EXPECT_EQ(str(parse(R"({"it's": 1})")), R"({"it's": 1})");
  EXPECT_EQ(str(parse(R"({"p": "C:\\Users\\me"})")), R"({'p': 'C:\\Users\\me'})");
  EXPECT_EQ(str(parse(R"([1.0, 2.5e-7, -0.0])")), "[1.0, 2.5e-07, -0.0]");
}

TEST(PyStr, KeepsObjectKeyOrder) {
  EXPECT_EQ(str(parse(R"({"b": 1, "a": 2})")), "{'b': 1, 'a': 2}");
}

TEST(PyRepr, QuotesLikePython) {
  EXPECT_EQ(repr(Json("abc")), "'abc'");
  EXPECT_EQ(repr(Json("")), "''");
  EXPECT_EQ(repr(Json("it's")), R"("it's")");
  EXPECT_EQ(repr(Json("a\"b")), R"('a"b')");
  EXPECT_EQ(repr(Json("both ' and \"")), R"('both \' and "')");
  EXPECT_EQ(repr(Json("a\\b")), R"('a\\b')");
}

TEST(PyRepr, EscapesControlCharacters) {
  EXPECT_EQ(repr(Json("\t\n\r")), R"('\t\n\r')");
  EXPECT_EQ(repr(Json(std::string("\0", 1))), R"('\x00')");
  EXPECT_EQ(repr(Json("\x1b[0m")), R"('\x1b[0m')");
  EXPECT_EQ(repr(Json("\x0b\x0c\x7f")), R"('\x0b\x0c\x7f')");
}

TEST(PyRepr, UnicodePrintableKeptOthersEscaped) {
  EXPECT_EQ(repr(Json("ünï 中文 😀")), "'ünï 中文 😀'");
  EXPECT_EQ(repr(Json("\u00ff\u00e9")), "'\u00ff\u00e9'");
  EXPECT_EQ(repr(Json("\u0085")), R"('\x85')");    // NEL, a C1 control
  EXPECT_EQ(repr(Json("\u00a0")), R"('\xa0')");    // no-break space (Zs)
  EXPECT_EQ(repr(Json("\u00ad")), R"('\xad')");    // soft hyphen (Cf)
  EXPECT_EQ(repr(Json("\u0378")), R"('\u0378')");  // unassigned
  EXPECT_EQ(repr(Json("\u200b")), R"('\u200b')");  // zero width space (Cf)
  EXPECT_EQ(repr(Json("\u2028")), R"('\u2028')");  // line separator
  EXPECT_EQ(repr(Json("\u3000")), R"('\u3000')");  // ideographic space
  EXPECT_EQ(repr(Json("\ue000")), R"('\ue000')");  // private use
  EXPECT_EQ(repr(Json("\ufeff")), R"('\ufeff')");  // byte order mark
  EXPECT_EQ(repr(Json("\U000E0001")), R"('\U000e0001')");
  EXPECT_EQ(repr(Json("\U0010FFFF")), R"('\U0010ffff')");
  EXPECT_EQ(repr(Json("e\u0301")), "'e\u0301'");  // combining accent is printable
}

TEST(PyRepr, InvalidUtf8BytesAreHexEscaped) {
  EXPECT_EQ(reprString("a\xff"
                       "b"),
            R"('a\xffb')");
  EXPECT_EQ(reprString("\xc3"), R"('\xc3')");                  // truncated sequence
  EXPECT_EQ(reprString("\xed\xa0\x80"), R"('\xed\xa0\x80')");  // encoded surrogate
  EXPECT_EQ(reprString("\xc0\xaf"), R"('\xc0\xaf')");          // overlong
}

TEST(PyRepr, NonStringsAsStr) {
  EXPECT_EQ(repr(Json(5)), "5");
  EXPECT_EQ(repr(parse("1e-05")), "1e-05");
  EXPECT_EQ(repr(parse(R"(["a", 1])")), "['a', 1]");
}

TEST(PyTypeName, PythonNames) {
  EXPECT_EQ(typeName(Json("x")), "str");
  EXPECT_EQ(typeName(Json(1)), "int");
  EXPECT_EQ(typeName(parse("18446744073709551615")), "int");
  EXPECT_EQ(typeName(Json(1.5)), "float");
  EXPECT_EQ(typeName(Json(true)), "bool");
  EXPECT_EQ(typeName(Json::object()), "dict");
  EXPECT_EQ(typeName(Json::array()), "list");
  EXPECT_EQ(typeName(Json()), "NoneType");
}

TEST(PyTruthy, LikePythonBool) {
  EXPECT_FALSE(truthy(Json()));
  EXPECT_FALSE(truthy(Json(false)));
  EXPECT_FALSE(truthy(Json(0)));
  EXPECT_FALSE(truthy(Json(0.0)));
  EXPECT_FALSE(truthy(Json("")));
  EXPECT_FALSE(truthy(Json::array()));
  EXPECT_FALSE(truthy(Json::object()));
  EXPECT_TRUE(truthy(Json(true)));
  EXPECT_TRUE(truthy(Json(-1)));
  EXPECT_TRUE(truthy(parse("18446744073709551615")));
  EXPECT_TRUE(truthy(Json(0.5)));
  EXPECT_TRUE(truthy(Json(std::nan(""))));
  EXPECT_TRUE(truthy(Json("0")));
  EXPECT_TRUE(truthy(parse("[0]")));
  EXPECT_TRUE(truthy(parse(R"({"a": null})")));
}

TEST(PyUnicode, CharacterClasses) {
  EXPECT_TRUE(isWordChar(U'a'));
  EXPECT_TRUE(isWordChar(U'_'));
  EXPECT_TRUE(isWordChar(U'9'));
  EXPECT_FALSE(isWordChar(U'-'));
  EXPECT_FALSE(isWordChar(U' '));
  EXPECT_TRUE(isWordChar(U'ü'));
  EXPECT_TRUE(isWordChar(U'中'));
  EXPECT_TRUE(isWordChar(U'\u00b2'));  // superscript two: str.isdigit()
  EXPECT_TRUE(isWordChar(U'\u00bd'));  // one half: str.isnumeric()
  EXPECT_FALSE(isWordChar(U'\U0001F600'));
  EXPECT_FALSE(isWordChar(U'\u200d'));

  EXPECT_TRUE(isSpace(U' '));
  EXPECT_TRUE(isSpace(U'\x1c'));
  EXPECT_TRUE(isSpace(U'\u00a0'));
  EXPECT_TRUE(isSpace(U'\u2007'));
  EXPECT_TRUE(isSpace(U'\u3000'));
  EXPECT_FALSE(isSpace(U'\u200b'));
  EXPECT_FALSE(isSpace(U'x'));

  EXPECT_EQ(decimalValue(U'7'), 7);
  EXPECT_EQ(decimalValue(U'\u0661'), 1);      // Arabic-Indic one
  EXPECT_EQ(decimalValue(U'\uff19'), 9);      // fullwidth nine
  EXPECT_EQ(decimalValue(U'\U0001D7CE'), 0);  // mathematical bold zero
  EXPECT_EQ(decimalValue(U'\U0001D7D9'), 1);  // the next run starts at 0 again
  EXPECT_EQ(decimalValue(U'\u00b2'), -1);     // a digit, but not decimal
  EXPECT_EQ(decimalValue(U'x'), -1);

  EXPECT_TRUE(isPrintable(U' '));
  EXPECT_FALSE(isPrintable(U'\n'));
  EXPECT_TRUE(isPrintable(U'é'));
  EXPECT_FALSE(isPrintable(U'\u0378'));
}

TEST(PyUtf8, DecodeAndEncodeRoundTrip) {
  for (char32_t cp : {U'a', U'\u00e9', U'\u4e2d', U'\U0001F600', U'\U0010FFFF'}) {
    std::string encoded;
    appendUtf8(cp, encoded);
    const DecodedCodePoint decoded = decodeUtf8(encoded, 0);
    EXPECT_TRUE(decoded.valid);
    EXPECT_EQ(decoded.value, cp);
    EXPECT_EQ(decoded.length, encoded.size());
  }
  EXPECT_FALSE(decodeUtf8("\x80", 0).valid);
  EXPECT_EQ(decodeUtf8("\x80", 0).length, 1u);
  EXPECT_FALSE(decodeUtf8("\xf4\x90\x80\x80", 0).valid);  // beyond U+10FFFF
}

}  // namespace
}  // namespace poolworker::py
