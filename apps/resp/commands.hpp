// Command dispatch: one parsed request in, its RESP2 reply bytes out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
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
enum class After : std::uint8_t {
    keep_open,
    close,
    /// The reply would take the output past its limit: close the connection
    /// at once, without sending it (Redis's client-output-buffer-limit).
    over_limit,
};

/// Server facts that CONFIG GET reports.
struct ServerInfo {
    std::size_t max_bulk = std::size_t{512} << 20U;
    std::uint16_t port = 0;
    std::size_t max_query_buffer = std::size_t{1} << 30U;
    std::size_t max_output_buffer = std::size_t{1} << 30U;
    std::size_t output_soft_limit = 0;
    std::uint64_t output_soft_seconds = 0;
    std::size_t max_clients = 10000;
};

/// Bytes of the RESP2 reply `$<size>\r\n<value>\r\n`.
[[nodiscard]] std::size_t bulk_reply_size(std::size_t size) noexcept;

/// Runs the commands of muxio-resp against a Store.
///
/// Commands (case-insensitive, Redis semantics and error texts): PING, ECHO,
/// SET (EX, PX, NX, XX, KEEPTTL, GET), GET, DEL, EXISTS, INCR, DECR, INCRBY,
/// DECRBY, EXPIRE, PEXPIRE (NX, XX, GT, LT), PERSIST, TTL, PTTL, MGET, MSET,
/// DBSIZE, FLUSHALL, FLUSHDB, SELECT (database 0 only), QUIT, and COMMAND and
/// CONFIG GET answering just enough for redis-cli and redis-benchmark.
///
/// Threads: a Dispatcher belongs to one thread. Several, one per thread,
/// may share one Store when they share `store_guard` too: execute() then
/// runs each command with the mutex held, so that every command sees the
/// keyspace as one (a SET on one thread is seen by a GET on another, INCR is
/// atomic). Without a guard (null), nothing is locked.
class Dispatcher {
public:
    explicit Dispatcher(Store& store, ServerInfo info = {}, std::mutex* store_guard = nullptr)
        : store_{store}, info_{info}, store_guard_{store_guard} {}

    /// Appends the reply to `args` (the command name first; at least one
    /// word) to `out`. Every failure is an error reply, never an exception,
    /// except std::bad_alloc.
    ///
    /// `out_limit` is the size `out` may reach. A reply that would take it
    /// further gives After::over_limit; commands whose reply can be large
    /// (values read from the store, MGET's many of them) see that before
    /// building it and append nothing, so the memory this costs stays within
    /// the limit. For the others, whatever was appended is to be discarded.
    After execute(std::span<const std::string_view> args, std::string& out,
                  std::size_t out_limit = std::numeric_limits<std::size_t>::max());

    void set_port(std::uint16_t port) noexcept { info_.port = port; }
    [[nodiscard]] std::uint64_t commands_run() const noexcept { return commands_run_; }

private:
    Store& store_;
    ServerInfo info_;
    std::mutex* store_guard_;
    std::uint64_t commands_run_ = 0;
};

/// Matches `text` against a glob pattern (*, ?, [abc], [a-z], [^a], \x),
/// ignoring ASCII case, as CONFIG GET does.
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

}  // namespace resp
