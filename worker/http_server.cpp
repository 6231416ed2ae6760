#include "worker/http_server.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <mutex>
#include <optional>
#include <utility>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace poolworker::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t kHeaderLimit = std::size_t{64} * 1024;
constexpr std::chrono::seconds kWriteTimeout{30};

std::string toLower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

std::map<std::string, std::string> parseQuery(std::string_view query) {
  std::map<std::string, std::string> result;
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) {
      continue;
    }
    std::size_t eq = pair.find('=');
    std::string key = percentDecode(std::string(pair.substr(0, eq)), true);
    std::string value = eq == std::string_view::npos
                            ? std::string()
                            : percentDecode(std::string(pair.substr(eq + 1)), true);
    result[key] = value;
  }
  return result;
}

std::string formatEndpoint(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) {
    return "[" + host + "]:" + std::to_string(port);
  }
  return host + ":" + std::to_string(port);
}

bool bodilessStatus(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

}  // namespace

std::string Request::header(const std::string& name) const {
  auto it = headers.find(toLower(name));
  return it == headers.end() ? std::string() : it->second;
}

std::string percentDecode(const std::string& text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%' && i + 2 < text.size()) {
      int high = hexValue(text[i + 1]);
      int low = hexValue(text[i + 2]);
      if (high >= 0 && low >= 0) {
        out.push_back(static_cast<char>(high * 16 + low));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && c == '+' ? ' ' : c);
  }
  return out;
}

std::string reasonPhrase(int status) {
  if (status < 0 || status > 999) {
    return "Unknown";
  }
  auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
  return reason.empty() || reason == "<unknown-status>" ? "Unknown" : std::string(reason);
}

namespace {
class Connection;
}  // namespace

// Shared by the server object and its connections, so that a connection outliving the
// server (held by a pending handler) still finds valid settings.
struct detail::ServerState {
  explicit ServerState(asio::io_context& context) : io(context), acceptor(context) {}

  asio::io_context& io;
  tcp::acceptor acceptor;
  uint16_t bound_port = 0;

  std::mutex mutex;
  Handler handler;
  std::size_t body_limit = HttpServer::kDefaultBodyLimit;
  std::chrono::milliseconds idle_timeout = HttpServer::kDefaultIdleTimeout;
  bool stopped = false;
  // Weak: a connection lives as long as an operation or a pending responder holds it.
  std::map<const Connection*, std::weak_ptr<Connection>> connections;

  void accept(const std::shared_ptr<ServerState>& self);
  void forget(const Connection* connection) {
    std::lock_guard lock(mutex);
    connections.erase(connection);
  }
};

namespace {

// One accepted socket: reads a request, hands it to the handler, writes the answer, repeats.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, std::weak_ptr<detail::ServerState> server, std::size_t body_limit,
             std::chrono::milliseconds idle_timeout)
      : stream_(std::move(socket)),
        server_(std::move(server)),
        body_limit_(body_limit),
        idle_timeout_(idle_timeout) {}

  ~Connection() {
    if (auto server = server_.lock()) {
      server->forget(this);
    }
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->readHeader(); });
  }

  // Called from any thread.
  void close() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->closeNow(); });
  }

 private:
  void readHeader() {
    if (closed_) {
      return;
    }
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(body_limit_);
    stream_.expires_after(idle_timeout_);
    bhttp::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->onHeader(ec); });
  }

  void onHeader(beast::error_code ec) {
    if (ec) {
      onReadError(ec);
      return;
    }
    const auto& header = parser_->get();
    if (auto length = parser_->content_length(); length && *length > body_limit_) {
      sendError(413, R"({"detail":"Request body too large"})");
      return;
    }
    auto expect = header[bhttp::field::expect];
    if (!expect.empty() && toLower(expect) == "100-continue") {
      // curl and others wait for this before sending a large body.
      continue_response_.emplace(bhttp::status::continue_, header.version());
      bhttp::async_write(stream_, *continue_response_,
                         [self = shared_from_this()](beast::error_code write_ec, std::size_t) {
                           if (write_ec) {
                             self->closeNow();
                             return;
                           }
                           self->readBody();
                         });
      return;
    }
    readBody();
  }

  void readBody() {
    if (parser_->is_done()) {
      onRequest();
      return;
    }
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        if (ec) {
                          self->onReadError(ec);
                          return;
                        }
                        self->onRequest();
                      });
  }

  void onReadError(beast::error_code ec) {
    if (ec == bhttp::error::body_limit) {
      sendError(413, R"({"detail":"Request body too large"})");
    } else if (ec == bhttp::error::header_limit) {
      sendError(431, R"({"detail":"Request header fields too large"})");
    } else if (ec.category() == bhttp::make_error_code(bhttp::error::end_of_stream).category() &&
               ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
      sendError(400, R"({"detail":"Bad Request"})");
    } else {
      // End of stream, timeout, reset: nothing useful can be written back.
      closeNow();
    }
  }

  void sendError(int status, std::string body) {
    Response response;
    response.status = status;
    response.body = std::move(body);
    keep_alive_ = false;
    version_ = 11;
    is_head_ = false;
    write(std::move(response));
  }

  void onRequest() {
    stream_.expires_never();
    auto message = parser_->release();
    parser_.reset();
    keep_alive_ = message.keep_alive();
    version_ = message.version();

    Request request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    is_head_ = request.method == "HEAD";
    std::string_view target = message.target();
    std::size_t question = target.find('?');
    request.path = percentDecode(std::string(target.substr(0, question)));
    if (question != std::string_view::npos) {
      request.query = parseQuery(target.substr(question + 1));
    }
    for (const auto& field : message.base()) {
      std::string name = toLower(field.name_string());
      auto [it, inserted] = request.headers.emplace(name, std::string(field.value()));
      if (!inserted) {
        it->second += ", ";
        it->second += std::string(field.value());
      }
    }
    request.body = std::move(message.body());

    Handler handler;
    if (auto server = server_.lock()) {
      std::lock_guard lock(server->mutex);
      if (server->stopped) {
        closeNow();
        return;
      }
      handler = server->handler;
    } else {
      closeNow();
      return;
    }

    auto answered = std::make_shared<std::atomic<bool>>(false);
    Responder responder = [self = shared_from_this(), answered](Response response) {
      if (answered->exchange(true)) {
        return;
      }
      asio::dispatch(
          self->stream_.get_executor(),
          [self, response = std::move(response)]() mutable { self->write(std::move(response)); });
    };
    if (!handler) {
      Response response;
      response.status = 404;
      response.body = R"({"detail":"Not Found"})";
      responder(std::move(response));
      return;
    }
    try {
      handler(request, responder);
    } catch (const std::exception&) {
      Response response;
      response.status = 500;
      response.body = R"({"exception_message":"Internal Server Error"})";
      responder(std::move(response));
    }
  }

  void write(Response response) {
    if (closed_) {
      return;
    }
    if (response.close_connection_without_reply) {
      closeNow();
      return;
    }
    if (auto server = server_.lock()) {
      std::lock_guard lock(server->mutex);
      if (server->stopped) {
        keep_alive_ = false;
      }
    }
    auto& out = response_.emplace();
    out.version(version_ == 10 ? 10 : 11);
    out.result(static_cast<unsigned>(response.status));
    out.set(bhttp::field::server, "poolworker");
    for (const auto& [name, value] : response.headers) {
      out.insert(name, value);
    }
    if (bodilessStatus(response.status)) {
      out.body().clear();
    } else {
      out.set(bhttp::field::content_type, response.content_type);
      std::size_t size = response.body.size();
      if (!is_head_) {
        out.body() = std::move(response.body);
      }
      out.content_length(size);
    }
    out.keep_alive(keep_alive_);
    stream_.expires_after(kWriteTimeout);
    bhttp::async_write(
        stream_, out,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->onWrite(ec); });
  }

  void onWrite(beast::error_code ec) {
    response_.reset();
    if (ec || !keep_alive_) {
      closeNow();
      return;
    }
    readHeader();
  }

  void closeNow() {
    if (closed_) {
      return;
    }
    closed_ = true;
    beast::error_code ignored;
    auto& socket = stream_.socket();
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
  }

  beast::tcp_stream stream_;
  std::weak_ptr<detail::ServerState> server_;
  std::size_t body_limit_;
  std::chrono::milliseconds idle_timeout_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::empty_body>> continue_response_;
  std::optional<bhttp::response<bhttp::string_body>> response_;
  bool keep_alive_ = true;
  unsigned version_ = 11;
  bool is_head_ = false;
  bool closed_ = false;
};

}  // namespace

void detail::ServerState::accept(const std::shared_ptr<ServerState>& self) {
  acceptor.async_accept(asio::make_strand(io), [self](beast::error_code ec, tcp::socket socket) {
    std::shared_ptr<Connection> connection;
    {
      std::lock_guard lock(self->mutex);
      if (self->stopped || ec == asio::error::operation_aborted) {
        return;
      }
      if (!ec) {
        connection = std::make_shared<Connection>(std::move(socket), self, self->body_limit,
                                                  self->idle_timeout);
        self->connections.emplace(connection.get(), connection);
      }
    }
    if (connection) {
      connection->start();
    }
    // Errors such as EMFILE are per-connection: keep accepting.
    self->accept(self);
  });
}

HttpServer::HttpServer(asio::io_context& io) : state_(std::make_shared<detail::ServerState>(io)) {}

HttpServer::~HttpServer() { stop(); }

Result<void> HttpServer::listen(const std::string& host, uint16_t port) {
  std::string where = formatEndpoint(host, port);
  auto fail = [&where](const std::string& reason) {
    return makeError(ErrorKind::InvalidConfiguration, "cannot listen on " + where + ": " + reason);
  };
  if (state_->acceptor.is_open()) {
    return fail("this server is already listening on port " + std::to_string(state_->bound_port));
  }
  beast::error_code ec;
  tcp::endpoint endpoint;
  auto address = asio::ip::make_address(host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, port);
  } else {
    tcp::resolver resolver(state_->io);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return fail("cannot resolve host '" + host + "'" + (ec ? ": " + ec.message() : ""));
    }
    endpoint = results.begin()->endpoint();
  }
  auto& acceptor = state_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (ec) {
    return fail(ec.message());
  }
  acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  acceptor.bind(endpoint, ec);
  if (ec) {
    beast::error_code ignored;
    acceptor.close(ignored);
    return fail(ec.message());
  }
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    beast::error_code ignored;
    acceptor.close(ignored);
    return fail(ec.message());
  }
  state_->bound_port = acceptor.local_endpoint(ec).port();
  {
    std::lock_guard lock(state_->mutex);
    state_->stopped = false;
  }
  state_->accept(state_);
  return success();
}

uint16_t HttpServer::port() const { return state_->bound_port; }

void HttpServer::setHandler(Handler handler) {
  std::lock_guard lock(state_->mutex);
  state_->handler = std::move(handler);
}

void HttpServer::setBodyLimit(std::size_t bytes) {
  std::lock_guard lock(state_->mutex);
  state_->body_limit = bytes;
}

void HttpServer::setIdleTimeout(std::chrono::milliseconds timeout) {
  std::lock_guard lock(state_->mutex);
  state_->idle_timeout = timeout;
}

void HttpServer::stop() {
  std::vector<std::weak_ptr<Connection>> connections;
  {
    std::lock_guard lock(state_->mutex);
    state_->stopped = true;
    // The handler may own objects that must not outlive the server's owner.
    state_->handler = nullptr;
    for (const auto& [key, connection] : state_->connections) {
      connections.push_back(connection);
    }
  }
  beast::error_code ignored;
  state_->acceptor.close(ignored);
  for (const auto& weak : connections) {
    if (auto connection = weak.lock()) {
      connection->close();
    }
  }
}

}  // namespace poolworker::http
