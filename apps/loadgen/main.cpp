// muxio-loadgen: a load generator on muxio itself. Echo ping-pong (every
// byte checked) or HTTP keep-alive GETs, over N connections, for a fixed
// time; a live progress line on a terminal; a table of throughput and
// latency percentiles at the end, and optionally the same as JSON.
//
// Exit status: 0 when the run completed messages without an error, 1 when a
// connection failed or was never established, an echoed byte differed or no
// message completed, 2 for a usage error.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/os.h>
#include <CLI/CLI.hpp>

#include "loadgen.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/selectors.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

std::string format_ns(std::uint64_t ns) {
    if (ns < 10'000) {
        return fmt::format("{} ns", ns);
    }
    if (ns < 10'000'000) {
        return fmt::format("{:.1f} µs", static_cast<double>(ns) / 1e3);
    }
    return fmt::format("{:.1f} ms", static_cast<double>(ns) / 1e6);
}

struct Percentile {
    const char* name;
    double quantile;
};
constexpr Percentile percentiles[] = {{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}, {"p99.9", 0.999}};

// How many connections were established and when the last one was; the
// ones that never were, and why.
std::string connect_phase(const muxio::apps::LoadConfig& config, const muxio::apps::LoadResult& result) {
    std::string text = fmt::format("connect phase: {} of {} connected", result.connected, config.connections);
    if (result.connected != 0) {
        text += fmt::format(" in {:.3f} s", result.connect_seconds);
    }
    if (const std::uint64_t never = result.connect_failed + result.connect_pending; never != 0) {
        text += fmt::format("; {} never connected ({} failed, {} still connecting when the run ended)", never,
                            result.connect_failed, result.connect_pending);
    }
    return text;
}

void print_table(const muxio::apps::LoadConfig& config, const muxio::apps::LoadResult& result) {
    fmt::print("\n{} mode, {} connection(s) to {}, {} in flight each, {:.1f} s measured\n",
               config.mode == muxio::apps::LoadMode::echo ? "echo" : "http", config.connections, config.server,
               config.pipeline, result.seconds);
    fmt::print("{}\n", connect_phase(config, result));
    fmt::print("| {:<13} | {:>14} |\n|{:-<15}|{:->16}|\n", "", "", "", "");
    fmt::print("| {:<13} | {:>14} |\n", "messages", result.messages);
    fmt::print("| {:<13} | {:>14.0f} |\n", "messages/s", result.messages_per_second());
    fmt::print("| {:<13} | {:>11.2f} MB |\n", "received", static_cast<double>(result.bytes) / 1e6);
    for (const Percentile& p : percentiles) {
        fmt::print("| {:<13} | {:>14} |\n", fmt::format("latency {}", p.name),
                   format_ns(result.latency_ns.quantile(p.quantile)));
    }
    fmt::print("| {:<13} | {:>14} |\n", "latency max", format_ns(result.latency_ns.max()));
    fmt::print("| {:<13} | {:>14} |\n", "connections", fmt::format("{} of {}", result.connected, config.connections));
    fmt::print("| {:<13} | {:>14} |\n", "errors", result.errors);
    if (config.mode == muxio::apps::LoadMode::echo) {
        fmt::print("| {:<13} | {:>14} |\n", "bad bytes", result.mismatches);
    }
    if (!result.first_error.empty()) {
        fmt::print("first error: {}\n", result.first_error);
    }
}

std::string json_string(std::string_view text) {
    std::string out = "\"";
    for (const char c : text) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
            out += c;
        }
    }
    return out + '"';
}

std::string to_json(const muxio::apps::LoadConfig& config, const muxio::apps::LoadResult& result) {
    std::string latency;
    for (const Percentile& p : percentiles) {
        latency += fmt::format("\"{}\": {}, ", p.name, result.latency_ns.quantile(p.quantile));
    }
    return fmt::format(
        "{{\"mode\": \"{}\", \"server\": {}, \"connections\": {}, \"message_size\": {}, \"pipeline\": {}, "
        "\"seconds\": {:.6f}, \"messages\": {}, \"messages_per_second\": {:.1f}, \"bytes\": {}, "
        "\"connected\": {}, \"connect_seconds\": {:.6f}, \"connect_failed\": {}, \"connect_pending\": {}, "
        "\"errors\": {}, \"mismatches\": {}, "
        "\"latency_ns\": {{{}\"max\": {}}}, \"first_error\": {}}}\n",
        config.mode == muxio::apps::LoadMode::echo ? "echo" : "http", json_string(config.server.to_string()),
        config.connections, config.message_size, config.pipeline, result.seconds, result.messages,
        result.messages_per_second(), result.bytes, result.connected, result.connect_seconds, result.connect_failed,
        result.connect_pending, result.errors, result.mismatches, latency, result.latency_ns.max(),
        json_string(result.first_error));
}

int run(int argc, char** argv) {
    muxio::apps::LoadConfig config;
    std::string mode = "echo";
    std::string host = "127.0.0.1";
    std::uint16_t port = 7007;
    double duration = 5.0;
    double warmup = 0.0;
    double connect_timeout = config.connect_timeout.count();
    std::string selector;
    std::string json_path;
    std::string progress_mode = "auto";
    std::vector<std::string> selectors;
    for (const std::string_view name : muxio::available_selectors()) {
        selectors.emplace_back(name);
    }

    CLI::App app{
        "muxio-loadgen: drive an echo or HTTP server with N connections for a while, then\n"
        "print throughput and latency percentiles. Echoed bytes are all checked.",
        "muxio-loadgen"};
    app.add_option("--mode", mode, "echo: ping-pong of --size bytes; http: keep-alive GET of --path")
        ->check(CLI::IsMember({"echo", "http"}))
        ->capture_default_str();
    app.add_option("--host", host, "server address (IPv4 or IPv6 literal)")->capture_default_str();
    app.add_option("--port", port, "server port")->capture_default_str();
    app.add_option("-c,--connections", config.connections, "connections")
        ->check(CLI::Range(1, 1'000'000))
        ->capture_default_str();
    app.add_option("-s,--size", config.message_size, "echo message size, bytes")
        ->check(CLI::Range(1, 64 * 1024 * 1024))
        ->capture_default_str();
    app.add_option("-p,--pipeline", config.pipeline, "messages or requests in flight per connection")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app.add_option("-n,--count", config.count,
                   "messages per connection, then stop (0: run for the whole duration, which bounds it anyway)")
        ->capture_default_str();
    app.add_option("-d,--duration", duration, "measured seconds")
        ->check(CLI::Range(0.01, 86400.0))
        ->capture_default_str();
    app.add_option("-w,--warmup", warmup, "seconds run before measuring")
        ->check(CLI::Range(0.0, 3600.0))
        ->capture_default_str();
    app.add_option("--connect-timeout", connect_timeout,
                   "seconds a connection may take to be established; one that fails, times out or is still "
                   "connecting when the run ends counts as an error")
        ->check(CLI::Range(0.001, 3600.0))
        ->capture_default_str();
    app.add_option("--path", config.path, "http: the path to GET")->capture_default_str();
    app.add_option("--selector", selector, "I/O mechanism (default: the best the kernel accepts)")
        ->check(CLI::IsMember(selectors));
    app.add_option("--json", json_path, "also write the result as JSON to this file (- for stdout)");
    app.add_option("--progress", progress_mode, "live progress line on stderr: auto (on a terminal), always, never")
        ->check(CLI::IsMember({"auto", "always", "never"}))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }

    const std::optional<muxio::SocketAddress> server = muxio::SocketAddress::ip(host, port);
    if (!server) {
        fmt::print(stderr, "muxio-loadgen: --host {}: not an IPv4 or IPv6 address\n", host);
        return exit_usage;
    }
    config.mode = mode == "echo" ? muxio::apps::LoadMode::echo : muxio::apps::LoadMode::http;
    config.server = *server;
    config.host_header = server->to_string();
    config.duration = std::chrono::duration<double>{duration};
    config.warmup = std::chrono::duration<double>{warmup};
    config.connect_timeout = std::chrono::duration<double>{connect_timeout};

    muxio::Reactor reactor{muxio::ReactorOptions{selector, {}}};
    const bool show_progress = progress_mode == "always" || (progress_mode == "auto" && ::isatty(STDERR_FILENO) == 1);
    muxio::apps::ProgressFn progress;
    if (show_progress) {
        progress = [&config](double elapsed, std::uint64_t messages) {
            const double measured = elapsed - config.warmup.count();
            fmt::print(stderr, "\r{:6.1f} s  {:>12} messages  {:>12.0f} msg/s   ", elapsed, messages,
                       measured > 0 ? static_cast<double>(messages) / measured : 0.0);
            std::fflush(stderr);
        };
    }
    const muxio::apps::LoadResult result = muxio::apps::run_load(reactor, config, progress);
    if (show_progress) {
        fmt::print(stderr, "\n");
    }
    print_table(config, result);
    if (!json_path.empty()) {
        const std::string json = to_json(config, result);
        if (json_path == "-") {
            fmt::print("{}", json);
        } else {
            fmt::output_file(json_path).print("{}", json);
        }
    }
    const bool ok = result.errors == 0 && result.mismatches == 0 && result.messages > 0;
    return ok ? exit_ok : exit_failed;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "muxio-loadgen: {}\n", error.what());
        return exit_failed;
    }
}
