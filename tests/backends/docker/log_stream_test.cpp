#include "backends/docker/log_stream.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace poolworker::backends::docker {
namespace {

std::string frame(unsigned char stream, const std::string& payload) {
  std::string out;
  out.push_back(static_cast<char>(stream));
  out.append(3, '\0');
  const auto n = static_cast<std::uint32_t>(payload.size());
  out.push_back(static_cast<char>((n >> 24U) & 0xFFU));
  out.push_back(static_cast<char>((n >> 16U) & 0xFFU));
  out.push_back(static_cast<char>((n >> 8U) & 0xFFU));
  out.push_back(static_cast<char>(n & 0xFFU));
  return out + payload;
}

struct Decoded {
  std::string out;
  std::string err;
  std::vector<std::pair<OutputStream, std::string>> pieces;
};

void feedAll(LogStreamDecoder& decoder, const std::vector<std::string_view>& parts,
             Decoded& decoded) {
  for (const auto part : parts) {
    decoder.feed(part, [&](OutputStream stream, std::string_view data) {
      (stream == OutputStream::Stderr ? decoded.err : decoded.out).append(data);
      decoded.pieces.emplace_back(stream, std::string(data));
    });
  }
}

TEST(LogStream, DecodesMultiplexedFrames) {
  const std::string stream = frame(1, "hello\n") + frame(2, "oops\n") + frame(1, "") +
                             frame(1, "partial line") + frame(0, "stdin echo") +
                             frame(3, "engine error\n");
  LogStreamDecoder decoder;
  Decoded decoded;
  feedAll(decoder, {stream}, decoded);
  EXPECT_EQ(decoded.out, "hello\npartial linestdin echo");
  EXPECT_EQ(decoded.err, "oops\nengine error\n");
  EXPECT_FALSE(decoder.midFrame());
  EXPECT_FALSE(decoder.raw());
}

TEST(LogStream, FramesSplitAtEveryByteBoundaryDecodeTheSame) {
  const std::string payload(300, 'x');
  const std::string stream =
      frame(1, "out-1\n") + frame(2, "err-1\n") + frame(1, payload) + frame(2, "é\xff\n");
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    LogStreamDecoder decoder;
    Decoded decoded;
    const std::string_view all(stream);
    feedAll(decoder, {all.substr(0, cut), all.substr(cut)}, decoded);
    EXPECT_EQ(decoded.out, "out-1\n" + payload) << "cut at " << cut;
    EXPECT_EQ(decoded.err, "err-1\né\xff\n") << "cut at " << cut;
    EXPECT_FALSE(decoder.midFrame());
  }
  // And one byte at a time.
  LogStreamDecoder decoder;
  Decoded decoded;
  for (const char c : stream) {
    feedAll(decoder, {std::string_view(&c, 1)}, decoded);
  }
  EXPECT_EQ(decoded.out, "out-1\n" + payload);
  EXPECT_EQ(decoded.err, "err-1\né\xff\n");
}

TEST(LogStream, KnowsWhenItStopsInsideAFrame) {
  LogStreamDecoder decoder;
  Decoded decoded;
  const std::string stream = frame(1, "abcdef");
  feedAll(decoder, {std::string_view(stream).substr(0, 4)}, decoded);
  EXPECT_TRUE(decoder.midFrame());
  feedAll(decoder, {std::string_view(stream).substr(4, 6)}, decoded);
  EXPECT_TRUE(decoder.midFrame());
  EXPECT_EQ(decoded.out, "ab");
  feedAll(decoder, {std::string_view(stream).substr(10)}, decoded);
  EXPECT_FALSE(decoder.midFrame());
  EXPECT_EQ(decoded.out, "abcdef");
}

TEST(LogStream, PassesRawStreamsThrough) {
  LogStreamDecoder decoder(true);
  Decoded decoded;
  feedAll(decoder, {"plain tty output\r\n", std::string_view("\x01\0\0\0", 4)}, decoded);
  EXPECT_EQ(decoded.out, std::string("plain tty output\r\n") + std::string("\x01\0\0\0", 4));
  EXPECT_TRUE(decoded.err.empty());
}

TEST(LogStream, FallsBackToRawOnAMalformedHeader) {
  LogStreamDecoder decoder;
  Decoded decoded;
  feedAll(decoder, {frame(1, "ok\n") + "this is not a frame header"}, decoded);
  EXPECT_TRUE(decoder.raw());
  EXPECT_EQ(decoded.out, "ok\nthis is not a frame header");
}

}  // namespace
}  // namespace poolworker::backends::docker
