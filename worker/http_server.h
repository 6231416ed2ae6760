#pragma once

/// @file
/// @brief A small asynchronous HTTP/1.1 server on an Asio `io_context`.
///
/// Serves the worker's health and metrics endpoints and the in-process fakes of the test
/// suites. It keeps connections alive, answers one request at a time per connection (so
/// pipelined requests are answered in order), limits request bodies, closes idle connections
/// and answers malformed requests with 400. Handlers are asynchronous: they receive a
/// `Responder` that may be called later and from any thread.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>  // Boost 1.74's asio headers use std::exchange without including it.
#include <vector>

#include <boost/asio/io_context.hpp>

#include <poolworker/result.h>

namespace poolworker::http {

namespace detail {
struct ServerState;
}  // namespace detail

/// @brief One parsed HTTP request.
struct Request {
  /// Method as sent, e.g. "GET".
  std::string method;
  /// Request target as sent, e.g. "/api/work_pools/a%20b?x=1".
  std::string target;
  /// Percent-decoded path of the target, without the query, e.g. "/api/work_pools/a b".
  std::string path;
  /// Decoded query parameters ("+" reads as a space); the last one wins on repeats.
  std::map<std::string, std::string> query;
  /// Header fields by lower-cased name; repeated fields are joined with ", ".
  std::map<std::string, std::string> headers;
  /// The request body.
  std::string body;

  /// @brief The value of a header (name in any case), or "" when absent.
  std::string header(const std::string& name) const;
};

/// @brief The answer to one request.
struct Response {
  /// HTTP status code.
  int status = 200;
  /// Value of the Content-Type header; ignored for bodiless statuses (1xx, 204, 304).
  std::string content_type = "application/json";
  /// The body.
  std::string body;
  /// Extra header fields, e.g. {"Retry-After", "2"}.
  std::vector<std::pair<std::string, std::string>> headers;
  /// Closes the connection without writing anything, as a crashed proxy would.
  bool close_connection_without_reply = false;
};

/// @brief Delivers the answer of one request. Call it once, from any thread; later calls
/// are ignored. When every copy is dropped without a call, the connection is closed.
using Responder = std::function<void(Response)>;

/// @brief Handles one request. Runs on the io_context; it may answer at once or later.
using Handler = std::function<void(const Request&, Responder)>;

/// @brief An HTTP/1.1 server bound to one address.
///
/// All methods except `setHandler`, `setBodyLimit` and `setIdleTimeout` must be called on
/// the io_context's thread, or while no thread runs the io_context. Settings apply to
/// connections accepted afterwards.
class HttpServer {
 public:
  /// @brief Largest request body accepted by default (8 MiB); larger ones get 413.
  static constexpr std::size_t kDefaultBodyLimit = std::size_t{8} * 1024 * 1024;
  /// @brief How long an idle connection is kept open by default.
  static constexpr std::chrono::milliseconds kDefaultIdleTimeout{60000};

  /// @param io the event loop that runs the acceptor and every connection.
  explicit HttpServer(boost::asio::io_context& io);
  /// @brief Stops the server. Connections still held by pending handlers close when those
  /// handlers answer or are destroyed.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// @brief Binds `host:port` and starts accepting connections.
  /// @param host an IPv4 or IPv6 address, or a name that resolves to one (e.g. "localhost").
  /// @param port the TCP port; 0 picks a free ephemeral port (see `port()`).
  /// @return an error naming host:port and the reason when the address cannot be bound.
  Result<void> listen(const std::string& host, uint16_t port);

  /// @brief The bound port, or 0 before a successful `listen`.
  uint16_t port() const;

  /// @brief Sets the function that answers requests. Without one, every request gets 404.
  /// @param handler called on the io_context for every request.
  void setHandler(Handler handler);

  /// @brief Sets the largest request body accepted.
  /// @param bytes limit in bytes; larger bodies are answered with 413.
  void setBodyLimit(std::size_t bytes);

  /// @brief Sets how long a connection may stay idle (or take to send one request).
  /// @param timeout after which the connection is closed.
  void setIdleTimeout(std::chrono::milliseconds timeout);

  /// @brief Closes the acceptor and every open connection; the handler is not called again.
  /// Idempotent.
  void stop();

 private:
  std::shared_ptr<detail::ServerState> state_;
};

/// @brief Decodes `%XX` escapes; with `plus_is_space`, also "+" as a space (query strings).
/// @param text the encoded text; malformed escapes are kept as they are.
/// @param plus_is_space whether "+" stands for a space.
/// @return the decoded text.
std::string percentDecode(const std::string& text, bool plus_is_space = false);

/// @brief The standard reason phrase of an HTTP status code, e.g. "Not Found".
/// @param status the HTTP status code.
/// @return the phrase, or "Unknown" for codes without one.
std::string reasonPhrase(int status);

}  // namespace poolworker::http
