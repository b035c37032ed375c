#include "muxio/error.hpp"

#include <fmt/format.h>

#include <new>
#include <stdexcept>

#include "base/exception_code.hpp"

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

namespace muxio::detail {

std::error_code code_of_current_exception() noexcept {
    try {
        throw;
    } catch (const std::system_error& error) {
        return error.code();
    } catch (const std::bad_alloc&) {
        return std::make_error_code(std::errc::not_enough_memory);
    } catch (const std::length_error&) {
        return std::make_error_code(std::errc::not_enough_memory);
    } catch (const std::invalid_argument&) {
        return std::make_error_code(std::errc::invalid_argument);
    } catch (const std::logic_error&) {
        return std::make_error_code(std::errc::operation_not_permitted);
    } catch (...) {
        return std::make_error_code(std::errc::io_error);
    }
}

}  // namespace muxio::detail
