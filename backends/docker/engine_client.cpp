#include "backends/docker/engine_client.h"

#include <utility>  // Boost 1.74's Asio uses std::exchange without including it.

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

namespace poolworker::backends::docker {

namespace asio = boost::asio;
using common::HttpCall;
using common::HttpRequest;
using common::HttpResponse;
using common::StreamHandlers;

std::string engineMessage(const HttpResponse& response) {
  const Json body = Json::parse(response.body, nullptr, false);
  if (body.is_object()) {
    if (const auto message = body.find("message"); message != body.end() && message->is_string()) {
      return message->get<std::string>();
    }
  }
  std::string text = response.body;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  if (!text.empty()) {
    return text.size() > 500 ? text.substr(0, 500) + "..." : text;
  }
  return "HTTP status " + std::to_string(response.status);
}

Error engineError(const HttpResponse& response, const std::string& what) {
  ErrorKind kind = ErrorKind::InfrastructureFailed;
  switch (response.status) {
    case 400:
      kind = ErrorKind::InvalidConfiguration;
      break;
    case 401:
    case 403:
      kind = ErrorKind::Unauthorized;
      break;
    case 404:
      kind = ErrorKind::NotFound;
      break;
    case 502:
    case 503:
    case 504:
      kind = ErrorKind::Transient;
      break;
    default:
      break;
  }
  return makeError(kind, what + ": " + engineMessage(response), response.status);
}

/// A request that may have to wait for the version negotiation before it can be sent.
class EngineClient::DeferredCall final : public HttpCall {
 public:
  std::string method;
  std::string path;
  std::optional<Json> body;
  std::chrono::milliseconds timeout{0};
  std::vector<std::pair<std::string, std::string>> headers;
  bool streaming = false;
  StreamHandlers handlers;
  std::shared_ptr<HttpCall> inner;
  bool cancelled = false;
  std::weak_ptr<EngineClient> owner;

  void cancel() override {
    if (inner) {
      inner->cancel();
      return;
    }
    if (cancelled) {
      return;
    }
    cancelled = true;
    fail(makeError(ErrorKind::Cancelled, "the request to the Docker engine was cancelled"));
  }

  void fail(Error error) {
    auto on_done = std::move(handlers.on_done);
    handlers = {};
    if (!on_done) {
      return;
    }
    auto client = owner.lock();
    if (!client) {
      return;
    }
    asio::post(client->io_,
               [on_done = std::move(on_done), error = std::move(error)] { on_done(error); });
  }
};

EngineClient::EngineClient(asio::io_context& io, common::HttpEndpoint endpoint,
                           EngineClientOptions options)
    : io_(io),
      http_(io, std::move(endpoint),
            common::HttpClientOptions{"the Docker engine",
                                      std::string("poolworker/") + POOLWORKER_VERSION}),
      options_(std::move(options)) {}

Error EngineClient::decorate(Error error) const {
  if (error.kind == ErrorKind::Unauthorized && error.http_status == 0 &&
      http_.endpoint().transport == common::HttpEndpoint::Transport::Unix) {
    error.message +=
        " (the worker's user may not use the Docker socket: add it to the 'docker' group or run "
        "the worker as a user that may)";
  }
  return error;
}

void EngineClient::negotiate(std::function<void(Result<EngineVersion>)> done) {
  if (engine_) {
    asio::post(io_, [done = std::move(done), engine = *engine_] { done(engine); });
    return;
  }
  negotiation_waiters_.push_back(std::move(done));
  if (negotiating_) {
    return;
  }
  negotiating_ = true;
  HttpRequest request;
  request.method = "GET";
  request.target = "/version";
  request.timeout = options_.timeout;
  http_.request(std::move(request), [weak = weak_from_this()](Result<HttpResponse> answer) {
    auto self = weak.lock();
    if (!self) {
      return;
    }
    self->negotiating_ = false;
    Result<EngineVersion> result = makeError(ErrorKind::Internal, "not negotiated");
    if (!answer) {
      result = self->decorate(answer.error());
    } else if (answer->status != 200) {
      result = engineError(*answer, "asking the Docker engine for its version failed");
    } else {
      auto parsed = parseEngineVersion(answer->body);
      if (!parsed) {
        result = parsed.error();
      } else if (!self->options_.api_version.empty()) {
        self->api_version_ = self->options_.api_version;
        self->engine_ = *parsed;
        result = *parsed;
      } else if (auto chosen = negotiateApiVersion(*parsed); !chosen) {
        result = chosen.error();
      } else {
        self->api_version_ = *chosen;
        self->engine_ = *parsed;
        result = *parsed;
      }
    }
    auto waiters = std::move(self->negotiation_waiters_);
    self->negotiation_waiters_.clear();
    for (auto& waiter : waiters) {
      waiter(result);
    }
  });
}

void EngineClient::start(const std::shared_ptr<DeferredCall>& call) {
  HttpRequest request;
  request.method = call->method;
  request.target = "/v" + api_version_ + call->path;
  request.headers = std::move(call->headers);
  if (call->body) {
    request.body = call->body->dump();
    request.content_type = "application/json";
  }
  StreamHandlers handlers = std::move(call->handlers);
  call->handlers = {};
  auto on_done = std::move(handlers.on_done);
  handlers.on_done = [weak = weak_from_this(),
                      on_done = std::move(on_done)](Result<HttpResponse> result) {
    auto self = weak.lock();
    if (!result && self) {
      result = self->decorate(result.error());
    }
    on_done(std::move(result));
  };
  if (call->streaming) {
    request.head_timeout = options_.timeout;
    call->inner = http_.stream(std::move(request), std::move(handlers));
  } else {
    request.timeout = call->timeout.count() > 0 ? call->timeout : options_.timeout;
    call->inner = http_.request(std::move(request), std::move(handlers.on_done));
  }
}

std::shared_ptr<HttpCall> EngineClient::request(
    std::string method, std::string path, std::optional<Json> body,
    std::function<void(Result<HttpResponse>)> done, std::chrono::milliseconds timeout,
    std::vector<std::pair<std::string, std::string>> headers) {
  auto call = std::make_shared<DeferredCall>();
  call->method = std::move(method);
  call->path = std::move(path);
  call->body = std::move(body);
  call->timeout = timeout;
  call->headers = std::move(headers);
  call->handlers.on_done = std::move(done);
  call->owner = weak_from_this();
  if (shut_down_) {
    call->fail(makeError(ErrorKind::Cancelled, "the Docker backend was shut down"));
    return call;
  }
  if (!api_version_.empty()) {
    start(call);
    return call;
  }
  negotiate([weak = weak_from_this(), call](Result<EngineVersion> negotiated) {
    auto self = weak.lock();
    if (!self || call->cancelled) {
      return;
    }
    if (!negotiated) {
      call->fail(negotiated.error());
      return;
    }
    self->start(call);
  });
  return call;
}

std::shared_ptr<HttpCall> EngineClient::stream(
    std::string method, std::string path, std::optional<Json> body, StreamHandlers handlers,
    std::vector<std::pair<std::string, std::string>> headers) {
  auto call = std::make_shared<DeferredCall>();
  call->method = std::move(method);
  call->path = std::move(path);
  call->body = std::move(body);
  call->headers = std::move(headers);
  call->streaming = true;
  call->handlers = std::move(handlers);
  call->owner = weak_from_this();
  if (shut_down_) {
    call->fail(makeError(ErrorKind::Cancelled, "the Docker backend was shut down"));
    return call;
  }
  if (!api_version_.empty()) {
    start(call);
    return call;
  }
  negotiate([weak = weak_from_this(), call](Result<EngineVersion> negotiated) {
    auto self = weak.lock();
    if (!self || call->cancelled) {
      return;
    }
    if (!negotiated) {
      call->fail(negotiated.error());
      return;
    }
    self->start(call);
  });
  return call;
}

void EngineClient::ping(std::function<void(Result<void>)> done) {
  HttpRequest request;
  request.method = "GET";
  request.target = "/_ping";
  request.timeout = options_.timeout;
  http_.request(std::move(request),
                [weak = weak_from_this(), done = std::move(done)](Result<HttpResponse> answer) {
                  auto self = weak.lock();
                  if (!answer) {
                    done(self ? self->decorate(answer.error()) : answer.error());
                    return;
                  }
                  if (answer->status != 200) {
                    done(engineError(*answer, "the Docker engine does not answer its ping"));
                    return;
                  }
                  done(success());
                });
}

void EngineClient::shutdown() {
  shut_down_ = true;
  http_.cancelAll();
  auto waiters = std::move(negotiation_waiters_);
  negotiation_waiters_.clear();
  for (auto& waiter : waiters) {
    asio::post(io_, [waiter = std::move(waiter)] {
      waiter(makeError(ErrorKind::Cancelled, "the Docker backend was shut down"));
    });
  }
}

}  // namespace poolworker::backends::docker
