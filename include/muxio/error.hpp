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

/// Builds the `std::system_error` every muxio layer throws when the kernel
/// refuses something: the message names the operation and, when `fd >= 0`,
/// the file descriptor, e.g. `epoll_ctl(ADD) on fd 7: Bad file descriptor`.
[[nodiscard]] std::system_error make_system_error(int errnum, std::string_view operation, int fd = -1);

/// Throws `make_system_error(errnum, operation, fd)`.
[[noreturn]] void throw_system_error(int errnum, std::string_view operation, int fd = -1);

}  // namespace muxio
