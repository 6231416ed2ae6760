#include "backends/common/http_client.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>  // Boost 1.74's Asio uses std::exchange without including it.

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http.hpp>
#include <poll.h>

namespace poolworker::backends::common {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using ErrorCode = boost::system::error_code;

namespace {

// Body bytes are copied from the parser into a chunk of this size. A buffered answer (a list
// of a thousand Jobs) is read in large pieces; a streamed one lives as long as its container,
// and a worker follows thousands of them at once, so its chunk is small and made on first use.
constexpr std::size_t kBufferedReadChunk = std::size_t{16} * 1024;
constexpr std::size_t kStreamedReadChunk = std::size_t{4} * 1024;

// A streamed body over a plain socket (the Docker engine's, a cluster's API without TLS) holds
// no buffer while it waits: it waits for the socket to be readable, then reads, parses and
// hands on the bytes at once through these buffers, shared by every call of the thread.
constexpr std::size_t kSharedStreamInput = std::size_t{16} * 1024;
constexpr std::size_t kSharedStreamOutput = std::size_t{16} * 1024;

struct SharedStreamBuffers {
  std::array<char, kSharedStreamInput> input;
  std::array<char, kSharedStreamOutput> output;
  // A handler that somehow fed another stream from inside its own `on_data` must not overwrite
  // the bytes it is still being handed: the nested feed uses a buffer of its own.
  bool in_use = false;
};

SharedStreamBuffers& sharedStreamBuffers() {
  static thread_local SharedStreamBuffers buffers;
  return buffers;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool startsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

std::string seconds(std::chrono::milliseconds ms) {
  const auto count = ms.count();
  if (count % 1000 == 0) {
    return std::to_string(count / 1000) + " s";
  }
  return std::to_string(count) + " ms";
}

}  // namespace

std::string HttpResponse::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (iequals(key, name)) {
      return value;
    }
  }
  return {};
}

std::string urlEncode(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[byte >> 4U]);
      out.push_back(kHex[byte & 0x0FU]);
    }
  }
  return out;
}

Result<HttpEndpoint> parseHttpEndpoint(std::string_view url, TlsSettings tls,
                                       std::string_view default_port,
                                       std::string_view default_tls_port) {
  const auto invalid = [&](const std::string& why) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "endpoint '" + std::string(url) + "': " + why);
  };
  HttpEndpoint endpoint;
  if (startsWith(url, "unix://") || startsWith(url, "/")) {
    const std::string_view path = startsWith(url, "unix://") ? url.substr(7) : url;
    if (path.empty()) {
      return invalid("the unix socket path is empty");
    }
    endpoint.transport = HttpEndpoint::Transport::Unix;
    endpoint.socket_path = std::string(path);
    endpoint.url = "unix://" + endpoint.socket_path;
    return endpoint;
  }
  std::string_view rest;
  if (startsWith(url, "tcp://")) {
    rest = url.substr(6);
  } else if (startsWith(url, "http://")) {
    rest = url.substr(7);
  } else if (startsWith(url, "https://")) {
    rest = url.substr(8);
    tls.enabled = true;
  } else {
    return invalid("expected unix:///path, tcp://host:port, http://host:port or https://host:port");
  }
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    if (rest.substr(slash) != "/") {
      return invalid("a path after the host is not supported");
    }
    rest = rest.substr(0, slash);
  }
  std::string_view host;
  std::string_view port;
  if (startsWith(rest, "[")) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) {
      return invalid("missing ']' after an IPv6 address");
    }
    host = rest.substr(1, close - 1);
    const std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return invalid("unexpected text after the IPv6 address");
      }
      port = after.substr(1);
    }
  } else {
    const auto colon = rest.rfind(':');
    if (colon != std::string_view::npos) {
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
      if (port.empty()) {
        return invalid("the port after ':' is empty");
      }
    } else {
      host = rest;
    }
  }
  if (host.empty()) {
    return invalid("the host is empty");
  }
  if (port.empty()) {
    port = tls.enabled ? default_tls_port : default_port;
  }
  if (!std::all_of(port.begin(), port.end(),
                   [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }) ||
      port.size() > 5 || std::stoi(std::string(port)) > 65535) {
    return invalid("the port '" + std::string(port) + "' is not a number from 0 to 65535");
  }
  endpoint.transport = HttpEndpoint::Transport::Tcp;
  endpoint.host = std::string(host);
  endpoint.port = std::string(port);
  endpoint.tls = std::move(tls);
  const bool v6 = endpoint.host.find(':') != std::string::npos;
  const std::string authority =
      (v6 ? "[" + endpoint.host + "]" : endpoint.host) + ":" + endpoint.port;
  endpoint.url = (startsWith(url, "tcp://") ? "tcp://"
                  : endpoint.tls.enabled    ? "https://"
                                            : "http://") +
                 authority;
  return endpoint;
}

// ---------------------------------------------------------------------------------------------

class CallBase;

/// What the client and its calls share. Calls keep it alive while they run.
class HttpClientState : public std::enable_shared_from_this<HttpClientState> {
 public:
  HttpClientState(asio::io_context& loop, HttpEndpoint where, HttpClientOptions settings)
      : io(loop), endpoint(std::move(where)), options(std::move(settings)) {}

  /// The TLS context, made on first use so that a bad file fails the request that needs it.
  Result<std::shared_ptr<asio::ssl::context>> tlsContext();

  void add(std::uint64_t id, const std::shared_ptr<CallBase>& call) { calls[id] = call; }
  void remove(std::uint64_t id) { calls.erase(id); }
  void cancelAll();

  /// An open connection kept for the next request; `stream` is the `Call`'s stream type.
  struct IdleConnection {
    std::shared_ptr<void> stream;
    int fd = -1;
    std::chrono::steady_clock::time_point since;
  };

  /// Keeps a connection whose exchange ended cleanly, unless the pool is full.
  void putIdle(std::shared_ptr<void> stream, int fd) {
    if (closed || options.max_idle_connections == 0) {
      return;
    }
    if (idle.size() >= options.max_idle_connections) {
      idle.erase(idle.begin());
    }
    idle.push_back({std::move(stream), fd, std::chrono::steady_clock::now()});
  }

  /// The most recently used idle connection that is still usable, or null. A connection with
  /// anything to read while idle was closed (or is being closed) by the server: an HTTP/1.1
  /// server sends nothing unasked.
  std::shared_ptr<void> takeIdle() {
    const auto now = std::chrono::steady_clock::now();
    while (!idle.empty()) {
      IdleConnection candidate = std::move(idle.back());
      idle.pop_back();
      if (now - candidate.since >= options.idle_expiry) {
        continue;
      }
      pollfd check{candidate.fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
      if (::poll(&check, 1, 0) != 0) {
        continue;
      }
      return std::move(candidate.stream);
    }
    return nullptr;
  }

  asio::io_context& io;
  HttpEndpoint endpoint;
  HttpClientOptions options;
  bool closed = false;
  std::size_t connected_calls = 0;  ///< Calls holding one of `max_connections`.
  /// Calls waiting for a connection slot. Held strongly: nothing else keeps a call alive before
  /// its first operation (the caller may drop the returned handle).
  std::deque<std::shared_ptr<CallBase>> waiting_calls;
  std::uint64_t next_id = 1;
  std::unordered_map<std::uint64_t, std::weak_ptr<CallBase>> calls;
  std::vector<IdleConnection> idle;

 private:
  std::shared_ptr<asio::ssl::context> tls_;
};

Result<std::shared_ptr<asio::ssl::context>> HttpClientState::tlsContext() {
  if (tls_) {
    return tls_;
  }
  const TlsSettings& settings = endpoint.tls;
  const auto fail = [&](const std::string& what, const std::string& file, const ErrorCode& ec) {
    return makeError(
        ErrorKind::InvalidConfiguration,
        "TLS for " + endpoint.url + ": cannot load " + what + " '" + file + "': " + ec.message());
  };
  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  ErrorCode ec;
  context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                           asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                           asio::ssl::context::no_tlsv1_1,
                       ec);
  const auto fail_pem = [&](const std::string& what, const ErrorCode& error) {
    return makeError(ErrorKind::InvalidConfiguration,
                     "TLS for " + endpoint.url + ": cannot load " + what + ": " + error.message());
  };
  if (settings.verify) {
    if (!settings.ca_pem.empty()) {
      if (context->add_certificate_authority(asio::buffer(settings.ca_pem), ec); ec) {
        return fail_pem("the inline CA certificate", ec);
      }
    } else if (!settings.ca_file.empty()) {
      if (context->load_verify_file(settings.ca_file, ec); ec) {
        return fail("the CA file", settings.ca_file, ec);
      }
    } else if (context->set_default_verify_paths(ec); ec) {
      return fail("the system's CA certificates", "", ec);
    }
    context->set_verify_mode(asio::ssl::verify_peer);
  } else {
    context->set_verify_mode(asio::ssl::verify_none);
  }
  if (!settings.cert_pem.empty()) {
    if (context->use_certificate_chain(asio::buffer(settings.cert_pem), ec); ec) {
      return fail_pem("the inline client certificate", ec);
    }
    if (settings.key_pem.empty()) {
      return makeError(ErrorKind::InvalidConfiguration,
                       "TLS for " + endpoint.url + ": a client certificate without its key");
    }
    if (context->use_private_key(asio::buffer(settings.key_pem), asio::ssl::context::pem, ec); ec) {
      return fail_pem("the inline client key", ec);
    }
  } else if (!settings.cert_file.empty()) {
    if (context->use_certificate_chain_file(settings.cert_file, ec); ec) {
      return fail("the client certificate", settings.cert_file, ec);
    }
    const std::string& key = settings.key_file.empty() ? settings.cert_file : settings.key_file;
    if (context->use_private_key_file(key, asio::ssl::context::pem, ec); ec) {
      return fail("the client key", key, ec);
    }
  }
  tls_ = std::move(context);
  return tls_;
}

/// One exchange: connect, send, read the head, read the body, close. Transport-independent
/// parts live here; `Call<Stream>` adds the connection.
class CallBase : public HttpCall, public std::enable_shared_from_this<CallBase> {
 public:
  CallBase(std::shared_ptr<HttpClientState> state, std::uint64_t id, HttpRequest request,
           StreamHandlers handlers, bool buffer_all)
      : state_(std::move(state)),
        id_(id),
        request_(std::move(request)),
        handlers_(std::move(handlers)),
        buffer_all_(buffer_all),
        head_timer_(state_->io),
        total_timer_(state_->io) {
    // No limit: streamed bodies last as long as a container, and buffered ones are capped by
    // `max_buffered_body`. Not boost::none: Boost 1.74 compares a Content-Length with the empty
    // optional as larger than it and fails every such body with "body limit exceeded".
    parser_.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser_.header_limit(64 * 1024);
  }

  void run() {
    armTimer(head_timer_, request_.head_timeout.count() > 0 ? request_.head_timeout
                                                            : std::chrono::milliseconds(0));
    armTimer(total_timer_, request_.timeout);
    const std::size_t limit = state_->options.max_connections;
    if (limit != 0 && state_->connected_calls >= limit) {
      state_->waiting_calls.push_back(shared_from_this());
      return;
    }
    if (limit != 0) {
      ++state_->connected_calls;
      holds_connection_slot_ = true;
    }
    connect();
  }

  void cancel() override {
    if (done_) {
      return;
    }
    abort(makeError(ErrorKind::Cancelled, "the request to " + service() + " was cancelled"));
  }

 protected:
  virtual void connect() = 0;
  virtual void closeStream() = 0;
  virtual void write() = 0;
  virtual void readHead() = 0;
  virtual void readBody() = 0;
  /// Offers the connection to the pool after a complete exchange; false when it cannot be kept.
  virtual bool keepConnection() = 0;
  /// Drops a reused connection whose write failed and connects afresh.
  virtual void reconnect() = 0;

  std::string service() const { return state_->options.service_name; }
  /// host:port of a TCP endpoint, IPv6 addresses in brackets.
  std::string authority() const {
    const bool v6 = endpoint().host.find(':') != std::string::npos;
    return (v6 ? "[" + endpoint().host + "]" : endpoint().host) + ":" + endpoint().port;
  }
  const HttpEndpoint& endpoint() const { return state_->endpoint; }

  /// Ends the call with `error` whatever is pending: the pending operation is aborted by the
  /// close, and its handler finds the call already finished.
  void abort(Error error) {
    if (done_ || aborted_) {
      return;
    }
    pending_error_ = std::move(error);
    aborted_ = true;
    closeStream();
    asio::post(state_->io, [self = shared_from_this()] { self->finish(*self->pending_error_); });
  }

  /// The error for a failed step, preferring the reason the call was aborted.
  Error failure(const ErrorCode& ec, bool connecting) const {
    if (pending_error_) {
      return *pending_error_;
    }
    const std::string& url = endpoint().url;
    if (connecting) {
      if (ec == asio::error::access_denied || ec.value() == EPERM) {
        return makeError(ErrorKind::Unauthorized,
                         "permission denied connecting to " + service() + " at " + url);
      }
      std::string why = ec.message();
      if (ec == asio::error::connection_refused) {
        why = "connection refused";
      } else if (ec.value() == ENOENT) {
        why = "no such file or directory";
      } else if (ec == asio::error::host_not_found) {
        why = "host not found";
      }
      if (!why.empty()) {
        why.front() = static_cast<char>(std::tolower(static_cast<unsigned char>(why.front())));
      }
      return makeError(ErrorKind::Transient,
                       "cannot reach " + service() + " at " + url + ": " + why);
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == http::error::partial_message) {
      return makeError(ErrorKind::Transient,
                       service() + " at " + url + " closed the connection before the answer ended");
    }
    return makeError(ErrorKind::Transient,
                     "the connection to " + service() + " at " + url + " broke: " + ec.message());
  }

  void onConnected() {
    if (done_ || aborted_) {
      return;
    }
    if (message_ready_) {
      write();
      return;
    }
    message_ready_ = true;
    request_message_.method_string(request_.method);
    const auto& proxy = endpoint().proxy;
    if (proxy && !endpoint().tls.enabled) {
      // A proxy forwarding plain HTTP wants the absolute URL.
      request_message_.target("http://" + authority() + request_.target);
      if (!proxy->authorization.empty()) {
        request_message_.set(http::field::proxy_authorization, proxy->authorization);
      }
    } else {
      request_message_.target(request_.target);
    }
    request_message_.version(11);
    if (endpoint().transport == HttpEndpoint::Transport::Unix) {
      request_message_.set(http::field::host, "localhost");
    } else {
      // The port is left out when it is the scheme's default, as browsers and curl do: some
      // front ends route on the exact Host value.
      const bool default_port = endpoint().port == (endpoint().tls.enabled ? "443" : "80");
      const bool v6 = endpoint().host.find(':') != std::string::npos;
      request_message_.set(
          http::field::host,
          default_port ? (v6 ? "[" + endpoint().host + "]" : endpoint().host) : authority());
    }
    request_message_.set(http::field::user_agent, state_->options.user_agent);
    if (state_->options.max_idle_connections == 0) {
      request_message_.set(http::field::connection, "close");
    }
    for (const auto& [name, value] : request_.headers) {
      request_message_.set(name, value);
    }
    if (!request_.content_type.empty()) {
      request_message_.set(http::field::content_type, request_.content_type);
    }
    request_message_.body() = std::move(request_.body);
    request_message_.prepare_payload();
    write();
  }

  void onWritten(const ErrorCode& ec) {
    if (done_ || aborted_) {
      return;
    }
    if (ec && reused_ && !resent_) {
      // The server closed this idle connection before our request reached it: it saw nothing,
      // so sending it again is safe whatever the request does.
      resent_ = true;
      reused_ = false;
      if (request_.on_resent) {
        request_.on_resent();
        if (done_ || aborted_) {
          return;
        }
      }
      reconnect();
      return;
    }
    if (ec) {
      finish(failure(ec, false));
      return;
    }
    // A streamed answer may last for hours: keep nothing of the request but what messages name.
    request_message_ = {};
    request_.headers = {};
    request_.body = {};
    readHead();
  }

  void onHead(const ErrorCode& ec) {
    if (done_ || aborted_) {
      return;
    }
    if (ec) {
      finish(failure(ec, false));
      return;
    }
    head_timer_.cancel();
    const auto& message = parser_.get();
    head_.status = static_cast<int>(message.result_int());
    for (const auto& field : message) {
      head_.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    streaming_ = !buffer_all_ && head_.status >= 200 && head_.status < 300;
    if (streaming_ && handlers_.on_head) {
      handlers_.on_head(head_);
      if (done_ || aborted_) {
        return;
      }
    }
    continueBody();
  }

  void continueBody() {
    if (parser_.is_done()) {
      finish(head_);
      return;
    }
    if (streaming_ && waits_unbuffered_) {
      readBody();
      return;
    }
    if (!chunk_) {
      // A thousand runs start at once: a chunk as large as the answer, not 64 KiB for each, keeps
      // the burst's peak (which the heap keeps as resident memory afterwards) down.
      chunk_size_ = buffer_all_ ? kBufferedReadChunk : kStreamedReadChunk;
      if (const auto length = parser_.content_length(); buffer_all_ && length) {
        chunk_size_ =
            static_cast<std::size_t>(std::clamp<std::uint64_t>(*length, 1, kBufferedReadChunk));
      }
      chunk_ = std::make_unique_for_overwrite<char[]>(chunk_size_);
    }
    parser_.get().body().data = chunk_.get();
    parser_.get().body().size = chunk_size_;
    readBody();
  }

  void onBody(ErrorCode ec) {
    if (done_ || aborted_) {
      return;
    }
    if (ec == http::error::need_buffer) {
      ec = {};
    }
    const std::size_t n = chunk_size_ - parser_.get().body().size;
    if (n > 0) {
      const std::string_view data(chunk_.get(), n);
      if (streaming_) {
        if (handlers_.on_data) {
          handlers_.on_data(data);
          if (done_ || aborted_) {
            return;
          }
        }
      } else {
        if (head_.body.size() + n > state_->options.max_buffered_body) {
          finish(makeError(ErrorKind::Internal,
                           "the answer of " + service() + " to " + request_.method + " " +
                               request_.target + " is larger than " +
                               std::to_string(state_->options.max_buffered_body) + " bytes"));
          return;
        }
        head_.body.append(data);
      }
    }
    if (ec) {
      finish(failure(ec, false));
      return;
    }
    continueBody();
  }

  /// Parses the bytes `input` (after those left over from the last read, kept in `buffer_`)
  /// and hands the body on; keeps what the parser could not take yet. False when the call
  /// finished.
  bool feedStreamed(std::string_view input) {
    auto& shared = sharedStreamBuffers();
    std::unique_ptr<char[]> own;
    char* out = shared.output.data();
    if (shared.in_use) {
      own = std::make_unique_for_overwrite<char[]>(kSharedStreamOutput);
      out = own.get();
    }
    const bool outer = !shared.in_use;
    shared.in_use = true;
    const bool alive = parseStreamed(input, out);
    if (outer) {
      shared.in_use = false;
    }
    return alive;
  }

  /// The end of a plain socket's stream: a body delimited by the connection's close ends
  /// here; any other is cut short.
  void endStreamed(const ErrorCode& read_error) {
    ErrorCode ec;
    parser_.put_eof(ec);
    if (!ec && parser_.is_done()) {
      finish(head_);
      return;
    }
    finish(failure(ec ? ec : read_error, false));
  }

  void finish(Result<HttpResponse> result) {
    if (done_) {
      return;
    }
    done_ = true;
    head_timer_.cancel();
    total_timer_.cancel();
    const bool reusable = result.ok() && !aborted_ && parser_.is_done() &&
                          parser_.get().keep_alive() && buffer_.size() == 0;
    if (!reusable || !keepConnection()) {
      closeStream();
    }
    if (holds_connection_slot_) {
      holds_connection_slot_ = false;
      --state_->connected_calls;
      startNextWaiting();
    }
    state_->remove(id_);
    auto on_done = std::move(handlers_.on_done);
    handlers_ = {};
    if (on_done) {
      on_done(std::move(result));
    }
  }

  // Hands the freed connection slot to the oldest waiting call still alive, which takes over
  // the connection just kept idle, if any.
  void startNextWaiting() {
    auto& waiting = state_->waiting_calls;
    while (!waiting.empty()) {
      auto next = std::move(waiting.front());
      waiting.pop_front();
      if (next->done_ || next->aborted_) {
        continue;
      }
      ++state_->connected_calls;
      next->holds_connection_slot_ = true;
      // Not from inside this call's completion: the next call's handlers must not run on
      // this stack.
      asio::post(state_->io, [next] {
        if (!next->done_ && !next->aborted_) {
          next->connect();
        }
      });
      return;
    }
  }

  void armTimer(asio::steady_timer& timer, std::chrono::milliseconds after) {
    if (after.count() <= 0) {
      return;
    }
    timer.expires_after(after);
    timer.async_wait([weak = weak_from_this(), after](const ErrorCode& ec) {
      auto self = weak.lock();
      if (ec || !self || self->done_) {
        return;
      }
      self->abort(makeError(ErrorKind::Transient, self->service() + " at " + self->endpoint().url +
                                                      " did not answer within " + seconds(after)));
    });
  }

  std::shared_ptr<HttpClientState> state_;
  std::uint64_t id_;
  HttpRequest request_;
  StreamHandlers handlers_;
  bool buffer_all_;
  bool streaming_ = false;
  bool done_ = false;
  bool aborted_ = false;  // closed by cancel() or a deadline; finish() is on its way
  bool reused_ = false;   // the connection came from the idle pool
  bool resent_ = false;   // the request was sent again after a failed write on a reused one
  bool message_ready_ = false;
  bool holds_connection_slot_ = false;  // one of the client's max_connections
  bool waits_unbuffered_ = false;       // a streamed body is read as in `Call::startStreamed`
  std::optional<Error> pending_error_;
  asio::steady_timer head_timer_;
  asio::steady_timer total_timer_;
  http::request<http::string_body> request_message_;
  beast::flat_buffer buffer_;
  http::response_parser<http::buffer_body> parser_;
  std::unique_ptr<char[]> chunk_;
  std::size_t chunk_size_ = 0;
  HttpResponse head_;

 private:
  bool parseStreamed(std::string_view input, char* out) {
    // Leftover bytes (a chunk header cut by the read) are few: joining them with the new ones
    // keeps the parser's input in one piece.
    std::string joined;
    if (buffer_.size() > 0) {
      const auto left = buffer_.data();
      joined.assign(static_cast<const char*>(left.data()), left.size());
      joined.append(input);
      buffer_.consume(buffer_.size());
      input = joined;
    }
    while (!parser_.is_done()) {
      auto& body = parser_.get().body();
      body.data = out;
      body.size = kSharedStreamOutput;
      ErrorCode ec;
      const std::size_t used = parser_.put(asio::buffer(input.data(), input.size()), ec);
      input.remove_prefix(used);
      const std::size_t produced = kSharedStreamOutput - body.size;
      body.data = nullptr;
      body.size = 0;
      if (produced > 0 && handlers_.on_data) {
        handlers_.on_data(std::string_view(out, produced));
        if (done_ || aborted_) {
          return false;
        }
      }
      if (ec == http::error::need_buffer) {
        continue;
      }
      if (ec == http::error::need_more) {
        break;
      }
      if (ec) {
        finish(failure(ec, false));
        return false;
      }
      if (used == 0 && produced == 0) {
        break;
      }
    }
    if (parser_.is_done()) {
      finish(head_);
      return false;
    }
    if (!input.empty()) {
      const auto room = buffer_.prepare(input.size());
      std::memcpy(room.data(), input.data(), input.size());
      buffer_.commit(input.size());
    } else {
      buffer_.shrink_to_fit();
    }
    return true;
  }
};

template <typename Stream>
class Call final : public CallBase {
 public:
  Call(std::shared_ptr<HttpClientState> state, std::uint64_t id, HttpRequest request,
       StreamHandlers handlers, bool buffer_all,
       std::shared_ptr<asio::ssl::context> tls_context = nullptr)
      : CallBase(std::move(state), id, std::move(request), std::move(handlers), buffer_all),
        tls_context_(std::move(tls_context)),
        resolver_(state_->io) {
    // TLS keeps its own buffers and may hold decrypted bytes the socket no longer shows as
    // readable, so only plain sockets wait for readiness.
    waits_unbuffered_ = !kTls;
  }

 private:
  using Self = Call<Stream>;
  static constexpr bool kUnix = std::is_same_v<Stream, asio::local::stream_protocol::socket>;
  static constexpr bool kTls = std::is_same_v<Stream, asio::ssl::stream<asio::ip::tcp::socket>>;

  std::shared_ptr<Self> self() { return std::static_pointer_cast<Self>(shared_from_this()); }

  std::shared_ptr<Stream> freshStream() {
    if constexpr (kTls) {
      return std::make_shared<Stream>(state_->io, *tls_context_);
    } else {
      return std::make_shared<Stream>(state_->io);
    }
  }

  void connect() override {
    if (auto idle = state_->takeIdle()) {
      stream_ = std::static_pointer_cast<Stream>(std::move(idle));
      reused_ = true;
      onConnected();
      return;
    }
    stream_ = freshStream();
    if constexpr (kUnix) {
      stream_->async_connect(asio::local::stream_protocol::endpoint(endpoint().socket_path),
                             [self = self()](const ErrorCode& ec) {
                               if (self->done_) {
                                 return;
                               }
                               if (ec) {
                                 self->finish(self->failure(ec, true));
                                 return;
                               }
                               self->onConnected();
                             });
    } else {
      const auto& proxy = endpoint().proxy;
      const std::string& host = proxy ? proxy->host : endpoint().host;
      const std::string& port = proxy ? proxy->port : endpoint().port;
      // An address needs no lookup: the resolver's getaddrinfo reads a handful of files
      // (nsswitch.conf, hosts, gai.conf) for every new connection.
      ErrorCode not_numeric;
      const auto address = asio::ip::make_address(host, not_numeric);
      if (!not_numeric) {
        const asio::ip::tcp::endpoint target(address, static_cast<unsigned short>(std::stoi(port)));
        beast::get_lowest_layer(*stream_).async_connect(
            target, [self = self()](const ErrorCode& ec) { self->onTcpConnected(ec); });
        return;
      }
      resolver_.async_resolve(
          host, port,
          [self = self()](const ErrorCode& ec, const asio::ip::tcp::resolver::results_type& found) {
            if (self->done_) {
              return;
            }
            if (ec) {
              self->finish(self->failure(ec, true));
              return;
            }
            asio::async_connect(beast::get_lowest_layer(*self->stream_), found,
                                [self](const ErrorCode& connect_ec, const auto&) {
                                  self->onTcpConnected(connect_ec);
                                });
          });
    }
  }

  void onTcpConnected(const ErrorCode& ec) {
    if (done_) {
      return;
    }
    if (ec) {
      finish(failure(ec, true));
      return;
    }
    if (kTls && endpoint().proxy) {
      tunnel();
      return;
    }
    handshake();
  }

  void reconnect() override {
    closeStream();
    stream_.reset();
    connect();
  }

  /// Asks the proxy for a tunnel to the endpoint, for TLS end to end.
  void tunnel() {
    tunnel_request_ =
        std::make_shared<http::request<http::empty_body>>(http::verb::connect, authority(), 11);
    tunnel_request_->set(http::field::host, authority());
    if (!endpoint().proxy->authorization.empty()) {
      tunnel_request_->set(http::field::proxy_authorization, endpoint().proxy->authorization);
    }
    http::async_write(
        beast::get_lowest_layer(*stream_), *tunnel_request_,
        [self = self()](const ErrorCode& ec, std::size_t) {
          if (self->done_ || self->aborted_) {
            return;
          }
          if (ec) {
            self->finish(self->failure(ec, true));
            return;
          }
          self->tunnel_answer_ = std::make_shared<http::response_parser<http::empty_body>>();
          self->tunnel_answer_->skip(true);  // a 2xx answer to CONNECT has no body
          http::async_read_header(
              beast::get_lowest_layer(*self->stream_), self->buffer_, *self->tunnel_answer_,
              [self](const ErrorCode& read_ec, std::size_t) {
                if (self->done_ || self->aborted_) {
                  return;
                }
                if (read_ec) {
                  self->finish(self->failure(read_ec, true));
                  return;
                }
                const int status = static_cast<int>(self->tunnel_answer_->get().result_int());
                if (status / 100 != 2) {
                  self->finish(makeError(ErrorKind::Transient,
                                         "cannot reach " + self->service() + " at " +
                                             self->endpoint().url + ": the proxy answered " +
                                             std::to_string(status) + " to CONNECT"));
                  return;
                }
                self->handshake();
              });
        });
  }

  void handshake() {
    if constexpr (kTls) {
      const std::string& host = endpoint().host;
      ErrorCode not_an_address;
      (void)asio::ip::make_address(host, not_an_address);
      if (not_an_address) {
        // SNI: a server with several names needs it to choose its certificate.
        SSL_ctrl(stream_->native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                 const_cast<char*>(host.c_str()));
      }
      if (endpoint().tls.verify) {
        stream_->set_verify_callback(asio::ssl::host_name_verification(host));
      }
      stream_->async_handshake(
          asio::ssl::stream_base::client, [self = self()](const ErrorCode& ec) {
            if (self->done_) {
              return;
            }
            if (ec) {
              if (self->pending_error_) {
                self->finish(*self->pending_error_);
                return;
              }
              self->finish(makeError(ErrorKind::InfrastructureFailed,
                                     "TLS handshake with " + self->service() + " at " +
                                         self->endpoint().url + " failed: " + ec.message()));
              return;
            }
            self->onConnected();
          });
    } else {
      onConnected();
    }
  }

  void write() override {
    http::async_write(*stream_, request_message_,
                      [self = self()](const ErrorCode& ec, std::size_t) { self->onWritten(ec); });
  }

  void readHead() override {
    http::async_read_header(
        *stream_, buffer_, parser_,
        [self = self()](const ErrorCode& ec, std::size_t) { self->onHead(ec); });
  }

  void readBody() override {
    if constexpr (!kTls) {
      if (streaming_) {
        startStreamed();
        return;
      }
    }
    http::async_read_some(*stream_, buffer_, parser_,
                          [self = self()](const ErrorCode& ec, std::size_t) { self->onBody(ec); });
  }

  // Bytes read with the head are parsed first; then the call waits, holding no buffer.
  void startStreamed() {
    if (buffer_.size() > 0 && !feedStreamed({})) {
      return;
    }
    buffer_.shrink_to_fit();
    // Reads after a wait must not block when the readiness was spurious; Asio's own
    // operations on this socket work in either mode.
    ErrorCode ec;
    stream_->non_blocking(true, ec);
    if (ec) {
      finish(failure(ec, false));
      return;
    }
    waitStreamed();
  }

  void waitStreamed() {
    stream_->async_wait(asio::socket_base::wait_read,
                        [self = self()](const ErrorCode& ec) { self->onStreamReadable(ec); });
  }

  void onStreamReadable(const ErrorCode& wait_error) {
    if (done_ || aborted_) {
      return;
    }
    if (wait_error) {
      finish(failure(wait_error, false));
      return;
    }
    // Reads what the socket holds now, but lets other handlers run between two reads of a
    // fast stream.
    auto& shared = sharedStreamBuffers();
    std::unique_ptr<char[]> own;
    char* input = shared.input.data();
    if (shared.in_use) {
      own = std::make_unique_for_overwrite<char[]>(kSharedStreamInput);
      input = own.get();
    }
    ErrorCode ec;
    const std::size_t n = stream_->read_some(asio::buffer(input, kSharedStreamInput), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      waitStreamed();
      return;
    }
    if (ec == asio::error::eof) {
      endStreamed(ec);
      return;
    }
    if (ec) {
      finish(failure(ec, false));
      return;
    }
    if (!feedStreamed(std::string_view(input, n))) {
      return;
    }
    if (n == kSharedStreamInput) {
      asio::post(state_->io, [self = self()] { self->onStreamReadable({}); });
      return;
    }
    waitStreamed();
  }

  bool keepConnection() override {
    if (!stream_ || state_->closed || state_->options.max_idle_connections == 0) {
      return false;
    }
    auto& socket = beast::get_lowest_layer(*stream_);
    if (!socket.is_open()) {
      return false;
    }
    state_->putIdle(std::move(stream_), socket.native_handle());
    return true;
  }

  void closeStream() override {
    ErrorCode ignored;
    if constexpr (!kUnix) {
      resolver_.cancel();
    }
    if (!stream_) {
      return;
    }
    auto& socket = beast::get_lowest_layer(*stream_);
    if (socket.is_open()) {
      socket.shutdown(asio::socket_base::shutdown_both, ignored);
      socket.close(ignored);
    }
  }

  std::shared_ptr<asio::ssl::context> tls_context_;
  std::shared_ptr<Stream> stream_;
  std::shared_ptr<http::request<http::empty_body>> tunnel_request_;
  std::shared_ptr<http::response_parser<http::empty_body>> tunnel_answer_;
  asio::ip::tcp::resolver resolver_;
};

void HttpClientState::cancelAll() {
  std::vector<std::shared_ptr<CallBase>> live;
  live.reserve(calls.size());
  for (const auto& [id, weak] : calls) {
    if (auto call = weak.lock()) {
      live.push_back(std::move(call));
    }
  }
  for (const auto& call : live) {
    call->cancel();
  }
  // The cancelled calls end through posted completions, which hold them; the queue's hold
  // would otherwise keep them, and through them this state, alive.
  waiting_calls.clear();
  idle.clear();
}

namespace {

/// A call that fails at once, for a client that was shut down or misconfigured.
class FailedCall final : public HttpCall {
 public:
  void cancel() override {}
};

std::shared_ptr<HttpCall> startCall(const std::shared_ptr<HttpClientState>& state,
                                    HttpRequest request, StreamHandlers handlers, bool buffer_all) {
  const auto fail_now = [&](Error error) -> std::shared_ptr<HttpCall> {
    asio::post(state->io, [on_done = std::move(handlers.on_done), error = std::move(error)] {
      if (on_done) {
        on_done(error);
      }
    });
    return std::make_shared<FailedCall>();
  };
  if (state->closed) {
    return fail_now(makeError(ErrorKind::Cancelled,
                              "the client of " + state->options.service_name + " was shut down"));
  }
  const std::uint64_t id = state->next_id++;
  std::shared_ptr<CallBase> call;
  if (state->endpoint.transport == HttpEndpoint::Transport::Unix) {
    call = std::make_shared<Call<asio::local::stream_protocol::socket>>(
        state, id, std::move(request), std::move(handlers), buffer_all);
  } else if (state->endpoint.tls.enabled) {
    auto context = state->tlsContext();
    if (!context) {
      return fail_now(context.error());
    }
    call = std::make_shared<Call<asio::ssl::stream<asio::ip::tcp::socket>>>(
        state, id, std::move(request), std::move(handlers), buffer_all, *context);
  } else {
    call = std::make_shared<Call<asio::ip::tcp::socket>>(state, id, std::move(request),
                                                         std::move(handlers), buffer_all);
  }
  state->add(id, call);
  call->run();
  return call;
}

}  // namespace

HttpClient::HttpClient(asio::io_context& io, HttpEndpoint endpoint, HttpClientOptions options)
    : state_(std::make_shared<HttpClientState>(io, std::move(endpoint), std::move(options))) {}

HttpClient::~HttpClient() { cancelAll(); }

std::shared_ptr<HttpCall> HttpClient::request(HttpRequest request,
                                              std::function<void(Result<HttpResponse>)> done) {
  StreamHandlers handlers;
  handlers.on_done = std::move(done);
  return startCall(state_, std::move(request), std::move(handlers), true);
}

std::shared_ptr<HttpCall> HttpClient::stream(HttpRequest request, StreamHandlers handlers) {
  return startCall(state_, std::move(request), std::move(handlers), false);
}

void HttpClient::cancelAll() {
  state_->closed = true;
  state_->cancelAll();
}

const HttpEndpoint& HttpClient::endpoint() const { return state_->endpoint; }

}  // namespace poolworker::backends::common
