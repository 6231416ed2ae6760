// physical_limit: what this machine can do at best for one flow run, without any worker, for
// bench/scale.py.
//
//   physical_limit spawn --count N [--jobs J] -- PROGRAM [ARG...]
//       posix_spawn PROGRAM and wait for it, N times in a tight loop (J loops side by side,
//       N each); prints {"spawns": N*J, "seconds": s, "per_second": r, "micros_each": u}.
//   physical_limit http --count N [--port P --path PATH]
//       N request/response round trips on one keep-alive loopback connection: GET PATH to
//       127.0.0.1:P, or, without --port, to a minimal server on a thread of this program that
//       answers every request with a fixed 2-byte JSON body; prints {"round_trips": N,
//       "seconds": s, "per_second": r, "micros_each": u, "server": "minimal"|"port P"}.
//
// Both loops are plain system calls, so that the figures are the machine's, not an
// interpreter's. Any failure ends the program with a message and exit code 1.

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "physical_limit: %s\n", message.c_str());
  std::exit(1);
}

[[noreturn]] void dieErrno(const std::string& what) { die(what + ": " + std::strerror(errno)); }

void usage() {
  std::fprintf(stderr,
               "usage: physical_limit spawn --count N [--jobs J] -- PROGRAM [ARG...]\n"
               "       physical_limit http --count N [--port P --path PATH]\n");
  std::exit(2);
}

long parseCount(const char* text) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value <= 0) {
    usage();
  }
  return value;
}

void printRate(const char* count_name, long count, double seconds, const std::string& extra) {
  std::printf("{\"%s\": %ld, \"seconds\": %.6f, \"per_second\": %.1f, \"micros_each\": %.2f%s}\n",
              count_name, count, seconds, static_cast<double>(count) / seconds,
              1e6 * seconds / static_cast<double>(count), extra.c_str());
}

// ---- spawn ------------------------------------------------------------------------------

void spawnLoop(long count, char** argv, std::atomic<bool>& failed) {
  for (long i = 0; i < count && !failed; ++i) {
    pid_t pid = 0;
    const int error = posix_spawn(&pid, argv[0], nullptr, nullptr, argv, environ);
    if (error != 0) {
      std::fprintf(stderr, "physical_limit: posix_spawn %s: %s\n", argv[0], std::strerror(error));
      failed = true;
      return;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) {
        std::perror("physical_limit: waitpid");
        failed = true;
        return;
      }
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "physical_limit: %s did not exit 0 (status %d)\n", argv[0], status);
      failed = true;
      return;
    }
  }
}

int spawnCommand(int argc, char** argv) {
  long count = 0;
  long jobs = 1;
  int i = 2;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--count" && i + 1 < argc) {
      count = parseCount(argv[++i]);
    } else if (arg == "--jobs" && i + 1 < argc) {
      jobs = parseCount(argv[++i]);
    } else if (arg == "--") {
      ++i;
      break;
    } else {
      usage();
    }
  }
  if (count == 0 || i >= argc) {
    usage();
  }
  char** command = argv + i;
  std::atomic<bool> failed{false};
  // One spawn first, so that the program's pages are in the cache before the clock starts.
  spawnLoop(1, command, failed);
  const auto start = Clock::now();
  std::vector<std::thread> loops;
  for (long j = 0; j < jobs; ++j) {
    loops.emplace_back(spawnLoop, count, command, std::ref(failed));
  }
  for (auto& loop : loops) {
    loop.join();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (failed) {
    die("the spawn loop failed");
  }
  printRate("spawns", count * jobs, seconds, ", \"jobs\": " + std::to_string(jobs));
  return 0;
}

// ---- http -------------------------------------------------------------------------------

void writeAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      dieErrno("send");
    }
    done += static_cast<size_t>(n);
  }
}

// Reads one response (headers and a Content-Length body) into `buffer`; bytes of a next
// response stay in it. Returns false when the peer closed the connection before a response.
bool readResponse(int fd, std::string& buffer) {
  char chunk[4096];
  size_t header_end = std::string::npos;
  while ((header_end = buffer.find("\r\n\r\n")) == std::string::npos) {
    const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n == 0) {
      return false;
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      dieErrno("recv");
    }
    buffer.append(chunk, static_cast<size_t>(n));
  }
  std::string head = buffer.substr(0, header_end);
  if (head.rfind("HTTP/1.1 2", 0) != 0) {
    die("the server answered: " + head.substr(0, head.find("\r\n")));
  }
  for (auto& c : head) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (head.find("transfer-encoding: chunked") != std::string::npos) {
    die("chunked answers are not supported");
  }
  size_t length = 0;
  if (const auto at = head.find("\r\ncontent-length:"); at != std::string::npos) {
    length = std::strtoul(head.c_str() + at + 17, nullptr, 10);
  }
  const size_t total = header_end + 4 + length;
  while (buffer.size() < total) {
    const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) {
        continue;
      }
      die("the connection ended inside a response");
    }
    buffer.append(chunk, static_cast<size_t>(n));
  }
  buffer.erase(0, total);
  return true;
}

void noDelay(int fd) {
  const int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    dieErrno("setsockopt TCP_NODELAY");
  }
}

// The minimal server: one connection, every request (headers only) answered at once.
void minimalServer(int listener) {
  const int fd = ::accept(listener, nullptr, nullptr);
  if (fd < 0) {
    dieErrno("accept");
  }
  noDelay(fd);
  static const std::string kAnswer =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
  std::string buffer;
  char chunk[4096];
  for (;;) {
    size_t end = 0;
    while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) {
        ::close(fd);
        return;
      }
      buffer.append(chunk, static_cast<size_t>(n));
    }
    buffer.erase(0, end + 4);
    writeAll(fd, kAnswer);
  }
}

int httpCommand(int argc, char** argv) {
  long count = 0;
  int port = 0;
  std::string path = "/";
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--count" && i + 1 < argc) {
      count = parseCount(argv[++i]);
    } else if (arg == "--port" && i + 1 < argc) {
      port = static_cast<int>(parseCount(argv[++i]));
    } else if (arg == "--path" && i + 1 < argc) {
      path = argv[++i];
    } else {
      usage();
    }
  }
  if (count == 0) {
    usage();
  }
  std::thread server;
  std::string server_name = "\"port " + std::to_string(port) + "\"";
  if (port == 0) {
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0) {
      dieErrno("socket");
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof(address);
    if (::bind(listener, reinterpret_cast<sockaddr*>(&address), size) != 0 ||
        ::listen(listener, 1) != 0 ||
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
      dieErrno("listen on 127.0.0.1");
    }
    port = ntohs(address.sin_port);
    server = std::thread([listener] {
      minimalServer(listener);
      ::close(listener);
    });
    server_name = "\"minimal\"";
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    dieErrno("socket");
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    dieErrno("connect to 127.0.0.1:" + std::to_string(port));
  }
  noDelay(fd);
  const std::string request = "GET " + path +
                              " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                              "\r\nAccept: application/json\r\nConnection: keep-alive\r\n\r\n";
  std::string buffer;
  // A first round trip outside the clock: the connection is accepted and warm.
  writeAll(fd, request);
  if (!readResponse(fd, buffer)) {
    die("the server closed the connection");
  }
  const auto start = Clock::now();
  for (long i = 0; i < count; ++i) {
    writeAll(fd, request);
    if (!readResponse(fd, buffer)) {
      die("the server closed the connection after " + std::to_string(i) + " round trips");
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ::close(fd);
  if (server.joinable()) {
    server.join();
  }
  printRate("round_trips", count, seconds, ", \"server\": " + server_name);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage();
  }
  const std::string command = argv[1];
  if (command == "spawn") {
    return spawnCommand(argc, argv);
  }
  if (command == "http") {
    return httpCommand(argc, argv);
  }
  usage();
}
