#include "worker/http_server.h"

#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>

namespace poolworker::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

// The server on its own io thread, as the worker and the fakes run it.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override { server_ = std::make_unique<HttpServer>(io_); }

  void start() {
    auto listened = server_->listen("127.0.0.1", 0);
    ASSERT_TRUE(listened.ok()) << listened.error().message;
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    if (thread_.joinable()) {
      onIo([this] {
        if (server_) {
          server_->stop();
        }
      });
      work_.reset();
      io_.stop();
      thread_.join();
    }
    server_.reset();
  }

  // Runs `task` on the io thread and waits for it.
  void onIo(std::function<void()> task) {
    std::promise<void> done;
    asio::post(io_, [&] {
      task();
      done.set_value();
    });
    done.get_future().wait();
  }

  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      asio::make_work_guard(io_)};
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

// A blocking client with its own io_context.
class Client {
 public:
  explicit Client(uint16_t port) : socket_(io_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }

  void send(const std::string& raw) { asio::write(socket_, asio::buffer(raw)); }

  bhttp::response<bhttp::string_body> read() {
    bhttp::response<bhttp::string_body> response;
    bhttp::read(socket_, buffer_, response);
    return response;
  }

  bhttp::response<bhttp::string_body> readHeadResponse() {
    bhttp::response_parser<bhttp::string_body> parser;
    parser.skip(true);
    bhttp::read(socket_, buffer_, parser);
    return parser.release();
  }

  // True when the server closed the connection without sending anything more.
  bool closedByServer() {
    beast::error_code ec;
    char byte = 0;
    if (buffer_.size() > 0) {
      return false;
    }
    asio::read(socket_, asio::buffer(&byte, 1), ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
  }

 private:
  asio::io_context io_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

std::string get(const std::string& target, const std::string& extra_headers = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra_headers + "\r\n";
}

std::string post(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST_F(ServerFixture, ParsesRequestAndAnswers) {
  std::promise<Request> seen;
  server_->setHandler([&seen](const Request& request, Responder respond) {
    seen.set_value(request);
    Response response;
    response.status = 201;
    response.body = R"({"ok":true})";
    response.headers.emplace_back("Retry-After", "3");
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send(
      "POST /api/work_pools/a%20b/x?name=w+1&flag=%2Fon&empty HTTP/1.1\r\nHost: localhost\r\n"
      "X-Prefect-API-Version: 0.8.4\r\nX-Multi: a\r\nX-Multi: b\r\nContent-Length: 4\r\n\r\nbody");
  auto response = client.read();
  EXPECT_EQ(response.result_int(), 201u);
  EXPECT_EQ(response.body(), R"({"ok":true})");
  EXPECT_EQ(response[bhttp::field::content_type], "application/json");
  EXPECT_EQ(response["Retry-After"], "3");

  Request request = seen.get_future().get();
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.target, "/api/work_pools/a%20b/x?name=w+1&flag=%2Fon&empty");
  EXPECT_EQ(request.path, "/api/work_pools/a b/x");
  EXPECT_EQ(request.query.at("name"), "w 1");
  EXPECT_EQ(request.query.at("flag"), "/on");
  EXPECT_EQ(request.query.at("empty"), "");
  EXPECT_EQ(request.headers.at("x-prefect-api-version"), "0.8.4");
  EXPECT_EQ(request.header("X-PREFECT-API-VERSION"), "0.8.4");
  EXPECT_EQ(request.headers.at("x-multi"), "a, b");
  EXPECT_EQ(request.body, "body");
}

TEST_F(ServerFixture, KeepsConnectionsAliveAcrossRequests) {
  int count = 0;
  server_->setHandler([&count](const Request& request, Responder respond) {
    Response response;
    response.body = request.path + " #" + std::to_string(++count);
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send(get("/one"));
  EXPECT_EQ(client.read().body(), "/one #1");
  client.send(get("/two"));
  EXPECT_EQ(client.read().body(), "/two #2");
}

TEST_F(ServerFixture, AnswersPipelinedRequestsInOrderEvenWhenTheFirstIsSlow) {
  std::promise<Responder> first_responder;
  int calls = 0;
  server_->setHandler([&](const Request& request, Responder respond) {
    ++calls;
    if (request.path == "/slow") {
      first_responder.set_value(std::move(respond));
      return;
    }
    Response response;
    response.body = "fast";
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send(get("/slow") + get("/fast"));
  Responder slow = first_responder.get_future().get();
  // The second request is not read until the first one has been answered.
  int calls_before_answer = 0;
  onIo([&] { calls_before_answer = calls; });
  EXPECT_EQ(calls_before_answer, 1);
  std::thread([slow] {
    Response response;
    response.body = "slow";
    slow(std::move(response));
  }).join();
  EXPECT_EQ(client.read().body(), "slow");
  EXPECT_EQ(client.read().body(), "fast");
}

TEST_F(ServerFixture, RespondsFromAnotherThreadAndIgnoresSecondAnswers) {
  server_->setHandler([](const Request&, Responder respond) {
    std::thread([respond] {
      Response first;
      first.body = "first";
      respond(first);
      Response second;
      second.body = "second";
      respond(second);
    }).detach();
  });
  start();
  Client client(server_->port());
  client.send(get("/x"));
  EXPECT_EQ(client.read().body(), "first");
  client.send(get("/y"));
  EXPECT_EQ(client.read().body(), "first");
}

TEST_F(ServerFixture, RejectsBodiesOverTheLimitWith413) {
  server_->setBodyLimit(16);
  bool called = false;
  server_->setHandler([&called](const Request&, Responder respond) {
    called = true;
    respond(Response{});
  });
  start();
  Client client(server_->port());
  client.send(post("/big", std::string(100, 'x')));
  auto response = client.read();
  EXPECT_EQ(response.result_int(), 413u);
  EXPECT_FALSE(response.keep_alive());
  bool was_called = true;
  onIo([&] { was_called = called; });
  EXPECT_FALSE(was_called);

  Client chunked(server_->port());
  chunked.send(
      "POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "20\r\n" +
      std::string(32, 'y') + "\r\n0\r\n\r\n");
  EXPECT_EQ(chunked.read().result_int(), 413u);
}

TEST_F(ServerFixture, AcceptsBodiesUpToTheLimit) {
  server_->setBodyLimit(16);
  server_->setHandler([](const Request& request, Responder respond) {
    Response response;
    response.body = std::to_string(request.body.size());
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send(post("/ok", std::string(16, 'x')));
  EXPECT_EQ(client.read().body(), "16");
}

TEST_F(ServerFixture, AnswersMalformedRequestsWith400AndCloses) {
  server_->setHandler([](const Request&, Responder respond) { respond(Response{}); });
  start();
  Client client(server_->port());
  client.send("THIS IS NOT HTTP\r\n\r\n");
  auto response = client.read();
  EXPECT_EQ(response.result_int(), 400u);
  EXPECT_TRUE(client.closedByServer());
}

TEST_F(ServerFixture, CanCloseWithoutReplying) {
  server_->setHandler([](const Request&, Responder respond) {
    Response response;
    response.close_connection_without_reply = true;
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send(get("/drop"));
  EXPECT_TRUE(client.closedByServer());
}

TEST_F(ServerFixture, ClosesTheConnectionWhenTheResponderIsDropped) {
  server_->setHandler([](const Request&, Responder) {});
  start();
  Client client(server_->port());
  client.send(get("/lost"));
  EXPECT_TRUE(client.closedByServer());
}

TEST_F(ServerFixture, SendsNoBodyFor204AndHead) {
  server_->setHandler([](const Request& request, Responder respond) {
    Response response;
    if (request.path == "/empty") {
      response.status = 204;
      response.body = "ignored";
    } else {
      response.body = "0123456789";
    }
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send(get("/empty"));
  auto empty = client.read();
  EXPECT_EQ(empty.result_int(), 204u);
  EXPECT_EQ(empty.body(), "");
  client.send("HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n");
  auto head = client.readHeadResponse();
  EXPECT_EQ(head.result_int(), 200u);
  EXPECT_EQ(head[bhttp::field::content_length], "10");
  // The connection is still in sync: the next answer is the next request's.
  client.send(get("/after"));
  EXPECT_EQ(client.read().body(), "0123456789");
}

TEST_F(ServerFixture, HonoursExpect100Continue) {
  server_->setHandler([](const Request& request, Responder respond) {
    Response response;
    response.body = request.body;
    respond(std::move(response));
  });
  start();
  Client client(server_->port());
  client.send("POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  auto interim = client.read();
  EXPECT_EQ(interim.result_int(), 100u);
  client.send("hello");
  EXPECT_EQ(client.read().body(), "hello");
}

TEST_F(ServerFixture, AnswersHttp10AndClosesUnlessKeepAlive) {
  server_->setHandler([](const Request&, Responder respond) { respond(Response{}); });
  start();
  Client client(server_->port());
  client.send("GET / HTTP/1.0\r\n\r\n");
  auto response = client.read();
  EXPECT_EQ(response.version(), 10u);
  EXPECT_TRUE(client.closedByServer());
}

TEST_F(ServerFixture, Answers404WithoutHandler) {
  start();
  Client client(server_->port());
  client.send(get("/nothing"));
  EXPECT_EQ(client.read().result_int(), 404u);
}

TEST_F(ServerFixture, ClosesIdleConnections) {
  server_->setIdleTimeout(std::chrono::milliseconds(50));
  server_->setHandler([](const Request&, Responder respond) { respond(Response{}); });
  start();
  Client client(server_->port());
  client.send(get("/"));
  EXPECT_EQ(client.read().result_int(), 200u);
  EXPECT_TRUE(client.closedByServer());
}

TEST_F(ServerFixture, StopClosesOpenConnectionsAndTheAcceptor) {
  server_->setHandler([](const Request&, Responder respond) { respond(Response{}); });
  start();
  uint16_t port = server_->port();
  Client client(port);
  client.send(get("/"));
  EXPECT_EQ(client.read().result_int(), 200u);
  onIo([this] { server_->stop(); });
  EXPECT_TRUE(client.closedByServer());
  asio::io_context io;
  tcp::socket socket(io);
  beast::error_code ec;
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
  EXPECT_TRUE(ec) << "the port still accepts connections after stop()";
}

TEST_F(ServerFixture, ResponderOutlivesTheServerSafely) {
  std::promise<Responder> held;
  server_->setHandler([&held](const Request&, Responder respond) { held.set_value(respond); });
  start();
  Client client(server_->port());
  client.send(get("/held"));
  Responder responder = held.get_future().get();
  onIo([this] {
    server_->stop();
    server_.reset();
  });
  // The connection was closed by stop(); answering now is harmless.
  responder(Response{});
  onIo([] {});
  EXPECT_TRUE(client.closedByServer());
}

TEST(HttpServer, BindErrorNamesTheAddressAndReason) {
  asio::io_context io;
  HttpServer first(io);
  ASSERT_TRUE(first.listen("127.0.0.1", 0).ok());
  HttpServer second(io);
  auto result = second.listen("127.0.0.1", first.port());
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("127.0.0.1:" + std::to_string(first.port())),
            std::string::npos)
      << result.error().message;
  EXPECT_NE(result.error().message.find("in use"), std::string::npos) << result.error().message;

  HttpServer bad(io);
  auto unresolvable = bad.listen("no-such-host.invalid", 0);
  ASSERT_FALSE(unresolvable.ok());
  EXPECT_NE(unresolvable.error().message.find("no-such-host.invalid:0"), std::string::npos);
}

TEST(HttpServer, StopBeforeListenAndTwiceIsHarmless) {
  asio::io_context io;
  HttpServer server(io);
  EXPECT_EQ(server.port(), 0);
  server.stop();
  server.stop();
}

TEST(HttpServer, PercentDecode) {
  EXPECT_EQ(percentDecode("a%20b%2Fc"), "a b/c");
  EXPECT_EQ(percentDecode("a+b"), "a+b");
  EXPECT_EQ(percentDecode("a+b", true), "a b");
  EXPECT_EQ(percentDecode("bad%zzend%2"), "bad%zzend%2");
  EXPECT_EQ(reasonPhrase(404), "Not Found");
  EXPECT_EQ(reasonPhrase(799), "Unknown");
}

}  // namespace
}  // namespace poolworker::http
