// bench-<library> --mode MODE [--variant V] [options]: one library's side of
// the benchmarks bench/muxbench.py drives.
//   echo, http   serve on 127.0.0.1:--port until killed
//   timers       --count timers with random delays 1..--max-delay-ms, half
//                cancelled; CPU ns per operation (schedule, cancel or fire)
//   soon         --chains callbacks each scheduling the next, --count in all
//   threadsafe   --count callbacks from a thread on --producer-core
//   latency      --count single cross-thread callbacks, --gap-us apart
//   readable     --count one-byte round trips over a socket pair
//   spawn        --count trivial tasks spawned, then run
// The loop runs on --loop-core. A measuring mode repeats --reps times and
// prints the medians as one line of key=value pairs.
#include <csignal>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

#include "common.hpp"

namespace {

using namespace bench;

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

template <class F>
F need(F entry, const Options& options) {
    if (entry == nullptr) {
        throw std::invalid_argument(std::string{library.name} + " has no mode " + options.mode);
    }
    return entry;
}

void check_count(std::size_t got, std::size_t expected) {
    if (got != expected) {
        throw std::runtime_error("ran " + std::to_string(got) + " callbacks, expected " + std::to_string(expected));
    }
}

// Medians over the repetitions of CPU and wall ns per unit of `run()`, which
// must run `expected` callbacks.
template <class Run>
std::pair<double, double> per_unit(const Options& options, std::size_t expected, std::size_t units, Run run) {
    std::vector<double> cpu;
    std::vector<double> wall;
    for (std::size_t rep = 0; rep < options.reps; ++rep) {
        const Measurement m = run();
        check_count(m.callbacks, expected);
        cpu.push_back(static_cast<double>(m.cpu_ns) / static_cast<double>(units));
        wall.push_back(static_cast<double>(m.wall_ns) / static_cast<double>(units));
    }
    return {median(cpu), median(wall)};
}

void measure(const Options& options, std::string_view impl) {
    const auto count = [&](std::size_t fallback) { return options.count != 0 ? options.count : fallback; };
    const char* name = impl.data();
    if (options.mode == "timers") {
        const auto workload = make_timer_workload(count(1'000'000), options.max_delay_ms, options.seed);
        const auto run = need(library.timers, options);
        const std::size_t timers = workload.delays_ms.size();
        const auto [cpu, wall] = per_unit(options, workload.expected_fires(), timers, [&] { return run(workload); });
        // An operation is a schedule, a cancel or a fire: twice the timers.
        std::printf("bench=timers impl=%s timers=%zu cpu_ns_per_op=%.1f cpu_ns_per_timer=%.1f wall_ms=%.1f\n", name,
                    timers, cpu / 2, cpu, wall * static_cast<double>(timers) / 1e6);
    } else if (options.mode == "soon") {
        const SoonWorkload workload{count(1'000'000), options.chains};
        const auto run = need(library.soon, options);
        const auto [cpu, wall] = per_unit(options, workload.total, workload.total, [&] { return run(workload); });
        std::printf("bench=soon impl=%s chains=%zu cpu_ns_per_callback=%.1f wall_ns_per_callback=%.1f\n", name,
                    workload.chains, cpu, wall);
    } else if (options.mode == "threadsafe") {
        const CrossThreadWorkload workload{count(1'000'000), 0, options.producer_core};
        const auto run = need(library.threadsafe, options);
        const auto [cpu, wall] = per_unit(options, workload.count, workload.count, [&] { return run(workload); });
        std::printf("bench=threadsafe impl=%s wall_ns_per_callback=%.1f cpu_ns_per_callback=%.1f\n", name, wall, cpu);
    } else if (options.mode == "latency") {
        const CrossThreadWorkload workload{count(20'000), options.gap_us * 1000, options.producer_core};
        const auto run = need(library.latency, options);
        std::vector<double> p50;
        std::vector<double> p99;
        for (std::size_t rep = 0; rep < options.reps; ++rep) {
            std::vector<std::int64_t> latencies = run(workload);
            check_count(latencies.size(), workload.count);
            std::sort(latencies.begin(), latencies.end());
            const auto at = [&](double f) {
                return static_cast<double>(
                           latencies[static_cast<std::size_t>(f * static_cast<double>(latencies.size() - 1))]) /
                       1e3;
            };
            p50.push_back(at(0.50));
            p99.push_back(at(0.99));
        }
        std::printf("bench=latency impl=%s p50_us=%.2f p99_us=%.2f\n", name, median(p50), median(p99));
    } else if (options.mode == "readable") {
        const std::size_t trips = count(200'000);
        const auto run = need(library.readable, options);
        const auto [cpu, wall] = per_unit(options, trips, trips, [&] { return run(trips, options); });
        std::printf("bench=readable impl=%s cpu_ns_per_round_trip=%.1f wall_ns_per_round_trip=%.1f\n", name, cpu, wall);
    } else if (options.mode == "spawn") {
        const std::size_t tasks = count(100'000);
        const auto run = need(library.spawn, options);
        const auto [cpu, wall] = per_unit(options, tasks, tasks, [&] { return run(tasks); });
        std::printf("bench=spawn impl=%s tasks=%zu cpu_ns_per_task=%.1f wall_ns_per_task=%.1f\n", name, tasks, cpu,
                    wall);
    } else {
        throw std::invalid_argument("unknown --mode " + options.mode);
    }
}

Options parse(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; i += 2) {
        const std::string_view option{argv[i]};
        if (i + 1 >= argc) {
            throw std::invalid_argument("missing value after " + std::string{option});
        }
        const std::string value{argv[i + 1]};
        if (option == "--mode") {
            options.mode = value;
        } else if (option == "--variant") {
            options.variant = value;
        } else if (option == "--port") {
            options.port = static_cast<std::uint16_t>(std::stoul(value));
        } else if (option == "--count") {
            options.count = std::stoul(value);
        } else if (option == "--chains") {
            options.chains = std::stoul(value);
        } else if (option == "--max-delay-ms") {
            options.max_delay_ms = static_cast<std::uint32_t>(std::stoul(value));
        } else if (option == "--gap-us") {
            options.gap_us = std::stoll(value);
        } else if (option == "--reps") {
            options.reps = std::max<std::size_t>(1, std::stoul(value));
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
    const std::string variants = std::string{","} + library.variants + ",";
    if (!options.variant.empty() && variants.find("," + options.variant + ",") == std::string::npos) {
        throw std::invalid_argument("unknown --variant " + options.variant);
    }
    return options;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Options options = parse(argc, argv);
        (void)std::signal(SIGPIPE, SIG_IGN);
        pin_this_thread(options.loop_core);
        const std::string impl = options.variant.empty() ? library.name : library.name + ("-" + options.variant);
        if (options.mode == "echo" || options.mode == "http") {
            need(library.serve, options)(options.mode == "echo" ? Mode::echo : Mode::http, options);
        }
        measure(options, impl);
        return 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "bench-%s: %s\n", library.name, error.what());
        std::fprintf(stderr,
                     "usage: bench-%s --mode echo|http|timers|soon|threadsafe|latency|readable|spawn%s%s%s "
                     "[--port P] [--count N] [--reps R] ... (see bench/peers/main.cpp)\n",
                     library.name, *library.variants != 0 ? " [--variant " : "", library.variants,
                     *library.variants != 0 ? "]" : "");
        return 1;
    }
}
