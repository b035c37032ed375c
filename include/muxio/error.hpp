// Error types and the one helper that turns a failed system call into an exception.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace muxio {

/// A file object is not registered, or is already registered.
///
/// Derives from `std::out_of_range`, as a failed lookup does in the standard
/// library; the counterpart of Python's `KeyError`.
class KeyError : public std::out_of_range {
public:
    using std::out_of_range::out_of_range;
};

/// A coroutine's pending await was cancelled through a `std::stop_token`.
///
/// Thrown at the `co_await` of the cancelled operation; it unwinds the
/// coroutine like any exception and reaches whoever awaits it. Derives from
/// `std::runtime_error` (the counterpart of asyncio's `CancelledError`), not
/// from `std::system_error`: no system call failed.
class Cancelled : public std::runtime_error {
public:
    Cancelled() : std::runtime_error{"operation cancelled"} {}
    using std::runtime_error::runtime_error;
};

/// A `with_timeout()` ran out of time: the awaited task was cancelled.
/// Distinct from Cancelled, so a timeout is never mistaken for a stop
/// request from outside (asyncio's `TimeoutError`).
class TimeoutError : public std::runtime_error {
public:
    TimeoutError() : std::runtime_error{"operation timed out"} {}
    using std::runtime_error::runtime_error;
};

/// Builds the `std::system_error` every muxio layer throws when the kernel
/// refuses something: the message names the operation and, when `fd >= 0`,
/// the file descriptor, e.g. `epoll_ctl(ADD) on fd 7: Bad file descriptor`.
[[nodiscard]] std::system_error make_system_error(int errnum, std::string_view operation, int fd = -1);

/// Throws `make_system_error(errnum, operation, fd)`.
[[noreturn]] void throw_system_error(int errnum, std::string_view operation, int fd = -1);

}  // namespace muxio
