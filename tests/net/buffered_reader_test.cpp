// BufferedReader: lines and delimiters over a stream, the bytes after them
// kept for the next read, limits, the end of the stream, cancellation, and
// no allocation per line.
#include <array>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::BufferedReader;
using muxio::Reactor;
using muxio::Task;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::net_test::bytes;
using muxio::test::FdLeakCheck;

namespace {

struct Pair {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::pair<UnixStream, UnixStream> streams = UnixStream::pair(reactor);
    UnixStream& left = streams.first;
    UnixStream& right = streams.second;
};

std::string text_of(std::span<const std::byte> data) {
    std::string text(data.size(), '\0');
    std::memcpy(text.data(), data.data(), data.size());
    return text;
}

std::string line_or_end(const std::optional<std::string_view>& line) {
    return line ? std::string{*line} : std::string{"<end>"};
}

}  // namespace

TEST_CASE_FIXTURE(Pair, "read_line returns each line without its ending and keeps the bytes after it") {
    muxio::test::write_all(right.fileno(), "one\ntwo\r\n\nthree");
    right.close();
    auto body = [](UnixStream& stream, Live /*held*/) -> Task<std::vector<std::string>> {
        BufferedReader reader{stream};
        std::vector<std::string> lines;
        lines.push_back(line_or_end(co_await reader.read_line(64)));
        lines.push_back(line_or_end(co_await reader.read_line(64)));
        lines.push_back(line_or_end(co_await reader.read_line(64)));
        CHECK(text_of(reader.buffered()) == "three");
        std::array<std::byte, 16> rest{};
        const std::size_t got = co_await reader.read_some(rest);
        lines.push_back(text_of(std::span{rest}.first(got)));
        lines.push_back(line_or_end(co_await reader.read_line(64)));
        co_return lines;
    };
    const auto lines = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, Live{})));
    CHECK(lines == std::vector<std::string>{"one", "two", "", "three", "<end>"});
}

TEST_CASE_FIXTURE(Pair, "read_until finds a two-byte delimiter that a peer writes one byte at a time") {
    auto writer = [](Reactor& loop, UnixStream& stream, Live /*held*/) -> Task<void> {
        for (const char c : std::string_view{"GET /\r\nHost: x\r\n\r\n"}) {
            co_await stream.write_all(std::string_view{&c, 1});
            co_await muxio::yield(loop);  // the reader sees each byte on its own
        }
    };
    auto reader_task = [](UnixStream& stream, Live /*held*/) -> Task<std::vector<std::string>> {
        BufferedReader reader{stream};
        std::vector<std::string> lines;
        for (int i = 0; i < 3; ++i) {
            lines.push_back(line_or_end(co_await reader.read_until("\r\n", 64)));
        }
        co_return lines;
    };
    auto both = [&]() -> Task<std::vector<std::string>> {
        auto [written, lines] = co_await muxio::when_all(writer(reactor, right, Live{}), reader_task(left, Live{}));
        (void)written;
        co_return lines;
    };
    const auto lines = muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both()));
    CHECK(lines == std::vector<std::string>{"GET /\r\n", "Host: x\r\n", "\r\n"});
}

TEST_CASE_FIXTURE(Pair, "a line longer than max is LimitOverrun naming the limit, its bytes kept in the buffer") {
    muxio::test::write_all(right.fileno(), "0123456789abcdef\nnext\n");
    auto body = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        BufferedReader reader{stream, 4};  // grows as far as max needs, no further
        try {
            (void)co_await reader.read_line(8);
            FAIL("read_line returned");
        } catch (const muxio::LimitOverrun& overrun) {
            CHECK(std::string_view{overrun.what()}.find("no \"\\n\" within 8 bytes") != std::string_view::npos);
            CHECK(overrun.limit() == 8);
            CHECK(overrun.buffered() >= 8);
        }
        // The buffer grew to 8 bytes and holds them; the caller decides:
        // here, drop them and read the long line's tail.
        CHECK(text_of(reader.buffered()) == "01234567");
        reader.consume(8);
        CHECK(line_or_end(co_await reader.read_line(64)) == "89abcdef");
        CHECK(line_or_end(co_await reader.read_line(8)) == "next");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, Live{})));
}

TEST_CASE_FIXTURE(Pair, "a line of exactly max bytes with its delimiter is accepted") {
    muxio::test::write_all(right.fileno(), "abc\r\nabcd\r\n");
    auto body = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        BufferedReader reader{stream, 2};
        CHECK(line_or_end(co_await reader.read_until("\r\n", 5)) == "abc\r\n");
        CHECK_THROWS_AS((void)co_await reader.read_until("\r\n", 5), muxio::LimitOverrun);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, Live{})));
}

TEST_CASE_FIXTURE(Pair,
                  "the end of the stream inside a line is IncompleteRead with the bytes kept, between lines nullopt") {
    muxio::test::write_all(right.fileno(), "done\npartial");
    right.close();
    auto body = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        BufferedReader reader{stream};
        CHECK(line_or_end(co_await reader.read_line(64)) == "done");
        try {
            (void)co_await reader.read_line(64);
            FAIL("read_line returned");
        } catch (const muxio::IncompleteRead& incomplete) {
            CHECK(incomplete.received() == 7);
            CHECK(incomplete.expected() == 64);
            CHECK(std::string_view{incomplete.what()}.find("end of stream after 7 bytes without \"\\n\"") !=
                  std::string_view::npos);
        }
        CHECK(text_of(reader.buffered()) == "partial");
        reader.consume(7);
        CHECK_FALSE((co_await reader.read_line(64)).has_value());
        CHECK_FALSE((co_await reader.read_until("\r\n", 64)).has_value());
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, Live{})));
}

TEST_CASE_FIXTURE(Pair, "read_exact through the reader takes the buffered bytes first and fails short at the end") {
    muxio::test::write_all(right.fileno(), "head\nbody-bytes");
    auto body = [](UnixStream& stream, int peer_fd, Live /*held*/) -> Task<void> {
        BufferedReader reader{stream};
        CHECK(line_or_end(co_await reader.read_line(64)) == "head");
        std::string exact(14, '\0');
        auto read = reader.read_exact(muxio::net_test::writable_bytes(exact));
        muxio::test::write_all(peer_fd, "1234");  // 10 bytes buffered, 4 more from the socket
        co_await std::move(read);
        CHECK(exact == "body-bytes1234");
        ::shutdown(peer_fd, SHUT_WR);
        std::array<std::byte, 4> more{};
        CHECK_THROWS_AS(co_await reader.read_exact(more), muxio::IncompleteRead);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, right.fileno(), Live{})));
}

TEST_CASE_FIXTURE(Pair, "read_until refuses an empty delimiter and a max shorter than the delimiter") {
    auto body = [](UnixStream& stream, Live /*held*/) -> Task<void> {
        BufferedReader reader{stream};
        CHECK_THROWS_AS((void)co_await reader.read_until("", 10), std::invalid_argument);
        CHECK_THROWS_WITH_AS((void)co_await reader.read_until("\r\n", 1),
                             "read_until: max 1 is shorter than the delimiter \"\\r\\n\"", std::invalid_argument);
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(left, Live{})));
}

TEST_CASE_FIXTURE(Pair, "cancelling read_until loses no byte: the next call finds the line") {
    auto body = [](Reactor& loop, UnixStream& stream, int peer_fd, Live /*held*/) -> Task<void> {
        BufferedReader reader{stream};
        muxio::test::write_all(peer_fd, "par");
        std::stop_source source;
        loop.call_later(5ms, [&source] { source.request_stop(); });
        CHECK_THROWS_AS((void)co_await reader.read_until("\r\n", 64, source.get_token()), muxio::Cancelled);
        muxio::test::write_all(peer_fd, "tial\r\n");
        CHECK(line_or_end(co_await reader.read_until("\r\n", 64)) == "partial\r\n");
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, body(reactor, left, right.fileno(), Live{})));
}

TEST_CASE_FIXTURE(Pair, "a loop over read_line allocates nothing once the buffer has grown") {
    if (!muxio::test::counts_allocations) {
        return;  // ThreadSanitizer's runtime owns operator new
    }
    constexpr int warm_up = 10;
    constexpr int measured = 300;
    auto writer = [](Reactor& loop, UnixStream& stream, Live /*held*/) -> Task<void> {
        for (int i = 0; i < warm_up + measured; ++i) {
            // Lines of varied length, some split over two writes; never so
            // many that the writer has to wait (its first wait would allocate).
            co_await stream.write_all(std::string_view{"a line of text\r\nanother, a little lon"});
            co_await muxio::yield(loop);
            co_await stream.write_all(std::string_view{"ger\n"});
        }
        stream.shutdown();
    };
    auto reader_task = [](UnixStream& stream, Live /*held*/) -> Task<std::size_t> {
        BufferedReader reader{stream, 16};
        std::size_t before = 0;
        std::size_t after = 0;
        int lines = 0;
        while (auto line = co_await reader.read_line(128)) {
            if (lines == 2 * warm_up) {
                before = muxio::test::allocation_count();
            }
            CHECK((*line == "a line of text" || *line == "another, a little longer"));
            ++lines;
            if (lines == 2 * (warm_up + measured)) {
                after = muxio::test::allocation_count();
            }
        }
        CHECK(lines == 2 * (warm_up + measured));
        co_return after - before;
    };
    auto both = [&]() -> Task<std::size_t> {
        auto [written, allocations] =
            co_await muxio::when_all(writer(reactor, right, Live{}), reader_task(left, Live{}));
        (void)written;
        co_return allocations;
    };
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both())) == 0);
}
