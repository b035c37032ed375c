// Command dispatch: one parsed request in, its RESP2 reply bytes out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "store.hpp"

namespace resp {

/// Appends RESP2 replies to a connection's output.
namespace reply {
void simple(std::string& out, std::string_view text);  // +text
/// -message; `message` starts with its code ("ERR ...", "WRONGTYPE ..."). CR
/// and LF would end the line early, so they become spaces, as Redis does.
void error(std::string& out, std::string_view message);
void integer(std::string& out, std::int64_t value);      // :value
void bulk(std::string& out, std::string_view value);     // $len value
void null_bulk(std::string& out);                        // $-1
void array_header(std::string& out, std::size_t count);  // *count
}  // namespace reply

/// What the connection does once the reply is written.
enum class After : std::uint8_t { keep_open, close };

/// Server facts that CONFIG GET reports.
struct ServerInfo {
    std::size_t max_bulk = std::size_t{64} << 20U;
    std::uint16_t port = 0;
};

/// Runs the commands of muxio-resp against a Store.
///
/// Commands (case-insensitive, Redis semantics and error texts): PING, ECHO,
/// SET (EX, PX, NX, XX, KEEPTTL, GET), GET, DEL, EXISTS, INCR, DECR, INCRBY,
/// DECRBY, EXPIRE, PEXPIRE (NX, XX, GT, LT), PERSIST, TTL, PTTL, MGET, MSET,
/// DBSIZE, FLUSHALL, FLUSHDB, SELECT (database 0 only), QUIT, and COMMAND and
/// CONFIG GET answering just enough for redis-cli and redis-benchmark.
class Dispatcher {
public:
    explicit Dispatcher(Store& store, ServerInfo info = {}) : store_{store}, info_{info} {}

    /// Appends the reply to `args` (the command name first; at least one
    /// word) to `out`. Every failure is an error reply, never an exception,
    /// except std::bad_alloc.
    After execute(std::span<const std::string_view> args, std::string& out);

    void set_port(std::uint16_t port) noexcept { info_.port = port; }
    [[nodiscard]] std::uint64_t commands_run() const noexcept { return commands_run_; }

private:
    Store& store_;
    ServerInfo info_;
    std::uint64_t commands_run_ = 0;
};

/// Matches `text` against a glob pattern (*, ?, [abc], [a-z], [^a], \x),
/// ignoring ASCII case, as CONFIG GET does.
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

}  // namespace resp
