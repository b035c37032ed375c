// reactor_loop_bench --bench timers|soon|threadsafe|latency --impl muxio|libuv|libevent|asio
//
// The event-loop benchmarks without sockets, one library per process:
//   timers      schedule COUNT one-shot timers with random delays of 1..MAX_DELAY
//               ms (the same sequence for every library), cancel half of them in
//               a random order, run until the others have fired. Reports CPU
//               time per operation (COUNT schedules + COUNT/2 cancels + COUNT/2
//               fires = 2 COUNT operations) and per timer.
//   soon        CHAINS callbacks each scheduling the next one until COUNT have
//               run, on one thread. Reports CPU ns per callback.
//   threadsafe  a producer thread schedules COUNT callbacks into a loop running
//               on another core. Reports wall ns per callback (first call to
//               last callback) and the process's CPU ns per callback.
//   latency     one cross-thread callback at a time: SAMPLES times, schedule,
//               wait until it ran, wait GAP µs more (the loop is asleep again).
//               Reports p50 and p99 of call-to-run latency.
// Each run repeats REPS times in the process and prints the median of the
// repetitions as one line of key=value pairs. The loop runs on --loop-core,
// the producer thread on --producer-core (-1: not pinned).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "bench_common.hpp"

namespace {

struct Options {
    std::string bench;
    std::string impl;
    std::size_t reps = 3;
    std::size_t count = 0;  // 0: the benchmark's default
    std::size_t chains = 1000;
    std::uint32_t max_delay_ms = 100;
    std::size_t samples = 20000;
    std::int64_t gap_us = 20;
    int loop_core = 0;
    int producer_core = 1;
    std::uint64_t seed = 42;
};

using bench::median;

template <class F>
F pick(const std::string& impl, F muxio, F libuv, F libevent, F asio) {
    if (impl == "muxio") {
        return muxio;
    }
    if (impl == "libuv") {
        return libuv;
    }
    if (impl == "libevent") {
        return libevent;
    }
    if (impl == "asio") {
        return asio;
    }
    throw std::invalid_argument("unknown --impl " + impl);
}

void check_count(std::size_t got, std::size_t expected) {
    if (got != expected) {
        throw std::runtime_error("ran " + std::to_string(got) + " callbacks, expected " + std::to_string(expected));
    }
}

void run_timers(const Options& options) {
    const std::size_t count = options.count != 0 ? options.count : 1'000'000;
    const auto workload = bench::make_timer_workload(count, options.max_delay_ms, options.seed);
    const auto run =
        pick(options.impl, &bench::timers_muxio, &bench::timers_libuv, &bench::timers_libevent, &bench::timers_asio);
    const double operations = static_cast<double>(count + workload.cancel_order.size() + workload.expected_fires());
    std::vector<double> cpu;
    std::vector<double> wall;
    for (std::size_t rep = 0; rep < options.reps; ++rep) {
        const bench::Measurement m = run(workload);
        check_count(m.callbacks, workload.expected_fires());
        cpu.push_back(static_cast<double>(m.cpu_ns));
        wall.push_back(static_cast<double>(m.wall_ns));
    }
    std::printf(
        "bench=timers impl=%s timers=%zu cancelled=%zu max_delay_ms=%u cpu_ns_per_op=%.1f cpu_ns_per_timer=%.1f "
        "wall_ms=%.1f\n",
        options.impl.c_str(), count, workload.cancel_order.size(), options.max_delay_ms, median(cpu) / operations,
        median(cpu) / static_cast<double>(count), median(wall) / 1e6);
}

void run_soon(const Options& options) {
    const bench::SoonWorkload workload{options.count != 0 ? options.count : 1'000'000, options.chains};
    const auto run =
        pick(options.impl, &bench::soon_muxio, &bench::soon_libuv, &bench::soon_libevent, &bench::soon_asio);
    std::vector<double> cpu;
    std::vector<double> wall;
    for (std::size_t rep = 0; rep < options.reps; ++rep) {
        const bench::Measurement m = run(workload);
        check_count(m.callbacks, workload.total);
        cpu.push_back(static_cast<double>(m.cpu_ns) / static_cast<double>(workload.total));
        wall.push_back(static_cast<double>(m.wall_ns) / static_cast<double>(workload.total));
    }
    std::printf("bench=soon impl=%s callbacks=%zu chains=%zu cpu_ns_per_callback=%.1f wall_ns_per_callback=%.1f\n",
                options.impl.c_str(), workload.total, workload.chains, median(cpu), median(wall));
}

void run_threadsafe(const Options& options) {
    const bench::ThreadsafeWorkload workload{options.count != 0 ? options.count : 1'000'000, options.loop_core,
                                             options.producer_core};
    const auto run = pick(options.impl, &bench::threadsafe_muxio, &bench::threadsafe_libuv, &bench::threadsafe_libevent,
                          &bench::threadsafe_asio);
    std::vector<double> cpu;
    std::vector<double> wall;
    for (std::size_t rep = 0; rep < options.reps; ++rep) {
        const bench::Measurement m = run(workload);
        check_count(m.callbacks, workload.total);
        cpu.push_back(static_cast<double>(m.cpu_ns) / static_cast<double>(workload.total));
        wall.push_back(static_cast<double>(m.wall_ns) / static_cast<double>(workload.total));
    }
    std::printf("bench=threadsafe impl=%s callbacks=%zu wall_ns_per_callback=%.1f cpu_ns_per_callback=%.1f\n",
                options.impl.c_str(), workload.total, median(wall), median(cpu));
}

void run_latency(const Options& options) {
    const bench::LatencyWorkload workload{options.samples, options.gap_us * 1000, options.loop_core,
                                          options.producer_core};
    const auto run = pick(options.impl, &bench::latency_muxio, &bench::latency_libuv, &bench::latency_libevent,
                          &bench::latency_asio);
    std::vector<double> p50;
    std::vector<double> p99;
    for (std::size_t rep = 0; rep < options.reps; ++rep) {
        std::vector<std::int64_t> latencies = run(workload);
        check_count(latencies.size(), workload.samples);
        std::sort(latencies.begin(), latencies.end());
        const auto at = [&](double fraction) {
            return static_cast<double>(
                       latencies[static_cast<std::size_t>(fraction * static_cast<double>(latencies.size() - 1))]) /
                   1e3;
        };
        p50.push_back(at(0.50));
        p99.push_back(at(0.99));
    }
    std::printf("bench=latency impl=%s samples=%zu gap_us=%lld p50_us=%.2f p99_us=%.2f\n", options.impl.c_str(),
                workload.samples, static_cast<long long>(options.gap_us), median(p50), median(p99));
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
            } else if (option == "--chains") {
                options.chains = std::stoul(value);
            } else if (option == "--max-delay-ms") {
                options.max_delay_ms = static_cast<std::uint32_t>(std::stoul(value));
            } else if (option == "--samples") {
                options.samples = std::stoul(value);
            } else if (option == "--gap-us") {
                options.gap_us = std::stoll(value);
            } else if (option == "--loop-core") {
                options.loop_core = std::stoi(value);
            } else if (option == "--producer-core") {
                options.producer_core = std::stoi(value);
            } else if (option == "--seed") {
                options.seed = std::stoull(value);
            } else {
                throw std::invalid_argument("unknown option " + std::string{option});
            }
        }
        if (options.reps == 0) {
            throw std::invalid_argument("--reps must be at least 1");
        }
        bench::pin_this_thread(options.loop_core);
        if (options.bench == "timers") {
            run_timers(options);
        } else if (options.bench == "soon") {
            run_soon(options);
        } else if (options.bench == "threadsafe") {
            run_threadsafe(options);
        } else if (options.bench == "latency") {
            run_latency(options);
        } else {
            throw std::invalid_argument("--bench timers|soon|threadsafe|latency");
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "reactor_loop_bench: %s\n", error.what());
        return 1;
    }
    return 0;
}
