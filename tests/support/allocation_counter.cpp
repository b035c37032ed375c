// Counting operator new, for the "does not allocate" tests, and a failure
// injector for the "an allocation failure leaks nothing" tests. In the
// support library: the linker pulls this object in, replacing the global
// operator new, in every test binary that calls allocation_count() or uses
// FailNthAllocation.
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#include "support/support.hpp"

// Every non-aligned form is replaced, new and delete alike, and all go to
// malloc/free, so AddressSanitizer still checks every block (it intercepts
// malloc) and sees no new/delete mismatch. The aligned forms are left alone.

namespace {
std::atomic<std::size_t> allocations{0};

// Per thread, so that another thread's allocations (a logger, a resolver
// worker) neither take nor hide the failure armed by a test.
thread_local std::size_t allocations_until_failure = 0;  // 0: nothing armed
thread_local bool injected_failure = false;
}  // namespace

#if !MUXIO_TEST_TSAN
namespace {

void* counted_allocation(std::size_t size) noexcept {
    allocations.fetch_add(1, std::memory_order_relaxed);
    if (allocations_until_failure != 0 && --allocations_until_failure == 0) {
        injected_failure = true;
        return nullptr;
    }
    return std::malloc(size == 0 ? 1 : size);  // NOLINT(cppcoreguidelines-no-malloc)
}
}  // namespace

void* operator new(std::size_t size) {
    if (void* block = counted_allocation(size)) {
        return block;
    }
    throw std::bad_alloc{};
}
void* operator new[](std::size_t size) {
    if (void* block = counted_allocation(size)) {
        return block;
    }
    throw std::bad_alloc{};
}
void* operator new(std::size_t size, const std::nothrow_t& /*tag*/) noexcept {
    return counted_allocation(size);
}
void* operator new[](std::size_t size, const std::nothrow_t& /*tag*/) noexcept {
    return counted_allocation(size);
}
void operator delete(void* block) noexcept {
    std::free(block);  // NOLINT(cppcoreguidelines-no-malloc)
}
void operator delete[](void* block) noexcept {
    std::free(block);  // NOLINT(cppcoreguidelines-no-malloc)
}
void operator delete(void* block, std::size_t /*size*/) noexcept {
    std::free(block);  // NOLINT(cppcoreguidelines-no-malloc)
}
void operator delete[](void* block, std::size_t /*size*/) noexcept {
    std::free(block);  // NOLINT(cppcoreguidelines-no-malloc)
}
void operator delete(void* block, const std::nothrow_t& /*tag*/) noexcept {
    std::free(block);  // NOLINT(cppcoreguidelines-no-malloc)
}
void operator delete[](void* block, const std::nothrow_t& /*tag*/) noexcept {
    std::free(block);  // NOLINT(cppcoreguidelines-no-malloc)
}
#endif  // !MUXIO_TEST_TSAN

namespace muxio::test {

std::size_t allocation_count() noexcept {
    return allocations.load(std::memory_order_relaxed);
}

FailNthAllocation::FailNthAllocation(std::size_t nth) noexcept {
    allocations_until_failure = counts_allocations ? nth : 0;
    injected_failure = false;
}

FailNthAllocation::~FailNthAllocation() {
    allocations_until_failure = 0;
}

bool FailNthAllocation::failed() const noexcept {
    return injected_failure;
}

}  // namespace muxio::test
