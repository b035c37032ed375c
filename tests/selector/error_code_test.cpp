// The noexcept register_() and modify() that take a std::error_code&: every
// failure comes as a code, on every backend, and leaves the selector as it
// was (a kernel refusing modify() aside, which unregisters as the throwing
// form does).
#include <fcntl.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "muxio/selector.hpp"
#include "muxio/selectors.hpp"
#include "support/seccomp.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::EVENT_WRITE;
using muxio::Events;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::SocketPair;

namespace {

struct SelectTag {
    static constexpr std::string_view name = "select";
};
struct PollTag {
    static constexpr std::string_view name = "poll";
};
#if MUXIO_HAS_EPOLL
struct EpollTag {
    static constexpr std::string_view name = "epoll";
};
#define MUXIO_EC_EPOLL , EpollTag
#else
#define MUXIO_EC_EPOLL
#endif
#if MUXIO_HAS_IO_URING
struct IoUringTag {
    static constexpr std::string_view name = "io_uring";
};
#define MUXIO_EC_IO_URING , IoUringTag
#else
#define MUXIO_EC_IO_URING
#endif
#if MUXIO_HAS_KQUEUE
struct KqueueTag {
    static constexpr std::string_view name = "kqueue";
};
#define MUXIO_EC_KQUEUE , KqueueTag
#else
#define MUXIO_EC_KQUEUE
#endif
#if MUXIO_HAS_DEVPOLL
struct DevpollTag {
    static constexpr std::string_view name = "devpoll";
};
#define MUXIO_EC_DEVPOLL , DevpollTag
#else
#define MUXIO_EC_DEVPOLL
#endif

}  // namespace

#define MUXIO_EC_BACKENDS SelectTag, PollTag MUXIO_EC_EPOLL MUXIO_EC_IO_URING MUXIO_EC_KQUEUE MUXIO_EC_DEVPOLL

TYPE_TO_STRING_AS("select", SelectTag);
TYPE_TO_STRING_AS("poll", PollTag);
#if MUXIO_HAS_EPOLL
TYPE_TO_STRING_AS("epoll", EpollTag);
#endif
#if MUXIO_HAS_IO_URING
TYPE_TO_STRING_AS("io_uring", IoUringTag);
#endif
#if MUXIO_HAS_KQUEUE
TYPE_TO_STRING_AS("kqueue", KqueueTag);
#endif
#if MUXIO_HAS_DEVPOLL
TYPE_TO_STRING_AS("devpoll", DevpollTag);
#endif

namespace {

const std::error_code not_yet = std::make_error_code(std::errc::timed_out);  // any code, to see it cleared

// An object with fileno(), to register by identity.
struct Channel {
    int fd = -1;
    [[nodiscard]] int fileno() const noexcept { return fd; }
};

}  // namespace

TEST_CASE_TEMPLATE("register_ with an error_code registers and clears the error", B, MUXIO_EC_BACKENDS) {
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    SocketPair pair;
    std::error_code error = not_yet;
    const auto* key = selector->register_(pair.left.get(), EVENT_READ, 7, error);
    CHECK_FALSE(error);
    REQUIRE(key != nullptr);
    CHECK(key->fd == pair.left.get());
    CHECK(key->data == 7);
    CHECK(&selector->get_key(pair.left.get()) == key);
    error = not_yet;
    CHECK(selector->register_(pair.right.get(), EVENT_WRITE, error) != nullptr);  // data value-initialized
    CHECK_FALSE(error);
    CHECK(selector->get_key(pair.right.get()).data == 0);
    muxio::test::write_all(pair.right.get(), "x");
    const auto ready = selector->select(1s);
    CHECK(ready.size() == 2U);
}

TEST_CASE_TEMPLATE("register_ with an error_code reports a closed fd as EBADF and changes nothing", B,
                   MUXIO_EC_BACKENDS) {
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    int closed = -1;
    {
        const Pipe pipe;
        closed = pipe.read_end.get();
    }
    std::error_code error;
    CHECK(selector->register_(closed, EVENT_READ, 1, error) == nullptr);
    CHECK(error == std::errc::bad_file_descriptor);
    CHECK(selector->get_map().size() == 0U);
    CHECK_FALSE(selector->get_map().contains(closed));
    // The same number, open again, registers normally.
    const Pipe again;
    REQUIRE(again.read_end.get() == closed);
    CHECK(selector->register_(closed, EVENT_READ, 2, error) != nullptr);
    CHECK_FALSE(error);
}

TEST_CASE_TEMPLATE("register_ with an error_code reports a negative fd, a failing object and a bad mask", B,
                   MUXIO_EC_BACKENDS) {
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    SocketPair pair;
    std::error_code error;
    CHECK(selector->register_(-1, EVENT_READ, 1, error) == nullptr);
    CHECK(error == std::errc::bad_file_descriptor);
    Channel closed_channel{-1};
    CHECK(selector->register_(closed_channel, EVENT_READ, 1, error) == nullptr);
    CHECK(error == std::errc::bad_file_descriptor);
    CHECK(selector->register_(pair.left.get(), Events{}, 1, error) == nullptr);
    CHECK(error == std::errc::invalid_argument);
    CHECK(selector->register_(pair.left.get(), Events::from_bits(4), 1, error) == nullptr);
    CHECK(error == std::errc::invalid_argument);
    CHECK(selector->get_map().size() == 0U);
}

TEST_CASE_TEMPLATE("register_ with an error_code reports a second registration as EEXIST and keeps the first", B,
                   MUXIO_EC_BACKENDS) {
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    SocketPair pair;
    std::error_code error;
    const auto* first = selector->register_(pair.left.get(), EVENT_READ, 1, error);
    REQUIRE(first != nullptr);
    CHECK(selector->register_(pair.left.get(), EVENT_WRITE, 2, error) == nullptr);
    CHECK(error == std::errc::file_exists);
    CHECK(first->events == EVENT_READ);
    CHECK(first->data == 1);
    CHECK(selector->get_map().size() == 1U);
    // An object naming the same descriptor is the same registration.
    Channel channel{pair.left.get()};
    CHECK(selector->register_(channel, EVENT_READ, 3, error) == nullptr);
    CHECK(error == std::errc::file_exists);
    // Still watched as before: readable once written to.
    muxio::test::write_all(pair.right.get(), "x");
    const auto ready = selector->select(1s);
    REQUIRE(ready.size() == 1U);
    CHECK(ready[0].key().data == 1);
}

TEST_CASE_TEMPLATE("register_ and modify with an error_code on a closed selector report EBADF", B, MUXIO_EC_BACKENDS) {
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    SocketPair pair;
    selector->register_(pair.left.get(), EVENT_READ, 1);
    selector->close();
    std::error_code error;
    CHECK(selector->register_(pair.right.get(), EVENT_READ, 1, error) == nullptr);
    CHECK(error == std::errc::bad_file_descriptor);
    error.clear();
    CHECK(selector->modify(pair.left.get(), EVENT_WRITE, error) == nullptr);
    CHECK(error == std::errc::bad_file_descriptor);
    CHECK(selector->is_closed());
}

TEST_CASE_TEMPLATE("modify with an error_code changes events and data, or reports ENOENT and EINVAL", B,
                   MUXIO_EC_BACKENDS) {
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    SocketPair pair;
    selector->register_(pair.left.get(), EVENT_READ, 1);
    std::error_code error = not_yet;
    const auto* key = selector->modify(pair.left.get(), EVENT_READ_WRITE, 2, error);
    CHECK_FALSE(error);
    REQUIRE(key != nullptr);
    CHECK(key->events == EVENT_READ_WRITE);
    CHECK(key->data == 2);
    CHECK(selector->modify(pair.right.get(), EVENT_READ, 3, error) == nullptr);
    CHECK(error == std::errc::no_such_file_or_directory);
    CHECK(selector->modify(pair.left.get(), Events{}, 3, error) == nullptr);
    CHECK(error == std::errc::invalid_argument);
    CHECK(selector->modify(-2, EVENT_READ, error) == nullptr);
    CHECK(error == std::errc::bad_file_descriptor);
    // Nothing changed by the failures: the key as it was, still watched.
    CHECK(key->events == EVENT_READ_WRITE);
    CHECK(key->data == 2);
    const auto ready = selector->select(1s);  // writable at once
    REQUIRE(ready.size() == 1U);
    CHECK(ready[0].events() == EVENT_WRITE);
}

TEST_CASE_TEMPLATE("modify with an error_code of a descriptor closed since it was registered is not refused", B,
                   MUXIO_EC_BACKENDS) {
    // As the throwing form: the key takes the events, and select() reports it
    // as an error condition until it is unregistered.
    FdLeakCheck leak_check;
    auto selector = muxio::make_selector<int>(B::name);
    auto pipe = std::make_unique<Pipe>();
    const int fd = pipe->read_end.get();
    selector->register_(fd, EVENT_READ, 1);
    pipe.reset();
    std::error_code error = not_yet;
    const auto* key = selector->modify(fd, EVENT_READ_WRITE, error);
    CHECK_FALSE(error);
    REQUIRE(key != nullptr);
    CHECK(key->events == EVENT_READ_WRITE);
    const auto ready = selector->select(1s);
    REQUIRE(ready.size() == 1U);
    CHECK(ready[0].key().fd == fd);
    selector->unregister(fd);
}

TEST_CASE("register_ with an error_code on select reports a descriptor at FD_SETSIZE as EINVAL") {
    FdLeakCheck leak_check;
    if (muxio::test::raise_fd_limit(FD_SETSIZE + 8) <= FD_SETSIZE) {
        MESSAGE("RLIMIT_NOFILE's hard limit is below FD_SETSIZE: nothing to check");
        return;
    }
    muxio::SelectSelector<int> selector;
    const SocketPair pair;
    const muxio::test::UniqueFd high = muxio::test::dup_at_or_above(pair.left.get(), FD_SETSIZE);
    std::error_code error;
    CHECK(selector.register_(high.get(), EVENT_READ, 1, error) == nullptr);
    CHECK(error == std::errc::invalid_argument);
    CHECK(selector.get_map().size() == 0U);
}

TEST_CASE("register_ with an error_code fails before the kernel without allocating or throwing") {
    if (!muxio::test::counts_allocations) {
        return;
    }
    FdLeakCheck leak_check;
    muxio::PollSelector<int> selector;
    SocketPair pair;
    selector.register_(pair.left.get(), EVENT_READ, 1);
    std::error_code error;
    const std::size_t before = muxio::test::allocation_count();
    for (int i = 0; i < 100; ++i) {
        (void)selector.register_(pair.left.get(), EVENT_READ, 1, error);  // EEXIST
        (void)selector.register_(-1, EVENT_READ, 1, error);               // EBADF
        (void)selector.modify(pair.right.get(), EVENT_READ, error);       // ENOENT
    }
    CHECK(muxio::test::allocation_count() == before);
    CHECK(error == std::errc::no_such_file_or_directory);
}

#if MUXIO_HAS_EPOLL
// A refusal by the kernel is an expected outcome of the error_code form: a
// throw inside it would allocate (the exception and its message).
TEST_CASE("register_ with an error_code on epoll reports the kernel's refusal without allocating or throwing") {
    if (!muxio::test::counts_allocations) {
        return;
    }
    FdLeakCheck leak_check;
    muxio::EpollSelector<int> selector;
    const muxio::test::UniqueFd regular_file{::open("/dev/null", O_RDONLY | O_CLOEXEC)};  // epoll: EPERM
    REQUIRE(regular_file.get() >= 0);
    int closed_fd = -1;
    {
        const SocketPair gone;
        closed_fd = gone.left.get();
    }
    std::error_code error;
    (void)selector.register_(regular_file.get(), EVENT_READ, 1, error);  // warm: the table is grown
    const std::size_t before = muxio::test::allocation_count();
    for (int i = 0; i < 100; ++i) {
        CHECK(selector.register_(regular_file.get(), EVENT_READ, 1, error) == nullptr);
        CHECK(error == std::errc::operation_not_permitted);
        CHECK(selector.register_(closed_fd, EVENT_READ, 1, error) == nullptr);
        CHECK(error == std::errc::bad_file_descriptor);
    }
    CHECK(muxio::test::allocation_count() == before);
    CHECK(selector.get_map().size() == 0U);
    // The throwing form still names the call and the descriptor.
    CHECK_THROWS_WITH_AS(selector.register_(regular_file.get(), EVENT_READ, 1), doctest::Contains("epoll_ctl(ADD)"),
                         std::system_error);
}
#endif

// ---------------------------------------------------------------------------
// Fault injection: a poller whose add() and modify() refuse

namespace {

struct Refusals {
    int add_errno = 0;
    bool add_invalid = false;
    int modify_errno = 0;
    int adds = 0;
    int removes = 0;
};

class RefusingPoller final : public muxio::detail::Poller {
public:
    explicit RefusingPoller(std::shared_ptr<Refusals> refusals) : refusals_{std::move(refusals)} {}
    std::string_view name() const noexcept override { return "refusing"; }
    void add(int fd, Events /*events*/, std::uint64_t /*token*/) override {
        if (refusals_->add_invalid) {
            throw std::invalid_argument("refusing: cannot watch this fd");
        }
        if (refusals_->add_errno != 0) {
            muxio::throw_system_error(refusals_->add_errno, "refusing_ctl(ADD)", fd);
        }
        ++refusals_->adds;
    }
    void modify(int fd, Events /*old_events*/, Events /*new_events*/, std::uint64_t /*token*/) override {
        if (refusals_->modify_errno != 0) {
            muxio::throw_system_error(refusals_->modify_errno, "refusing_ctl(MOD)", fd);
        }
    }
    std::error_code remove(int /*fd*/, Events /*events*/) noexcept override {
        ++refusals_->removes;
        return {};
    }
    void close() noexcept override {}

protected:
    int wait_once(muxio::detail::Timeout /*timeout*/, std::vector<muxio::detail::PollEvent>& /*ready*/) override {
        return 0;
    }

private:
    std::shared_ptr<Refusals> refusals_;
};

template <class Data>
class RefusingSelector final : public muxio::BaseSelector<Data> {
public:
    explicit RefusingSelector(const std::shared_ptr<Refusals>& refusals)
        : muxio::BaseSelector<Data>{std::make_unique<RefusingPoller>(refusals)} {}
};

}  // namespace

TEST_CASE("register_ with an error_code reports the kernel's refusal and leaves the selector unchanged") {
    auto refusals = std::make_shared<Refusals>();
    RefusingSelector<std::string> selector{refusals};
    refusals->add_errno = ENOMEM;
    std::error_code error;
    CHECK(selector.register_(5, EVENT_READ, "data", error) == nullptr);
    CHECK(error == std::errc::not_enough_memory);
    CHECK(error.category() == std::system_category());
    CHECK(selector.get_map().size() == 0U);
    refusals->add_errno = 0;
    refusals->add_invalid = true;
    CHECK(selector.register_(5, EVENT_READ, "data", error) == nullptr);
    CHECK(error == std::errc::invalid_argument);
    CHECK(selector.get_map().size() == 0U);
    refusals->add_invalid = false;
    CHECK(selector.register_(5, EVENT_READ, "data", error) != nullptr);
    CHECK_FALSE(error);
    CHECK(refusals->removes == 0);
}

TEST_CASE("modify with an error_code that the kernel refuses unregisters the key, as the throwing form does") {
    auto refusals = std::make_shared<Refusals>();
    RefusingSelector<std::string> selector{refusals};
    selector.register_(5, EVENT_READ, "data");
    refusals->modify_errno = ENOMEM;
    std::error_code error;
    // A data-only change asks nothing of the kernel: it succeeds.
    CHECK(selector.modify(5, EVENT_READ, "new", error) != nullptr);
    CHECK_FALSE(error);
    CHECK(selector.get_key(5).data == "new");
    CHECK(selector.modify(5, EVENT_WRITE, "newer", error) == nullptr);
    CHECK(error == std::errc::not_enough_memory);
    CHECK_FALSE(selector.get_map().contains(5));
    CHECK(refusals->removes == 1);
}

#if MUXIO_TEST_HAS_SECCOMP && MUXIO_HAS_EPOLL
TEST_CASE("register_ with an error_code on epoll reports epoll_ctl refused by the kernel") {
    FdLeakCheck leak_check;
    const auto report = muxio::test::report_from_child(
        []() -> std::string {
            muxio::EpollSelector<int> selector;  // made before the filter
            const SocketPair pair;
            const std::uint32_t refused[] = {SYS_epoll_ctl};
            if (!muxio::test::refuse_syscalls_in_this_process(refused, ENOSPC)) {
                return "no-seccomp";
            }
            std::error_code error;
            const auto* key = selector.register_(pair.left.get(), EVENT_READ, 1, error);
            return fmt::format("{} {} {}", key == nullptr ? "refused" : "registered",
                               error == std::errc::no_space_on_device ? "ENOSPC" : error.message(),
                               selector.get_map().size());
        },
        20s);
    REQUIRE_MESSAGE(report.has_value(), "the child did not finish");
    if (*report == "no-seccomp") {
        MESSAGE("the kernel refused the seccomp filter: nothing to check");
        return;
    }
    CHECK(*report == "refused ENOSPC 0");
}
#endif
