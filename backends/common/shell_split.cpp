#include "backends/common/shell_split.h"

namespace poolworker::backends::common {
namespace {

bool isSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

Result<std::vector<std::string>> shellSplit(std::string_view command) {
  std::vector<std::string> words;
  std::string word;
  // A word exists once any character or quote of it was seen: '' is an empty argument.
  bool in_word = false;
  size_t i = 0;
  const size_t n = command.size();
  while (i < n) {
    const char c = command[i];
    if (isSpace(c)) {
      if (in_word) {
        words.push_back(std::move(word));
        word.clear();
        in_word = false;
      }
      ++i;
      continue;
    }
    in_word = true;
    if (c == '\\') {
      if (i + 1 >= n) {
        return makeError(ErrorKind::InvalidConfiguration, "no escaped character");
      }
      word.push_back(command[i + 1]);
      i += 2;
    } else if (c == '\'') {
      const size_t close = command.find('\'', i + 1);
      if (close == std::string_view::npos) {
        return makeError(ErrorKind::InvalidConfiguration, "no closing quotation");
      }
      word.append(command.substr(i + 1, close - i - 1));
      i = close + 1;
    } else if (c == '"') {
      ++i;
      bool closed = false;
      while (i < n) {
        const char q = command[i];
        if (q == '"') {
          closed = true;
          ++i;
          break;
        }
        // Inside double quotes shlex only honours escapes of the quote and of the escape itself;
        // any other backslash is kept as written.
        if (q == '\\' && i + 1 < n && (command[i + 1] == '"' || command[i + 1] == '\\')) {
          word.push_back(command[i + 1]);
          i += 2;
          continue;
        }
        if (q == '\\' && i + 1 >= n) {
          return makeError(ErrorKind::InvalidConfiguration, "no escaped character");
        }
        word.push_back(q);
        ++i;
      }
      if (!closed) {
        return makeError(ErrorKind::InvalidConfiguration, "no closing quotation");
      }
    } else {
      word.push_back(c);
      ++i;
    }
  }
  if (in_word) {
    words.push_back(std::move(word));
  }
  return words;
}

}  // namespace poolworker::backends::common
