// The library's one logger.
#pragma once

#include <memory>

#include <spdlog/logger.h>

namespace muxio {

/// The spdlog logger named `muxio`, writing to stderr.
///
/// Quiet by default: it prints warnings and errors only, unless the
/// environment variable `MUXIO_LOG_LEVEL` names another spdlog level
/// (`trace`, `debug`, `info`, `warn`, `error`, `critical`, `off`). Callers may
/// change its level or sinks; the same logger is returned every time. If the
/// application registered its own logger named `muxio` first, that one is used.
[[nodiscard]] spdlog::logger& logger();

}  // namespace muxio
