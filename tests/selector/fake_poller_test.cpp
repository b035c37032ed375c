// BaseSelector over a fake poller that counts the calls it receives and
// fails on request: what the selector asks of the kernel, and what it does
// when the kernel says no, without depending on a real kernel's mood.
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "muxio/selector.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

// ---------------------------------------------------------------------------

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::EVENT_WRITE;
using muxio::Events;
using muxio::KeyError;
using muxio::detail::PollEvent;
using muxio::detail::Timeout;
using muxio::test::FdLeakCheck;
using muxio::test::Stopwatch;
using std::chrono::nanoseconds;

namespace {

// What the fake kernel was asked and how it should answer. Shared between the
// test and the poller, so it outlives the selector.
struct FakeKernel {
    FakeKernel() { wait_timeouts.reserve(4096); }

    // One scripted answer of wait_once().
    struct Step {
        int error = 0;                     // errno to return, 0 for success
        std::vector<PollEvent> events;     // appended to the result
        nanoseconds spend{};               // time the call takes
        bool spend_whole_timeout = false;  // take the whole (positive) timeout
    };

    int adds = 0;
    int modifies = 0;
    int removes = 0;
    int waits = 0;
    int closes = 0;
    std::vector<std::pair<int, std::uint64_t>> added;  // fd, token
    std::vector<int> removed;
    std::vector<Timeout> wait_timeouts;

    std::optional<int> add_errno;       // add() throws std::system_error
    bool add_invalid = false;           // add() throws std::invalid_argument
    std::optional<int> modify_errno;    // modify() throws std::system_error
    int remove_errno = 0;               // remove() reports this error
    std::deque<Step> steps;             // wait_once() answers, in order
    std::vector<PollEvent> every_wait;  // answered once steps run out
    bool may_report_stale = false;      // what the poller tells wait()
    int purges = 0;                     // purge_stale() calls
    int purge_errno = 0;                // what purge_stale() returns
    bool purge_clears_stale = true;     // a purge that works: every_wait is emptied

    [[nodiscard]] int system_calls() const noexcept { return adds + modifies + removes + waits; }
};

class FakePoller final : public muxio::detail::Poller {
public:
    explicit FakePoller(std::shared_ptr<FakeKernel> kernel) : kernel_{std::move(kernel)} {}

    std::string_view name() const noexcept override { return "fake"; }

    void add(int fd, Events events, std::uint64_t token) override {
        (void)events;
        ++kernel_->adds;
        if (kernel_->add_invalid) {
            throw std::invalid_argument("fake: cannot watch this fd");
        }
        if (kernel_->add_errno) {
            muxio::throw_system_error(*kernel_->add_errno, "fake_ctl(ADD)", fd);
        }
        kernel_->added.emplace_back(fd, token);
    }

    void modify(int fd, Events /*old_events*/, Events /*new_events*/, std::uint64_t /*token*/) override {
        ++kernel_->modifies;
        if (kernel_->modify_errno) {
            muxio::throw_system_error(*kernel_->modify_errno, "fake_ctl(MOD)", fd);
        }
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        ++kernel_->removes;
        kernel_->removed.push_back(fd);
        return {kernel_->remove_errno, std::system_category()};
    }

    void close() noexcept override { ++kernel_->closes; }

    int purge_stale() noexcept override {
        ++kernel_->purges;
        if (kernel_->purge_errno == 0 && kernel_->purge_clears_stale) {
            kernel_->every_wait.clear();
            kernel_->may_report_stale = false;
        }
        return kernel_->purge_errno;
    }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        set_may_report_stale(kernel_->may_report_stale);
        ++kernel_->waits;
        kernel_->wait_timeouts.push_back(timeout);
        if (kernel_->steps.empty()) {
            ready.insert(ready.end(), kernel_->every_wait.begin(), kernel_->every_wait.end());
            return 0;
        }
        FakeKernel::Step step = std::move(kernel_->steps.front());
        kernel_->steps.pop_front();
        if (step.spend_whole_timeout && timeout && *timeout > nanoseconds::zero()) {
            std::this_thread::sleep_for(*timeout);  // a kernel wait that times out
        } else if (step.spend > nanoseconds::zero()) {
            std::this_thread::sleep_for(step.spend);  // a kernel wait cut short
        }
        ready.insert(ready.end(), step.events.begin(), step.events.end());
        return step.error;
    }

private:
    std::shared_ptr<FakeKernel> kernel_;
};

// BaseSelector's constructor taking a poller is protected: tests reach it here.
template <class Data>
class FakeSelector final : public muxio::BaseSelector<Data> {
public:
    explicit FakeSelector(const std::shared_ptr<FakeKernel>& kernel)
        : muxio::BaseSelector<Data>{std::make_unique<FakePoller>(kernel)} {}
    explicit FakeSelector(std::unique_ptr<muxio::detail::Poller> poller)
        : muxio::BaseSelector<Data>{std::move(poller)} {}
};

// The token the selector gave the kernel for the latest registration of `fd`.
std::uint64_t token_of(const FakeKernel& kernel, int fd) {
    for (auto it = kernel.added.rbegin(); it != kernel.added.rend(); ++it) {
        if (it->first == fd) {
            return it->second;
        }
    }
    FAIL("fd ", fd, " was never added");
    return 0;
}

// A token in the documented layout (DESIGN.md: the kernel carries
// fd | generation), for descriptors the selector never handed out.
constexpr std::uint64_t make_token(std::uint32_t fd, std::uint32_t generation) {
    return (std::uint64_t{generation} << 32U) | fd;
}

}  // namespace

// ---------------------------------------------------------------------------
// Which calls reach the kernel

TEST_CASE("modify with data only makes no system call") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<std::string> selector{kernel};
    const auto& key = selector.register_(5, EVENT_READ, "before");
    const int calls = kernel->system_calls();
    const auto& modified = selector.modify(5, EVENT_READ, "after");
    CHECK(kernel->system_calls() == calls);
    CHECK(&modified == &key);
    CHECK(key.data == "after");
    CHECK(key.events == EVENT_READ);
}

TEST_CASE("modify with the same events and data makes no system call") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ_WRITE, 1);
    const int calls = kernel->system_calls();
    (void)selector.modify(5, EVENT_READ_WRITE, 1);
    (void)selector.modify(5, EVENT_READ_WRITE);
    CHECK(kernel->system_calls() == calls);
}

TEST_CASE("modify with new events makes exactly one system call") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    CHECK(kernel->adds == 1);
    (void)selector.modify(5, EVENT_WRITE, 2);
    CHECK(kernel->modifies == 1);
    CHECK(kernel->system_calls() == 2);
    CHECK(selector.get_key(5).events == EVENT_WRITE);
    CHECK(selector.get_key(5).data == 2);
}

TEST_CASE("lookups and invalid arguments make no system call") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    const int calls = kernel->system_calls();
    (void)selector.get_key(5);
    (void)selector.get_map().contains(6);
    CHECK_THROWS_AS(selector.register_(5, EVENT_READ, 2), KeyError);
    CHECK_THROWS_AS(selector.register_(6, Events{}, 2), std::invalid_argument);
    CHECK_THROWS_AS(selector.register_(-1, EVENT_READ, 2), std::invalid_argument);
    CHECK_THROWS_AS((void)selector.modify(5, Events::from_bits(4), 2), std::invalid_argument);
    CHECK_THROWS_AS((void)selector.modify(6, EVENT_READ, 2), KeyError);
    CHECK_THROWS_AS((void)selector.unregister(6), KeyError);
    CHECK(kernel->system_calls() == calls);
}

// ---------------------------------------------------------------------------
// When the kernel says no

TEST_CASE("a refused register_ leaves the selector exactly as before") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(3, EVENT_READ, 3);
    kernel->every_wait = {{token_of(*kernel, 3), EVENT_READ}};

    SUBCASE("with a system_error") {
        kernel->add_errno = EPERM;
        CHECK_THROWS_AS(selector.register_(7, EVENT_READ, 7), std::system_error);
        kernel->add_errno.reset();
    }
    SUBCASE("with an invalid_argument") {
        kernel->add_invalid = true;
        CHECK_THROWS_AS(selector.register_(7, EVENT_READ, 7), std::invalid_argument);
        kernel->add_invalid = false;
    }
    SUBCASE("far beyond the descriptors seen so far") {
        kernel->add_errno = EBADF;
        CHECK_THROWS_AS(selector.register_(5000, EVENT_READ, 7), std::system_error);
        CHECK_THROWS_AS((void)selector.get_key(5000), KeyError);
        kernel->add_errno.reset();
    }

    CHECK(kernel->adds == 2);
    CHECK(selector.get_map().size() == 1);
    CHECK_FALSE(selector.get_map().contains(7));
    CHECK_THROWS_AS((void)selector.get_key(7), KeyError);
    CHECK_THROWS_AS((void)selector.unregister(7), KeyError);
    int keys = 0;
    for (const auto& key : selector.get_map()) {
        CHECK(key.fd == 3);
        ++keys;
    }
    CHECK(keys == 1);
    CHECK(kernel->removes == 0);  // nothing to undo: nothing was recorded
    const auto ready = selector.select(0s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].key().fd == 3);

    // The descriptor can be registered once the kernel agrees.
    const auto& key = selector.register_(7, EVENT_WRITE, 8);
    CHECK(key.fd == 7);
    CHECK(key.data == 8);
    CHECK(selector.get_map().size() == 2);
}

TEST_CASE("a failing modify unregisters the key and rethrows") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<std::string> selector{kernel};
    (void)selector.register_(4, EVENT_READ, "other");
    (void)selector.register_(5, EVENT_READ, "victim");
    const std::uint64_t old_token = token_of(*kernel, 5);
    kernel->modify_errno = ENOMEM;

    try {
        (void)selector.modify(5, EVENT_WRITE, "never");
        FAIL("modify did not throw");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{ENOMEM, std::system_category()});
        CHECK(std::string{error.what()}.find("fake_ctl(MOD) on fd 5") != std::string::npos);
    }
    CHECK(kernel->modifies == 1);
    CHECK(kernel->removed == std::vector<int>{5});
    CHECK_THROWS_AS((void)selector.get_key(5), KeyError);
    CHECK(selector.get_map().size() == 1);
    CHECK(selector.get_key(4).data == "other");

    // An event the kernel had queued for the old registration is dropped.
    kernel->steps.push_back({0, {{old_token, EVENT_READ}}, {}, false});
    CHECK(selector.select(0s).empty());

    kernel->modify_errno.reset();
    CHECK(selector.register_(5, EVENT_WRITE, "again").data == "again");
}

TEST_CASE("a failing modify of events alone also unregisters") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    kernel->modify_errno = EBADF;
    CHECK_THROWS_AS((void)selector.modify(5, EVENT_READ_WRITE), std::system_error);
    CHECK(selector.get_map().empty());
}

TEST_CASE("unregister ignores an error from remove") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<std::string> selector{kernel};
    (void)selector.register_(5, EVENT_READ, "data");
    kernel->remove_errno = EBADF;  // the descriptor was closed since
    const auto key = selector.unregister(5);
    CHECK(key.data == "data");
    CHECK(kernel->removed == std::vector<int>{5});
    CHECK(selector.get_map().empty());
    kernel->remove_errno = ENOENT;
    (void)selector.register_(5, EVENT_READ, "again");
    CHECK(selector.unregister(5).data == "again");
}

TEST_CASE("a wait error other than EINTR is thrown and the selector stays usable") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    kernel->steps.push_back({EIO, {}, {}, false});
    try {
        (void)selector.select(0s);
        FAIL("select did not throw");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EIO, std::system_category()});
        CHECK(std::string{error.what()}.find("fake wait") != std::string::npos);
    }
    CHECK(kernel->waits == 1);  // not retried
    kernel->every_wait = {{token_of(*kernel, 5), EVENT_READ}};
    CHECK(selector.select(0s).size() == 1);
}

TEST_CASE("a system_error names the operation and the fd") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    kernel->add_errno = EPERM;
    try {
        (void)selector.register_(9, EVENT_READ, 1);
        FAIL("register_ did not throw");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EPERM, std::system_category()});
        const std::string message = error.what();
        CHECK(message.find("fake_ctl(ADD)") != std::string::npos);
        CHECK(message.find("fd 9") != std::string::npos);
    }

    // The one helper every layer uses: operation, fd, then the system's text.
    const std::system_error with_fd = muxio::make_system_error(EBADF, "epoll_ctl(ADD)", 7);
    const std::string text = with_fd.what();
    CHECK(text.find("epoll_ctl(ADD) on fd 7") == 0);
    CHECK(text.find(std::system_category().message(EBADF)) != std::string::npos);
    CHECK(with_fd.code() == std::error_code{EBADF, std::system_category()});
    const std::system_error without_fd = muxio::make_system_error(EMFILE, "epoll_create1");
    CHECK(std::string{without_fd.what()}.find("epoll_create1") == 0);
    CHECK(std::string{without_fd.what()}.find("fd") == std::string::npos);
    CHECK_THROWS_AS(muxio::throw_system_error(EINVAL, "op", 1), std::system_error);
}

// ---------------------------------------------------------------------------
// Timeouts and signals

TEST_CASE("select passes the timeout to the poller rounded up to nanoseconds") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.select(0s);
    (void)selector.select(-5ms);
    (void)selector.select(std::nullopt);
    (void)selector.select();
    (void)selector.select(1500us);
    (void)selector.select(std::chrono::duration<double, std::nano>(1.2));
    (void)selector.select(std::chrono::duration<double>(0.25));
    (void)selector.select(std::chrono::duration<double>(-0.25));
    (void)selector.select(std::chrono::hours::max());
    (void)selector.select(std::chrono::duration<double>(1e300));
    const std::vector<Timeout> expected{
        nanoseconds{0}, nanoseconds{0},           std::nullopt,   std::nullopt,       nanoseconds{1'500'000},
        nanoseconds{2}, nanoseconds{250'000'000}, nanoseconds{0}, nanoseconds::max(), nanoseconds::max(),
    };
    CHECK(kernel->wait_timeouts == expected);
}

TEST_CASE("a signal during select is retried with the time left") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    // Three waits cut short by a signal, each after 20 ms; the events of an
    // interrupted wait must not leak into the result. Then a wait that times out.
    for (int i = 0; i < 3; ++i) {
        kernel->steps.push_back({EINTR, {{token_of(*kernel, 5), EVENT_READ}}, 20ms, false});
    }
    kernel->steps.push_back({0, {}, {}, true});

    const auto timeout = 100ms;
    const Stopwatch stopwatch;
    CHECK(selector.select(timeout).empty());
    CHECK(stopwatch.elapsed() >= timeout);

    const auto& asked = kernel->wait_timeouts;
    REQUIRE(asked.size() == 4);
    CHECK(asked[0] == nanoseconds{timeout});
    for (std::size_t i = 1; i < asked.size(); ++i) {
        REQUIRE(asked[i].has_value());
        CHECK(*asked[i] > nanoseconds::zero());
        // Each retry asks for at most what was left after the 20 ms spent.
        CHECK(*asked[i] <= *asked[i - 1] - 20ms);
    }
}

TEST_CASE("a signal during a blocking or polling select is retried the same way") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    const std::uint64_t token = token_of(*kernel, 5);

    kernel->steps.push_back({EINTR, {}, {}, false});
    kernel->steps.push_back({EINTR, {}, {}, false});
    kernel->steps.push_back({0, {{token, EVENT_READ}}, {}, false});
    CHECK(selector.select(std::nullopt).size() == 1);
    CHECK(kernel->wait_timeouts == std::vector<Timeout>{std::nullopt, std::nullopt, std::nullopt});

    kernel->wait_timeouts.clear();
    kernel->steps.push_back({EINTR, {}, {}, false});
    kernel->steps.push_back({0, {}, {}, false});
    CHECK(selector.select(0s).empty());
    CHECK(kernel->wait_timeouts == std::vector<Timeout>{nanoseconds{0}, nanoseconds{0}});
}

TEST_CASE("a signal after the deadline retries as a poll") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    // The interrupted wait already used more than the whole timeout.
    kernel->steps.push_back({EINTR, {}, 15ms, false});
    kernel->steps.push_back({0, {}, {}, true});
    CHECK(selector.select(5ms).empty());
    REQUIRE(kernel->wait_timeouts.size() == 2);
    CHECK(kernel->wait_timeouts[1] == nanoseconds{0});
}

// ---------------------------------------------------------------------------
// What select() makes of the poller's answer

TEST_CASE("events of a stale or unknown registration are dropped") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 50);
    const std::uint64_t first_token = token_of(*kernel, 5);
    (void)selector.unregister(5);
    (void)selector.register_(5, EVENT_READ, 51);
    const std::uint64_t current_token = token_of(*kernel, 5);
    CHECK(current_token != first_token);
    (void)selector.register_(6, EVENT_READ, 60);
    const std::uint64_t gone_token = token_of(*kernel, 6);
    (void)selector.unregister(6);

    kernel->steps.push_back({0,
                             {
                                 {first_token, EVENT_READ},                  // an earlier registration of fd 5
                                 {gone_token, EVENT_READ},                   // fd 6, unregistered
                                 {make_token(7, 1), EVENT_READ},             // fd 7, never registered
                                 {make_token(1'000'000, 1), EVENT_READ},     // far beyond the table
                                 {make_token(0xffff'ffffU, 1), EVENT_READ},  // fd -1
                                 {current_token, EVENT_READ},
                             },
                             {},
                             false});
    const auto ready = selector.select(0s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].key().fd == 5);
    CHECK(ready[0].key().data == 51);
    CHECK(selector.is_current(ready[0]));
}

TEST_CASE("select masks the events from the poller with the registered events") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(4, EVENT_READ, 4);
    (void)selector.register_(5, EVENT_WRITE, 5);
    (void)selector.register_(6, EVENT_READ, 6);
    (void)selector.register_(7, EVENT_READ_WRITE, 7);
    // Errors and hang-ups come from the poller as READ|WRITE.
    kernel->every_wait = {
        {token_of(*kernel, 4), EVENT_READ_WRITE},
        {token_of(*kernel, 5), EVENT_READ_WRITE},
        {token_of(*kernel, 6), EVENT_WRITE},  // nothing registered is ready
        {token_of(*kernel, 7), EVENT_READ_WRITE},
    };
    const auto ready = muxio::test::ready_by_fd(selector.select(0s));
    CHECK(ready == std::map<int, Events>{{4, EVENT_READ}, {5, EVENT_WRITE}, {7, EVENT_READ_WRITE}});
}

TEST_CASE("steady-state select does not allocate" * doctest::skip(!muxio::test::counts_allocations)) {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<std::string> selector{kernel};
    for (int fd = 3; fd < 67; ++fd) {
        (void)selector.register_(fd, EVENT_READ_WRITE, "a string too long for the small-string buffer");
    }
    for (int fd = 3; fd < 67; ++fd) {
        kernel->every_wait.push_back({token_of(*kernel, fd), fd % 2 == 0 ? EVENT_READ : EVENT_READ_WRITE});
    }
    const auto* storage = selector.select(0s).data();  // warm-up sizes the buffers
    const std::size_t before = muxio::test::allocation_count();
    for (int i = 0; i < 100; ++i) {
        const auto ready = selector.select(0s);
        CHECK(ready.size() == 64);
        CHECK(ready.data() == storage);  // the same buffer every time
    }
    CHECK(muxio::test::allocation_count() - before == 0);
    // A counter that does not count would pass the check above: make sure it counts.
    const auto probe = std::make_unique<int>(1);
    CHECK(muxio::test::allocation_count() - before >= 1);
}

// ---------------------------------------------------------------------------
// Lifetime

TEST_CASE("close closes the poller once") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    {
        FakeSelector<int> selector{kernel};
        (void)selector.register_(5, EVENT_READ, 1);
        selector.close();
        CHECK(kernel->closes == 1);
        selector.close();
        CHECK(kernel->closes == 1);
        // Keys are forgotten without asking the kernel to remove each one.
        CHECK(kernel->removes == 0);
    }
    CHECK(kernel->closes == 1);
    { const FakeSelector<int> selector{kernel}; }
    CHECK(kernel->closes == 2);  // the destructor closes
}

TEST_CASE("a selector without a poller is refused") {
    FdLeakCheck leak_check;
    CHECK_THROWS_AS(FakeSelector<int>{std::unique_ptr<muxio::detail::Poller>{}}, std::invalid_argument);
}

TEST_CASE("each registration of an fd gets a new token") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    std::vector<std::uint64_t> tokens;
    for (int round = 0; round < 5; ++round) {
        (void)selector.register_(5, EVENT_READ, round);
        tokens.push_back(token_of(*kernel, 5));
        (void)selector.unregister(5);
    }
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        for (std::size_t j = i + 1; j < tokens.size(); ++j) {
            CHECK(tokens[i] != tokens[j]);
        }
    }
    (void)selector.register_(6, EVENT_READ, 0);
    CHECK(token_of(*kernel, 6) != token_of(*kernel, 5));
}

// ---------------------------------------------------------------------------
// Stale events from a kernel that keeps a registration (Poller::wait)

TEST_CASE("an answer of stale events only does not end a select while the poller may report them") {
    FdLeakCheck leak_check;
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(5, EVENT_READ, 1);
    const std::uint64_t live = token_of(*kernel, 5);
    (void)selector.register_(6, EVENT_READ, 2);
    const std::uint64_t gone = token_of(*kernel, 6);
    (void)selector.unregister(6);
    kernel->may_report_stale = true;
    kernel->every_wait = {{gone, EVENT_READ}};  // what the kernel keeps reporting until purged

    SUBCASE("a timed select waits out the time left after the purge") {
        kernel->steps.push_back({0, {{gone, EVENT_READ}}, 10ms, false});
        kernel->steps.push_back({0, {}, {}, true});
        const Stopwatch stopwatch;
        CHECK(selector.select(50ms).empty());
        CHECK(stopwatch.elapsed() >= 50ms);
        CHECK(kernel->purges == 1);
        REQUIRE(kernel->wait_timeouts.size() == 2);
        REQUIRE(kernel->wait_timeouts[1].has_value());
        CHECK(*kernel->wait_timeouts[1] <= 40ms);  // the time left, not the whole timeout again
    }
    SUBCASE("a blocking select goes on until something live is ready") {
        kernel->steps.push_back({0, {{gone, EVENT_READ}}, {}, false});
        kernel->steps.push_back({0, {{live, EVENT_READ}}, {}, false});
        const auto ready = selector.select(std::nullopt);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].key().data == 1);
        CHECK(kernel->purges == 1);
    }
    SUBCASE("a poll looks once more after the purge") {
        kernel->steps.push_back({0, {{gone, EVENT_READ}}, {}, false});
        kernel->steps.push_back({0, {{live, EVENT_READ}}, {}, false});
        CHECK(selector.select(0s).size() == 1);
        CHECK(kernel->waits == 2);
    }
    SUBCASE("a poll that meets stale events again returns empty") {
        kernel->purge_clears_stale = false;
        CHECK(selector.select(0s).empty());
        CHECK(kernel->waits == 2);
        CHECK(kernel->purges == 2);
    }
    SUBCASE("a live event next to stale ones ends the wait at once") {
        kernel->steps.push_back({0, {{gone, EVENT_READ}, {live, EVENT_READ}}, {}, false});
        CHECK(selector.select(5s).size() == 1);
        CHECK(kernel->purges == 0);
    }
    SUBCASE("a purge that fails is thrown") {
        kernel->purge_errno = EMFILE;
        try {
            (void)selector.select(5s);
            FAIL("select did not throw");
        } catch (const std::system_error& error) {
            CHECK(error.code() == std::error_code{EMFILE, std::system_category()});
            CHECK(std::string{error.what()}.find("fake wait") != std::string::npos);
        }
    }
}

TEST_CASE("stale events are left to the selector while the poller does not say it may report them") {
    FdLeakCheck leak_check;
    // A registration replaced between waits: select() drops its event, and
    // the poller is not asked to look at its answers at all.
    auto kernel = std::make_shared<FakeKernel>();
    FakeSelector<int> selector{kernel};
    (void)selector.register_(6, EVENT_READ, 2);
    const std::uint64_t gone = token_of(*kernel, 6);
    (void)selector.unregister(6);
    kernel->steps.push_back({0, {{gone, EVENT_READ}}, {}, false});
    CHECK(selector.select(5s).empty());
    CHECK(kernel->waits == 1);
    CHECK(kernel->purges == 0);
}
