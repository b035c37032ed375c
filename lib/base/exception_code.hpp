// The error_code forms of calls built on throwing ones report what was
// thrown as a code.
#pragma once

#include <system_error>

namespace muxio::detail {

/// The exception being handled, as an error_code: a system_error's own code,
/// ENOMEM for an allocation or size failure, EINVAL for an invalid argument,
/// EPERM for another logic_error, EIO for anything else. Call it only inside
/// a catch block.
std::error_code code_of_current_exception() noexcept;

}  // namespace muxio::detail
