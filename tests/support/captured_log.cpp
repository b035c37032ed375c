#include "support/captured_log.hpp"

#include "muxio/log.hpp"

namespace muxio::test {

CapturedLog::CapturedLog(spdlog::level::level_enum level)
    : sink_{std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_)},
      saved_sinks_{logger().sinks()},
      saved_level_{logger().level()} {
    logger().sinks() = {sink_};
    logger().set_level(level);
}

CapturedLog::~CapturedLog() {
    logger().sinks() = saved_sinks_;
    logger().set_level(saved_level_);
}

std::string CapturedLog::text() {
    logger().flush();
    return stream_.str();
}

}  // namespace muxio::test
