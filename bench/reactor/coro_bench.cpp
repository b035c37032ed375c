// reactor_coro_bench --bench readable|spawn --impl NAME [--count N] [--reps R]
//
// The coroutine layer's micro-benchmarks, one library per process:
//   readable  ping-pong of one byte over an AF_UNIX socket pair, one thread
//             (see PingPongWorkload): COUNT round trips, each two awaits of
//             readability, two reads and two writes. Reports CPU and wall ns
//             per round trip. --impl muxio-coro (co_await stream.readable() on
//             a muxio::UnixStream, whose reader stays registered between
//             awaits), muxio-coro-raw (co_await muxio::readable(fd): a reader
//             added and removed per await), asio-coro (co_await
//             async_read_some(..., use_awaitable)), and for reference the
//             callback versions: muxio (add_reader, both readers registered
//             throughout), asio (async_read_some with a handler).
//   spawn     spawn COUNT trivial tasks, then run the loop until they have all
//             completed (see SpawnWorkload). Reports CPU and wall ns per task.
//             --impl muxio-coro (muxio::spawn), asio-coro (asio::co_spawn with
//             asio::detached).
// Each run repeats REPS times in the process and prints the median of the
// repetitions as one line of key=value pairs, like reactor_loop_bench. The
// thread is pinned to --loop-core (-1: not pinned).
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "bench_common.hpp"

namespace {

struct Options {
    std::string bench;
    std::string impl;
    std::size_t reps = 5;
    std::size_t count = 0;  // 0: the benchmark's default
    int loop_core = 0;
};

void check_count(std::size_t got, std::size_t expected) {
    if (got != expected) {
        throw std::runtime_error("completed " + std::to_string(got) + ", expected " + std::to_string(expected));
    }
}

template <class Workload>
using Run = bench::Measurement (*)(const Workload&);

// Runs `run` REPS times; returns the medians of CPU and wall ns per unit.
template <class Workload>
std::pair<double, double> measure(const Options& options, Run<Workload> run, const Workload& workload,
                                  std::size_t units) {
    std::vector<double> cpu;
    std::vector<double> wall;
    for (std::size_t rep = 0; rep < options.reps; ++rep) {
        const bench::Measurement m = run(workload);
        check_count(m.callbacks, units);
        cpu.push_back(static_cast<double>(m.cpu_ns) / static_cast<double>(units));
        wall.push_back(static_cast<double>(m.wall_ns) / static_cast<double>(units));
    }
    return {bench::median(cpu), bench::median(wall)};
}

void run_readable(const Options& options) {
    const bench::PingPongWorkload workload{options.count != 0 ? options.count : 200'000};
    Run<bench::PingPongWorkload> run = nullptr;
    if (options.impl == "muxio-coro") {
        run = &bench::pingpong_muxio_coro;
    } else if (options.impl == "muxio-coro-raw") {
        run = &bench::pingpong_muxio_coro_raw;
    } else if (options.impl == "muxio") {
        run = &bench::pingpong_muxio;
    } else if (options.impl == "asio-coro") {
        run = &bench::pingpong_asio_coro;
    } else if (options.impl == "asio") {
        run = &bench::pingpong_asio;
    } else {
        throw std::invalid_argument("--bench readable: --impl muxio-coro|muxio|asio-coro|asio|muxio-coro-raw");
    }
    const auto [cpu, wall] = measure(options, run, workload, workload.round_trips);
    std::printf("bench=coro_readable impl=%s round_trips=%zu cpu_ns_per_round_trip=%.1f wall_ns_per_round_trip=%.1f\n",
                options.impl.c_str(), workload.round_trips, cpu, wall);
}

void run_spawn(const Options& options) {
    const bench::SpawnWorkload workload{options.count != 0 ? options.count : 100'000};
    Run<bench::SpawnWorkload> run = nullptr;
    if (options.impl == "muxio-coro") {
        run = &bench::spawn_muxio_coro;
    } else if (options.impl == "asio-coro") {
        run = &bench::spawn_asio_coro;
    } else {
        throw std::invalid_argument("--bench spawn: --impl muxio-coro|asio-coro");
    }
    const auto [cpu, wall] = measure(options, run, workload, workload.tasks);
    std::printf("bench=coro_spawn impl=%s tasks=%zu cpu_ns_per_task=%.1f wall_ns_per_task=%.1f\n", options.impl.c_str(),
                workload.tasks, cpu, wall);
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    try {
        for (int i = 1; i + 1 < argc; i += 2) {
            const std::string_view option{argv[i]};
            const std::string value{argv[i + 1]};
            if (option == "--bench") {
                options.bench = value;
            } else if (option == "--impl") {
                options.impl = value;
            } else if (option == "--reps") {
                options.reps = std::stoul(value);
            } else if (option == "--count") {
                options.count = std::stoul(value);
            } else if (option == "--loop-core") {
                options.loop_core = std::stoi(value);
            } else {
                throw std::invalid_argument("unknown option " + std::string{option});
            }
        }
        if (options.reps == 0) {
            throw std::invalid_argument("--reps must be at least 1");
        }
        bench::pin_this_thread(options.loop_core);
        if (options.bench == "readable") {
            run_readable(options);
        } else if (options.bench == "spawn") {
            run_spawn(options);
        } else {
            throw std::invalid_argument("--bench readable|spawn");
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "reactor_coro_bench: %s\n", error.what());
        return 1;
    }
    return 0;
}
