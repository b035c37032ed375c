// The `muxio` logger's output, captured in a string for a test to read.
#pragma once

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

namespace muxio::test {

/// Sends the `muxio` logger's messages at `level` and above to a string
/// while it lives; restores the logger's sinks and level afterwards.
class CapturedLog {
public:
    explicit CapturedLog(spdlog::level::level_enum level = spdlog::level::info);
    ~CapturedLog();
    CapturedLog(const CapturedLog&) = delete;
    CapturedLog& operator=(const CapturedLog&) = delete;

    /// Everything logged so far.
    [[nodiscard]] std::string text();

private:
    std::ostringstream stream_;
    std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
    std::vector<spdlog::sink_ptr> saved_sinks_;
    spdlog::level::level_enum saved_level_;
};

}  // namespace muxio::test
