// The completion side of an io_uring poller: socket operations submitted to
// the ring the reactor waits on, so that the receives and sends of a whole
// loop iteration reach the kernel, and their results come back, with the one
// io_uring_enter that waits. Private to lib/: the reactor dispatches what
// the poller reaped, the socket layer (coroutine streams, transports,
// listeners) starts operations.
//
// Contract:
//  - An operation names its target, a function and a context, and gets an
//    OperationId. The kernel carries the id (slot | generation), never a
//    pointer: a completion whose operation was detached is dropped, and the
//    provided buffer it may carry goes back to the ring.
//  - Submitting only queues: the request reaches the kernel with the next
//    wait, or earlier when the submission queue is full.
//  - A target runs once per completion, from dispatch(), on the reactor's
//    thread, never from inside a submitting call. A multishot operation
//    (receive, accept) runs its target until a completion without
//    more_flag; after that its id is spent.
//  - detach() forgets the target at once. Memory the kernel may still read
//    (a send's bytes) must stay until detach_and_wait() returns or the final
//    completion ran.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>

namespace muxio::detail {

/// Names one operation of a CompletionRing; 0 names none.
using OperationId = std::uint64_t;

/// What a completion is delivered to. `result` is the kernel's (a byte
/// count, a descriptor, or -errno), `flags` its CQE flags: see more_flag and
/// buffer_id(). Runs on the reactor's thread; what it throws is reported to
/// the reactor's exception handler as a reader of `fd`.
struct CompletionTarget {
    void (*function)(void* context, std::int32_t result, std::uint32_t flags) = nullptr;
    void* context = nullptr;
    int fd = -1;
};

/// Which operations the kernel supports, found once per process (see
/// completion_features()).
struct CompletionFeatures {
    /// Multishot receive into a ring of provided buffers (Linux 6.0).
    bool receive = false;
    /// Multishot accept (Linux 5.19).
    bool accept = false;
    /// Sends and cancellation by descriptor (Linux 5.19).
    bool send = false;
};

/// What completion_features() found, narrowed by `MUXIO_COMPLETIONS=off`
/// (none) and by set_completion_features_for_testing().
[[nodiscard]] CompletionFeatures completion_features() noexcept;
/// Narrows what completion_features() reports from now on, for tests that
/// force each fallback; nullptr restores the probed answer. Rings made
/// before keep what they were made with.
void set_completion_features_for_testing(const CompletionFeatures* features) noexcept;
/// Probes the kernel afresh, as completion_features() does once, on a
/// thread of its own: the probing ring's teardown signals every thread
/// that submitted to it, and a blocking call there would fail with EINTR.
/// Linux only (the io_uring selector); tests call it to check just that.
[[nodiscard]] CompletionFeatures probe_completion_features_on_own_thread() noexcept;

class CompletionRing {
public:
    /// Set in a completion's flags while the multishot operation goes on.
    static constexpr std::uint32_t more_flag = 1U << 1U;
    /// The provided buffer a receive completion filled, if it filled one.
    [[nodiscard]] static bool has_buffer(std::uint32_t flags) noexcept { return (flags & 1U) != 0; }
    [[nodiscard]] static std::uint16_t buffer_id(std::uint32_t flags) noexcept {
        return static_cast<std::uint16_t>(flags >> 16U);
    }

    CompletionRing() = default;
    CompletionRing(const CompletionRing&) = delete;
    CompletionRing& operator=(const CompletionRing&) = delete;

    [[nodiscard]] virtual const CompletionFeatures& features() const noexcept = 0;

    /// A multishot receive on `fd` into the provided buffers (features().receive).
    /// Each completion hands one buffer to the target, which owns it until it
    /// calls recycle(). -ENOBUFS ends the operation with nothing lost: the
    /// bytes stay in the socket; see wait_for_buffers(). Throws
    /// std::system_error when the ring cannot take the request, or the
    /// provided buffers cannot be set up (the first receive does it).
    virtual OperationId receive(int fd, CompletionTarget target) = 0;
    /// A send of `bytes`, which must stay valid until the completion ran or
    /// detach_and_wait() returned. MSG_NOSIGNAL: a vanished peer is -EPIPE.
    virtual OperationId send(int fd, std::span<const std::byte> bytes, CompletionTarget target) = 0;
    /// A multishot accept on listening `fd` (features().accept): each
    /// completion is a new descriptor, non-blocking and close-on-exec, or -errno.
    virtual OperationId accept(int fd, CompletionTarget target) = 0;
    /// Runs `target` once with result 0 after a buffer was recycled: how a
    /// receive that ended with -ENOBUFS knows when to start again.
    virtual OperationId wait_for_buffers(CompletionTarget target) = 0;

    /// Asks the kernel to end operation `id` early; its final completion
    /// still comes (-ECANCELED, or its result if it was done). Harmless for
    /// a spent id.
    virtual void cancel(OperationId id) noexcept = 0;
    /// cancel(), and the target is forgotten: nothing more runs for `id`.
    virtual void detach(OperationId id) noexcept = 0;
    /// detach(), then waits until the kernel is done with the operation, so
    /// that memory it reads may go. Completions of other operations reaped
    /// meanwhile are dispatched later, as usual.
    virtual void detach_and_wait(OperationId id) noexcept = 0;

    /// The bytes of provided buffer `id`, as a completion with `result`
    /// bytes filled it.
    [[nodiscard]] virtual std::span<const std::byte> buffer(std::uint16_t id, std::size_t length) const noexcept = 0;
    /// Gives provided buffer `id` back to the kernel (no system call).
    virtual void recycle(std::uint16_t id) noexcept = 0;

    /// Runs the targets of the completions reaped so far. `report` gets what
    /// a target threw, with its descriptor. Returns how many ran.
    virtual std::size_t dispatch(void (*report)(void* owner, std::exception_ptr error, int fd), void* owner) = 0;
    /// Whether completions wait for dispatch(): then the next wait must not block.
    [[nodiscard]] virtual bool has_completions() const noexcept = 0;
    /// Operations whose final completion has not been dispatched.
    [[nodiscard]] virtual std::size_t operations_in_flight() const noexcept = 0;

protected:
    ~CompletionRing() = default;
};

}  // namespace muxio::detail
