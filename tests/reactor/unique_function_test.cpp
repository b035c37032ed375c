// UniqueFunction on its own: where it keeps a callable (inline or on the
// heap), moving it, destroying its captures, and calling an empty one.
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <doctest/doctest.h>

#include "muxio/detail/unique_function.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using muxio::detail::UniqueFunction;
using muxio::reactor_test::allocation_count;
using muxio::reactor_test::Tracked;
using muxio::test::FdLeakCheck;

namespace {

using Function = UniqueFunction<void()>;

// Called, it records its own address: inside the wrapper when stored inline.
struct SmallProbe {
    const void** seen;
    void operator()() const { *seen = this; }
};

// Seven pointers' worth: one more than the inline buffer holds.
struct LargeProbe {
    const void** seen;
    std::array<void*, 6> filler{};
    void operator()() const { *seen = this; }
};

// Exactly six pointers' worth.
struct ExactFit {
    const void** seen;
    std::array<void*, 5> filler{};
    void operator()() const { *seen = this; }
};

// Small, but its move may throw: it could not be relocated in a noexcept move.
struct ThrowingMove {
    const void** seen;
    ThrowingMove(const void** where) : seen{where} {}  // NOLINT(google-explicit-constructor)
    ThrowingMove(ThrowingMove&& other) noexcept(false) : seen{other.seen} {}
    ThrowingMove(const ThrowingMove&) = default;
    ThrowingMove& operator=(const ThrowingMove&) = default;
    ThrowingMove& operator=(ThrowingMove&&) = default;
    ~ThrowingMove() = default;
    void operator()() const { *seen = this; }
};

struct alignas(64) OverAligned {
    const void** seen;
    void operator()() const { *seen = this; }
};

// Move-only, as a lambda capturing a unique_ptr is.
struct MoveOnly {
    std::unique_ptr<int> owned;
    void operator()() const {}
};

bool inside(const void* address, const Function& function) {
    const auto begin = reinterpret_cast<std::uintptr_t>(&function);
    const auto at = reinterpret_cast<std::uintptr_t>(address);
    return at >= begin && at < begin + sizeof function;
}

int free_function_calls = 0;
void free_function() {
    ++free_function_calls;
}

// Hands a callable stored on the heap from one function to another with
// `transfer(source, target)`: the callable keeps its address, nothing is
// allocated, and the source is left empty.
template <class Transfer>
void check_heap_move(Transfer transfer) {
    const void* seen = nullptr;
    Function source{LargeProbe{&seen}};
    source();
    const void* first = seen;
    const std::size_t before = allocation_count();
    Function target;
    transfer(source, target);
    CHECK(allocation_count() == before);
    CHECK_FALSE(source);  // NOLINT(bugprone-use-after-move)
    seen = nullptr;
    target();
    CHECK(seen == first);
}

}  // namespace

static_assert(Function::fits_inline<SmallProbe>());
static_assert(Function::fits_inline<ExactFit>());
static_assert(!Function::fits_inline<LargeProbe>());
static_assert(!Function::fits_inline<ThrowingMove>());
static_assert(!Function::fits_inline<OverAligned>());
static_assert(!std::is_copy_constructible_v<Function>);
static_assert(!std::is_copy_assignable_v<Function>);
static_assert(std::is_nothrow_move_constructible_v<Function>);
static_assert(std::is_nothrow_move_assignable_v<Function>);
static_assert(std::is_constructible_v<Function, MoveOnly>);
static_assert(!std::is_constructible_v<Function, int>);
static_assert(!std::is_constructible_v<UniqueFunction<int()>, SmallProbe>);

TEST_CASE("a small callable is stored inline without allocating") {
    FdLeakCheck leak_check;
    const void* seen = nullptr;
    const std::size_t before = allocation_count();
    Function function{SmallProbe{&seen}};
    CHECK(allocation_count() == before);
    function();
    CHECK(inside(seen, function));
}

TEST_CASE("a callable of exactly six pointers is stored inline") {
    FdLeakCheck leak_check;
    const void* seen = nullptr;
    const std::size_t before = allocation_count();
    Function function{ExactFit{&seen}};
    CHECK(allocation_count() == before);
    function();
    CHECK(inside(seen, function));
}

TEST_CASE("a large callable is stored on the heap with one allocation") {
    FdLeakCheck leak_check;
    const void* seen = nullptr;
    const std::size_t before = allocation_count();
    Function function{LargeProbe{&seen}};
    CHECK(allocation_count() == before + (muxio::reactor_test::counts_allocations ? 1U : 0U));
    function();
    CHECK(seen != nullptr);
    CHECK_FALSE(inside(seen, function));
}

TEST_CASE("a callable whose move may throw is stored on the heap") {
    FdLeakCheck leak_check;
    const void* seen = nullptr;
    Function function{ThrowingMove{&seen}};
    function();
    CHECK(seen != nullptr);
    CHECK_FALSE(inside(seen, function));
}

TEST_CASE("an over-aligned callable is stored on the heap at its alignment") {
    FdLeakCheck leak_check;
    const void* seen = nullptr;
    Function function{OverAligned{&seen}};
    function();
    CHECK(seen != nullptr);
    CHECK_FALSE(inside(seen, function));
    CHECK(reinterpret_cast<std::uintptr_t>(seen) % 64 == 0);
}

TEST_CASE("moving an inline callable relocates it and empties the source") {
    FdLeakCheck leak_check;
    const void* seen = nullptr;
    Function source{SmallProbe{&seen}};
    const std::size_t before = allocation_count();
    Function target{std::move(source)};
    CHECK(allocation_count() == before);
    CHECK_FALSE(source);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
    CHECK(target);
    target();
    CHECK(inside(seen, target));
    CHECK_THROWS_AS(source(), std::bad_function_call);
}

TEST_CASE("moving a heap callable keeps its address and does not allocate") {
    FdLeakCheck leak_check;
    check_heap_move([](Function& source, Function& target) { target = std::move(source); });
}

TEST_CASE("move assignment destroys the previous target") {
    FdLeakCheck leak_check;
    std::atomic<int> old_destroyed{0};
    std::atomic<int> new_destroyed{0};
    Function function{[tracked = Tracked{old_destroyed}] {}};
    Function replacement{[tracked = Tracked{new_destroyed}] {}};
    function = std::move(replacement);
    CHECK(old_destroyed == 1);
    CHECK(new_destroyed == 0);
    function = nullptr;
    CHECK(new_destroyed == 1);
    CHECK_FALSE(function);
}

TEST_CASE("self move assignment keeps the target") {
    FdLeakCheck leak_check;
    int calls = 0;
    Function function{[&calls] { ++calls; }};
    Function& alias = function;
    function = std::move(alias);
    REQUIRE(function);
    function();
    CHECK(calls == 1);
}

TEST_CASE("assign_to_empty takes the callable and empties the source, as move assignment does") {
    FdLeakCheck leak_check;
    std::atomic<int> destroyed{0};
    const void* seen = nullptr;
    SUBCASE("inline, trivially copyable") {
        Function source{SmallProbe{&seen}};
        Function target;
        target.assign_to_empty(std::move(source));
        CHECK_FALSE(source);  // NOLINT(bugprone-use-after-move)
        REQUIRE(target);
        target();
        CHECK(inside(seen, target));
    }
    SUBCASE("inline, with a capture to destroy") {
        Function source{[tracked = Tracked{destroyed}] {}};
        Function target;
        target.assign_to_empty(std::move(source));
        CHECK_FALSE(source);  // NOLINT(bugprone-use-after-move)
        CHECK(target);
        CHECK(destroyed == 0);
        target.reset();
        CHECK(destroyed == 1);
    }
    SUBCASE("on the heap, without allocating") {
        check_heap_move([](Function& source, Function& target) { target.assign_to_empty(std::move(source)); });
    }
    SUBCASE("from an empty function") {
        Function source;
        Function target;
        target.assign_to_empty(std::move(source));
        CHECK_FALSE(target);
    }
}

TEST_CASE("reset destroys the captures at once") {
    FdLeakCheck leak_check;
    std::atomic<int> destroyed{0};
    SUBCASE("inline") {
        Function function{[tracked = Tracked{destroyed}] {}};
        REQUIRE(destroyed == 0);
        function.reset();
        CHECK(destroyed == 1);
        CHECK_FALSE(function);
        function.reset();
        CHECK(destroyed == 1);
    }
    SUBCASE("heap") {
        Function function{[tracked = Tracked{destroyed}, filler = std::array<void*, 8>{}] { (void)filler; }};
        REQUIRE(destroyed == 0);
        function.reset();
        CHECK(destroyed == 1);
        CHECK_FALSE(function);
    }
}

TEST_CASE("the captures are destroyed exactly once after several moves") {
    FdLeakCheck leak_check;
    std::atomic<int> small_destroyed{0};
    std::atomic<int> large_destroyed{0};
    {
        Function small{[tracked = Tracked{small_destroyed}] {}};
        Function large{[tracked = Tracked{large_destroyed}, filler = std::array<void*, 8>{}] { (void)filler; }};
        Function small_moved{std::move(small)};
        Function large_moved{std::move(large)};
        Function small_again;
        small_again = std::move(small_moved);
        Function large_again;
        large_again = std::move(large_moved);
        CHECK(small_destroyed == 0);
        CHECK(large_destroyed == 0);
    }
    CHECK(small_destroyed == 1);
    CHECK(large_destroyed == 1);
}

TEST_CASE("calling an empty function throws bad_function_call") {
    FdLeakCheck leak_check;
    SUBCASE("default constructed") {
        Function function;
        CHECK_FALSE(function);
        CHECK_THROWS_AS(function(), std::bad_function_call);
    }
    SUBCASE("from nullptr") {
        Function function{nullptr};
        CHECK_FALSE(function);
        CHECK_THROWS_AS(function(), std::bad_function_call);
    }
    SUBCASE("from a null function pointer") {
        void (*null_pointer)() = nullptr;
        Function function{null_pointer};
        CHECK_FALSE(function);
        CHECK_THROWS_AS(function(), std::bad_function_call);
    }
    SUBCASE("after reset") {
        Function function{[] {}};
        function.reset();
        CHECK_THROWS_AS(function(), std::bad_function_call);
    }
}

TEST_CASE("a function pointer is stored and called") {
    FdLeakCheck leak_check;
    free_function_calls = 0;
    Function function{&free_function};
    REQUIRE(function);
    function();
    function();
    CHECK(free_function_calls == 2);
}

TEST_CASE("arguments and the result are forwarded") {
    FdLeakCheck leak_check;
    UniqueFunction<std::unique_ptr<int>(std::unique_ptr<int>, int&)> function{[](std::unique_ptr<int> value, int& out) {
        out = *value;
        *value += 1;
        return value;
    }};
    int out = 0;
    const std::unique_ptr<int> result = function(std::make_unique<int>(41), out);
    REQUIRE(result != nullptr);
    CHECK(*result == 42);
    CHECK(out == 41);
}

TEST_CASE("a move-only capture is owned by the function") {
    FdLeakCheck leak_check;
    auto owned = std::make_shared<int>(7);
    std::weak_ptr<int> watch = owned;
    UniqueFunction<int()> function{
        [held = std::make_unique<std::shared_ptr<int>>(std::move(owned))] { return **held; }};
    CHECK(function() == 7);
    CHECK_FALSE(watch.expired());
    UniqueFunction<int()> moved{std::move(function)};
    CHECK(moved() == 7);
    moved = nullptr;
    CHECK(watch.expired());
}

TEST_CASE("a mutable callable keeps its state between calls") {
    FdLeakCheck leak_check;
    UniqueFunction<int()> counter{[count = 0]() mutable { return ++count; }};
    CHECK(counter() == 1);
    CHECK(counter() == 2);
    UniqueFunction<int()> moved{std::move(counter)};
    CHECK(moved() == 3);
}

TEST_CASE("moving an inline callable with a non-trivial capture moves the capture") {
    // Trivially copyable callables are moved by copying the storage; one with
    // a std::string capture must go through its own move constructor.
    FdLeakCheck leak_check;
    std::string seen;
    const std::string text(64, 'y');  // on the heap, so a bitwise copy would share it
    Function source{[&seen, text] { seen = text; }};
    Function middle{std::move(source)};
    Function target;
    target = std::move(middle);
    target();
    CHECK(seen == text);
    target = nullptr;  // destroys the capture once (ASan: no double free)
}

TEST_CASE("emplace replaces the callable in place and destroys the previous one") {
    FdLeakCheck leak_check;
    std::atomic<int> destroyed{0};
    Function function{[tracked = Tracked{destroyed}] {}};
    const void* seen = nullptr;
    function.emplace(SmallProbe{&seen});
    CHECK(destroyed == 1);
    function();
    CHECK(inside(seen, function));  // built where it is called from
}

TEST_CASE("emplace of a callable whose construction throws leaves the function empty") {
    FdLeakCheck leak_check;
    struct RefusesCopy {
        RefusesCopy() = default;
        RefusesCopy(const RefusesCopy& /*other*/) { throw std::runtime_error("copy refused"); }
        RefusesCopy(RefusesCopy&&) noexcept = default;
        RefusesCopy& operator=(const RefusesCopy&) = delete;
        RefusesCopy& operator=(RefusesCopy&&) = delete;
        ~RefusesCopy() = default;
        void operator()() const {}
    };
    std::atomic<int> destroyed{0};
    Function function{[tracked = Tracked{destroyed}] {}};
    const RefusesCopy original;
    CHECK_THROWS_AS(function.emplace(original), std::runtime_error);
    CHECK(destroyed == 1);
    CHECK_FALSE(function);
}
