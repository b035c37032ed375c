#include "muxio/error.hpp"

#include <fmt/format.h>

namespace muxio {

std::system_error make_system_error(int errnum, std::string_view operation, int fd) {
    const std::error_code code{errnum, std::system_category()};
    if (fd >= 0) {
        return {code, fmt::format("{} on fd {}", operation, fd)};
    }
    return {code, std::string{operation}};
}

void throw_system_error(int errnum, std::string_view operation, int fd) {
    throw make_system_error(errnum, operation, fd);
}

}  // namespace muxio
