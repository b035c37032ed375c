#include "loadgen.hpp"

#include <http_parser.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"

namespace muxio::apps {

namespace {

using Clock = Reactor::Clock;
using TimePoint = Reactor::TimePoint;

// What every connection task shares: the plan and the totals.
struct Run {
    const LoadConfig& config;
    TimePoint start;
    TimePoint measure_from;
    TimePoint end;
    LoadResult result;

    [[nodiscard]] bool measuring(TimePoint now) const noexcept { return now >= measure_from && now < end; }

    void fail(std::string_view what) {
        ++result.errors;
        if (result.first_error.empty()) {
            result.first_error = what;
        }
    }

    void established(TimePoint now) {
        ++result.connected;
        result.connect_seconds = std::max(result.connect_seconds, std::chrono::duration<double>(now - start).count());
    }
};

Task<TcpStream> connect(Reactor& reactor, Run& run) {
    co_return co_await with_timeout(reactor, std::chrono::ceil<Reactor::Duration>(run.config.connect_timeout),
                                    TcpStream::connect(reactor, run.config.server));
}

// Echo: `pipeline` messages written back to back, then read back whole and
// compared byte by byte with what was sent.
Task<void> echo_client(Reactor& reactor, Run& run, TcpStream& stream, std::size_t id) {
    const LoadConfig& config = run.config;
    const std::size_t batch = config.message_size * config.pipeline;
    std::vector<std::byte> sent(batch);
    std::vector<std::byte> received(batch);
    std::uint64_t offset = 0;  // of the stream, for the pattern
    std::uint64_t done = 0;    // messages of this connection
    while (reactor.time() < run.end && (config.count == 0 || done < config.count)) {
        for (std::size_t i = 0; i < batch; ++i) {
            sent[i] = echo_pattern(id, offset + i);
        }
        const TimePoint sent_at = reactor.time();
        co_await stream.write_all(std::span<const std::byte>{sent});
        std::size_t got = 0;
        std::size_t messages_done = 0;
        while (got < batch) {
            const std::size_t n = co_await stream.read_some(std::span{received}.subspan(got));
            if (n == 0) {
                throw std::runtime_error(fmt::format("{} closed the connection", config.server));
            }
            got += n;
            const TimePoint now = reactor.time();
            // Every message completed by this read: its latency ends now.
            for (; messages_done < got / config.message_size; ++messages_done) {
                if (run.measuring(now)) {
                    ++run.result.messages;
                    run.result.bytes += config.message_size;
                    run.result.latency_ns.record(static_cast<std::uint64_t>(
                        std::chrono::duration_cast<std::chrono::nanoseconds>(now - sent_at).count()));
                }
            }
        }
        std::uint64_t differing = 0;
        for (std::size_t i = 0; i < batch; ++i) {
            differing += sent[i] != received[i] ? 1U : 0U;
        }
        if (differing != 0) {
            run.result.mismatches += differing;
            throw std::runtime_error(fmt::format("{} bytes echoed wrong", differing));
        }
        offset += batch;
        done += config.pipeline;
    }
}

// HTTP: `pipeline` GETs written back to back, then as many responses parsed.
class ResponseCounter {
public:
    ResponseCounter() {
        http_parser_init(&parser_, HTTP_RESPONSE);
        parser_.data = this;
        http_parser_settings_init(&settings_);
        settings_.on_message_complete = [](http_parser* parser) {
            auto* self = static_cast<ResponseCounter*>(parser->data);
            ++self->complete_;
            if (parser->status_code < 200 || parser->status_code >= 300) {
                self->last_bad_status_ = parser->status_code;
            }
            return 0;
        };
    }
    ResponseCounter(const ResponseCounter&) = delete;
    ResponseCounter& operator=(const ResponseCounter&) = delete;

    /// Feeds bytes; throws on a malformed response.
    void feed(std::span<const std::byte> bytes) {
        const std::size_t parsed =
            http_parser_execute(&parser_, &settings_, reinterpret_cast<const char*>(bytes.data()), bytes.size());
        if (parsed != bytes.size() || HTTP_PARSER_ERRNO(&parser_) != HPE_OK) {
            throw std::runtime_error(
                fmt::format("malformed HTTP response: {}", http_errno_description(HTTP_PARSER_ERRNO(&parser_))));
        }
    }
    [[nodiscard]] std::size_t complete() const noexcept { return complete_; }
    [[nodiscard]] unsigned last_bad_status() const noexcept { return last_bad_status_; }

private:
    http_parser parser_{};
    http_parser_settings settings_{};
    std::size_t complete_ = 0;
    unsigned last_bad_status_ = 0;
};

Task<void> http_client(Reactor& reactor, Run& run, TcpStream& stream) {
    const LoadConfig& config = run.config;
    std::string requests;
    for (std::size_t i = 0; i < config.pipeline; ++i) {
        requests += fmt::format("GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: muxio-loadgen\r\n\r\n", config.path,
                                config.host_header);
    }
    std::vector<std::byte> buffer(64 * 1024);
    ResponseCounter responses;
    while (reactor.time() < run.end && (config.count == 0 || responses.complete() < config.count)) {
        const TimePoint sent_at = reactor.time();
        co_await stream.write_all(std::string_view{requests});
        const std::size_t target = responses.complete() + config.pipeline;
        while (responses.complete() < target) {
            const std::size_t before = responses.complete();
            const std::size_t n = co_await stream.read_some(buffer);
            if (n == 0) {
                throw std::runtime_error(fmt::format("{} closed the connection", config.server));
            }
            responses.feed(std::span<const std::byte>{buffer.data(), n});
            const TimePoint now = reactor.time();
            if (responses.last_bad_status() != 0) {
                throw std::runtime_error(fmt::format("HTTP status {}", responses.last_bad_status()));
            }
            if (run.measuring(now)) {
                for (std::size_t i = before; i < responses.complete(); ++i) {
                    ++run.result.messages;
                    run.result.latency_ns.record(static_cast<std::uint64_t>(
                        std::chrono::duration_cast<std::chrono::nanoseconds>(now - sent_at).count()));
                }
                run.result.bytes += n;
            }
        }
    }
}

Task<void> client(Reactor& reactor, Run& run, std::size_t id) {
    // A connection that is never established is an error, whether it failed
    // (refused, timed out) or was still under way when the run ended: a run
    // that connected nothing must not look like one that had no errors.
    std::optional<TcpStream> stream;
    try {
        stream.emplace(co_await connect(reactor, run));
    } catch (const Cancelled&) {
        ++run.result.connect_pending;
        run.fail(fmt::format("connection {}: still connecting to {} when the run ended", id, run.config.server));
    } catch (const TimeoutError&) {
        ++run.result.connect_failed;
        run.fail(fmt::format("connection {}: connect to {}: timed out after {} s", id, run.config.server,
                             run.config.connect_timeout.count()));
    } catch (const std::exception& error) {
        ++run.result.connect_failed;
        run.fail(fmt::format("connection {}: {}", id, error.what()));
    }
    if (!stream) {
        co_return;
    }
    run.established(reactor.time());
    try {
        stream->set_nodelay(true);
        if (run.config.mode == LoadMode::echo) {
            co_await echo_client(reactor, run, *stream, id);
        } else {
            co_await http_client(reactor, run, *stream);
        }
    } catch (const Cancelled&) {
        // the run ended while this connection waited
    } catch (const std::exception& error) {
        run.fail(fmt::format("connection {}: {}", id, error.what()));
    }
}

Task<void> drive(Reactor& reactor, Run& run, const ProgressFn& progress) {
    TaskGroup group;
    for (std::size_t id = 0; id < run.config.connections; ++id) {
        group.spawn(client(reactor, run, id));
    }
    // A connection blocked on a silent server must not hold the run past
    // its end: at the end, whatever still waits is cancelled.
    const TimePoint started = reactor.time();
    TimerHandle end_timer = reactor.call_at(run.end, [&group] { group.cancel(); });
    if (progress) {
        for (TimePoint tick = started + std::chrono::seconds{1}; tick < run.end && group.running() != 0;
             tick += std::chrono::seconds{1}) {
            co_await sleep_until(reactor, tick);
            progress(std::chrono::duration<double>(reactor.time() - started).count(), run.result.messages);
        }
    }
    co_await group.join();
    end_timer.cancel();
}

}  // namespace

LoadResult run_load(Reactor& reactor, const LoadConfig& config, const ProgressFn& progress) {
    const TimePoint start = reactor.time();
    const auto warmup = std::chrono::ceil<Reactor::Duration>(config.warmup);
    const auto duration = std::chrono::ceil<Reactor::Duration>(config.duration);
    Run run{config, start, start + warmup, start + warmup + duration, {}};
    run_until_complete(reactor, drive(reactor, run, progress));
    run.result.seconds = std::chrono::duration<double>(std::min(reactor.time(), run.end) - run.measure_from).count();
    run.result.seconds = std::max(run.result.seconds, 0.0);
    return std::move(run.result);
}

}  // namespace muxio::apps
