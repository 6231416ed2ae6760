#pragma once

/// @file
/// @brief An asynchronous HTTP/1.1 client on an Asio event loop, over a unix socket or TCP
/// (optionally TLS), for backends that talk to a local daemon's REST API.
///
/// By default every request opens its own connection and closes it when the exchange ends; a
/// client may instead keep a few idle connections open and reuse them (`max_idle_connections`),
/// for a server far away where a handshake per request would be slow. No thread per request.
/// Responses are either buffered or streamed chunk by chunk, which long-lived answers need (a log
/// stream that follows, a progress stream, a blocking wait). Every operation completes on the event
/// loop's thread, exactly once, never inline.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <poolworker/result.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::common {

/// @brief TLS settings of a TCP endpoint.
struct TlsSettings {
  bool enabled = false;   ///< Speak TLS on the connection.
  bool verify = true;     ///< Check the server's certificate chain and host name.
  std::string ca_file;    ///< PEM file of trusted CAs; empty: the system's default paths.
  std::string cert_file;  ///< PEM client certificate; empty: none.
  std::string key_file;   ///< PEM key of the client certificate; empty: none.
  /// PEM text of trusted CAs, used instead of `ca_file` when set (a kubeconfig's
  /// `certificate-authority-data`). Never logged.
  std::string ca_pem;
  /// PEM text of the client certificate, instead of `cert_file` when set.
  std::string cert_pem;
  /// PEM text of the client key, instead of `key_file` when set. A secret: never logged.
  std::string key_pem;
};

/// @brief Where a server listens.
struct HttpEndpoint {
  /// @brief How the connection is made.
  enum class Transport { Unix, Tcp };

  Transport transport = Transport::Unix;  ///< Unix socket or TCP.
  std::string socket_path;                ///< Path of the unix socket.
  std::string host;                       ///< TCP host name or address (no brackets).
  std::string port;                       ///< TCP port.
  TlsSettings tls;                        ///< TLS, for TCP only.
  /// The endpoint as a URL, for messages: "unix:///var/run/docker.sock",
  /// "tcp://10.0.0.5:2376".
  std::string url;

  /// @brief An HTTP proxy in between (TCP only).
  struct Proxy {
    std::string host;           ///< Proxy host name or address (no brackets).
    std::string port;           ///< Proxy port.
    std::string authorization;  ///< Proxy-Authorization value, e.g. "Basic ..."; empty: none.
  };
  /// Go through this proxy: a CONNECT tunnel for TLS, absolute-form targets otherwise.
  std::optional<Proxy> proxy;
};

/// @brief Parses an endpoint URL: `unix:///path`, `tcp://host[:port]`, `http://host[:port]`
/// or `https://host[:port]` (IPv6 hosts in brackets). `https://` turns TLS on; for the other
/// TCP forms `tls` decides.
/// @param url the URL.
/// @param tls TLS settings for a TCP endpoint.
/// @param default_port the port when the URL has none (for `https://` or when `tls.enabled`
///   is set, `default_tls_port`).
/// @param default_tls_port the port of a TLS endpoint without one.
/// @return the endpoint, or `InvalidConfiguration` naming what is wrong with the URL.
Result<HttpEndpoint> parseHttpEndpoint(std::string_view url, TlsSettings tls = {},
                                       std::string_view default_port = "80",
                                       std::string_view default_tls_port = "443");

/// @brief One request.
struct HttpRequest {
  std::string method = "GET";  ///< Verb, e.g. "POST".
  /// Origin-form target with an already-encoded query, e.g. "/v1.41/containers/json?all=1".
  std::string target;
  /// Extra header fields. `Host`, `Content-Length` and `User-Agent` are set by the client.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;          ///< Request body; sent with a Content-Length when non-empty.
  std::string content_type;  ///< Content-Type of the body, when it has one.
  /// Deadline of the whole exchange, body included; zero: none.
  std::chrono::milliseconds timeout{0};
  /// Deadline for connecting and receiving the response head; zero: `timeout` alone applies.
  std::chrono::milliseconds head_timeout{0};
  /// Called when writing the request on a reused idle connection failed (the server had closed
  /// it, so it never saw the request) and the request is being sent again at once on a new
  /// connection. That happens at most once per request.
  std::function<void()> on_resent;
};

/// @brief A response: status, header fields and (for buffered requests) the body.
struct HttpResponse {
  int status = 0;                                            ///< e.g. 200.
  std::vector<std::pair<std::string, std::string>> headers;  ///< Header fields as received.
  std::string body;                                          ///< Body; see `HttpClient`.

  /// @brief The value of the first header field named `name` (case-insensitive), or "".
  std::string header(std::string_view name) const;
};

/// @brief Callbacks of a streamed request.
struct StreamHandlers {
  /// Called once when a response head with a 2xx status arrived (its body is empty).
  std::function<void(const HttpResponse& head)> on_head;
  /// Called for each piece of a 2xx body as it arrives, in order. Pieces have no relation to
  /// the server's chunks or to lines.
  std::function<void(std::string_view data)> on_data;
  /// Called exactly once at the end: with the head when a 2xx body ended normally; with the
  /// whole response, body buffered, when the status was not 2xx (then `on_head` and
  /// `on_data` are never called); or with the error that ended the exchange.
  std::function<void(Result<HttpResponse> result)> on_done;
};

/// @brief A request in flight.
class HttpCall {
 public:
  virtual ~HttpCall() = default;
  /// @brief Abandons the request: closes its connection; its completion callback then gets a
  /// `Cancelled` error, unless it had already completed. Call on the event loop's thread.
  virtual void cancel() = 0;
};

/// @brief Settings of a client.
struct HttpClientOptions {
  /// Names the server in messages, e.g. "the Docker engine".
  std::string service_name = "the server";
  /// Value of the User-Agent header.
  std::string user_agent = "poolworker";
  /// Largest body a buffered request (or an error answer of a streamed one) accepts.
  std::size_t max_buffered_body = std::size_t{64} * 1024 * 1024;
  /// How many idle keep-alive connections to keep for reuse; 0: every request has its own
  /// connection, closed after the answer (`Connection: close`).
  std::size_t max_idle_connections = 0;
  /// How many requests may have a connection at once; the others wait, in order, for one of
  /// them to end (and take over its connection when it is kept). The wait counts towards the
  /// request's deadlines. 0: no limit (streamed answers, which last, need that).
  std::size_t max_connections = 0;
  /// An idle connection unused for this long is closed instead of reused. Servers close idle
  /// connections too (uvicorn after 5 s); a connection the server already closed is noticed
  /// and dropped before reuse, but one it closes while our request is on its way is not.
  std::chrono::milliseconds idle_expiry{4000};
};

class HttpClientState;

/// @brief Sends HTTP/1.1 requests to one endpoint, asynchronously, on an `io_context`.
///
/// Errors, as `Result` errors: `Transient` when the server cannot be reached, the connection
/// broke or a deadline passed, with a message that names the endpoint ("cannot reach the
/// Docker engine at unix:///var/run/docker.sock: connection refused"); `Unauthorized` when
/// the socket refuses this user (permission denied); `InfrastructureFailed` for a TLS
/// failure; `Cancelled` after `HttpCall::cancel` or `cancelAll`. Any HTTP status is a
/// successful exchange: the caller interprets it.
///
/// Not thread-safe: create, use and destroy it on the event loop's thread.
class HttpClient {
 public:
  /// @brief A client of `endpoint` whose work runs on `io`.
  /// @param io the event loop; outlives the client.
  /// @param endpoint where the server listens.
  /// @param options names and limits.
  HttpClient(boost::asio::io_context& io, HttpEndpoint endpoint, HttpClientOptions options = {});
  /// @brief Cancels every request still in flight.
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  /// @brief Sends `request` and buffers the whole response.
  /// @param request what to send.
  /// @param done receives the response or the error.
  /// @return the call, to cancel it.
  std::shared_ptr<HttpCall> request(HttpRequest request,
                                    std::function<void(Result<HttpResponse>)> done);

  /// @brief Sends `request` and streams the response body to `handlers`.
  /// @param request what to send (usually without `timeout`, for answers that last).
  /// @param handlers what to call as the response arrives.
  /// @return the call, to cancel it.
  std::shared_ptr<HttpCall> stream(HttpRequest request, StreamHandlers handlers);

  /// @brief Cancels every request in flight; later requests fail with `Cancelled` at once.
  void cancelAll();

  /// @brief Where the client connects.
  const HttpEndpoint& endpoint() const;

 private:
  std::shared_ptr<HttpClientState> state_;
};

/// @brief Percent-encodes `value` for a URL path segment or a query value (RFC 3986
/// unreserved characters are kept).
std::string urlEncode(std::string_view value);

}  // namespace poolworker::backends::common
