#include "backends/docker/log_stream.h"

#include <algorithm>

namespace poolworker::backends::docker {

void LogStreamDecoder::feed(std::string_view data, const Sink& sink) {
  while (!data.empty()) {
    if (raw_) {
      sink(OutputStream::Stdout, data);
      return;
    }
    if (remaining_ > 0) {
      const std::size_t n = std::min<std::size_t>(remaining_, data.size());
      sink(current_, data.substr(0, n));
      remaining_ -= static_cast<std::uint32_t>(n);
      data.remove_prefix(n);
      continue;
    }
    const std::size_t n = std::min<std::size_t>(sizeof(header_) - header_used_, data.size());
    std::copy_n(data.begin(), n, header_ + header_used_);
    header_used_ += n;
    data.remove_prefix(n);
    if (header_used_ < sizeof(header_)) {
      return;
    }
    header_used_ = 0;
    const unsigned char kind = header_[0];
    if (kind > 3 || header_[1] != 0 || header_[2] != 0 || header_[3] != 0) {
      raw_ = true;
      sink(OutputStream::Stdout,
           std::string_view(reinterpret_cast<const char*>(header_), sizeof(header_)));
      continue;
    }
    current_ = kind >= 2 ? OutputStream::Stderr : OutputStream::Stdout;
    remaining_ = (std::uint32_t{header_[4]} << 24U) | (std::uint32_t{header_[5]} << 16U) |
                 (std::uint32_t{header_[6]} << 8U) | std::uint32_t{header_[7]};
  }
}

}  // namespace poolworker::backends::docker
