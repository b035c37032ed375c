// The selector contract (DESIGN.md section 1), run once per backend compiled
// on this machine. Backend-specific behaviour lives in the *_quirks_test.cpp
// files; this file holds only what every mechanism must do the same way.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/detail/poller.hpp"
#include "muxio/detail/selector_loop.hpp"
#include "muxio/selectors.hpp"
#include "support/allocation_failure.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::EVENT_WRITE;
using muxio::Events;
using muxio::FileObject;
using muxio::KeyError;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::ready_by_fd;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using muxio::test::UniqueFd;

namespace {

// One tag per backend: the selector template, its name and what differs.
struct SelectBackend {
    template <class Data>
    using Selector = muxio::SelectSelector<Data>;
    static constexpr std::string_view name = "select";
    static constexpr bool owns_kernel_object = false;
    static constexpr bool below_fd_setsize_only = true;
};

struct PollBackend {
    template <class Data>
    using Selector = muxio::PollSelector<Data>;
    static constexpr std::string_view name = "poll";
    static constexpr bool owns_kernel_object = false;
    static constexpr bool below_fd_setsize_only = false;
};

#if MUXIO_HAS_EPOLL
struct EpollBackend {
    template <class Data>
    using Selector = muxio::EpollSelector<Data>;
    static constexpr std::string_view name = "epoll";
    static constexpr bool owns_kernel_object = true;
    static constexpr bool below_fd_setsize_only = false;
};
#define MUXIO_TEST_EPOLL_BACKEND , EpollBackend
#else
#define MUXIO_TEST_EPOLL_BACKEND
#endif

#if MUXIO_HAS_IO_URING
struct IoUringBackend {
    template <class Data>
    using Selector = muxio::IoUringSelector<Data>;
    static constexpr std::string_view name = "io_uring";
    static constexpr bool owns_kernel_object = true;
    static constexpr bool below_fd_setsize_only = false;
};
#define MUXIO_TEST_IO_URING_BACKEND , IoUringBackend
#else
#define MUXIO_TEST_IO_URING_BACKEND
#endif

#if MUXIO_HAS_KQUEUE
struct KqueueBackend {
    template <class Data>
    using Selector = muxio::KqueueSelector<Data>;
    static constexpr std::string_view name = "kqueue";
    static constexpr bool owns_kernel_object = true;
    static constexpr bool below_fd_setsize_only = false;
};
#define MUXIO_TEST_KQUEUE_BACKEND , KqueueBackend
#else
#define MUXIO_TEST_KQUEUE_BACKEND
#endif

#if MUXIO_HAS_DEVPOLL
struct DevpollBackend {
    template <class Data>
    using Selector = muxio::DevpollSelector<Data>;
    static constexpr std::string_view name = "devpoll";
    static constexpr bool owns_kernel_object = true;
    static constexpr bool below_fd_setsize_only = false;
};
#define MUXIO_TEST_DEVPOLL_BACKEND , DevpollBackend
#else
#define MUXIO_TEST_DEVPOLL_BACKEND
#endif

}  // namespace

// Every backend compiled here; each test case below runs once per entry.
#define MUXIO_TEST_BACKENDS                                                                                   \
    SelectBackend, PollBackend MUXIO_TEST_EPOLL_BACKEND MUXIO_TEST_IO_URING_BACKEND MUXIO_TEST_KQUEUE_BACKEND \
                       MUXIO_TEST_DEVPOLL_BACKEND

// Test names read `register then unregister<epoll>`.
TYPE_TO_STRING_AS("select", SelectBackend);
TYPE_TO_STRING_AS("poll", PollBackend);
#if MUXIO_HAS_EPOLL
TYPE_TO_STRING_AS("epoll", EpollBackend);
#endif
#if MUXIO_HAS_IO_URING
TYPE_TO_STRING_AS("io_uring", IoUringBackend);
#endif
#if MUXIO_HAS_KQUEUE
TYPE_TO_STRING_AS("kqueue", KqueueBackend);
#endif
#if MUXIO_HAS_DEVPOLL
TYPE_TO_STRING_AS("devpoll", DevpollBackend);
#endif

namespace {

template <class Backend, class Data = int>
using SelectorOf = typename Backend::template Selector<Data>;

// An object registered by its fileno(), like a Python socket object: it can
// be closed, after which fileno() returns -1.
class Socketish {
public:
    explicit Socketish(UniqueFd fd) : fd_{std::move(fd)} {}
    [[nodiscard]] int fileno() const noexcept { return fd_.get(); }
    void close() noexcept { fd_.reset(); }

private:
    UniqueFd fd_;
};

// An object whose fileno() throws, as a closed file object may.
struct ThrowingFileno {
    bool closed = true;
    int fd = -1;
    [[nodiscard]] int fileno() const {
        if (closed) {
            throw std::runtime_error("I/O operation on closed file");
        }
        return fd;
    }
};

// Data with no operator==: the selector must never compare data.
struct NotComparable {
    std::string text;
    bool operator==(const NotComparable&) const = delete;
};

// Moves `fd` onto descriptor number `number` (which must be free).
UniqueFd move_to_number(UniqueFd fd, int number) {
    if (fd.get() == number) {
        return fd;  // it already got the number, being the lowest free one
    }
    REQUIRE(::dup2(fd.get(), number) == number);
    UniqueFd moved{number};
    REQUIRE(::fcntl(number, F_SETFD, FD_CLOEXEC) == 0);
    return moved;
}

// The largest number of socket pairs, up to `wanted`, this backend can watch:
// select(2) takes only descriptors below FD_SETSIZE.
template <class Backend>
std::vector<SocketPair> make_socket_pairs(std::size_t wanted) {
    std::vector<SocketPair> pairs;
    pairs.reserve(wanted);
    while (pairs.size() < wanted) {
        SocketPair pair;
        if (Backend::below_fd_setsize_only && pair.right.get() >= FD_SETSIZE) {
            break;
        }
        pairs.push_back(std::move(pair));
    }
    return pairs;
}

std::atomic<int> signals_caught{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void count_signal(int /*signo*/) {
    signals_caught.fetch_add(1, std::memory_order_relaxed);
}

// Interrupts the calling thread with a signal every `period` while alive.
// The handler is installed without SA_RESTART, so each signal interrupts a
// blocking system call with EINTR.
class SignalStorm {
public:
#if defined(__linux__)
    // A POSIX timer directed at this thread, so the wait in this thread is
    // what the signal interrupts, whatever other threads exist.
    static constexpr int signal_number = SIGUSR1;
#else
    // A process-wide interval timer: the test process has one thread then.
    static constexpr int signal_number = SIGALRM;
#endif

    explicit SignalStorm(std::chrono::nanoseconds period) {
        struct sigaction action {};
        action.sa_handler = &count_signal;
        sigemptyset(&action.sa_mask);
        action.sa_flags = 0;
        REQUIRE(::sigaction(signal_number, &action, &previous_) == 0);
        sigset_t unblock;
        sigemptyset(&unblock);
        sigaddset(&unblock, signal_number);
        REQUIRE(::pthread_sigmask(SIG_UNBLOCK, &unblock, &previous_mask_) == 0);
        const auto micros = std::chrono::ceil<std::chrono::microseconds>(period).count();
#if defined(__linux__)
        sigevent target{};
        target.sigev_signo = signal_number;
        target.sigev_notify = SIGEV_THREAD_ID;
        target._sigev_un._tid = ::gettid();
        REQUIRE(::timer_create(CLOCK_MONOTONIC, &target, &timer_) == 0);
        itimerspec schedule{};
        schedule.it_value.tv_sec = static_cast<std::time_t>(micros / 1'000'000);
        schedule.it_value.tv_nsec = static_cast<long>(micros % 1'000'000 * 1'000);
        schedule.it_interval = schedule.it_value;
        REQUIRE(::timer_settime(timer_, 0, &schedule, nullptr) == 0);
#else
        itimerval schedule{};
        schedule.it_value.tv_sec = static_cast<std::time_t>(micros / 1'000'000);
        schedule.it_value.tv_usec = static_cast<suseconds_t>(micros % 1'000'000);
        schedule.it_interval = schedule.it_value;
        REQUIRE(::setitimer(ITIMER_REAL, &schedule, nullptr) == 0);
#endif
    }
    ~SignalStorm() {
#if defined(__linux__)
        ::timer_delete(timer_);
#else
        const itimerval off{};
        ::setitimer(ITIMER_REAL, &off, nullptr);
#endif
        // A signal generated before the timer was stopped was delivered when
        // that call returned to user space, so none is left for the old handler.
        ::pthread_sigmask(SIG_SETMASK, &previous_mask_, nullptr);
        ::sigaction(signal_number, &previous_, nullptr);
    }
    SignalStorm(const SignalStorm&) = delete;
    SignalStorm& operator=(const SignalStorm&) = delete;

private:
    struct sigaction previous_ {};
    sigset_t previous_mask_{};
#if defined(__linux__)
    timer_t timer_{};
#endif
};

// Passes everything to a backend's poller and counts the kernel waits, so a
// test can tell a wait that blocks from one that spins.
class CountingPoller final : public muxio::detail::Poller {
public:
    explicit CountingPoller(std::unique_ptr<muxio::detail::Poller> inner) : inner_{std::move(inner)} {}

    [[nodiscard]] int waits() const noexcept { return waits_; }

    std::string_view name() const noexcept override { return inner_->name(); }
    int fileno() const noexcept override { return inner_->fileno(); }
    void add(int fd, Events events, std::uint64_t token) override {
        const Mirror mirror{*this};
        inner_->add(fd, events, token);
    }
    void modify(int fd, Events old_events, Events new_events, std::uint64_t token) override {
        const Mirror mirror{*this};
        inner_->modify(fd, old_events, new_events, token);
    }
    void reregister(int fd, Events old_events, Events new_events, std::uint64_t token) override {
        const Mirror mirror{*this};
        inner_->reregister(fd, old_events, new_events, token);
    }
    std::error_code remove(int fd, Events events) noexcept override {
        const Mirror mirror{*this};
        return inner_->remove(fd, events);
    }
    int purge_stale() noexcept override {
        const Mirror mirror{*this};
        return inner_->purge_stale();
    }
    void close() noexcept override { inner_->close(); }

protected:
    int wait_once(muxio::detail::Timeout timeout, std::vector<muxio::detail::PollEvent>& ready) override {
        const Mirror mirror{*this};
        ++waits_;
        const auto events = inner_->wait(timeout);
        ready.insert(ready.end(), events.begin(), events.end());
        return 0;
    }

private:
    // Whatever the inner poller says about stale events, this one says too.
    struct Mirror {
        CountingPoller& poller;
        ~Mirror() { poller.set_may_report_stale(poller.inner_->may_report_stale()); }
    };

    std::unique_ptr<muxio::detail::Poller> inner_;
    int waits_ = 0;
};

// A selector over `Backend`'s poller wrapped in a CountingPoller.
template <class Backend, class Data = int>
class CountingSelector final : public muxio::BaseSelector<Data> {
public:
    CountingSelector()
        : CountingSelector{std::make_unique<CountingPoller>(muxio::detail::make_poller(Backend::name))} {}
    [[nodiscard]] int waits() const noexcept { return counter_->waits(); }

private:
    explicit CountingSelector(std::unique_ptr<CountingPoller> poller)
        : muxio::BaseSelector<Data>{std::unique_ptr<muxio::detail::Poller>{poller.get()}}, counter_{poller.release()} {}
    const CountingPoller* counter_;
};

}  // namespace

// ---------------------------------------------------------------------------
// register_

TEST_CASE_TEMPLATE("register returns a key holding the file object and fd and events and data", B,
                   MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::string> selector;

    const auto& key = selector.register_(pair.left.get(), EVENT_READ, "left");
    CHECK(key.fd == pair.left.get());
    CHECK(key.events == EVENT_READ);
    CHECK(key.data == "left");
    CHECK(key.fileobj.is_descriptor());
    CHECK(key.fileobj == FileObject{pair.left.get()});
    CHECK(&selector.get_key(pair.left.get()) == &key);

    Socketish object{std::move(pair.right)};
    const auto& object_key = selector.register_(object, EVENT_READ_WRITE, "right");
    CHECK(object_key.fd == object.fileno());
    CHECK(object_key.events == EVENT_READ_WRITE);
    CHECK(object_key.data == "right");
    CHECK_FALSE(object_key.fileobj.is_descriptor());
    CHECK(object_key.fileobj.template get<Socketish>() == &object);
    CHECK(&selector.get_key(object) == &object_key);
    CHECK(selector.get_map().size() == 2);
}

TEST_CASE_TEMPLATE("register without data value-initializes it", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    CHECK(selector.register_(pair.left.get(), EVENT_WRITE).data == 0);
}

TEST_CASE_TEMPLATE("register refuses an empty or unknown events mask", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    CHECK_THROWS_AS(selector.register_(pair.left.get(), Events{}), std::invalid_argument);
    CHECK_THROWS_AS(selector.register_(pair.left.get(), Events::from_bits(4)), std::invalid_argument);
    CHECK_THROWS_AS(selector.register_(pair.left.get(), EVENT_READ | Events::from_bits(4)), std::invalid_argument);
    CHECK(selector.get_map().empty());
    CHECK_THROWS_AS((void)selector.get_key(pair.left.get()), KeyError);
    // Nothing was half-recorded: the fd registers fine afterwards.
    CHECK(selector.register_(pair.left.get(), EVENT_READ).events == EVENT_READ);
}

TEST_CASE_TEMPLATE("register refuses a negative fd", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    CHECK_THROWS_AS(selector.register_(-1, EVENT_READ), std::invalid_argument);
    CHECK_THROWS_AS(selector.register_(-12345, EVENT_WRITE), std::invalid_argument);
    CHECK(selector.get_map().empty());
}

TEST_CASE_TEMPLATE("register refuses an object whose fileno fails", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    ThrowingFileno throwing;
    CHECK_THROWS_AS(selector.register_(throwing, EVENT_READ), std::invalid_argument);
    Socketish closed{UniqueFd{}};
    REQUIRE(closed.fileno() == -1);
    CHECK_THROWS_AS(selector.register_(closed, EVENT_READ), std::invalid_argument);
    CHECK(selector.get_map().empty());
}

TEST_CASE_TEMPLATE("register of an fd already registered raises KeyError", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;

    SUBCASE("twice by number") {
        (void)selector.register_(pair.left.get(), EVENT_READ, 1);
        CHECK_THROWS_AS(selector.register_(pair.left.get(), EVENT_READ, 2), KeyError);
        CHECK_THROWS_AS(selector.register_(pair.left.get(), EVENT_WRITE, 2), KeyError);
    }
    SUBCASE("by object then by number") {
        (void)selector.register_(pair.left, EVENT_READ, 1);
        CHECK_THROWS_AS(selector.register_(pair.left.get(), EVENT_READ, 2), KeyError);
        CHECK_THROWS_AS(selector.register_(pair.left, EVENT_READ, 2), KeyError);
    }
    SUBCASE("by number then by object") {
        (void)selector.register_(pair.left.get(), EVENT_READ, 1);
        CHECK_THROWS_AS(selector.register_(pair.left, EVENT_READ, 2), KeyError);
    }
    // The first registration is untouched.
    CHECK(selector.get_map().size() == 1);
    CHECK(selector.get_key(pair.left.get()).events == EVENT_READ);
    CHECK(selector.get_key(pair.left.get()).data == 1);
}

// ---------------------------------------------------------------------------
// unregister

TEST_CASE_TEMPLATE("unregister returns the key with its data", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::string> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, "payload");
    (void)selector.register_(pair.right, EVENT_WRITE, "other");

    const auto key = selector.unregister(pair.left.get());
    CHECK(key.fd == pair.left.get());
    CHECK(key.events == EVENT_WRITE);
    CHECK(key.data == "payload");
    CHECK(key.fileobj == FileObject{pair.left.get()});
    CHECK_THROWS_AS((void)selector.get_key(pair.left.get()), KeyError);
    CHECK(selector.get_map().size() == 1);

    // Both ends are writable; only the one still registered is reported.
    const auto ready = ready_by_fd(selector.select(0s));
    CHECK(ready == std::map<int, Events>{{pair.right.get(), EVENT_WRITE}});

    const auto object_key = selector.unregister(pair.right);
    CHECK(object_key.fileobj.template get<UniqueFd>() == &pair.right);
    CHECK(object_key.data == "other");
    CHECK(selector.get_map().empty());
    CHECK(selector.select(0s).empty());

    // And it registers again.
    CHECK(selector.register_(pair.left.get(), EVENT_READ, "again").data == "again");
}

TEST_CASE_TEMPLATE("unregister of a file object not registered raises KeyError", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    CHECK_THROWS_AS(selector.unregister(pair.left.get()), KeyError);
    CHECK_THROWS_AS(selector.unregister(pair.left), KeyError);
    (void)selector.register_(pair.left.get(), EVENT_READ);
    (void)selector.unregister(pair.left.get());
    CHECK_THROWS_AS(selector.unregister(pair.left.get()), KeyError);
    // Invalid file objects are still invalid_argument, as for register_.
    CHECK_THROWS_AS(selector.unregister(-1), std::invalid_argument);
    ThrowingFileno throwing;
    CHECK_THROWS_AS(selector.unregister(throwing), std::invalid_argument);
}

TEST_CASE_TEMPLATE("unregister succeeds after the fd was closed", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    const int left = pair.left.get();
    const int right = pair.right.get();
    (void)selector.register_(left, EVENT_READ, 1);
    (void)selector.register_(right, EVENT_WRITE, 2);
    pair.left.reset();
    pair.right.reset();

    const auto left_key = selector.unregister(left);
    CHECK(left_key.fd == left);
    CHECK(left_key.data == 1);
    const auto right_key = selector.unregister(right);
    CHECK(right_key.fd == right);
    CHECK(right_key.data == 2);
    CHECK(selector.get_map().empty());
    CHECK(selector.select(0s).empty());
}

TEST_CASE_TEMPLATE("unregister finds a closed object by identity", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    const int fd = pair.left.get();
    Socketish object{std::move(pair.left)};
    ThrowingFileno throwing{false, pair.right.get()};
    (void)selector.register_(object, EVENT_READ, 7);
    (void)selector.register_(throwing, EVENT_WRITE, 8);

    object.close();          // fileno() now returns -1
    throwing.closed = true;  // fileno() now throws
    CHECK(selector.get_map().contains(object));
    CHECK(selector.get_key(object).fd == fd);

    const auto key = selector.unregister(object);
    CHECK(key.fd == fd);
    CHECK(key.data == 7);
    CHECK(key.fileobj.template get<Socketish>() == &object);
    const auto throwing_key = selector.unregister(throwing);
    CHECK(throwing_key.data == 8);
    CHECK(selector.get_map().empty());
    // Once unregistered, a closed object is simply invalid again.
    CHECK_THROWS_AS(selector.unregister(object), std::invalid_argument);
}

TEST_CASE_TEMPLATE("unregister after the fd number was reused by another file", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair first;
    SelectorOf<B> selector;
    const int number = first.left.get();
    (void)selector.register_(number, EVENT_READ, 1);
    first.left.reset();

    SocketPair second;
    UniqueFd reused = move_to_number(std::move(second.left), number);
    const auto key = selector.unregister(number);
    CHECK(key.data == 1);

    // The new file behind the same number registers and works.
    (void)selector.register_(number, EVENT_READ, 2);
    CHECK(selector.select(0s).empty());
    muxio::test::write_all(second.right.get(), "x");
    const auto ready = selector.select(5s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].key().fd == number);
    CHECK(ready[0].key().data == 2);
    CHECK(ready[0].events() == EVENT_READ);
}

TEST_CASE_TEMPLATE("a reused fd number receives no stale event", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    for (const bool close_first : {true, false}) {
        CAPTURE(close_first);
        SelectorOf<B> selector;
        SocketPair old_pair;
        const int number = old_pair.left.get();
        (void)selector.register_(number, EVENT_READ, 1);
        muxio::test::write_all(old_pair.right.get(), "stale");
        // Let the kernel see the readiness (io_uring queues a completion now).
        REQUIRE(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{number, EVENT_READ}});
        if (close_first) {
            old_pair.left.reset();
            (void)selector.unregister(number);
        } else {
            (void)selector.unregister(number);
            old_pair.left.reset();
        }

        SocketPair new_pair;
        UniqueFd reused = move_to_number(std::move(new_pair.left), number);
        (void)selector.register_(number, EVENT_READ, 2);
        CHECK(selector.select(0s).empty());
        CHECK(selector.select(10ms).empty());

        // The new registration still works.
        muxio::test::write_all(new_pair.right.get(), "fresh");
        const auto ready = selector.select(5s);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].key().data == 2);
    }
}

// ---------------------------------------------------------------------------
// modify

TEST_CASE_TEMPLATE("modify changes the events watched", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;  // writable, not readable
    SelectorOf<B> selector;
    const auto& key = selector.register_(pair.left.get(), EVENT_READ, 5);
    CHECK(selector.select(0s).empty());

    const auto& modified = selector.modify(pair.left.get(), EVENT_WRITE, 5);
    CHECK(&modified == &key);
    CHECK(key.events == EVENT_WRITE);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});

    (void)selector.modify(pair.left.get(), EVENT_READ_WRITE, 5);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
    muxio::test::write_all(pair.right.get(), "x");
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ_WRITE}});

    (void)selector.modify(pair.left.get(), EVENT_READ, 5);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
    CHECK(key.data == 5);
}

TEST_CASE_TEMPLATE("modify with new data only keeps the key and its events", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::string> selector;
    const auto& key = selector.register_(pair.left, EVENT_WRITE, "before");
    const auto& modified = selector.modify(pair.left, EVENT_WRITE, "after");
    CHECK(&modified == &key);
    CHECK(key.events == EVENT_WRITE);
    CHECK(key.data == "after");
    const auto ready = selector.select(0s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].key().data == "after");
}

TEST_CASE_TEMPLATE("modify changes events and data together", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::string> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, "reading");
    const auto& key = selector.modify(pair.left.get(), EVENT_WRITE, "writing");
    CHECK(key.events == EVENT_WRITE);
    CHECK(key.data == "writing");
    const auto ready = selector.select(0s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].events() == EVENT_WRITE);
    CHECK(ready[0].key().data == "writing");
}

TEST_CASE_TEMPLATE("modify with the same events and data changes nothing", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    const auto& key = selector.register_(pair.left.get(), EVENT_WRITE, 3);
    const auto& modified = selector.modify(pair.left.get(), EVENT_WRITE, 3);
    CHECK(&modified == &key);
    CHECK(key.events == EVENT_WRITE);
    CHECK(key.data == 3);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
}

TEST_CASE_TEMPLATE("modify without data keeps the data", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::string> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, "kept");
    const auto& key = selector.modify(pair.left.get(), EVENT_WRITE);
    CHECK(key.events == EVENT_WRITE);
    CHECK(key.data == "kept");
}

TEST_CASE_TEMPLATE("modify of a file object not registered raises KeyError", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    CHECK_THROWS_AS((void)selector.modify(pair.left.get(), EVENT_READ, 1), KeyError);
    CHECK_THROWS_AS((void)selector.modify(pair.left, EVENT_READ), KeyError);
    CHECK(selector.get_map().empty());
}

TEST_CASE_TEMPLATE("modify refuses an invalid events mask and keeps the key", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 4);
    CHECK_THROWS_AS((void)selector.modify(pair.left.get(), Events{}, 5), std::invalid_argument);
    CHECK_THROWS_AS((void)selector.modify(pair.left.get(), Events::from_bits(4), 5), std::invalid_argument);
    const auto& key = selector.get_key(pair.left.get());
    CHECK(key.events == EVENT_WRITE);
    CHECK(key.data == 4);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
}

// ---------------------------------------------------------------------------
// get_key and get_map

TEST_CASE_TEMPLATE("get_key returns the key and raises KeyError when not registered", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    CHECK_THROWS_AS((void)selector.get_key(pair.left.get()), KeyError);
    const auto& key = selector.register_(pair.left, EVENT_READ, 11);
    // Found through the object and through its number alike.
    CHECK(&selector.get_key(pair.left) == &key);
    CHECK(&selector.get_key(pair.left.get()) == &key);
    CHECK_THROWS_AS((void)selector.get_key(pair.right.get()), KeyError);
    (void)selector.unregister(pair.left);
    CHECK_THROWS_AS((void)selector.get_key(pair.left), KeyError);
}

TEST_CASE_TEMPLATE("get_map is a read-only view of the registrations", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    const auto map = selector.get_map();  // taken before any change
    CHECK(map.empty());
    CHECK(map.size() == 0);  // NOLINT(readability-container-size-empty)
    CHECK(map.begin() == map.end());

    std::vector<SocketPair> pairs(3);
    // Register in an order unlike the descriptor order.
    (void)selector.register_(pairs[2].right.get(), EVENT_READ, 5);
    (void)selector.register_(pairs[0].left.get(), EVENT_WRITE, 0);
    (void)selector.register_(pairs[1].left, EVENT_READ_WRITE, 2);
    (void)selector.register_(pairs[0].right.get(), EVENT_READ, 1);

    CHECK(map.size() == 4);
    CHECK_FALSE(map.empty());
    CHECK(map.contains(pairs[0].left.get()));
    CHECK(map.contains(pairs[1].left));
    CHECK(map.contains(pairs[1].left.get()));
    CHECK_FALSE(map.contains(pairs[2].left.get()));
    CHECK_FALSE(map.contains(-1));  // invalid: simply not there, no throw
    ThrowingFileno throwing;
    CHECK_FALSE(map.contains(throwing));
    REQUIRE(map.find(pairs[2].right.get()) != nullptr);
    CHECK(map.find(pairs[2].right.get())->data == 5);
    CHECK(map.find(pairs[1].right.get()) == nullptr);
    CHECK(map.at(pairs[1].left).events == EVENT_READ_WRITE);
    CHECK(map[pairs[0].right.get()].data == 1);
    CHECK(&map[pairs[0].left.get()] == &selector.get_key(pairs[0].left.get()));
    CHECK_THROWS_AS((void)map.at(pairs[1].right.get()), KeyError);
    CHECK_THROWS_AS((void)map[pairs[2].left.get()], KeyError);

    // Iteration visits every key once, in descriptor order.
    std::vector<int> fds;
    for (const auto& key : map) {
        fds.push_back(key.fd);
        CHECK(&key == &selector.get_key(key.fd));
    }
    std::vector<int> registered{pairs[2].right.get(), pairs[0].left.get(), pairs[1].left.get(), pairs[0].right.get()};
    std::sort(registered.begin(), registered.end());
    CHECK(fds == registered);
    CHECK(std::distance(map.begin(), map.end()) == 4);

    // The view follows later changes.
    (void)selector.unregister(pairs[0].right.get());
    (void)selector.modify(pairs[0].left.get(), EVENT_READ, 9);
    CHECK(map.size() == 3);
    CHECK_FALSE(map.contains(pairs[0].right.get()));
    CHECK(map.at(pairs[0].left.get()).events == EVENT_READ);
    CHECK(map.at(pairs[0].left.get()).data == 9);
}

// ---------------------------------------------------------------------------
// close and lifetime

TEST_CASE_TEMPLATE("a closed selector refuses every operation but close", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    CHECK_FALSE(selector.is_closed());
    selector.close();
    CHECK(selector.is_closed());

    CHECK_THROWS_AS((void)selector.get_key(pair.left.get()), std::logic_error);
    CHECK_THROWS_AS((void)selector.select(0s), std::logic_error);
    CHECK_THROWS_AS((void)selector.select(10ms), std::logic_error);
    CHECK_THROWS_AS((void)selector.register_(pair.right.get(), EVENT_READ, 2), std::logic_error);
    CHECK_THROWS_AS((void)selector.modify(pair.left.get(), EVENT_WRITE, 3), std::logic_error);
    CHECK_THROWS_AS((void)selector.unregister(pair.left.get()), std::logic_error);
    CHECK_THROWS_AS((void)selector.get_map(), std::logic_error);
    CHECK(selector.fileno() == -1);
    // The logic_error is not a KeyError in disguise.
    CHECK_THROWS_WITH_AS((void)selector.get_key(pair.left.get()), doctest::Contains("closed"), std::logic_error);
}

TEST_CASE_TEMPLATE("close twice is harmless", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    selector.close();
    selector.close();
    CHECK(selector.is_closed());
    CHECK(selector.fileno() == -1);
}

TEST_CASE_TEMPLATE("close frees the kernel object and destroys the data", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    auto data = std::make_shared<int>(1);
    SelectorOf<B, std::shared_ptr<int>> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, data);
    (void)selector.register_(pair.right.get(), EVENT_WRITE, data);
    CHECK(data.use_count() == 3);
    const int kernel_fd = selector.fileno();
    selector.close();
    CHECK(data.use_count() == 1);
    if (B::owns_kernel_object) {
        CHECK_FALSE(muxio::test::is_open_fd(kernel_fd));
    }
    // The registered descriptors are the caller's: close leaves them open.
    CHECK(muxio::test::is_open_fd(pair.left.get()));
    CHECK(muxio::test::is_open_fd(pair.right.get()));
}

TEST_CASE_TEMPLATE("the destructor closes the selector", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    auto data = std::make_shared<int>(1);
    int kernel_fd = -1;
    {
        SelectorOf<B, std::shared_ptr<int>> selector;
        kernel_fd = selector.fileno();
        (void)selector.register_(pair.left.get(), EVENT_READ, data);
        CHECK(data.use_count() == 2);
    }
    CHECK(data.use_count() == 1);
    if (B::owns_kernel_object) {
        CHECK_FALSE(muxio::test::is_open_fd(kernel_fd));
    }
    CHECK(muxio::test::is_open_fd(pair.left.get()));
}

TEST_CASE_TEMPLATE("fileno is the kernel object or -1", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    if (B::owns_kernel_object) {
        CHECK(selector.fileno() >= 0);
        CHECK(muxio::test::is_open_fd(selector.fileno()));
    } else {
        CHECK(selector.fileno() == -1);
    }
}

TEST_CASE_TEMPLATE("an allocation failing while a selector is made leaks no descriptor" *
                       doctest::skip(!muxio::test::counts_allocations),
                   B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    const std::size_t failures = muxio::test::fail_each_allocation_of([] { return std::make_unique<SelectorOf<B>>(); });
    CHECK(failures >= 1);  // at least the selector itself
    // And one made with its allocations intact, under the same check, works.
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 1);
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
}

TEST_CASE_TEMPLATE("name is the mechanism", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    CHECK(selector.name() == B::name);
    selector.close();
    CHECK(selector.name() == B::name);
}

// ---------------------------------------------------------------------------
// select: timeouts

TEST_CASE_TEMPLATE("select without a timeout blocks until an fd is ready", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    std::atomic<long> written{0};
    const Stopwatch stopwatch;
    {
        // The pause only gives the main thread time to block; the result does
        // not depend on it. jthread joins even if select() throws.
        const std::jthread writer{[&] {
            std::this_thread::sleep_for(50ms);
            written = ::write(pair.right.get(), "x", 1);
        }};
        const auto ready = selector.select(std::nullopt);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].key().fd == pair.left.get());
        CHECK(ready[0].events() == EVENT_READ);
    }
    CHECK(written == 1);
    CHECK(stopwatch.elapsed() >= 50ms);
    // select() with no argument is the same blocking call.
    CHECK(selector.select().size() == 1);
}

TEST_CASE_TEMPLATE("select with a zero timeout does not block", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    const Stopwatch stopwatch;
    for (int i = 0; i < 100; ++i) {
        CHECK(selector.select(0s).empty());
    }
    // A hundred polls take far less than one second even under sanitizers.
    CHECK(stopwatch.elapsed() < 1s);
    muxio::test::write_all(pair.right.get(), "x");
    // Readiness is reported by a poll as well (after the kernel saw it).
    CHECK(ready_by_fd(selector.select(5s)).size() == 1);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
}

TEST_CASE_TEMPLATE("select with a negative timeout polls", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    const Stopwatch stopwatch;
    CHECK(selector.select(-1s).empty());
    CHECK(selector.select(std::chrono::milliseconds::min()).empty());
    CHECK(selector.select(std::chrono::duration<double>(-0.5)).empty());
    CHECK(stopwatch.elapsed() < 1s);
    (void)selector.modify(pair.left.get(), EVENT_WRITE);
    CHECK(ready_by_fd(selector.select(-1s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
}

TEST_CASE_TEMPLATE("select with a positive timeout waits at least that long", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    for (const auto timeout : {std::chrono::nanoseconds{30ms}, std::chrono::nanoseconds{1ms},
                               std::chrono::nanoseconds{1500us}, std::chrono::nanoseconds{1}}) {
        CAPTURE(timeout.count());
        const Stopwatch stopwatch;
        CHECK(selector.select(timeout).empty());
        const auto elapsed = stopwatch.elapsed();
        CHECK(elapsed >= timeout);
        CHECK(elapsed < timeout + 5s);
    }
}

TEST_CASE_TEMPLATE("select waits at least a sub-millisecond timeout", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    for (int i = 0; i < 5; ++i) {
        const Stopwatch stopwatch;
        CHECK(selector.select(300us).empty());
        CHECK(stopwatch.elapsed() >= 300us);
    }
}

TEST_CASE_TEMPLATE("select takes a fractional duration and rounds it up", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    const std::chrono::duration<double> seconds{0.0205};
    const std::chrono::duration<double, std::milli> millis{1.5};
    const std::chrono::duration<float, std::micro> micros{250.5F};
    {
        const Stopwatch stopwatch;
        CHECK(selector.select(seconds).empty());
        CHECK(stopwatch.elapsed() >= seconds);
    }
    {
        const Stopwatch stopwatch;
        CHECK(selector.select(millis).empty());
        CHECK(stopwatch.elapsed() >= millis);
    }
    {
        const Stopwatch stopwatch;
        CHECK(selector.select(micros).empty());
        CHECK(stopwatch.elapsed() >= micros);
    }
    // A timeout far beyond what the kernel takes still returns on readiness.
    muxio::test::write_all(pair.right.get(), "x");
    CHECK(selector.select(std::chrono::duration<double>(1e30)).size() == 1);
    CHECK(selector.select(std::chrono::hours::max()).size() == 1);
}

TEST_CASE_TEMPLATE("select on an empty selector waits out the timeout", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    CHECK(selector.select(0s).empty());
    const Stopwatch stopwatch;
    CHECK(selector.select(20ms).empty());
    CHECK(stopwatch.elapsed() >= 20ms);
}

TEST_CASE_TEMPLATE("a signal does not end select early", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    signals_caught = 0;
    const Stopwatch stopwatch;
    {
        const SignalStorm storm{30ms};
        CHECK(selector.select(200ms).empty());
    }
    CHECK(stopwatch.elapsed() >= 200ms);
    CHECK(signals_caught.load() >= 1);  // the wait really was interrupted
}

// ---------------------------------------------------------------------------
// select: what is reported

TEST_CASE_TEMPLATE("select reports only the events registered", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    muxio::test::write_all(pair.right.get(), "x");  // left is now readable and writable
    SelectorOf<B> selector;

    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
    (void)selector.modify(pair.left.get(), EVENT_WRITE);
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
    (void)selector.modify(pair.left.get(), EVENT_READ_WRITE);
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ_WRITE}});
}

TEST_CASE_TEMPLATE("select reports a fresh socket as writable only", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::string> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ_WRITE, "left");
    (void)selector.register_(pair.right.get(), EVENT_READ_WRITE, "right");
    const auto ready = selector.select(5s);
    CHECK(ready_by_fd(ready) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}, {pair.right.get(), EVENT_WRITE}});
    for (const auto& entry : ready) {
        // Each entry carries its own key, at the address get_key() gives.
        CHECK(&entry.key() == &selector.get_key(entry.key().fd));
        CHECK(entry.key().data == (entry.key().fd == pair.left.get() ? "left" : "right"));
    }
}

TEST_CASE_TEMPLATE("select keeps reporting a ready fd until it is consumed", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    muxio::test::write_all(pair.right.get(), "level");
    for (int i = 0; i < 3; ++i) {
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
    }
    CHECK(muxio::test::drain(pair.left.get()) == 5);
    CHECK(selector.select(0s).empty());
    CHECK(selector.select(10ms).empty());
    muxio::test::write_all(pair.right.get(), "again");
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
}

TEST_CASE_TEMPLATE("select reports many fds at once", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    REQUIRE(muxio::test::raise_fd_limit(4096) >= 2100);
    // select(2) cannot watch descriptors from FD_SETSIZE on: fewer pairs there.
    auto pairs = make_socket_pairs<B>(1000);
    if (B::below_fd_setsize_only) {
        REQUIRE(pairs.size() >= 400);
    } else {
        REQUIRE(pairs.size() == 1000);
    }
    SelectorOf<B, std::size_t> selector;
    for (std::size_t i = 0; i < pairs.size(); ++i) {
        (void)selector.register_(pairs[i].left.get(), EVENT_READ_WRITE, i);
        (void)selector.register_(pairs[i].right.get(), EVENT_READ_WRITE, i);
    }
    CHECK(selector.get_map().size() == 2 * pairs.size());

    // Every end is writable, none readable.
    std::map<int, Events> expected;
    for (const auto& pair : pairs) {
        expected[pair.left.get()] = EVENT_WRITE;
        expected[pair.right.get()] = EVENT_WRITE;
    }
    CHECK(ready_by_fd(selector.select(5s)) == expected);

    // Write on every third pair, both directions: exactly those become readable.
    for (std::size_t i = 0; i < pairs.size(); i += 3) {
        const bool to_right = (i / 3) % 2 == 0;
        const auto& from = to_right ? pairs[i].left : pairs[i].right;
        const auto& to = to_right ? pairs[i].right : pairs[i].left;
        muxio::test::write_all(from.get(), "x");
        expected[to.get()] = EVENT_READ_WRITE;
    }
    const auto ready = selector.select(5s);
    CHECK(ready_by_fd(ready) == expected);
    for (const auto& entry : ready) {
        const std::size_t index = entry.key().data;
        REQUIRE(index < pairs.size());
        CHECK((entry.key().fd == pairs[index].left.get() || entry.key().fd == pairs[index].right.get()));
    }

    // And the other way round: writes into every pair, all readable.
    for (auto& pair : pairs) {
        muxio::test::write_all(pair.left.get(), "y");
        muxio::test::write_all(pair.right.get(), "y");
    }
    for (auto& entry : expected) {
        entry.second = EVENT_READ_WRITE;
    }
    CHECK(ready_by_fd(selector.select(5s)) == expected);
}

TEST_CASE_TEMPLATE("select reports a hang-up as readable", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    SUBCASE("socket") {
        SocketPair pair;
        (void)selector.register_(pair.left.get(), EVENT_READ, 1);
        CHECK(selector.select(0s).empty());
        pair.right.reset();
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
        (void)selector.unregister(pair.left.get());
    }
    SUBCASE("pipe") {
        Pipe pipe;
        (void)selector.register_(pipe.read_end.get(), EVENT_READ, 1);
        CHECK(selector.select(0s).empty());
        pipe.write_end.reset();  // a pure hang-up: nothing to read
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pipe.read_end.get(), EVENT_READ}});
        (void)selector.unregister(pipe.read_end.get());
    }
}

TEST_CASE_TEMPLATE("select reports a hang-up as writable for a write registration", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SelectorOf<B> selector;
    SUBCASE("socket") {
        SocketPair pair;
        muxio::test::fill_until_blocked(pair.left.get());
        (void)selector.register_(pair.left.get(), EVENT_WRITE, 1);
        CHECK(selector.select(0s).empty());
        pair.right.reset();
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
        (void)selector.unregister(pair.left.get());
    }
    SUBCASE("pipe") {
        // A full pipe is not writable; once its reader is gone it is in
        // error (EPIPE), which counts as ready for writing.
        Pipe pipe;
        muxio::test::fill_until_blocked(pipe.write_end.get());
        (void)selector.register_(pipe.write_end.get(), EVENT_WRITE, 1);
        CHECK(selector.select(0s).empty());
        pipe.read_end.reset();
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pipe.write_end.get(), EVENT_WRITE}});
        (void)selector.unregister(pipe.write_end.get());
    }
}

TEST_CASE_TEMPLATE("select reports a socket error as ready for the events registered", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    // A TCP port that is bound but not listening refuses connections.
    UniqueFd bound{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(bound.get() >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(bound.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
    socklen_t length = sizeof address;
    REQUIRE(::getsockname(bound.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);

    for (const Events registered : {EVENT_READ, EVENT_WRITE, EVENT_READ_WRITE}) {
        CAPTURE(registered);
        UniqueFd client{::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
        REQUIRE(client.get() >= 0);
        const int connected = ::connect(client.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address);
        REQUIRE(connected == -1);
        // On loopback the refusal may already be known when connect() returns;
        // then connect() reports it and SO_ERROR is clear.
        const bool refused_later = errno == EINPROGRESS;
        REQUIRE((refused_later || errno == ECONNREFUSED));
        SelectorOf<B> selector;
        (void)selector.register_(client.get(), registered, 1);
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{client.get(), registered}});
        int error = 0;
        socklen_t error_length = sizeof error;
        REQUIRE(::getsockopt(client.get(), SOL_SOCKET, SO_ERROR, &error, &error_length) == 0);
        CHECK(error == (refused_later ? ECONNREFUSED : 0));
    }
}

TEST_CASE_TEMPLATE("an fd at or above FD_SETSIZE registers except with select", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    REQUIRE(muxio::test::raise_fd_limit(FD_SETSIZE + 64) > FD_SETSIZE + 1);
    SocketPair pair;
    UniqueFd high = muxio::test::dup_at_or_above(pair.left.get(), FD_SETSIZE);
    SelectorOf<B> selector;
    if (B::below_fd_setsize_only) {
        CHECK_THROWS_AS((void)selector.register_(high.get(), EVENT_READ, 1), std::invalid_argument);
        // Exactly as before: nothing registered, the selector still works.
        CHECK(selector.get_map().empty());
        CHECK_FALSE(selector.get_map().contains(high.get()));
        CHECK_THROWS_AS((void)selector.get_key(high.get()), KeyError);
        CHECK(selector.select(0s).empty());
        (void)selector.register_(pair.left.get(), EVENT_WRITE, 2);
        CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
    } else {
        (void)selector.register_(high.get(), EVENT_READ, 1);
        CHECK(selector.select(0s).empty());
        muxio::test::write_all(pair.right.get(), "x");
        const auto ready = selector.select(5s);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].key().fd == high.get());
        CHECK(ready[0].events() == EVENT_READ);
        CHECK(selector.unregister(high.get()).data == 1);
    }
}

// ---------------------------------------------------------------------------
// ready entries and key data

TEST_CASE_TEMPLATE("ready entries destructure into key and events", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 42);
    int seen = 0;
    for (auto [key, events] : selector.select(5s)) {
        static_assert(std::is_same_v<decltype(key), const muxio::SelectorKey<int>&>);
        static_assert(std::is_same_v<decltype(events), Events>);
        CHECK(key.fd == pair.left.get());
        CHECK(key.data == 42);
        CHECK(events == EVENT_WRITE);
        CHECK(&key == &selector.get_key(pair.left.get()));
        ++seen;
    }
    CHECK(seen == 1);
}

TEST_CASE_TEMPLATE("is_current tells whether the registration of a ready entry remains", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 1);
    (void)selector.register_(pair.right.get(), EVENT_WRITE, 2);
    const auto ready = selector.select(5s);
    REQUIRE(ready.size() == 2);
    const auto& left_entry = ready[0].key().fd == pair.left.get() ? ready[0] : ready[1];
    const auto& right_entry = ready[0].key().fd == pair.left.get() ? ready[1] : ready[0];
    CHECK(selector.is_current(left_entry));
    CHECK(selector.is_current(right_entry));
    CHECK(muxio::detail::find_current(selector, left_entry.token()) == &left_entry.key());
    CHECK(muxio::detail::find_current(selector, right_entry.token()) == &right_entry.key());

    // As a callback for an earlier entry might: unregister one, modify the other.
    (void)selector.unregister(pair.left.get());
    (void)selector.modify(pair.right.get(), EVENT_READ_WRITE, 3);
    CHECK_FALSE(selector.is_current(left_entry));
    CHECK(selector.is_current(right_entry));  // modify keeps the registration
    CHECK(muxio::detail::find_current(selector, left_entry.token()) == nullptr);
    CHECK(muxio::detail::find_current(selector, right_entry.token()) == &right_entry.key());

    // A new registration of the same number is a different registration.
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 4);
    CHECK_FALSE(selector.is_current(left_entry));
    CHECK(muxio::detail::find_current(selector, left_entry.token()) == nullptr);
    const auto again = selector.select(5s);
    REQUIRE(again.size() == 2);
    CHECK(selector.is_current(again[0]));
    CHECK(selector.is_current(again[1]));
}

TEST_CASE_TEMPLATE("select_tokens reports raw readiness that find_current resolves", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    const auto& left_key = selector.register_(pair.left.get(), EVENT_READ_WRITE, 1);
    (void)selector.register_(pair.right.get(), EVENT_READ, 2);
    muxio::test::write_all(pair.right.get(), "x");  // left: readable and writable; right: neither
    const auto ready = muxio::detail::select_tokens(selector, 5s);
    REQUIRE(ready.size() == 1);
    CHECK(muxio::detail::find_current(selector, ready[0].token) == &left_key);
    CHECK(ready[0].events == EVENT_READ_WRITE);

    // Unfiltered: after an unregister the entry stays, and find_current tells
    // it is stale; the select() that follows reports the new state.
    const std::uint64_t token = ready[0].token;
    (void)selector.unregister(pair.left.get());
    CHECK(muxio::detail::find_current(selector, token) == nullptr);
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 3);
    CHECK(muxio::detail::find_current(selector, token) == nullptr);  // a new registration, a new token
    const auto again = muxio::detail::select_tokens(selector, 5s);
    REQUIRE(again.size() == 1);
    REQUIRE(muxio::detail::find_current(selector, again[0].token) != nullptr);
    CHECK(muxio::detail::find_current(selector, again[0].token)->data == 3);
    CHECK(again[0].events.contains(EVENT_WRITE));

    // prefetch() is a hint any token may be given: current, stale, or naming
    // a descriptor far beyond the table (ASan checks that nothing is read).
    muxio::detail::prefetch_slot(selector, again[0].token);
    muxio::detail::prefetch_slot(selector, token);
    muxio::detail::prefetch_slot(selector, std::uint64_t{0xffff'fff0U} | (std::uint64_t{7} << 32U));
    CHECK(muxio::detail::find_current(selector, again[0].token)->data == 3);
}

TEST_CASE_TEMPLATE("data may be move-only", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, std::unique_ptr<int>> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, std::make_unique<int>(1));
    (void)selector.register_(pair.right.get(), EVENT_READ);  // default: nullptr
    CHECK(*selector.get_key(pair.left.get()).data == 1);
    CHECK(selector.get_key(pair.right.get()).data == nullptr);
    (void)selector.modify(pair.left.get(), EVENT_WRITE, std::make_unique<int>(2));
    const auto ready = selector.select(5s);
    REQUIRE(ready.size() == 1);
    CHECK(*ready[0].key().data == 2);
    auto key = selector.unregister(pair.left.get());
    REQUIRE(key.data != nullptr);
    CHECK(*key.data == 2);
    std::unique_ptr<int> taken = std::move(key.data);
    CHECK(*taken == 2);
}

TEST_CASE_TEMPLATE("data need not be comparable", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B, NotComparable> selector;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, NotComparable{"one"});
    (void)selector.modify(pair.left.get(), EVENT_WRITE, NotComparable{"two"});
    (void)selector.modify(pair.left.get(), EVENT_READ_WRITE, NotComparable{"three"});
    const auto ready = selector.select(5s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].key().data.text == "three");
    CHECK(selector.unregister(pair.left.get()).data.text == "three");
}

TEST_CASE_TEMPLATE("data can be changed in place through a returned key", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    const auto& key = selector.register_(pair.left.get(), EVENT_WRITE, 1);
    for (const auto& entry : selector.select(5s)) {
        entry.key().data += 10;
    }
    CHECK(key.data == 11);
    CHECK(selector.get_key(pair.left.get()).data == 11);
}

TEST_CASE_TEMPLATE("keys keep their address while other fds come and go", B, MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair first;
    SelectorOf<B, std::string> selector;
    const auto& key = selector.register_(first.left.get(), EVENT_READ, "first");
    auto pairs = make_socket_pairs<B>(200);
    for (const auto& pair : pairs) {
        (void)selector.register_(pair.left.get(), EVENT_READ, "other");
        (void)selector.register_(pair.right.get(), EVENT_READ, "other");
    }
    for (std::size_t i = 0; i < pairs.size(); i += 2) {
        (void)selector.unregister(pairs[i].left.get());
    }
    CHECK(&selector.get_key(first.left.get()) == &key);
    CHECK(key.data == "first");
    CHECK(key.fd == first.left.get());
    muxio::test::write_all(first.right.get(), "x");
    const auto ready = selector.select(5s);
    REQUIRE(ready.size() == 1);
    CHECK(&ready[0].key() == &key);
}

TEST_CASE_TEMPLATE("steady-state select does not allocate" * doctest::skip(!muxio::test::counts_allocations), B,
                   MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    std::vector<SocketPair> pairs(8);
    SelectorOf<B> selector;
    for (const auto& pair : pairs) {
        (void)selector.register_(pair.left.get(), EVENT_READ_WRITE, 1);
        (void)selector.register_(pair.right.get(), EVENT_READ, 2);
    }
    for (const auto& pair : pairs) {
        muxio::test::write_all(pair.right.get(), "x");
    }
    // Warm up: the first selects may size buffers.
    for (int i = 0; i < 3; ++i) {
        REQUIRE(selector.select(5s).size() == pairs.size());
    }
    const std::size_t before = muxio::test::allocation_count();
    std::size_t reported = 0;
    for (int i = 0; i < 20; ++i) {
        reported += selector.select(0s).size();
        reported += selector.select(1ms).size();
    }
    const std::size_t allocations = muxio::test::allocation_count() - before;
    CHECK(reported == 40 * pairs.size());
    CHECK(allocations == 0);
}

// ---------------------------------------------------------------------------
// Closed, duplicated and reused descriptors (docs/ARCHITECTURE.md, "Contracts
// under misuse")

TEST_CASE_TEMPLATE("select waits out its timeout when an fd was closed behind a duplicate and unregistered", B,
                   MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    // epoll watches the open file: with the registered number closed and a
    // duplicate keeping the file open, EPOLL_CTL_DEL cannot name the entry,
    // and the kernel goes on reporting it under the old registration's token.
    SocketPair pair;
    CountingSelector<B> selector;
    const int number = pair.left.get();
    const UniqueFd duplicate{::dup(number)};
    REQUIRE(duplicate.get() >= 0);
    (void)selector.register_(number, EVENT_READ, 1);
    pair.left.reset();
    muxio::test::write_all(pair.right.get(), "stale");  // the old file is readable from now on
    (void)selector.unregister(number);

    const int waits_before = selector.waits();
    const Stopwatch stopwatch;
    CHECK(selector.select(100ms).empty());
    CHECK(stopwatch.elapsed() >= 100ms);
    // The stale report, then one wait that blocks: no spinning inside select().
    CHECK(selector.waits() - waits_before <= 3);

    // And it stays quiet: every later select waits its time out in one
    // kernel wait.
    const Stopwatch window;
    int selects = 0;
    const int waits_in_window = selector.waits();
    while (window.elapsed() < 200ms && selects < 100) {
        CHECK(selector.select(50ms).empty());
        ++selects;
    }
    CHECK(selects <= 5);
    CHECK(selector.waits() - waits_in_window == selects);

    // Live registrations still work, the number's new owner included.
    SocketPair fresh;
    UniqueFd reused = move_to_number(std::move(fresh.left), number);
    (void)selector.register_(number, EVENT_READ, 2);
    (void)selector.register_(fresh.right.get(), EVENT_WRITE, 3);
    muxio::test::write_all(fresh.right.get(), "fresh");
    CHECK(ready_by_fd(selector.select(5s)) ==
          std::map<int, Events>{{number, EVENT_READ}, {fresh.right.get(), EVENT_WRITE}});
}

TEST_CASE_TEMPLATE("modify of a closed fd keeps the key and select reports it until it is unregistered", B,
                   MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    // The kernel watches nothing for a closed descriptor any more. Every
    // backend then reports the key as poll(2) reports POLLNVAL: as an error
    // condition, ready for its events, at every select, so its owner learns.
    SocketPair pair;
    SocketPair other;
    SelectorOf<B> selector;
    const int closed = pair.left.get();
    const auto& key = selector.register_(closed, EVENT_READ_WRITE, 1);
    (void)selector.register_(other.left.get(), EVENT_READ, 2);
    UniqueFd duplicate;
    SUBCASE("closed") {}
    SUBCASE("closed while a duplicate keeps its file open") {
        duplicate.reset(::dup(closed));
        REQUIRE(duplicate.get() >= 0);
        muxio::test::write_all(pair.right.get(), "x");  // the old file is ready for both
    }
    pair.left.reset();
    CHECK_NOTHROW((void)selector.modify(closed, EVENT_READ));
    CHECK(&selector.get_key(closed) == &key);
    CHECK(key.events == EVENT_READ);
    for (int round = 0; round < 3; ++round) {
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{closed, EVENT_READ}});
    }
    CHECK_NOTHROW((void)selector.modify(closed, EVENT_WRITE, 3));
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{closed, EVENT_WRITE}});
    CHECK(selector.unregister(closed).data == 3);
    CHECK(selector.select(0s).empty());
    const Stopwatch stopwatch;
    CHECK(selector.select(50ms).empty());
    CHECK(stopwatch.elapsed() >= 50ms);
    muxio::test::write_all(other.right.get(), "x");
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{other.left.get(), EVENT_READ}});
}

TEST_CASE_TEMPLATE("reregister watches the file a reused fd number names now, under a new token", B,
                   MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair old_pair;
    SelectorOf<B> selector;
    const int number = old_pair.left.get();
    const auto& key = selector.register_(number, EVENT_READ, 1);
    const std::uint64_t old_token = muxio::detail::token_of(selector, key);
    UniqueFd duplicate;
    SUBCASE("the old file closed") {}
    SUBCASE("the old file kept open by a duplicate, and ready") {
        duplicate.reset(::dup(number));
        REQUIRE(duplicate.get() >= 0);
        muxio::test::write_all(old_pair.right.get(), "old");
    }
    old_pair.left.reset();  // closed without unregister
    SocketPair new_pair;
    UniqueFd reused = move_to_number(std::move(new_pair.left), number);

    CHECK(&selector.reregister(number, EVENT_READ) == &key);
    CHECK(key.data == 1);
    CHECK(key.events == EVENT_READ);
    CHECK(muxio::detail::token_of(selector, key) != old_token);
    CHECK(muxio::detail::find_current(selector, old_token) == nullptr);
    CHECK(selector.select(0s).empty());  // the old file's readiness is not the new one's
    CHECK(selector.select(20ms).empty());
    muxio::test::write_all(new_pair.right.get(), "new");
    for (int round = 0; round < 2; ++round) {
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{number, EVENT_READ}});
    }
    CHECK(selector.unregister(number).data == 1);
    CHECK(selector.select(0s).empty());
}

TEST_CASE_TEMPLATE("reregister of a closed fd throws EBADF and keeps the key, reported until it is unregistered", B,
                   MUXIO_TEST_BACKENDS) {
    FdLeakCheck leak_check;
    SocketPair pair;
    SelectorOf<B> selector;
    const int closed = pair.left.get();
    const auto& key = selector.register_(closed, EVENT_READ_WRITE, 1);
    const std::uint64_t token = muxio::detail::token_of(selector, key);
    pair.left.reset();
    try {
        (void)selector.reregister(closed, EVENT_READ);
        FAIL("reregister accepted a closed fd");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EBADF, std::system_category()});
        CHECK(std::string{error.what()}.find(fmt::format("fd {}", closed)) != std::string::npos);
    }
    CHECK(&selector.get_key(closed) == &key);
    CHECK(key.events == EVENT_READ_WRITE);
    CHECK(muxio::detail::token_of(selector, key) == token);
    for (int round = 0; round < 2; ++round) {
        CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{closed, EVENT_READ_WRITE}});
    }
    CHECK(selector.unregister(closed).data == 1);
    CHECK(selector.select(0s).empty());
}
