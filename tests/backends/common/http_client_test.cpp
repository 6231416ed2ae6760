// The HTTP client against scripted loopback servers. The keep-alive pool: connections are reused,
// one the server closed while idle is replaced without the caller noticing, and a request the
// server may have received is never sent twice. Streamed bodies: whatever pieces the network
// cuts them into, they arrive whole, end where HTTP says they end, and fail when cut short.

#include "backends/common/http_client.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>  // Boost 1.74's Asio uses std::exchange without including it.
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>

namespace poolworker::backends::common {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

/// What the server does with the n-th request it reads (counting from 1).
enum class Reply { Answer, AnswerThenClose, DropUnanswered };

/// A blocking HTTP/1.1 server on its own thread, one connection at a time.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::function<Reply(int request)> script)
      : script_(std::move(script)),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this] { serve(); });
  }

  ~ScriptedServer() {
    stopping_ = true;
    boost::system::error_code ignored;
    // Wakes the blocking accept.
    tcp::socket poke(io_);
    poke.connect(acceptor_.local_endpoint(), ignored);
    poke.close(ignored);
    thread_.join();
  }

  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }
  int connections() const { return connections_; }
  int requests() const { return requests_; }
  std::string lastConnectionHeader() const {
    std::lock_guard lock(mu_);
    return last_connection_header_;
  }

 private:
  void serve() {
    while (!stopping_) {
      tcp::socket socket(io_);
      boost::system::error_code ec;
      acceptor_.accept(socket, ec);
      if (ec || stopping_) {
        return;
      }
      ++connections_;
      boost::beast::flat_buffer buffer;
      for (;;) {
        http::request<http::string_body> request;
        http::read(socket, buffer, request, ec);
        if (ec) {
          break;
        }
        const int n = ++requests_;
        {
          std::lock_guard lock(mu_);
          last_connection_header_ = std::string(request[http::field::connection]);
        }
        const Reply reply = script_(n);
        if (reply == Reply::DropUnanswered) {
          break;
        }
        http::response<http::string_body> response(http::status::ok, 11);
        response.body() = "answer " + std::to_string(n);
        response.keep_alive(request.keep_alive());
        response.prepare_payload();
        http::write(socket, response, ec);
        if (ec || reply == Reply::AnswerThenClose || !request.keep_alive()) {
          break;
        }
      }
      socket.shutdown(tcp::socket::shutdown_both, ec);
      socket.close(ec);
    }
  }

  std::function<Reply(int)> script_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  mutable std::mutex mu_;
  std::string last_connection_header_;
};

class HttpClientPoolTest : public ::testing::Test {
 protected:
  std::unique_ptr<HttpClient> client(const ScriptedServer& server, std::size_t idle,
                                     std::size_t max_connections = 0) {
    auto endpoint = parseHttpEndpoint(server.url());
    EXPECT_TRUE(endpoint.ok());
    HttpClientOptions options;
    options.max_idle_connections = idle;
    options.max_connections = max_connections;
    return std::make_unique<HttpClient>(io_, std::move(endpoint).value(), options);
  }

  /// Sends GETs at once, with the given deadlines, and runs the loop until all completed.
  std::vector<Result<HttpResponse>> getAtOnce(
      HttpClient& http, const std::vector<std::chrono::milliseconds>& timeouts) {
    std::vector<std::optional<Result<HttpResponse>>> results(timeouts.size());
    for (std::size_t i = 0; i < timeouts.size(); ++i) {
      HttpRequest request;
      request.target = "/";
      request.timeout = timeouts[i];
      http.request(std::move(request),
                   [&results, i](Result<HttpResponse> r) { results[i].emplace(std::move(r)); });
    }
    io_.restart();
    const auto all_done = [&] {
      return std::all_of(results.begin(), results.end(),
                         [](const auto& r) { return r.has_value(); });
    };
    while (!all_done() && io_.run_one() > 0) {
    }
    std::vector<Result<HttpResponse>> out;
    for (auto& result : results) {
      if (!result) {
        ADD_FAILURE() << "a request never completed";
        out.push_back(makeError(ErrorKind::Internal, "never completed"));
        continue;
      }
      out.push_back(std::move(*result));
    }
    return out;
  }

  /// Sends one GET and runs the loop until it completes; counts resends.
  Result<HttpResponse> get(HttpClient& http) {
    HttpRequest request;
    request.target = "/";
    request.timeout = std::chrono::seconds(10);
    request.on_resent = [this] { ++resent_; };
    std::optional<Result<HttpResponse>> result;
    http.request(std::move(request), [&](Result<HttpResponse> r) { result.emplace(std::move(r)); });
    io_.restart();
    while (!result && io_.run_one() > 0) {
    }
    return std::move(*result);
  }

  asio::io_context io_;
  int resent_ = 0;
};

TEST_F(HttpClientPoolTest, ReusesAKeepAliveConnection) {
  ScriptedServer server([](int) { return Reply::Answer; });
  auto http = client(server, 2);
  for (int i = 1; i <= 3; ++i) {
    auto answer = get(*http);
    ASSERT_TRUE(answer.ok()) << answer.error().message;
    EXPECT_EQ(answer->body, "answer " + std::to_string(i));
  }
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(server.lastConnectionHeader(), "");
  EXPECT_EQ(resent_, 0);
}

TEST_F(HttpClientPoolTest, WithoutAPoolEveryRequestHasItsConnection) {
  ScriptedServer server([](int) { return Reply::Answer; });
  auto http = client(server, 0);
  ASSERT_TRUE(get(*http).ok());
  ASSERT_TRUE(get(*http).ok());
  EXPECT_EQ(server.connections(), 2);
  EXPECT_EQ(server.lastConnectionHeader(), "close");
}

TEST_F(HttpClientPoolTest, AConnectionTheServerClosedWhileIdleIsNotReused) {
  // The server closes after each answer without saying so, as on an idle timeout.
  ScriptedServer server([](int) { return Reply::AnswerThenClose; });
  auto http = client(server, 2);
  ASSERT_TRUE(get(*http).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the close reaches the client
  auto second = get(*http);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_EQ(second->body, "answer 2");
  EXPECT_EQ(server.connections(), 2);
  EXPECT_EQ(server.requests(), 2);
}

TEST_F(HttpClientPoolTest, ARequestTheServerReadIsNeverSentTwice) {
  // The second request reaches the server on the reused connection, which then closes without
  // answering: the server may have acted on it, so the client reports an error.
  ScriptedServer server([](int n) { return n == 2 ? Reply::DropUnanswered : Reply::Answer; });
  auto http = client(server, 2);
  ASSERT_TRUE(get(*http).ok());
  auto second = get(*http);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().kind, ErrorKind::Transient);
  EXPECT_EQ(server.requests(), 2);
  EXPECT_EQ(resent_, 0);
  auto third = get(*http);
  ASSERT_TRUE(third.ok()) << third.error().message;
  EXPECT_EQ(third->body, "answer 3");
}

TEST_F(HttpClientPoolTest, MaxConnectionsQueuesRequestsOnTheConnectionsInUse) {
  // The server serves one connection at a time: requests that each opened a connection of their
  // own would wait behind the first, kept-alive one, until their deadlines.
  ScriptedServer server([](int) { return Reply::Answer; });
  auto http = client(server, 1, 1);
  auto answers =
      getAtOnce(*http, std::vector<std::chrono::milliseconds>(10, std::chrono::seconds(10)));
  for (std::size_t i = 0; i < answers.size(); ++i) {
    ASSERT_TRUE(answers[i].ok()) << answers[i].error().message;
    EXPECT_EQ(answers[i]->body, "answer " + std::to_string(i + 1)) << "answered in order";
  }
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(server.requests(), 10);
}

TEST_F(HttpClientPoolTest, TimeWaitingForAConnectionCountsTowardsTheDeadline) {
  ScriptedServer server([](int n) {
    if (n == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));
    }
    return Reply::Answer;
  });
  auto http = client(server, 1, 1);
  auto answers = getAtOnce(
      *http, {std::chrono::seconds(10), std::chrono::milliseconds(200), std::chrono::seconds(10)});
  ASSERT_TRUE(answers[0].ok()) << answers[0].error().message;
  ASSERT_FALSE(answers[1].ok());
  EXPECT_EQ(answers[1].error().kind, ErrorKind::Transient);
  ASSERT_TRUE(answers[2].ok()) << answers[2].error().message;
  EXPECT_EQ(answers[2]->body, "answer 2") << "the request that gave up was never sent";
  EXPECT_EQ(server.connections(), 1);
}

/// A server that answers its one connection's request with raw bytes, written in the given
/// pieces with a pause between them, then closes the connection.
class RawServer {
 public:
  explicit RawServer(std::vector<std::string> pieces)
      : pieces_(std::move(pieces)),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this] { serve(); });
  }
  ~RawServer() { thread_.join(); }

  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }

 private:
  void serve() {
    tcp::socket socket(io_);
    boost::system::error_code ec;
    acceptor_.accept(socket, ec);
    if (ec) {
      return;
    }
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> request;
    http::read(socket, buffer, request, ec);
    for (const auto& piece : pieces_) {
      asio::write(socket, asio::buffer(piece), ec);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
  }

  std::vector<std::string> pieces_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
};

class HttpClientStreamTest : public ::testing::Test {
 protected:
  struct Streamed {
    std::string data;
    int pieces = 0;
    std::optional<Result<HttpResponse>> done;
  };

  Streamed stream(const RawServer& server) {
    auto endpoint = parseHttpEndpoint(server.url());
    EXPECT_TRUE(endpoint.ok());
    HttpClientOptions options;
    options.max_idle_connections = 0;
    HttpClient http(io_, std::move(endpoint).value(), options);
    Streamed out;
    HttpRequest request;
    request.target = "/logs";
    request.head_timeout = std::chrono::seconds(10);
    StreamHandlers handlers;
    handlers.on_data = [&out](std::string_view data) {
      out.data.append(data);
      ++out.pieces;
    };
    handlers.on_done = [&out](Result<HttpResponse> r) { out.done.emplace(std::move(r)); };
    auto call = http.stream(std::move(request), std::move(handlers));
    while (!out.done && io_.run_one() > 0) {
    }
    return out;
  }

  asio::io_context io_;
};

std::string chunk(const std::string& data) {
  std::ostringstream out;
  out << std::hex << data.size() << "\r\n" << data << "\r\n";
  return out.str();
}

constexpr const char* kChunkedHead =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";

TEST_F(HttpClientStreamTest, AChunkedBodyCutAnywhereArrivesWholeAndInOrder) {
  // Every cut the network can make: inside the head, inside a chunk's size line, between a
  // chunk's data and its CRLF, inside the last chunk.
  const std::string body_a = "line one\n";
  const std::string body_b(40000, 'x');  // larger than any one read
  const std::string body_c = "line three\n";
  const std::string wire =
      std::string(kChunkedHead) + chunk(body_a) + chunk(body_b) + chunk(body_c) + "0\r\n\r\n";
  std::vector<std::string> pieces;
  const std::vector<std::size_t> cuts = {20, 80, 83, 95, 96, 30000, wire.size() - 3};
  std::size_t from = 0;
  for (const std::size_t cut : cuts) {
    pieces.push_back(wire.substr(from, cut - from));
    from = cut;
  }
  pieces.push_back(wire.substr(from));
  RawServer server(pieces);
  auto out = stream(server);
  ASSERT_TRUE(out.done.has_value());
  ASSERT_TRUE(out.done->ok()) << out.done->error().message;
  EXPECT_EQ(out.done->value().status, 200);
  EXPECT_EQ(out.data, body_a + body_b + body_c);
  EXPECT_GE(out.pieces, 3);
}

TEST_F(HttpClientStreamTest, ABodyThatEndsWithTheConnectionEndsNormally) {
  RawServer server({"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst ", "second ", "third"});
  auto out = stream(server);
  ASSERT_TRUE(out.done.has_value());
  ASSERT_TRUE(out.done->ok()) << out.done->error().message;
  EXPECT_EQ(out.data, "first second third");
}

TEST_F(HttpClientStreamTest, ABodyWithALengthEndsAtItsLength) {
  RawServer server({"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", "56789"});
  auto out = stream(server);
  ASSERT_TRUE(out.done.has_value());
  ASSERT_TRUE(out.done->ok()) << out.done->error().message;
  EXPECT_EQ(out.data, "0123456789");
}

TEST_F(HttpClientStreamTest, AChunkedBodyCutShortByTheServerIsAnError) {
  RawServer server({std::string(kChunkedHead) + chunk("partial\n") + "20\r\nnot all of it"});
  auto out = stream(server);
  ASSERT_TRUE(out.done.has_value());
  EXPECT_FALSE(out.done->ok());
  EXPECT_EQ(out.data, "partial\nnot all of it");
}

TEST_F(HttpClientStreamTest, AMalformedChunkIsAnErrorNotAHang) {
  RawServer server({std::string(kChunkedHead) + chunk("good\n") + "zz\r\nbad\r\n"});
  auto out = stream(server);
  ASSERT_TRUE(out.done.has_value());
  EXPECT_FALSE(out.done->ok());
  EXPECT_EQ(out.data, "good\n");
}

}  // namespace
}  // namespace poolworker::backends::common
