#pragma once

/// @file
/// @brief Decodes a container's output as the engine streams it (attach and logs endpoints).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace poolworker::backends::docker {

/// @brief Which stream a piece of output belongs to.
enum class OutputStream { Stdout, Stderr };

/// @brief Decodes the engine's multiplexed stream (`application/vnd.docker.raw-stream` of a
/// container without a TTY): frames of an 8-byte header (byte 0 the stream: 0 stdin, 1 stdout,
/// 2 stderr, 3 the engine's own errors; bytes 4 to 7 the big-endian payload length) and the
/// payload. For a container with a TTY the stream is raw and everything is stdout.
///
/// Input may be cut anywhere, inside a header or a payload; payloads are handed on as soon as
/// bytes of them arrive, so memory stays small whatever the frame size. Should a header ever
/// be malformed, the decoder treats the rest of the stream as raw stdout rather than dropping
/// output.
class LogStreamDecoder {
 public:
  /// @brief Receives decoded output: a piece of one frame's payload and its stream.
  using Sink = std::function<void(OutputStream stream, std::string_view data)>;

  /// @brief A decoder of a multiplexed (`raw` false) or raw (`raw` true) stream.
  explicit LogStreamDecoder(bool raw = false) : raw_(raw) {}

  /// @brief Decodes the next bytes of the stream.
  void feed(std::string_view data, const Sink& sink);

  /// @brief True when the input so far ended inside a frame.
  bool midFrame() const { return header_used_ > 0 || remaining_ > 0; }

  /// @brief True once the decoder fell back to raw output.
  bool raw() const { return raw_; }

 private:
  bool raw_;
  unsigned char header_[8] = {};
  std::size_t header_used_ = 0;
  std::uint32_t remaining_ = 0;
  OutputStream current_ = OutputStream::Stdout;
};

}  // namespace poolworker::backends::docker
