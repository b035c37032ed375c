// The stream sockets of include/muxio/net.hpp. On a readiness selector
// every operation is the asyncio sock_* pattern: the system call first, a
// wait for readiness through the socket's watch only when it would block.
// On a reactor with a completion ring (io_uring) reads take what the
// stream's multishot receive queued and writes are sends submitted to the
// ring, so a loop iteration makes no read or write system call of its own.
#include "muxio/net.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "muxio/detail/resume_loop.hpp"
#include "muxio/error.hpp"

#include "net/completion_receiver.hpp"
#include "net/socket_ops.hpp"
#include "reactor/completions.hpp"

namespace muxio {

namespace detail {

// The completion path's state of one stream: its receive, its pending read
// and the send in flight, made by the stream's first operation on a reactor
// with a completion ring. On the heap, so that a stream on readiness pays
// one pointer for it and a move of the stream moves nothing the ring or the
// receive point to.
class StreamCompletions : private CloseHook {
public:
    StreamCompletions(Reactor& reactor, CompletionRing& ring, int fd) noexcept
        : receiver{ring, fd, &on_data, this},
          receive_on_ring{ring.features().receive},
          ring_{&ring},
          generation_{fork_generation.load(std::memory_order_relaxed)} {
        hook(reactor, Phase::late, &on_reactor_close);
    }
    StreamCompletions(const StreamCompletions&) = delete;
    StreamCompletions& operator=(const StreamCompletions&) = delete;
    ~StreamCompletions() {
        if (usable_ring() == nullptr) {
            receiver.forget_ring();  // the receiver's destructor must not touch it
        }
    }

    // The ring, unless the reactor closed it or this is a forked child,
    // whose ring is the parent's.
    [[nodiscard]] CompletionRing* usable_ring() const noexcept {
        return ring_ != nullptr && fork_generation.load(std::memory_order_relaxed) == generation_ ? ring_ : nullptr;
    }

    // Ends what waits on the ring for the socket's close: see
    // StreamSocket::end_completions().
    void end() noexcept;

    CompletionReceiver receiver;
    StreamIo* reader = nullptr;   // the read waiting for bytes
    StreamIo* sender = nullptr;   // the write whose send is in flight
    bool receive_on_ring;         // reads run on the ring (features().receive)
    bool error_reported = false;  // the receive's error was thrown once; then reads see the end

private:
    static void on_data(void* owner) {
        auto& self = *static_cast<StreamCompletions*>(owner);
        if (StreamIo* waiting = self.reader) {
            waiting->on_ring_data();  // may close or destroy the stream: the last thing here
        }
    }
    // Late: the spawned frames are gone (their operations detached); what
    // is left stays suspended, and the ring's close waits for the sends.
    static void on_reactor_close(CloseHook& hook) noexcept {
        auto& self = static_cast<StreamCompletions&>(hook);
        CompletionRing* const ring = self.usable_ring();
        for (StreamIo* io : {std::exchange(self.reader, nullptr), std::exchange(self.sender, nullptr)}) {
            if (io != nullptr) {
                io->stop_listening_on_ring();
                if (io->operation_ != 0 && ring != nullptr) {
                    ring->detach(io->operation_);
                }
                io->operation_ = 0;
                io->ring_waiting_ = false;
            }
        }
        if (ring != nullptr) {
            self.receiver.release();
        } else {
            self.receiver.forget_ring();
        }
        self.ring_ = nullptr;
    }

    CompletionRing* ring_;
    std::uint64_t generation_;  // fork_generation when made
};

void StreamCompletions::end() noexcept {
    CompletionRing* const ring = usable_ring();
    if (StreamIo* io = std::exchange(sender, nullptr)) {
        io->stop_listening_on_ring();
        if (io->operation_ != 0 && ring != nullptr) {
            ring->detach_and_wait(io->operation_);  // the caller's buffer is the kernel's until then
        }
        io->operation_ = 0;
        io->ring_waiting_ = false;
        io->on_watch_ = false;  // end_queued_writes() ends it
    }
    if (StreamIo* io = std::exchange(reader, nullptr)) {
        io->stop_listening_on_ring();
        io->ring_waiting_ = false;
        io->end_from_queue(nullptr);  // Cancelled, in the next iteration
    }
    if (ring != nullptr) {
        // Waits for the receive's end: it holds the socket open, and the
        // peer would otherwise see the close only with the loop's next wait.
        receiver.release(true);
    } else {
        receiver.forget_ring();
    }
    unhook();
}

}  // namespace detail

// ----- Socket -----------------------------------------------------------------------

Socket& Socket::operator=(Socket&& other) noexcept {
    if (this != &other) {
        close();
        watch_ = std::move(other.watch_);
    }
    return *this;
}

void Socket::close() noexcept {
    // Registrations go first: once closed, the number may be reused by
    // another descriptor whose registrations must not be touched. The watch
    // removes its own and cancels a pending await; a detached one (its
    // reactor closed) has nothing left to remove.
    Reactor* const reactor = watch_.reactor();
    const int fd = watch_.release();
    if (fd < 0) {
        return;
    }
    if (reactor != nullptr) {
        try {
            reactor->remove_reader(fd);
            reactor->remove_writer(fd);
        } catch (...) {
            // A kernel refusing to drop the fd (closing it drops it from
            // epoll anyway), or a forked child, whose reactor leaves the
            // registrations it shares with the parent alone.
        }
    }
    // Linux releases the descriptor even when close() reports EINTR, so it
    // is never retried.
    ::close(fd);
}

int Socket::release() noexcept {
    return watch_.release();
}

SocketAddress Socket::local_address() const {
    require_open("local_address");
    SocketAddress address;
    socklen_t size = SocketAddress::capacity();
    if (::getsockname(fileno(), address.data(), &size) != 0) {
        throw_system_error(errno, "getsockname", fileno());
    }
    address.resize(std::min(size, SocketAddress::capacity()));
    return address;
}

void Socket::refuse_closed(std::string_view operation) const {
    throw std::logic_error(fmt::format("{}: {} is closed", operation, watch_.detached() ? "reactor" : "socket"));
}

// ----- StreamSocket -------------------------------------------------------------------

StreamSocket::StreamSocket(StreamSocket&& other) noexcept
    : Socket{std::move(other)},
      drained_{std::exchange(other.drained_, false)},
      no_completions_{std::exchange(other.no_completions_, false)},
      write_error_{std::exchange(other.write_error_, 0)},
      write_head_{std::exchange(other.write_head_, nullptr)},
      write_tail_{std::exchange(other.write_tail_, nullptr)},
      completions_{std::exchange(other.completions_, nullptr)},
      peer_{other.peer_} {
    for (detail::StreamIo* write = write_head_; write != nullptr; write = write->next_) {
        write->socket_ = this;
    }
}

StreamSocket& StreamSocket::operator=(StreamSocket&& other) noexcept {
    if (this != &other) {
        close();
        Socket::operator=(std::move(other));
        drained_ = std::exchange(other.drained_, false);
        no_completions_ = std::exchange(other.no_completions_, false);
        write_error_ = std::exchange(other.write_error_, 0);
        write_head_ = std::exchange(other.write_head_, nullptr);
        write_tail_ = std::exchange(other.write_tail_, nullptr);
        completions_ = std::exchange(other.completions_, nullptr);
        peer_ = other.peer_;
        for (detail::StreamIo* write = write_head_; write != nullptr; write = write->next_) {
            write->socket_ = this;
        }
    }
    return *this;
}

void StreamSocket::close() noexcept {
    end_completions();
    end_queued_writes();
    Socket::close();
}

int StreamSocket::release() noexcept {
    end_completions();
    end_queued_writes();
    no_completions_ = false;
    return Socket::release();
}

void StreamSocket::end_completions() noexcept {
    if (completions_ != nullptr) [[unlikely]] {
        completions_->end();
        delete std::exchange(completions_, nullptr);
    }
}

bool StreamSocket::receiving_on_ring() const noexcept {
    return completions_ != nullptr && completions_->receiver.wanted();
}

bool StreamSocket::uses_completions() const noexcept {
    if (completions_ != nullptr) {
        return completions_->usable_ring() != nullptr;
    }
    if (no_completions_ || !is_open()) {
        return false;
    }
    return detail::ReactorCompletions::ring(reactor()) != nullptr;
}

detail::StreamCompletions* StreamSocket::completions(std::string_view operation) {
    if (completions_ != nullptr) [[likely]] {
        if (completions_->usable_ring() == nullptr) [[unlikely]] {
            reactor().require_usable(operation);  // a forked child: the fork error
        }
        return completions_;
    }
    Reactor& owner = reactor();
    detail::CompletionRing* const ring = detail::ReactorCompletions::ring(owner);
    if (ring == nullptr) {
        no_completions_ = true;
        return nullptr;
    }
    owner.require_usable(operation);  // the ring is the loop thread's
    completions_ = new detail::StreamCompletions{owner, *ring, fileno()};
    return completions_;
}

void StreamSocket::end_queued_writes() noexcept {
    detail::StreamIo* write = std::exchange(write_head_, nullptr);
    write_tail_ = nullptr;
    write_error_ = 0;
    while (write != nullptr) {
        detail::StreamIo* const next = std::exchange(write->next_, nullptr);
        write->queued_ = false;
        // The head waits on the watch, which the close ends with Cancelled;
        // the others are parked, or have not suspended yet.
        if (!write->on_watch_) {
            write->end_from_queue(nullptr);
        }
        write = next;
    }
}

void StreamSocket::fail(int errnum, std::string_view verb) const {
    if (peer_.family() == AF_UNSPEC) {
        throw_system_error(errnum, verb, fileno());
    }
    throw_system_error(errnum, fmt::format("{} {}", verb, peer_), fileno());
}

std::optional<std::size_t> StreamSocket::try_read(std::span<std::byte> buffer, std::error_code& error) noexcept {
    if (completions_ != nullptr && completions_->receiver.wanted() && is_open()) [[unlikely]] {
        // The receive runs: what it queued comes first, and a recv() now
        // could take bytes that arrived after those it has yet to hand over.
        detail::CompletionReceiver& receiver = completions_->receiver;
        error.clear();
        if (buffer.empty()) {
            return 0;
        }
        try {
            if (const std::size_t got = receiver.read(buffer); got > 0) {
                return got;
            }
        } catch (...) {
            error = detail::errno_code(ENOMEM);
            return std::nullopt;
        }
        if (!receiver.ended()) {
            return std::nullopt;  // would block
        }
        if (receiver.error() && !std::exchange(completions_->error_reported, true)) {
            error = receiver.error();
            return std::nullopt;
        }
        return 0;
    }
    return detail::transfer(error, [&] { return ::recv(fileno(), buffer.data(), buffer.size(), 0); });
}

std::optional<std::size_t> StreamSocket::try_write(std::span<const std::byte> buffer, std::error_code& error) noexcept {
    return detail::transfer(error, [&] { return ::send(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL); });
}

// ----- StreamIo -----------------------------------------------------------------------

namespace detail {

namespace {

std::string_view operation_name(StreamIo::Op op) noexcept {
    switch (op) {
        case StreamIo::Op::read_some:
            return "read_some";
        case StreamIo::Op::read_exact:
            return "read_exact";
        case StreamIo::Op::write_some:
            return "write_some";
        case StreamIo::Op::write_all:
            return "write_all";
    }
    return "stream operation";
}

// What a failed write's message starts with.
std::string write_failure(const StreamSocket& socket, int errnum) {
    const SocketAddress& peer = socket.peer_address();
    std::string what = peer.family() == AF_UNSPEC ? std::string{"write"} : fmt::format("write to {}", peer);
    if (errnum == ECANCELED) {
        what += " (an earlier write was cancelled part-way through its message)";
    }
    return what;
}

}  // namespace

bool StreamIo::await_ready() {
    if (awaited_) [[unlikely]] {
        throw std::logic_error(fmt::format("{}: a stream operation can be awaited once", operation_name(op_)));
    }
    awaited_ = true;
    socket_->require_open(operation_name(op_));
    if (!socket_->no_completions_) {
        if (StreamCompletions* completions = socket_->completions(operation_name(op_))) {
            if (!reading() || completions->receive_on_ring) {
                return ready_on_ring(*completions);
            }
        }
    }
    if (reading()) {
        // After a read that emptied the socket, a read now would most likely
        // fail with EAGAIN: a wasted system call per message in a
        // request-response exchange. Readiness comes first then; if data did
        // arrive meanwhile, the wait ends in the next iteration.
        if (socket_->drained_ && !read_buffer_.empty()) {
            socket_->drained_ = false;
            return false;
        }
        return attempt();
    }
    StreamSocket& socket = *socket_;
    if (socket.write_error_ != 0) [[unlikely]] {
        error_ = socket.write_error_;
        return true;
    }
    if (socket.write_head_ == nullptr) [[likely]] {
        if (attempt()) {
            if (error_ != 0) {
                socket.write_error_ = error_;
            }
            return true;
        }
    }
    // Behind other writes, or the head that waits for room.
    join_write_queue(socket);
    return false;
}

bool StreamIo::is_head() const noexcept {
    return socket_->write_head_ == this;
}

ReactorWait& StreamIo::wait_in_queue() {
    ReactorWait& wait =
        wait_.construct(socket_->reactor(), ReactorWait::Kind::parked, -1, Reactor::TimePoint{}, token_);
    armed_ = true;
    return wait;
}

std::size_t StreamIo::finish_queued() {
    bool cancelled = false;
    if (armed_) {
        try {
            wait_->await_resume();
        } catch (const Cancelled&) {
            cancelled = true;
        }
    }
    if (queued_) {
        leave_queue(cancelled);
    }
    if (failure_) {
        std::rethrow_exception(failure_);
    }
    if (cancelled || ended_in_queue_) {
        throw Cancelled{};
    }
    if (error_ != 0) {
        fail();
    }
    return done_;
}

void StreamIo::leave_queue(bool cancelled) noexcept {
    StreamSocket& socket = *socket_;
    queued_ = false;
    on_watch_ = false;
    if (cancelled && done_ > 0 && done_ < write_buffer_.size()) {
        socket.write_error_ = ECANCELED;  // a truncated message is out
    } else if (!cancelled && error_ != 0) {
        socket.write_error_ = error_;
    }
    // Unlinks this write: a few pointers, the queue being short.
    StreamIo* previous = nullptr;
    for (StreamIo* write = socket.write_head_; write != nullptr; previous = write, write = write->next_) {
        if (write == this) {
            (previous == nullptr ? socket.write_head_ : previous->next_) = next_;
            if (socket.write_tail_ == this) {
                socket.write_tail_ = previous;
            }
            break;
        }
    }
    next_ = nullptr;
    while (socket.write_head_ != nullptr && !socket.write_head_->on_watch_) {
        if (socket.write_head_->handle_ == nullptr) {
            break;  // the new head has not suspended yet: its await_suspend arms it
        }
        (void)socket.write_head_->start_as_head();
    }
}

bool StreamIo::start_as_head() noexcept {
    StreamSocket& socket = *socket_;
    if (armed_) {
        wait_.destroy();  // the parked wait, with its stop callbacks and any cancellation posted
        armed_ = false;
    }
    if (socket.watch_.reactor() == nullptr) {
        // The reactor is closed: nothing resumes anything. The queue stays,
        // for the owners of the frames to destroy.
        on_watch_ = true;
        return false;
    }
    if (socket.write_error_ != 0) {
        unlink_head();
        end_from_queue(std::make_exception_ptr(
            make_system_error(socket.write_error_, write_failure(socket, socket.write_error_), socket.fileno())));
        return false;
    }
    if (on_ring_) {
        try {
            if (start_on_ring()) {
                return true;
            }
        } catch (...) {
            // The ring refused the send: ends as cancelled below, as a
            // refused registration does.
        }
        unlink_head();
        end_from_queue(nullptr);
        return false;
    }
    try {
        arm();
        on_watch_ = true;
        if (resume_as_head_(*this)) {
            return true;
        }
        // A stop was requested already: nothing was registered.
    } catch (...) {
        // The watch refused (another task waits for writability, or the
        // socket is closed): ends as cancelled below.
    }
    on_watch_ = false;
    if (armed_) {
        wait_.destroy();
        armed_ = false;
    }
    unlink_head();
    end_from_queue(nullptr);
    return false;
}

void StreamIo::unlink_head() noexcept {
    StreamSocket& socket = *socket_;
    socket.write_head_ = std::exchange(next_, nullptr);
    if (socket.write_head_ == nullptr) {
        socket.write_tail_ = nullptr;
    }
    queued_ = false;
}

void StreamIo::end_from_queue(std::exception_ptr failure) noexcept {
    queued_ = false;
    ended_in_queue_ = true;
    failure_ = std::move(failure);
    Reactor* const reactor = socket_->watch_.reactor();
    if (armed_ && reactor != nullptr) {
        // Parked behind the writes ahead: woken into the next iteration (or
        // cancelled there, if a stop request came first).
        try {
            (void)wait_->wake();
            return;
        } catch (...) {
            // Out of memory for the callback: still parked; tried once more below.
        }
    }
    if (armed_) {
        wait_.destroy();
        armed_ = false;
    }
    if (reactor == nullptr || handle_ == nullptr) {
        return;  // a closed reactor resumes nothing
    }
    try {
        ReactorWait& wait =
            wait_.construct(*reactor, ReactorWait::Kind::soon, -1, Reactor::TimePoint{}, std::stop_token{});
        armed_ = true;
        // No stop token here (a plain handle has no promise): it resumes.
        (void)wait.await_suspend(std::coroutine_handle<>::from_address(handle_));
    } catch (...) {
        // The reactor is closing: the frame is its owner's to destroy.
        if (armed_) {
            wait_.destroy();
            armed_ = false;
        }
    }
}

ReactorWait& StreamIo::arm() {
    const auto kind = reading() ? ReactorWait::Kind::read : ReactorWait::Kind::write;
    ReactorWait& wait = wait_.construct(kind, socket_->watch_, std::move(token_), &attempt_on_ready, this);
    armed_ = true;
    return wait;
}

bool StreamIo::attempt() noexcept {
    const int fd = socket_->fileno();
    switch (op_) {
        case Op::read_some: {
            const ssize_t got =
                detail::transfer_errno(error_, [&] { return ::recv(fd, read_buffer_.data(), read_buffer_.size(), 0); });
            if (got >= 0) {
                done_ = static_cast<std::size_t>(got);
                socket_->drained_ = done_ < read_buffer_.size();
                return true;
            }
            break;
        }
        case Op::read_exact:
            while (done_ < read_buffer_.size()) {
                const std::span<std::byte> rest = read_buffer_.subspan(done_);
                const ssize_t got =
                    detail::transfer_errno(error_, [&] { return ::recv(fd, rest.data(), rest.size(), 0); });
                if (got < 0) {
                    break;
                }
                if (got == 0) {
                    end_of_stream_ = true;
                    return true;
                }
                done_ += static_cast<std::size_t>(got);
                if (done_ < read_buffer_.size()) {
                    return false;  // the socket is empty: wait rather than fail a read
                }
            }
            if (done_ == read_buffer_.size()) {
                return true;
            }
            break;
        case Op::write_some: {
            const ssize_t sent = detail::transfer_errno(
                error_, [&] { return ::send(fd, write_buffer_.data(), write_buffer_.size(), MSG_NOSIGNAL); });
            if (sent >= 0) {
                done_ = static_cast<std::size_t>(sent);
                return true;
            }
            break;
        }
        case Op::write_all:
            while (done_ < write_buffer_.size()) {
                const std::span<const std::byte> rest = write_buffer_.subspan(done_);
                const ssize_t sent =
                    detail::transfer_errno(error_, [&] { return ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL); });
                if (sent < 0) {
                    break;
                }
                done_ += static_cast<std::size_t>(sent);
                if (done_ < write_buffer_.size()) {
                    return false;  // the send buffer is full: wait rather than fail a write
                }
            }
            if (done_ == write_buffer_.size()) {
                return true;
            }
            break;
    }
    return error_ != 0;  // failed, or would block
}

void StreamIo::join_write_queue(StreamSocket& socket) noexcept {
    queued_ = true;
    if (socket.write_tail_ == nullptr) {
        socket.write_head_ = this;
    } else {
        socket.write_tail_->next_ = this;
    }
    socket.write_tail_ = this;
}

// ----- StreamIo on the completion ring -------------------------------------------

bool StreamIo::ready_on_ring(StreamCompletions& completions) {
    on_ring_ = true;
    StreamSocket& socket = *socket_;
    if (reading()) {
        if (completions.reader != nullptr) {
            throw std::logic_error(fmt::format("{}: fd {} already has a waiting reader (is another task reading it?)",
                                               operation_name(op_), socket.fileno()));
        }
        if (read_buffer_.empty()) {
            return true;
        }
        completions.receiver.start();
        return read_from_ring();
    }
    if (socket.write_error_ != 0) [[unlikely]] {
        error_ = socket.write_error_;
        return true;
    }
    if (socket.write_head_ == nullptr && write_buffer_.empty()) {
        return true;
    }
    // The head submits its send in await_suspend(), once it knows the
    // awaiting task's stop token; the others wait for their turn.
    join_write_queue(socket);
    return false;
}

bool StreamIo::read_from_ring() noexcept {
    StreamCompletions& completions = *socket_->completions_;
    CompletionReceiver& receiver = completions.receiver;
    try {
        done_ += receiver.read(read_buffer_.subspan(done_));
    } catch (...) {
        error_ = ENOMEM;  // the receive could not start again
        return true;
    }
    if (op_ == Op::read_some ? done_ > 0 : done_ == read_buffer_.size()) {
        return true;
    }
    if (!receiver.ended()) {
        return false;
    }
    // As recv() reports them: an error once, then the end of the stream.
    if (receiver.error() && !completions.error_reported) {
        completions.error_reported = true;
        error_ = receiver.error().value();
    } else if (op_ == Op::read_exact) {
        end_of_stream_ = true;
    }
    return true;
}

bool StreamIo::start_on_ring() {
    if (ended_in_queue_) [[unlikely]] {
        return false;
    }
    if (token_.stop_requested() || ambient_.stop_requested()) {
        ring_cancelled_ = true;
        return false;  // resumes at once and throws Cancelled; nothing was sent
    }
    StreamCompletions& completions = *socket_->completions_;
    if (reading()) {
        completions.reader = this;
        ring_waiting_ = true;
    } else {
        submit_send();
        on_watch_ = true;  // the head, busy: leave_queue() starts no other
    }
    listen_for_ring_stop();
    return true;
}

void StreamIo::submit_send() {
    StreamCompletions& completions = *socket_->completions_;
    CompletionRing* const ring = completions.usable_ring();
    if (ring == nullptr) {
        socket_->reactor().require_usable(operation_name(op_));
        throw std::logic_error(fmt::format("{}: reactor is closed", operation_name(op_)));
    }
    const int fd = socket_->fileno();
    operation_ = ring->send(fd, write_buffer_.subspan(done_), {&StreamIo::on_sent, this, fd});
    completions.sender = this;
    ring_waiting_ = true;
}

void StreamIo::on_sent(void* context, std::int32_t result, std::uint32_t /*flags*/) {
    auto& self = *static_cast<StreamIo*>(context);
    self.operation_ = 0;
    self.socket_->completions_->sender = nullptr;
    if (result >= 0) {
        self.done_ += static_cast<std::size_t>(result);
        if (self.op_ == Op::write_all && self.done_ < self.write_buffer_.size()) {
            if (self.ring_cancelling_) {
                self.ring_cancelled_ = true;  // part of the message is out: the write side breaks
            } else {
                // A partial send: the rest goes in the next submission.
                try {
                    self.submit_send();
                    return;
                } catch (const std::system_error& error) {
                    self.error_ = error.code().category() == std::system_category() ? error.code().value() : EIO;
                } catch (...) {
                    self.error_ = ENOMEM;
                }
            }
        }
    } else if (result == -ECANCELED && self.ring_cancelling_) {
        self.ring_cancelled_ = true;
    } else {
        self.error_ = -result;
    }
    self.resume_from_ring();
}

void StreamIo::on_ring_data() noexcept {
    if (read_from_ring()) {
        socket_->completions_->reader = nullptr;
        resume_from_ring();
    }
}

void StreamIo::resume_from_ring() noexcept {
    ring_waiting_ = false;
    stop_listening_on_ring();
    // The resumed task's exceptions stay in its frame; a noexcept callback
    // of the ring is where muxio resumes coroutines from, as the reactor's.
    ResumeLoop::run(std::coroutine_handle<>::from_address(handle_));
}

std::size_t StreamIo::finish_on_ring() {
    bool cancelled = ring_cancelled_;
    if (armed_) {
        try {
            wait_->await_resume();  // parked behind other writes, or ended from the queue
        } catch (const Cancelled&) {
            cancelled = true;
        }
    }
    if (queued_) {
        leave_queue(cancelled);
    }
    if (failure_) {
        std::rethrow_exception(failure_);
    }
    if (cancelled || ended_in_queue_) {
        throw Cancelled{};
    }
    if (error_ != 0 || end_of_stream_) [[unlikely]] {
        fail();
    }
    return done_;
}

void StreamIo::listen_for_ring_stop() {
    if (token_.stop_possible()) {
        on_token_stop_.construct(token_, RingStop{this});
        token_stop_alive_ = true;
    }
    if (ambient_.stop_possible()) {
        on_ambient_stop_.construct(ambient_, RingStop{this});
        ambient_stop_alive_ = true;
    }
}

void StreamIo::stop_listening_on_ring() noexcept {
    // Destroying a stop_callback waits for it if it runs on another thread.
    if (token_stop_alive_) {
        token_stop_alive_ = false;
        on_token_stop_.destroy();
    }
    if (ambient_stop_alive_) {
        ambient_stop_alive_ = false;
        on_ambient_stop_.destroy();
    }
    if (stop_posted_) {
        *stop_posted_ = false;
    }
}

void StreamIo::on_ring_stop() noexcept {
    if (ring_stop_seen_.exchange(true)) {
        return;
    }
    // Any thread: the ring is the loop's, so the loop cancels. Written
    // before the post, read on the loop thread after it, or after the
    // callback's destruction waited for this call.
    Reactor* const reactor = socket_->watch_.reactor();
    if (reactor == nullptr) {
        return;
    }
    stop_posted_ = std::make_shared<bool>(true);
    try {
        reactor->call_soon_threadsafe([this, still_waiting = stop_posted_] {
            if (*still_waiting) {
                on_ring_stop_posted();
            }
        });
    } catch (...) {
        // The reactor is closed: nothing resumes the coroutine any more.
    }
}

void StreamIo::on_ring_stop_posted() noexcept {
    *stop_posted_ = false;
    if (!ring_waiting_) {
        return;
    }
    StreamCompletions& completions = *socket_->completions_;
    if (reading()) {
        // No kernel operation is the read's: the bytes stay queued for the next one.
        completions.reader = nullptr;
        ring_cancelled_ = true;
        resume_from_ring();
        return;
    }
    // The kernel may be reading the buffer: the send's final completion resumes.
    if (operation_ != 0 && !ring_cancelling_) {
        ring_cancelling_ = true;
        if (CompletionRing* const ring = completions.usable_ring()) {
            ring->cancel(operation_);
        }
    }
}

void StreamIo::leave_ring() noexcept {
    stop_listening_on_ring();
    if (!ring_waiting_) {
        return;
    }
    ring_waiting_ = false;
    StreamCompletions& completions = *socket_->completions_;
    if (completions.reader == this) {
        completions.reader = nullptr;
    }
    if (operation_ != 0) {
        if (CompletionRing* const ring = completions.usable_ring()) {
            ring->detach_and_wait(operation_);
        }
        operation_ = 0;
        completions.sender = nullptr;
    }
}

void StreamIo::fail() const {
    if (error_ != 0) {
        if (!reading()) {
            throw_system_error(error_, write_failure(*socket_, error_), socket_->fileno());
        }
        socket_->fail(error_, "read from");
    }
    const SocketAddress& peer = socket_->peer_address();
    const std::string from = peer.family() == AF_UNSPEC ? std::string{} : " from " + peer.to_string();
    throw IncompleteRead{fmt::format("read_exact{} on fd {}: end of stream after {} of {} bytes", from,
                                     socket_->fileno(), done_, read_buffer_.size()),
                         done_, read_buffer_.size()};
}

}  // namespace detail

void StreamSocket::shutdown(ShutdownHow how) {
    require_open("shutdown");
    const int mode = how == ShutdownHow::read ? SHUT_RD : how == ShutdownHow::write ? SHUT_WR : SHUT_RDWR;
    if (::shutdown(fileno(), mode) != 0) {
        fail(errno, "shutdown");
    }
}

// ----- TcpStream ----------------------------------------------------------------------

Task<TcpStream> TcpStream::connect(Reactor& reactor, SocketAddress address, std::stop_token token) {
    reactor.require_usable("TcpStream::connect");
    detail::require_ip(address, "TcpStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    TcpStream stream{reactor, detail::open_socket(address.family(), SOCK_STREAM), address};
    if (detail::start_connect(stream.fileno(), address)) {
        // On cancellation `stream` closes the half-open socket as the frame unwinds.
        co_await stream.writable(token);
        detail::finish_connect(stream.fileno(), address);
    }
    co_return std::move(stream);
}

Task<TcpStream> TcpStream::connect(Reactor& reactor, std::string host, std::uint16_t port, std::stop_token token) {
    const std::vector<SocketAddress> addresses = co_await muxio::resolve(reactor, host, port, ResolveHints{}, token);
    int last_error = EHOSTUNREACH;  // only if the resolver returned nothing, which getaddrinfo never does
    for (const SocketAddress& address : addresses) {
        try {
            co_return co_await connect(reactor, address, token);
        } catch (const std::system_error& error) {
            if (error.code().category() != std::system_category()) {
                throw;
            }
            last_error = error.code().value();
        }
    }
    throw_system_error(last_error, fmt::format("connect {}:{} (tried {})", host, port, fmt::join(addresses, ", ")));
}

Task<TcpStream> TcpStream::connect(Reactor& reactor, SocketAddress address, std::error_code& error,
                                   std::stop_token token) {
    reactor.require_usable("TcpStream::connect");
    detail::require_ip(address, "TcpStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    const int fd = detail::open_socket(address.family(), SOCK_STREAM, error);
    if (fd < 0) {
        co_return TcpStream{};
    }
    TcpStream stream{reactor, fd, address};
    if (detail::start_connect(fd, address, error)) {
        co_await stream.writable(token);
        detail::finish_connect(stream.fileno(), error);
    }
    if (error) {
        co_return TcpStream{};  // `stream` closes the half-open socket
    }
    co_return std::move(stream);
}

TcpStream TcpStream::adopt(Reactor& reactor, int fd) {
    reactor.require_usable("TcpStream::adopt");
    const SocketAddress peer = detail::prepare_adopted(fd, {AF_INET, AF_INET6}, "TcpStream");
    return TcpStream{reactor, fd, peer};
}

void TcpStream::set_nodelay(bool enabled) {
    require_open("set_nodelay");
    detail::set_option(fileno(), IPPROTO_TCP, TCP_NODELAY, enabled ? 1 : 0, "TCP_NODELAY");
}

bool TcpStream::nodelay() const {
    require_open("nodelay");
    return detail::get_option(fileno(), IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY") != 0;
}

// ----- UnixStream -----------------------------------------------------------------

Task<UnixStream> UnixStream::connect(Reactor& reactor, SocketAddress address, std::stop_token token) {
    reactor.require_usable("UnixStream::connect");
    detail::require_unix(address, "UnixStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    UnixStream stream{reactor, detail::open_socket(AF_UNIX, SOCK_STREAM), address};
    // A Unix connect completes or fails at once (EAGAIN: backlog full); the
    // wait is there for kernels that say EINPROGRESS all the same.
    if (detail::start_connect(stream.fileno(), address)) {
        co_await stream.writable(token);
        detail::finish_connect(stream.fileno(), address);
    }
    co_return std::move(stream);
}

Task<UnixStream> UnixStream::connect(Reactor& reactor, SocketAddress address, std::error_code& error,
                                     std::stop_token token) {
    reactor.require_usable("UnixStream::connect");
    detail::require_unix(address, "UnixStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    const int fd = detail::open_socket(AF_UNIX, SOCK_STREAM, error);
    if (fd < 0) {
        co_return UnixStream{};
    }
    UnixStream stream{reactor, fd, address};
    if (detail::start_connect(fd, address, error)) {
        co_await stream.writable(token);
        detail::finish_connect(stream.fileno(), error);
    }
    if (error) {
        co_return UnixStream{};
    }
    co_return std::move(stream);
}

std::pair<UnixStream, UnixStream> UnixStream::pair(Reactor& reactor) {
    reactor.require_usable("UnixStream::pair");
    std::array<int, 2> fds{-1, -1};
    if (::socketpair(AF_UNIX, SOCK_STREAM | detail::socket_flags, 0, fds.data()) != 0) {
        throw_system_error(errno, "socketpair(AF_UNIX, SOCK_STREAM)");
    }
    return {UnixStream{reactor, fds[0], detail::peer_of(fds[0])}, UnixStream{reactor, fds[1], detail::peer_of(fds[1])}};
}

UnixStream UnixStream::adopt(Reactor& reactor, int fd) {
    reactor.require_usable("UnixStream::adopt");
    const SocketAddress peer = detail::prepare_adopted(fd, {AF_UNIX}, "UnixStream");
    return UnixStream{reactor, fd, peer};
}

}  // namespace muxio
