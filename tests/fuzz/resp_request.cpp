// libFuzzer harness for muxio-resp's request side: the RESP2 parser
// (apps/resp/resp_parser.*) and the command dispatch behind it, run against
// a fresh store on a clock that only the harness moves, so every run is
// deterministic and needs no socket.
//
// Input: the first byte picks one of four sets of limits (the defaults, and
// small ones that the fuzzer can reach); the rest is what a client sends.
//
// Checks, each a MUXIO_FUZZ_CHECK that aborts on a finding:
//  - the parser's contract after every parse(): what it consumes, what its
//    arguments view, bytes_wanted(), request_size(), an error that sticks;
//    a multibulk command re-encodes to exactly the bytes of its request;
//  - every command run through the Dispatcher appends exactly one
//    well-formed RESP2 reply within the output limit, or reports
//    After::over_limit as its contract says;
//  - the outcome (commands, replies, error or leftover) does not depend on
//    how the bytes are split into reads: fed whole, one byte at a time
//    (short inputs), cut after every CR, and cut at points derived from the
//    input, it is the same. The parser promises this without exception: a
//    line over the inline limit is refused whether or not its end arrives in
//    the same read (resp_parser.hpp), so no case is tolerated here.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "fuzz_check.hpp"
#include "resp_parser.hpp"
#include "store.hpp"

namespace {

struct Config {
    resp::ParserLimits limits;
    std::size_t out_limit;  // what the Dispatcher's output may reach, per command
};

Config config_for(std::uint8_t selector) {
    Config config{resp::ParserLimits{}, std::size_t{1} << 20U};
    switch (selector % 4U) {
        case 1:
            config.limits = resp::ParserLimits{8, 16, 4};
            config.out_limit = 64;
            break;
        case 2:
            config.limits = resp::ParserLimits{64, 64, 16};
            config.out_limit = 1024;
            break;
        case 3:
            config.limits = resp::ParserLimits{0, 1, 1};
            config.out_limit = 0;
            break;
        default:
            break;
    }
    return config;
}

// The end of the one RESP2 value starting at `at`, or npos if there is none
// there, well formed.
std::size_t value_end(std::string_view reply, std::size_t at, int depth = 0) {
    constexpr std::size_t npos = std::string_view::npos;
    if (at >= reply.size() || depth > 4) {
        return npos;
    }
    const std::size_t cr = reply.find("\r\n", at);
    if (cr == npos) {
        return npos;
    }
    const std::string_view line = reply.substr(at + 1, cr - at - 1);
    const std::size_t next = cr + 2;
    std::int64_t number = 0;
    switch (reply[at]) {
        case '+':
        case '-':
            return line.find_first_of("\r\n") == npos ? next : npos;
        case ':':
            return resp::parse_int64(line, number) ? next : npos;
        case '$':
            if (!resp::parse_int64(line, number) || number < -1) {
                return npos;
            }
            if (number == -1) {
                return next;
            }
            if (reply.size() - next < static_cast<std::size_t>(number) + 2 ||
                reply.substr(next + static_cast<std::size_t>(number), 2) != "\r\n") {
                return npos;
            }
            return next + static_cast<std::size_t>(number) + 2;
        case '*': {
            if (!resp::parse_int64(line, number) || number < -1) {
                return npos;
            }
            std::size_t end = next;
            for (std::int64_t i = 0; i < number && end != npos; ++i) {
                end = value_end(reply, end, depth + 1);
            }
            return end;
        }
        default:
            return npos;
    }
}

std::string encode(std::span<const std::string_view> words) {
    std::string out = "*" + std::to_string(words.size()) + "\r\n";
    for (const std::string_view word : words) {
        out += "$" + std::to_string(word.size()) + "\r\n";
        out += word;
        out += "\r\n";
    }
    return out;
}

struct Outcome {
    std::vector<std::vector<std::string>> commands;
    std::string replies;
    std::optional<std::string> error;
    bool closed = false;  // QUIT, or a reply over the output limit
    std::size_t leftover = 0;

    bool operator==(const Outcome&) const = default;
};

// A connection's view of one client: a parser, a buffer that drops consumed
// bytes from its front, and a dispatcher on a store of its own.
class Session {
public:
    explicit Session(const Config& config)
        : config_{config}, parser_{config.limits}, dispatcher_{store_, resp::ServerInfo{}} {}

    // Appends `piece` and runs what is complete; false once the session is
    // over (an error or a close).
    bool feed(std::string_view piece) {
        // A new buffer every time, the old one freed: a parser that kept a
        // pointer into its input instead of an offset reads freed memory.
        std::string next;
        next.reserve(buffer_.size() + piece.size());
        next.append(buffer_).append(piece);
        buffer_ = std::move(next);
        // Every command consumes at least one byte: bounded.
        const std::size_t rounds = buffer_.size() + 1;
        for (std::size_t round = 0; round < rounds; ++round) {
            const std::string_view input{buffer_};
            const resp::Parser::Result result = parser_.parse(input);
            MUXIO_FUZZ_CHECK(result.consumed <= input.size());
            switch (result.status) {
                case resp::Parser::Status::error:
                    check_error(result);
                    return false;
                case resp::Parser::Status::need_more:
                    check_need_more(input, result);
                    buffer_.erase(0, result.consumed);
                    return true;
                case resp::Parser::Status::command:
                    check_command(input, result);
                    if (!run_command()) {
                        outcome_.closed = true;
                        return false;
                    }
                    buffer_.erase(0, result.consumed);
                    break;
            }
        }
        constexpr bool parser_stopped = false;
        MUXIO_FUZZ_CHECK(parser_stopped);
        return false;
    }

    Outcome finish() {
        if (!outcome_.error && !outcome_.closed) {
            outcome_.leftover = buffer_.size();
        }
        return std::move(outcome_);
    }

private:
    void check_error(const resp::Parser::Result& result) {
        MUXIO_FUZZ_CHECK(result.consumed == 0);
        MUXIO_FUZZ_CHECK(parser_.args().empty());
        const std::string& error = parser_.error();
        MUXIO_FUZZ_CHECK(error.starts_with("Protocol error: "));
        // An error sticks until reset().
        const resp::Parser::Result again = parser_.parse(buffer_);
        MUXIO_FUZZ_CHECK(again.status == resp::Parser::Status::error && again.consumed == 0);
        MUXIO_FUZZ_CHECK(parser_.error() == error);
        outcome_.error = error;
    }

    void check_need_more(std::string_view input, const resp::Parser::Result& result) {
        MUXIO_FUZZ_CHECK(parser_.args().empty());
        const std::size_t rest = input.size() - result.consumed;
        const std::size_t wanted = parser_.bytes_wanted();
        // Announced: more than what is there, and no more than one bulk
        // string of the largest length allowed beyond it.
        MUXIO_FUZZ_CHECK(wanted == 0 || wanted > rest);
        MUXIO_FUZZ_CHECK(wanted <= rest + config_.limits.max_bulk + 2);
        // The same bytes again, nothing added: nothing new.
        const resp::Parser::Result again = parser_.parse(input.substr(result.consumed));
        MUXIO_FUZZ_CHECK(again.status == resp::Parser::Status::need_more && again.consumed == 0);
        MUXIO_FUZZ_CHECK(parser_.bytes_wanted() == wanted);
    }

    void check_command(std::string_view input, const resp::Parser::Result& result) {
        const std::span<const std::string_view> args = parser_.args();
        const std::size_t size = parser_.request_size();
        MUXIO_FUZZ_CHECK(!args.empty());
        MUXIO_FUZZ_CHECK(size >= 1 && size <= result.consumed);
        const std::string_view request = input.substr(result.consumed - size, size);
        if (request.front() == '*') {
            MUXIO_FUZZ_CHECK(args.size() <= config_.limits.max_args);
            for (const std::string_view word : args) {
                MUXIO_FUZZ_CHECK(word.size() <= config_.limits.max_bulk);
                // Views into the request's own bytes, not copies.
                MUXIO_FUZZ_CHECK(word.data() >= request.data() &&
                                 word.data() + word.size() <= request.data() + request.size());
            }
            // Lengths and counts are strict decimals: one spelling only.
            MUXIO_FUZZ_CHECK(encode(args) == request);
        } else {
            MUXIO_FUZZ_CHECK(request.back() == '\n');
            MUXIO_FUZZ_CHECK(size <= config_.limits.max_inline + 2);
            for (const std::string_view word : args) {
                MUXIO_FUZZ_CHECK(word.size() < size);
            }
        }
        std::vector<std::string> words;
        words.reserve(args.size());
        for (const std::string_view word : args) {
            words.emplace_back(word);
        }
        outcome_.commands.push_back(std::move(words));
    }

    // Runs the parsed command; false when the connection would close.
    bool run_command() {
        std::string& out = outcome_.replies;
        const std::size_t before = out.size();
        const std::size_t limit = before + config_.out_limit;
        const resp::After after = dispatcher_.execute(parser_.args(), out, limit);
        if (after == resp::After::over_limit) {
            // Refused before it was built, or found over the limit after.
            MUXIO_FUZZ_CHECK(out.size() == before || out.size() > limit);
            out.resize(before);
            return false;
        }
        MUXIO_FUZZ_CHECK(out.size() <= limit);
        MUXIO_FUZZ_CHECK(value_end(out, before) == out.size());
        // The clock moves a little with every command, so that deadlines set
        // by one come due in a later one, the same way in every session.
        now_ += std::chrono::milliseconds{7};
        store_.expire_due(4);
        return after == resp::After::keep_open;
    }

    Config config_;
    resp::Parser parser_;
    std::chrono::steady_clock::time_point now_{std::chrono::hours{1000}};
    resp::Store store_{[this] { return now_; }};
    resp::Dispatcher dispatcher_;
    std::string buffer_;
    Outcome outcome_;
};

Outcome run(const Config& config, std::string_view input, const std::vector<std::size_t>& cuts) {
    Session session{config};
    std::size_t fed = 0;
    for (const std::size_t cut : cuts) {
        if (cut > fed && cut < input.size()) {
            if (!session.feed(input.substr(fed, cut - fed))) {
                return session.finish();
            }
            fed = cut;
        }
    }
    session.feed(input.substr(fed));
    return session.finish();
}

// Cut points from a hash of the input: the same input, the same cuts.
std::vector<std::size_t> derived_cuts(std::string_view input) {
    std::uint64_t state = 0xcbf29ce484222325U;
    for (const char c : input) {
        state = (state ^ static_cast<unsigned char>(c)) * 0x100000001b3U;
    }
    std::vector<std::size_t> cuts;
    if (input.size() < 2) {
        return cuts;
    }
    const std::size_t count = 1 + state % 16;
    for (std::size_t i = 0; i < count; ++i) {
        // splitmix64
        state += 0x9e3779b97f4a7c15U;
        std::uint64_t z = state;
        z = (z ^ (z >> 30U)) * 0xbf58476d1ce4e5b9U;
        z = (z ^ (z >> 27U)) * 0x94d049bb133111ebU;
        z ^= z >> 31U;
        cuts.push_back(1 + z % (input.size() - 1));
    }
    std::sort(cuts.begin(), cuts.end());
    return cuts;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const Config config = config_for(data[0]);
    const std::string_view input{reinterpret_cast<const char*>(data) + 1, size - 1};

    const Outcome whole = run(config, input, {});
    MUXIO_FUZZ_CHECK(run(config, input, derived_cuts(input)) == whole);
    std::vector<std::size_t> after_cr;
    for (std::size_t i = input.find('\r'); i != std::string_view::npos; i = input.find('\r', i + 1)) {
        after_cr.push_back(i + 1);
    }
    MUXIO_FUZZ_CHECK(run(config, input, after_cr) == whole);
    if (input.size() <= 512) {
        std::vector<std::size_t> every;
        for (std::size_t i = 1; i < input.size(); ++i) {
            every.push_back(i);
        }
        MUXIO_FUZZ_CHECK(run(config, input, every) == whole);
    }
    return 0;
}
