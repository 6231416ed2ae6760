#include "worker/secret.h"

namespace poolworker {
namespace {

std::string base64(const std::string& in) {
  static constexpr char kTable[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned value = 0;
  int bits = -6;
  for (unsigned char c : in) {
    value = (value << 8) + c;
    bits += 8;
    while (bits >= 0) {
      out += kTable[(value >> bits) & 0x3F];
      bits -= 6;
    }
  }
  if (bits > -6) {
    out += kTable[((value << 8) >> (bits + 8)) & 0x3F];
  }
  while (out.size() % 4 != 0) {
    out += '=';
  }
  return out;
}

void replaceAll(std::string& text, const std::string& needle) {
  if (needle.empty()) {
    return;
  }
  size_t pos = 0;
  while ((pos = text.find(needle, pos)) != std::string::npos) {
    text.replace(pos, needle.size(), Secret::kMask);
    pos += Secret::kMask.size();
  }
}

}  // namespace

std::string maskSecrets(std::string text, std::initializer_list<const Secret*> secrets) {
  for (const Secret* secret : secrets) {
    if (secret == nullptr || secret->empty()) {
      continue;
    }
    replaceAll(text, secret->reveal());
    replaceAll(text, base64(secret->reveal()));
  }
  return text;
}

}  // namespace poolworker
