// bench-select: what one select() call costs with one active socketpair among
// K idle descriptors, for every muxio backend compiled in and for a
// hand-written epoll_wait loop (the floor). bench/select_bench.py does the
// same work with Python's selectors; `bench/muxbench.py select` runs both,
// interleaved, and prints the medians.
//
// The work of one iteration, identical for every contender:
//  - one select() that does not block (timeout zero);
//  - the active reader is readable because its writer sent one byte at setup
//    that nobody ever reads: level-triggered selectors report it every time,
//    and no read()/write() system call dilutes the figure;
//  - for each ready entry, add the key's data to a sum and OR its events into
//    a mask. After each timed batch the sum and mask prove that every call
//    reported exactly the active reader, for READ, and nothing else.
//
// The K idle descriptors are both ends of K/2 AF_UNIX socketpairs (K + 2
// descriptors in all, not 2K + 2, so K = 10 000 fits under RLIMIT_NOFILE =
// 20 000), each registered for READ and never written to. They are created
// first and the active pair last, so the active reader has the highest
// descriptor and is registered last: the worst place for backends that scan
// their registrations in user space. select(2) runs only while the highest
// descriptor is below FD_SETSIZE; other K are reported as skipped.
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <memory>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "muxio/selectors.hpp"

namespace {

// What a batch is timed with: the thread's CPU time by default. A select()
// with timeout zero never sleeps, so its CPU time is its cost; unlike the wall
// clock it leaves out the time the process sat preempted on a shared machine.
clockid_t batch_clock = CLOCK_THREAD_CPUTIME_ID;

std::int64_t now_ns() {
    timespec now{};
    if (::clock_gettime(batch_clock, &now) == -1) {
        throw std::system_error(errno, std::system_category(), "clock_gettime");
    }
    return std::int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// The data registered with each key: the sum over a batch tells whether only
// the active reader was reported, and exactly once per select().
constexpr std::uint64_t active_data = 1;
constexpr std::uint64_t idle_data = std::uint64_t{1} << 40U;

[[noreturn]] void fail_errno(std::string_view what) {
    throw std::system_error(errno, std::system_category(), std::string{what});
}

std::pair<int, int> make_socketpair() {
    std::array<int, 2> fds{};
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds.data()) == -1) {
        fail_errno("socketpair");
    }
    return {fds[0], fds[1]};
}

// Room for K idle descriptors, the active pair, a selector's own descriptor
// and whatever the runtime holds.
void raise_fd_limit(std::size_t idle) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == -1) {
        fail_errno("getrlimit(RLIMIT_NOFILE)");
    }
    const rlim_t wanted = static_cast<rlim_t>(idle) + 64;
    if (limit.rlim_cur >= wanted) {
        return;
    }
    if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < wanted) {
        throw std::runtime_error(
            fmt::format("K = {} needs {} descriptors; the hard RLIMIT_NOFILE is {}", idle, wanted, limit.rlim_max));
    }
    limit.rlim_cur = wanted;
    if (::setrlimit(RLIMIT_NOFILE, &limit) == -1) {
        fail_errno("setrlimit(RLIMIT_NOFILE)");
    }
}

// The descriptors of one K: idle ones first, then the active pair, whose
// writer has one byte pending for the reader.
struct Fixture {
    std::vector<int> idle_fds;  // K of them registered; one spare end when K is odd
    std::size_t idle_count = 0;
    int active_reader = -1;
    int active_writer = -1;

    explicit Fixture(std::size_t idle) : idle_count{idle} {
        raise_fd_limit(idle);
        while (idle_fds.size() < idle) {
            const auto [a, b] = make_socketpair();
            idle_fds.insert(idle_fds.end(), {a, b});
        }
        std::tie(active_reader, active_writer) = make_socketpair();
        if (const char byte = 'x'; ::write(active_writer, &byte, 1) != 1) {
            fail_errno("write to the active socketpair");
        }
    }
    ~Fixture() {
        for (const int fd : idle_fds) {
            ::close(fd);
        }
        ::close(active_reader);
        ::close(active_writer);
    }
    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;

    [[nodiscard]] std::span<const int> idle() const noexcept { return std::span{idle_fds}.first(idle_count); }
    [[nodiscard]] int highest_fd() const noexcept { return std::max(active_reader, active_writer); }
};

// What a batch of select() calls saw.
struct Seen {
    std::uint64_t data_sum = 0;
    std::uint32_t events = 0;  // OR of the EVENT_* bits reported
};

class Contender {
public:
    Contender() = default;
    Contender(const Contender&) = delete;
    Contender& operator=(const Contender&) = delete;
    virtual ~Contender() = default;

    [[nodiscard]] virtual std::string label() const = 0;
    /// `count` select() calls with timeout zero, each result iterated.
    virtual Seen run(std::uint64_t count) = 0;
};

// muxio's selector layer, exactly as a user calls it.
class MuxioContender final : public Contender {
public:
    MuxioContender(std::string_view backend, const Fixture& fixture)
        : selector_{muxio::make_selector<std::uint64_t>(backend)} {
        for (const int fd : fixture.idle()) {
            (void)selector_->register_(fd, muxio::EVENT_READ, idle_data);
        }
        (void)selector_->register_(fixture.active_reader, muxio::EVENT_READ, active_data);
    }

    [[nodiscard]] std::string label() const override { return fmt::format("muxio-{}", selector_->name()); }

    Seen run(std::uint64_t count) override {
        Seen seen;
        for (std::uint64_t i = 0; i < count; ++i) {
            for (const auto& [key, events] : selector_->select(std::chrono::nanoseconds::zero())) {
                seen.data_sum += key.data;
                seen.events |= events.bits();
            }
        }
        return seen;
    }

private:
    std::unique_ptr<muxio::BaseSelector<std::uint64_t>> selector_;
};

// The floor: what a careful C programmer writes against epoll directly. The
// kernel hands back a pointer to the connection record; no translation, no
// generation check, no result vector.
class RawEpollContender final : public Contender {
public:
    // `pwait2`: wait with epoll_pwait2 and a zero timespec, as muxio's epoll
    // poller does, instead of epoll_wait with 0 ms (a diagnostic variant that
    // separates the system call's own cost from muxio's).
    RawEpollContender(const Fixture& fixture, bool pwait2) : epfd_{::epoll_create1(EPOLL_CLOEXEC)}, pwait2_{pwait2} {
        if (epfd_ < 0) {
            fail_errno("epoll_create1");
        }
        records_.reserve(fixture.idle_count + 1);
        for (const int fd : fixture.idle()) {
            records_.push_back({fd, idle_data});
        }
        records_.push_back({fixture.active_reader, active_data});
        for (Record& record : records_) {
            epoll_event event{};
            event.events = EPOLLIN;
            event.data.ptr = &record;
            if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, record.fd, &event) == -1) {
                fail_errno("epoll_ctl(ADD)");
            }
        }
    }

    ~RawEpollContender() override { ::close(epfd_); }
    [[nodiscard]] std::string label() const override { return pwait2_ ? "raw-epoll_pwait2" : "raw-epoll"; }

    Seen run(std::uint64_t count) override {
        Seen seen;
        const timespec zero{};
        for (std::uint64_t i = 0; i < count; ++i) {
            const int ready =
                pwait2_ ? ::epoll_pwait2(epfd_, events_.data(), static_cast<int>(events_.size()), &zero, nullptr)
                        : ::epoll_wait(epfd_, events_.data(), static_cast<int>(events_.size()), 0);
            if (ready < 0) {
                fail_errno("epoll_wait");
            }
            for (int j = 0; j < ready; ++j) {
                const epoll_event& event = events_[static_cast<std::size_t>(j)];
                seen.data_sum += static_cast<const Record*>(event.data.ptr)->data;
                seen.events |= (event.events & EPOLLIN) != 0 ? 1U : 0U;
            }
        }
        return seen;
    }

private:
    struct Record {
        int fd;
        std::uint64_t data;
    };
    int epfd_;
    bool pwait2_;
    std::vector<Record> records_;
    std::array<epoll_event, 64> events_{};
};

// Times one batch; throws if any call reported something else than the
// active reader, once, for READ.
double time_batch(Contender& contender, std::uint64_t count) {
    const std::int64_t start = now_ns();
    const Seen seen = contender.run(count);
    const std::int64_t stop = now_ns();
    if (seen.data_sum != count * active_data || (count > 0 && seen.events != muxio::EVENT_READ.bits())) {
        throw std::runtime_error(fmt::format("{}: {} calls reported data sum {:#x} and events {:#x}", contender.label(),
                                             count, seen.data_sum, seen.events));
    }
    return static_cast<double>(stop - start);
}

// Doubles the batch until it takes a measurable time, then scales it to about
// `target` per batch. This is also the warm-up.
std::uint64_t calibrate(Contender& contender, std::chrono::milliseconds target) {
    const double target_ns = static_cast<double>(std::chrono::nanoseconds{target}.count());
    std::uint64_t count = 16;
    for (;;) {
        const double elapsed = time_batch(contender, count);
        if (elapsed >= target_ns / 8 || count >= (std::uint64_t{1} << 40U)) {
            return std::max<std::uint64_t>(
                1, static_cast<std::uint64_t>(static_cast<double>(count) * target_ns / std::max(elapsed, 1.0)));
        }
        count *= 2;
    }
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t mid = values.size() / 2;
    return values.size() % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

struct Options {
    std::vector<std::size_t> ks{10, 100, 1000, 10000};
    std::vector<std::string> contenders;  // empty: raw-epoll and every backend compiled
    std::uint64_t iterations = 0;         // 0: calibrated to `target` per repetition
    std::size_t repetitions = 5;
    std::chrono::milliseconds target{20};
    bool wall_clock = false;
};

std::vector<std::string> split(const std::string& list) {
    std::vector<std::string> items;
    std::istringstream in{list};
    for (std::string item; std::getline(in, item, ',');) {
        if (!item.empty()) {
            items.push_back(item);
        }
    }
    return items;
}

std::vector<std::string> all_contenders() {
    std::vector<std::string> names{"raw-epoll"};
    for (const std::string_view name : muxio::available_selectors()) {
        names.emplace_back(name);
    }
    return names;
}

constexpr const char* usage =
    "usage: bench-select [--k LIST] [--contenders LIST] [--iterations N] [--repetitions R] [--target-ms MS]\n"
    "                    [--clock cpu|wall]     or: bench-select --list (the default contenders)\n"
    "  --k: idle descriptors (default 10,100,1000,10000); --contenders: raw-epoll and muxio backends (default\n"
    "  all), also raw-epoll_pwait2, the raw loop waiting with epoll_pwait2 as muxio does; --iterations: select()\n"
    "  calls per repetition, 0 calibrates to --target-ms (default 20); --repetitions: interleaved across\n"
    "  contenders, the median is printed (default 5); --clock: the thread's CPU time (default) or monotonic.\n"
    "Prints one row per contender and K: contender K ns_per_select min_ns iterations repetitions.\n";

Options parse_options(std::span<char*> args) {
    Options options;
    for (std::size_t i = 1; i < args.size(); ++i) {
        const std::string_view arg = args[i];
        if (arg == "--help" || arg == "-h" || arg == "--list") {
            fmt::print("{}", arg == "--list" ? fmt::format("{}\n", fmt::join(all_contenders(), "\n")) : usage);
            std::exit(0);
        }
        if (i + 1 >= args.size()) {
            throw std::invalid_argument(fmt::format("{}: missing value (see --help)", arg));
        }
        const std::string value = args[++i];
        if (arg == "--k") {
            options.ks.clear();
            for (const std::string& k : split(value)) {
                options.ks.push_back(std::stoul(k));
            }
        } else if (arg == "--contenders") {
            options.contenders = split(value);
        } else if (arg == "--iterations") {
            options.iterations = std::stoull(value);
        } else if (arg == "--repetitions") {
            options.repetitions = std::max<std::size_t>(1, std::stoul(value));
        } else if (arg == "--clock" && (value == "cpu" || value == "wall")) {
            options.wall_clock = value == "wall";
        } else if (arg == "--target-ms") {
            options.target = std::chrono::milliseconds{std::stoul(value)};
        } else {
            throw std::invalid_argument(fmt::format("bad option {} {} (see --help)", arg, value));
        }
    }
    if (options.contenders.empty()) {
        options.contenders = all_contenders();
    }
    return options;
}

std::string label_of(std::string_view contender) {
    return contender.starts_with("raw-") ? std::string{contender} : fmt::format("muxio-{}", contender);
}

// One K: every contender on the same descriptors, repetitions interleaved
// (the order rotates each repetition) so drift on a noisy machine hits all.
void run_k(const Options& options, std::size_t k) {
    const Fixture fixture{k};
    std::vector<std::unique_ptr<Contender>> contenders;
    for (const std::string& name : options.contenders) {
        if (name == "raw-epoll" || name == "raw-epoll_pwait2") {
            contenders.push_back(std::make_unique<RawEpollContender>(fixture, name == "raw-epoll_pwait2"));
        } else if (name == "select" && fixture.highest_fd() >= FD_SETSIZE) {
            fmt::print("# {} K={} skipped: highest fd {} is not below FD_SETSIZE ({})\n", label_of(name), k,
                       fixture.highest_fd(), FD_SETSIZE);
            fmt::print("{} {} skipped\n", label_of(name), k);
        } else {
            contenders.push_back(std::make_unique<MuxioContender>(name, fixture));
        }
    }
    std::vector<std::uint64_t> iterations;
    for (const auto& contender : contenders) {
        if (options.iterations != 0) {
            (void)time_batch(*contender, options.iterations / 10 + 1);  // warm-up
            iterations.push_back(options.iterations);
        } else {
            iterations.push_back(calibrate(*contender, options.target));
        }
    }
    std::vector<std::vector<double>> samples(contenders.size());
    for (std::size_t rep = 0; rep < options.repetitions; ++rep) {
        for (std::size_t n = 0; n < contenders.size(); ++n) {
            const std::size_t c = (n + rep) % contenders.size();
            samples[c].push_back(time_batch(*contenders[c], iterations[c]) / static_cast<double>(iterations[c]));
        }
    }
    for (std::size_t c = 0; c < contenders.size(); ++c) {
        fmt::print("{} {} {:.1f} {:.1f} {} {}\n", contenders[c]->label(), k, median(samples[c]),
                   *std::min_element(samples[c].begin(), samples[c].end()), iterations[c], options.repetitions);
    }
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Options options = parse_options(std::span{argv, static_cast<std::size_t>(argc)});
        batch_clock = options.wall_clock ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID;
        fmt::print("# contender K ns_per_select min_ns iterations repetitions\n");
        for (const std::size_t k : options.ks) {
            run_k(options, k);
        }
        return 0;
    } catch (const std::exception& error) {
        fmt::print(stderr, "bench-select: {}\n", error.what());
        return 1;
    }
}
