#include "muxio/log.hpp"

#include <cstdlib>
#include <memory>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace muxio {

namespace {

std::shared_ptr<spdlog::logger> make_logger() {
    if (auto existing = spdlog::get("muxio")) {
        return existing;
    }
    auto made = spdlog::stderr_color_mt("muxio");
    made->set_level(spdlog::level::warn);
    if (const char* level = std::getenv("MUXIO_LOG_LEVEL"); level != nullptr && *level != '\0') {
        made->set_level(spdlog::level::from_str(level));
    }
    return made;
}

}  // namespace

spdlog::logger& logger() {
    // Held here as well as in spdlog's registry, so spdlog::drop_all() cannot
    // leave the library with a dangling logger.
    static const std::shared_ptr<spdlog::logger> instance = make_logger();
    return *instance;
}

}  // namespace muxio
