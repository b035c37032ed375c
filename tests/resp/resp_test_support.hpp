// Helpers for the muxio-resp suites: feeding a Parser the way a connection
// does, a manual clock, and running one command through a Dispatcher.
#pragma once

#include <chrono>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "commands.hpp"
#include "resp_parser.hpp"
#include "store.hpp"

namespace resp::test {

/// What a stream of bytes parsed into: the commands, then either an error
/// or the bytes left waiting for more.
struct Parsed {
    std::vector<std::vector<std::string>> commands;
    std::optional<std::string> error;
    std::size_t leftover = 0;

    bool operator==(const Parsed&) const = default;
};

/// Feeds `input` to a fresh parser in pieces cut at `cuts` (offsets,
/// ascending), through a buffer that drops consumed bytes from its front as
/// a connection would, so that the parser's offsets must survive the moves.
Parsed parse_in_pieces(std::string_view input, const std::vector<std::size_t>& cuts, ParserLimits limits = {});
/// parse_in_pieces() in one piece.
Parsed parse_whole(std::string_view input, ParserLimits limits = {});
/// parse_in_pieces() one byte at a time.
Parsed parse_bytewise(std::string_view input, ParserLimits limits = {});

/// A request as a RESP array of bulk strings.
std::string encode(std::initializer_list<std::string_view> words);

/// A steady-clock time that tests move by hand.
struct ManualClock {
    std::chrono::steady_clock::time_point now{std::chrono::hours{1000}};
    [[nodiscard]] Store::TimeSource source() {
        return [this] { return now; };
    }
};

/// A store and dispatcher on a manual clock.
struct Harness {
    ManualClock clock;
    Store store{clock.source()};
    Dispatcher dispatcher{store, ServerInfo{1024, 7379}};

    /// The reply bytes of one command.
    std::string run(std::initializer_list<std::string_view> words);
    /// Like run(), and whether the connection would then close.
    After last_after = After::keep_open;
};

}  // namespace resp::test
