// The receiving half of a socket on the completion path: one multishot
// receive into the reactor's provided buffers, the buffers it filled queued
// in order until the owner consumes them. Shared by the coroutine streams
// and the callback transport. Private to lib/.
//
// Back-pressure: the receive is cancelled while the queue holds
// `queue_limit` buffers or more, or while the owner paused it, and started
// again once the owner consumed below that. A receive the kernel ended for
// want of buffers (the ring ran dry: -ENOBUFS, nothing lost, the bytes stay
// in the socket) starts again when the ring has buffers back. A receive that
// ends for any other reason than the end of the stream or an error is
// started again too (the kernel may end a multishot request at will).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

#include "selector/completion_ring.hpp"

namespace muxio::detail {

class CompletionReceiver {
public:
    /// Buffers queued at which the receive is cancelled (4 KiB each).
    static constexpr std::size_t queue_limit = 16;

    /// `notify(owner)` runs, from the ring's dispatch, whenever data was
    /// queued or the stream ended (see ended()). Nothing starts until start().
    CompletionReceiver(CompletionRing& ring, int fd, void (*notify)(void* owner), void* owner) noexcept
        : ring_{&ring}, fd_{fd}, notify_{notify}, owner_{owner} {}
    CompletionReceiver(const CompletionReceiver&) = delete;
    CompletionReceiver& operator=(const CompletionReceiver&) = delete;
    /// Detaches the operations and gives the queued buffers back.
    ~CompletionReceiver() { release(); }

    /// Wants data: starts the receive unless it runs, the queue is full,
    /// the stream ended or the ring is gone. Throws std::system_error when
    /// the ring refuses the request (nothing changed).
    void start();
    /// Wants no more data for now: cancels the receive. What the kernel
    /// delivers before the cancellation lands is still queued.
    void pause() noexcept;
    /// Whether the owner wants data (start() without pause() since).
    [[nodiscard]] bool wanted() const noexcept { return wanted_; }

    /// The oldest queued bytes not consumed, empty when none are queued.
    [[nodiscard]] std::span<const std::byte> front() const noexcept;
    /// Marks `count` bytes of front() consumed; a buffer consumed whole goes
    /// back to the ring. Starts the receive again when it was stopped for
    /// the queue's sake and the owner still wants data.
    void consume(std::size_t count);
    /// Copies queued bytes into `out` and consumes them; returns how many.
    std::size_t read(std::span<std::byte> out);
    /// Bytes queued and not consumed.
    [[nodiscard]] std::size_t queued_bytes() const noexcept { return queued_bytes_; }

    /// True once the stream ended: the peer's end (error() clear) or an
    /// error. Queued bytes still come first: the owner reads them, then acts
    /// on the end.
    [[nodiscard]] bool ended() const noexcept { return ended_; }
    /// The error that ended the stream; clear for the peer's end.
    [[nodiscard]] std::error_code error() const noexcept { return error_; }

    /// Detaches what runs and gives the queued buffers back; afterwards the
    /// receiver does nothing. For a socket being closed. Idempotent. With
    /// `wait`, waits until the kernel ended the receive (one io_uring_enter):
    /// the receive holds the socket open, so without it the peer sees the
    /// close only with the loop's next wait.
    void release(bool wait = false) noexcept;
    /// The reactor closed its ring: forget it without touching it (its
    /// buffers are gone with it). Afterwards the receiver does nothing.
    void forget_ring() noexcept;

private:
    struct Chunk {
        std::uint16_t buffer;
        std::uint32_t length;
        std::uint32_t offset;
    };

    static void on_receive(void* context, std::int32_t result, std::uint32_t flags);
    static void on_buffers(void* context, std::int32_t result, std::uint32_t flags);
    void arm();
    void finish(std::error_code error) noexcept;

    CompletionRing* ring_;
    int fd_;
    void (*notify_)(void*);
    void* owner_;
    OperationId receiving_ = 0;
    OperationId waiting_for_buffers_ = 0;
    std::vector<Chunk> chunks_;  // queued in order, from `head_`
    std::size_t head_ = 0;
    std::size_t queued_bytes_ = 0;
    std::error_code error_;
    bool wanted_ = false;
    bool ended_ = false;
};

}  // namespace muxio::detail
