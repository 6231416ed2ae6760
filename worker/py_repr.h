#pragma once

/// @file
/// @brief Python's `str()` and `repr()` of JSON values, and the few Unicode character classes
/// of Python 3.11 that templating needs.
///
/// Prefect substitutes a job variable into a longer string with Python `str(value)`, and env
/// values are coerced with `str()` as well, so a worker that wants to produce the same job
/// configuration byte for byte must format values the way Python does after `json.loads`.
/// The character classes come from Python 3.11's `unicodedata` (Unicode 14.0).

#include <cstddef>
#include <string>
#include <string_view>

#include <poolworker/json.h>

namespace poolworker::py {

/// @brief Python `str()` of a value as `json.loads` would return it.
///
/// Strings come out as they are (no quotes); `null` is `None`; booleans are `True`/`False`;
/// integers (also those above the int64 range that nlohmann stores as unsigned) are decimal;
/// floats use Python's shortest round-trip `repr` (`1.0`, `1e-05`, `1.5e+16`, `inf`, `nan`);
/// objects and arrays are Python dict and list reprs (`{'k': 1, 'x': [True, None]}`).
/// One difference remains: an integer literal beyond the uint64 range is a float once nlohmann
/// has parsed it, so it prints as a float where Python would print the integer.
/// @param value Any JSON value.
/// @return The text Python would print.
std::string str(const Json& value);

/// @brief Python `repr()` of a value as `json.loads` would return it.
///
/// Same as `str()` except for strings, which are quoted and escaped like Python quotes them:
/// single quotes unless the text has a single quote and no double quote; `\\`, `\n`, `\r`, `\t`
/// escaped; other control characters as `\xNN`; non-printable non-ASCII characters as `\xNN`,
/// `\uNNNN` or `\UNNNNNNNN`; printable non-ASCII characters kept.
/// @param value Any JSON value.
/// @return The text Python would print.
std::string repr(const Json& value);

/// @brief Python `repr()` of a string given as UTF-8. Bytes that are not valid UTF-8 are
/// written as `\xNN`.
/// @param text UTF-8 text.
/// @return The quoted, escaped form.
std::string reprString(std::string_view text);

/// @brief Python `repr()` of a float: the shortest text that reads back as the same double.
/// @param value Any double, including infinities, NaN and negative zero.
/// @return e.g. `"1.0"`, `"0.1"`, `"1e-05"`, `"1.5e+16"`, `"-inf"`, `"nan"`.
std::string reprFloat(double value);

/// @brief Python's name for the type of a JSON value after `json.loads`: `str`, `int`,
/// `float`, `bool`, `dict`, `list` or `NoneType`.
/// @param value Any JSON value.
/// @return The type name, for error messages.
std::string_view typeName(const Json& value);

/// @brief Python `bool()` of a value: false for null, `false`, zero, `""`, `[]` and `{}`.
/// @param value Any JSON value.
/// @return Its truth value.
bool truthy(const Json& value);

/// @brief A code point decoded from UTF-8.
struct DecodedCodePoint {
  /// The code point, or the byte value when the input is not valid UTF-8 there.
  char32_t value = 0;
  /// Bytes consumed (1 to 4, never 0 while input remains).
  std::size_t length = 0;
  /// False when the bytes at this position are not valid UTF-8 (`value` is then one byte).
  bool valid = true;
};

/// @brief Decodes the code point that starts at byte `pos` of `text`.
/// @param text UTF-8 text.
/// @param pos Byte offset, less than `text.size()`.
/// @return The code point and its length in bytes.
DecodedCodePoint decodeUtf8(std::string_view text, std::size_t pos);

/// @brief Appends the UTF-8 encoding of a code point to `out`.
/// @param code_point A Unicode scalar value.
/// @param out Where to append.
void appendUtf8(char32_t code_point, std::string& out);

/// @brief Python `str.isprintable()` for one character.
/// @param code_point The character.
/// @return True when `repr()` keeps the character as it is.
bool isPrintable(char32_t code_point);

/// @brief The `\w` class of Python's `re` module on `str` patterns (alphanumeric or `_`).
/// @param code_point The character.
/// @return True for word characters.
bool isWordChar(char32_t code_point);

/// @brief Python `str.isspace()`, which is also `\s` of `re` and the whitespace `int()` strips.
/// @param code_point The character.
/// @return True for whitespace.
bool isSpace(char32_t code_point);

/// @brief The value of a Unicode decimal digit (`str.isdecimal()`), as `int()` reads it.
/// @param code_point The character.
/// @return 0 to 9, or -1 when the character is not a decimal digit.
int decimalValue(char32_t code_point);

}  // namespace poolworker::py
