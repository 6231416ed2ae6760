#pragma once

/// @file
/// @brief Outcomes as values: the error type and `Result<T>` shared by the worker and backends.
///
/// poolworker does not throw across layers. Every call that can fail for an expected reason
/// (a network error, a bad job configuration, an infrastructure that refuses a run) returns a
/// `Result<T>` whose error says what kind of failure it is, so that the worker alone decides
/// whether to retry, to crash one run, or to stop.

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace poolworker {

/// @brief What kind of failure an `Error` is. The worker's reaction depends on it.
enum class ErrorKind {
  /// A failure that may go away by itself: connection refused, timeout, HTTP 5xx, 429.
  /// The worker retries with backoff and never ends a run or itself because of one.
  Transient,
  /// The infrastructure could not run the flow: image missing, quota, RBAC, engine down.
  /// The run ends CRASHED with the error's message.
  InfrastructureFailed,
  /// The user's flow ran and failed. Backends rarely use it: the flow engine reports this itself.
  RunFailed,
  /// The job configuration or a setting is invalid: a bad template, a job variable of the
  /// wrong type, a working directory that does not exist. The run ends CRASHED, the worker goes on.
  InvalidConfiguration,
  /// The object asked for does not exist (a run, a container, a Job, a pool).
  NotFound,
  /// Credentials were refused (HTTP 401 or 403). Not retried.
  Unauthorized,
  /// The operation is not implemented by this backend.
  Unsupported,
  /// The operation was abandoned because the worker is stopping or a deadline passed.
  Cancelled,
  /// Anything else: a bug or an unexpected answer. Reported with its message.
  Internal,
};

/// @brief Returns a stable lower-case name for an error kind, e.g. `"transient"`.
inline const char* errorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Transient:
      return "transient";
    case ErrorKind::InfrastructureFailed:
      return "infrastructure_failed";
    case ErrorKind::RunFailed:
      return "run_failed";
    case ErrorKind::InvalidConfiguration:
      return "invalid_configuration";
    case ErrorKind::NotFound:
      return "not_found";
    case ErrorKind::Unauthorized:
      return "unauthorized";
    case ErrorKind::Unsupported:
      return "unsupported";
    case ErrorKind::Cancelled:
      return "cancelled";
    case ErrorKind::Internal:
      return "internal";
  }
  return "internal";
}

/// @brief A failure: its kind and a message written for the person who will read it.
///
/// The message names what is wrong and where ("working_dir '/srv/x' does not exist"), never
/// contains a secret, and does not repeat the kind.
struct Error {
  ErrorKind kind = ErrorKind::Internal;
  std::string message;
  /// HTTP status of the answer that caused the error, or 0 when no HTTP call was involved.
  int http_status = 0;

  /// @brief True when retrying the same operation later may succeed.
  bool retryable() const { return kind == ErrorKind::Transient; }
};

/// @brief Builds an `Error` of the given kind.
inline Error makeError(ErrorKind kind, std::string message, int http_status = 0) {
  return Error{kind, std::move(message), http_status};
}

/// @brief Either a value of type `T` or an `Error`.
///
/// A small stand-in for C++23 `std::expected`: construct it from a value or from an `Error`,
/// test it with `ok()` or `operator bool`, then read `value()` or `error()`. Reading the wrong
/// side is a programming error and asserts in debug builds.
template <typename T>
class [[nodiscard]] Result {
 public:
  /// @brief A successful result holding `value`.
  Result(T value) : storage_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  /// @brief A failed result holding `error`.
  Result(Error error) : storage_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  /// @brief True when the result holds a value.
  bool ok() const { return storage_.index() == 0; }
  explicit operator bool() const { return ok(); }

  /// @brief The value. Only valid when `ok()`.
  T& value() & {
    assert(ok());
    return std::get<0>(storage_);
  }
  /// @copydoc value()
  const T& value() const& {
    assert(ok());
    return std::get<0>(storage_);
  }
  /// @copydoc value()
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(storage_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  /// @brief The error. Only valid when `!ok()`.
  const Error& error() const& {
    assert(!ok());
    return std::get<1>(storage_);
  }
  /// @copydoc error()
  Error&& error() && {
    assert(!ok());
    return std::get<1>(std::move(storage_));
  }

  /// @brief The value, or `fallback` when the result is an error.
  T valueOr(T fallback) const& { return ok() ? value() : std::move(fallback); }

 private:
  std::variant<T, Error> storage_;
};

/// @brief The result of an operation that has no value on success.
template <>
class [[nodiscard]] Result<void> {
 public:
  /// @brief A successful result.
  Result() = default;
  /// @brief A failed result holding `error`.
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }

  /// @brief The error. Only valid when `!ok()`.
  const Error& error() const& {
    assert(!ok_);
    return error_;
  }
  /// @copydoc error()
  Error&& error() && {
    assert(!ok_);
    return std::move(error_);
  }

 private:
  Error error_;
  bool ok_ = true;
};

/// @brief Shorthand for a successful `Result<void>`.
inline Result<void> success() { return Result<void>(); }

}  // namespace poolworker
