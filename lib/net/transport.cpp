// Transport of include/muxio/transport.hpp: a stream socket's reads, queued
// writes, timers and end, on the reactor's callbacks.
#include "muxio/transport.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "muxio/error.hpp"
#include "muxio/log.hpp"

#include "base/exception_code.hpp"
#include "net/completion_receiver.hpp"
#include "net/socket_ops.hpp"
#include "reactor/completions.hpp"

// A call into the protocol links a frame on the stack into frames_ and
// unlinks it when the call returns, unless the transport was destroyed
// meanwhile: then nothing of it may be touched, and the pointer is left
// behind in freed memory. GCC's optimiser cannot see that and warns.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif

namespace muxio {

namespace {

// A write queue that grew past this is freed once it drains, so a burst
// does not leave a connection holding megabytes; below it the storage is
// kept and reused.
constexpr std::size_t keep_queue_capacity = std::size_t{1} << 20U;
// The most one sendfile() call is asked for, so one connection's large file
// does not hold the loop.
constexpr std::uint64_t sendfile_chunk = std::uint64_t{1} << 20U;
// Buffers one writev() passes to sendmsg() at most; more are sent in turns.
constexpr std::size_t max_iovecs = 64;

std::error_code last_error(int errnum) noexcept {
    return {errnum, std::system_category()};
}

// The read buffer of a transport that has none from its protocol or server,
// out of line: read_buffer() is on every read's path.
[[gnu::noinline, gnu::cold]] std::unique_ptr<std::byte[]> allocate_read_buffer(std::size_t size) {
    return std::make_unique<std::byte[]>(size);
}

// Out of line, so that the throw does not weigh on the write paths.
[[noreturn, gnu::noinline, gnu::cold]] void throw_closing(const char* operation) {
    throw std::logic_error(fmt::format("{}: the transport is closing (close() or write_eof() was called)", operation));
}

// How much unread input a clean close reads and discards at most.
constexpr std::size_t close_drain_limit = std::size_t{64} * 1024;

// Reads and discards what `fd` has to read, up to close_drain_limit, without
// waiting. A socket closed with input unread makes the kernel reset the
// connection instead of ending it, and a reset can destroy what the peer has
// not read yet: the last answer before the close.
void discard_unread_input(int fd) noexcept {
    std::array<std::byte, std::size_t{16} * 1024> sink;  // filled, never looked at
    for (std::size_t taken = 0; taken < close_drain_limit;) {
        const ssize_t got = ::recv(fd, sink.data(), sink.size(), MSG_DONTWAIT);
        if (got > 0) {
            taken += static_cast<std::size_t>(got);
        } else if (got == 0 || errno != EINTR) {
            return;
        }
    }
}

// sendfile(2) to a socket whose peer is gone raises SIGPIPE, and unlike
// send() it has no MSG_NOSIGNAL: the signal is blocked around the call and
// one it raised is taken before the mask is restored. A SIGPIPE already
// pending is someone else's and left alone.
ssize_t sendfile_without_sigpipe(int socket, int file, off_t& offset, std::size_t count, int& errnum) noexcept {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    const bool was_pending = ::sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    sigset_t previous;
    const bool masked = !was_pending && ::pthread_sigmask(SIG_BLOCK, &pipe_only, &previous) == 0;
    const ssize_t sent = detail::transfer_errno(errnum, [&] { return ::sendfile(socket, file, &offset, count); });
    if (masked) {
        if (sent < 0 && errnum == EPIPE) {
            const timespec no_wait{};
            while (::sigtimedwait(&pipe_only, nullptr, &no_wait) < 0 && errno == EINTR) {
            }
        }
        (void)::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    }
    return sent;
}

}  // namespace

// The completion path's state: the receive, the send in flight and the bytes
// it reads, which stay put (the kernel reads them when the loop next enters
// it) while write() fills queue_.
struct Transport::Completions {
    Completions(detail::CompletionRing& on, int fd, Transport& owner) noexcept
        : ring{&on},
          receiver{on, fd, [](void* transport) { static_cast<Transport*>(transport)->on_received(); }, &owner},
          fork_generation{detail::fork_generation.load(std::memory_order_relaxed)} {}

    // In a child forked after the reactor was made the ring is the
    // parent's: nothing may be submitted to it from here.
    [[nodiscard]] bool forked_away() const noexcept {
        return detail::fork_generation.load(std::memory_order_relaxed) != fork_generation;
    }

    detail::CompletionRing* ring;  // null once released
    detail::CompletionReceiver receiver;
    detail::OperationId sending = 0;
    std::vector<std::byte> out;  // the send in flight reads out[out_head, ...)
    std::size_t out_head = 0;
    std::uint64_t fork_generation;
    bool delivering = false;   // data_received() has a provided buffer of the receiver's
    bool in_delivery = false;  // deliver_received() runs
};

void Transport::refuse_after_close(const char* operation) const {
    // A connection that close() or write_eof() ended cleanly still refuses;
    // one an error ended drops the bytes, as after any error.
    if (state_ < State::ended || !reason_) {
        throw_closing(operation);
    }
}

// ----- Construction and destruction -------------------------------------------

Transport::Transport(Reactor& reactor, int fd, Protocol& protocol, const TransportOptions& options, State state)
    : reactor_{&reactor},
      protocol_{&protocol},
      fd_{fd},
      state_{state},
      high_water_{options.high_water},
      low_water_{std::min(options.low_water, options.high_water)},
      read_size_{std::max<std::size_t>(options.read_size, 1)},
      idle_timeout_{std::max(options.idle_timeout, Duration::zero())} {
    reactor.require_usable("Transport");
    if (fd < 0) {
        throw std::invalid_argument("Transport: negative descriptor");
    }
    if (options.filter) {
        filter_ = options.filter();
        if (!filter_) {
            throw std::invalid_argument("Transport: the filter factory returned no filter");
        }
        handshake_timeout_ = std::max(options.handshake_timeout, Duration::zero());
    } else if (detail::CompletionRing* ring = detail::ReactorCompletions::ring(reactor);
               ring != nullptr && ring->features().receive) {
        completions_ = std::make_unique<Completions>(*ring, fd, *this);
    }
    indirect_ = filter_ != nullptr || completions_ != nullptr;
    hook_.owner = this;
    hook_.hook(reactor, detail::CloseHook::Phase::late, &Transport::reactor_closed);
}

Transport::Transport(Reactor& reactor, int fd, Protocol& protocol, TransportOptions options)
    : Transport{reactor, fd, protocol, options, State::starting} {
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ((flags & O_NONBLOCK) == 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)) {
        const int errnum = errno;
        fd_ = -1;  // the caller keeps it
        throw_system_error(errnum, "Transport: make non-blocking", fd);
    }
    peer_ = detail::peer_of(fd);
    try {
        soon_ = reactor.call_soon([this] { start(); });
    } catch (...) {
        fd_ = -1;
        throw;
    }
}

std::unique_ptr<Transport> Transport::connect(Reactor& reactor, const SocketAddress& address, Protocol& protocol,
                                              TransportOptions options) {
    reactor.require_usable("Transport::connect");
    if (!address.is_ipv4() && !address.is_ipv6() && !address.is_unix()) {
        throw std::invalid_argument(fmt::format("Transport::connect: {} is not an IP or Unix-domain address", address));
    }
    const int fd = detail::open_socket(address.family(), SOCK_STREAM);
    std::unique_ptr<Transport> transport;
    try {
        transport.reset(new Transport{reactor, fd, protocol, options, State::connecting});
    } catch (...) {
        ::close(fd);
        throw;
    }
    transport->connect_to_ = address;
    transport->peer_ = address;
    try {
        if (detail::start_connect(fd, address)) {
            transport->reactor_->add_writer(fd, [raw = transport.get()] { raw->on_writable(); });
            transport->writer_added_ = true;
        } else {
            transport->state_ = State::starting;
            transport->soon_ = reactor.call_soon([raw = transport.get()] { raw->start(); });
        }
    } catch (const std::system_error& error) {
        transport->finish(error.code());
    }
    return transport;
}

Transport::~Transport() {
    for (detail::TransportFrame* frame = frames_; frame != nullptr; frame = frame->previous) {
        frame->destroyed = true;
    }
    if (reactor_ != nullptr) {
        soon_.cancel();
        timer_.cancel();
    }
    if (completions_) {
        stop_completions(true);  // before the bytes of a send in flight go
    }
    release_descriptor();
    drop_queue();
}

void Transport::release_descriptor() noexcept {
    if (reactor_ != nullptr) {
        try {
            if (reader_added_) {
                reactor_->remove_reader(fd_);
            }
            if (writer_added_) {
                reactor_->remove_writer(fd_);
            }
        } catch (const std::logic_error&) {
            // A child forked after the reactor was made: the registrations
            // are the parent's too, and the reactor leaves them alone. Only
            // this process's copy of the descriptor is closed, below.
        } catch (...) {
            // The kernel would not change the registration (ENOMEM). Removing
            // it after the close cannot fail (EBADF is no error there), and
            // must happen: the callbacks point at this transport.
            const int fd = std::exchange(fd_, -1);
            ::close(fd);
            try {
                if (reader_added_) {
                    (void)reactor_->remove_reader(fd);
                }
                if (writer_added_) {
                    (void)reactor_->remove_writer(fd);
                }
            } catch (...) {
                logger().error("Transport: cannot remove the registrations of fd {}", fd);
            }
        }
    }
    reader_added_ = false;
    writer_added_ = false;
    if (fd_ >= 0) {
        ::close(std::exchange(fd_, -1));
    }
}

void Transport::reactor_closed(detail::CloseHook& hook) noexcept {
    Transport& self = *static_cast<Hook&>(hook).owner;
    if (self.completions_) {
        // The ring is still open: the operations go, and a send in flight is
        // waited for, since its bytes may go with connection_lost() below.
        self.stop_completions(true);
    }
    // The registrations and queued callbacks went with the reactor; the
    // handles must not be used any more.
    self.reactor_ = nullptr;
    self.reader_added_ = false;
    self.writer_added_ = false;
    self.soon_ = {};
    self.timer_ = {};
    if (self.state_ < State::ended) {
        self.state_ = State::ended;
        self.reason_ = std::make_error_code(std::errc::operation_canceled);
        self.release_descriptor();
        self.drop_queue();
    }
    if (self.state_ == State::ended) {
        try {
            (void)self.deliver_lost_now();
        } catch (const std::exception& error) {
            logger().error("Transport: connection_lost threw while the reactor closed: {}", error.what());
        } catch (...) {
            logger().error("Transport: connection_lost threw while the reactor closed");
        }
    }
}

// ----- Calls into the protocol ---------------------------------------------------

template <class Body>
bool Transport::call_protocol(Body&& body) {
    detail::TransportFrame frame{frames_, false};
    frames_ = &frame;
    try {
        body();
    } catch (...) {
        if (frame.destroyed) {
            throw;
        }
        frames_ = frame.previous;
        finish(std::make_error_code(std::errc::connection_aborted));
        throw;
    }
    if (frame.destroyed) {
        return false;
    }
    frames_ = frame.previous;
    if (frames_ == nullptr && lost_pending_) {
        // Called from one of the transport's methods, outside its callbacks:
        // the caller may go on using it, so the end is told later.
        lost_pending_ = false;
        schedule_lost();
    }
    return true;
}

template <class Body>
void Transport::dispatch(Body&& body) {
    detail::TransportFrame frame{frames_, false};
    frames_ = &frame;
    std::exception_ptr error;
    try {
        // A body that takes the frame calls the protocol without a frame of
        // its own and checks frame.destroyed after each call: what an
        // exception does then is what call_protocol() would do, below.
        if constexpr (std::is_invocable_v<Body, detail::TransportFrame&>) {
            body(frame);
        } else {
            body();
        }
    } catch (...) {
        error = std::current_exception();
    }
    if (frame.destroyed) {
        if (error) {
            std::rethrow_exception(error);
        }
        return;
    }
    if (error) {
        // In the frame, as call_protocol() does: connection_lost() comes
        // when the frame closes, before the exception goes on.
        finish(std::make_error_code(std::errc::connection_aborted));
    }
    frames_ = frame.previous;
    if (frames_ == nullptr && lost_pending_) {
        lost_pending_ = false;
        soon_.cancel();
        try {
            (void)deliver_lost_now();
        } catch (...) {
            if (!error) {
                throw;
            }
        }
    }
    if (error) {
        std::rethrow_exception(error);
    }
}

// ----- Starting ------------------------------------------------------------------

void Transport::start() {
    soon_ = {};
    dispatch([this] {
        if (state_ != State::starting) {
            return;
        }
        begin();
    });
}

void Transport::begin() {
    if (filter_ && !filter_ready_) [[unlikely]] {
        begin_handshake();
        return;
    }
    state_ = State::open;
    if (idle_timeout_ > Duration::zero()) {
        last_activity_ = reactor_->time();
        rearm_timer();
    }
    if (!call_protocol([this] { protocol_->connection_made(*this); }) || state_ != State::open) {
        return;
    }
    update_reader();
    if (state_ != State::open) {
        return;
    }
    if (write_buffer_size() == 0) {
        after_drain();
    } else if (!completions_) {
        add_writer();
    } else if (pump_completions()) {
        settle_writes();  // a file may have gone whole
    }
}

void Transport::on_connected() {
    try {
        detail::finish_connect(fd_, connect_to_);
    } catch (const std::system_error& error) {
        finish(error.code());
        return;
    }
    if (write_buffer_size() == 0 || completions_) {
        remove_writer();  // the completion path sends with submissions
    }
    begin();
}

// ----- Reading -------------------------------------------------------------------

// Inline, as note_activity(): the library is built position-independent,
// and GCC inlines no other function of external linkage (it could be
// interposed), which costs a call and a frame on every read.
inline std::span<std::byte> Transport::read_buffer() {
    if (!shared_buffer_.empty()) {
        return shared_buffer_.first(std::min(shared_buffer_.size(), read_size_));
    }
    if (!own_buffer_) [[unlikely]] {
        own_buffer_ = allocate_read_buffer(read_size_);
    }
    return {own_buffer_.get(), read_size_};
}

void Transport::on_readable() {
    // Each read's path: the protocol is called in dispatch()'s frame.
    dispatch([this](const detail::TransportFrame& frame) {
        if (state_ != State::open || !reader_added_) {
            return;
        }
        std::span<std::byte> buffer = protocol_->get_buffer(read_size_);
        if (frame.destroyed || state_ != State::open || !reader_added_) {
            return;
        }
        if (buffer.empty()) {
            buffer = read_buffer();
        }
        int errnum = 0;
        const ssize_t got =
            detail::transfer_errno(errnum, [&] { return ::recv(fd_, buffer.data(), buffer.size(), 0); });
        if (got > 0) {
            note_activity();
            protocol_->data_received(buffer.first(static_cast<std::size_t>(got)));
            return;
        }
        if (got == 0) {
            end_of_input();
            return;
        }
        if (errnum != 0) {
            finish(last_error(errnum));
        }
    });
}

void Transport::update_reader() noexcept {
    if (completions_) {
        update_completion_reader();
        return;
    }
    // A handshake reads whatever the protocol asked for (it has not been told of the connection yet).
    const bool want =
        (state_ == State::open && !closing_ && !read_eof_ && !read_paused_) || state_ == State::handshaking;
    if (want == reader_added_ || reactor_ == nullptr) {
        return;
    }
    // EINVAL: the selector cannot watch this descriptor (select's FD_SETSIZE).
    std::error_code error;
    if (want && filter_) [[unlikely]] {
        // Its own callback, so that the plain read path tests nothing for it.
        reactor_->add_reader(
            fd_, [this] { dispatch([this] { read_filtered(); }); }, error);
    } else if (want) {
        reactor_->add_reader(
            fd_, [this] { on_readable(); }, error);
    } else {
        (void)reactor_->remove_reader(fd_, error);
    }
    if (error) {
        finish(error);
        return;
    }
    reader_added_ = want;
}

void Transport::pause_reading() {
    check_usable("Transport::pause_reading");
    read_paused_ = true;
    update_reader();
}

void Transport::resume_reading() {
    check_usable("Transport::resume_reading");
    const bool was_paused = std::exchange(read_paused_, false);
    update_reader();
    if (filter_ && state_ == State::open) [[unlikely]] {
        schedule_filtered_delivery();
    } else if (completions_ && was_paused && reader_added_ && !completions_->in_delivery &&
               (completions_->receiver.queued_bytes() > 0 || completions_->receiver.ended())) {
        // What arrived while paused, from the next iteration (a delivery
        // under way goes on by itself).
        schedule_completion_delivery();
    }
}

// ----- Writing -------------------------------------------------------------------

void Transport::write(std::span<const std::byte> data) {
    check_usable("Transport::write");
    if (closing_ || eof_pending_) [[unlikely]] {
        refuse_after_close("Transport::write");
    }
    if (state_ >= State::ended) {
        return;
    }
    if (indirect_) [[unlikely]] {
        if (filter_) {
            write_filtered(data);
        } else {
            write_completion(data);
        }
        return;
    }
    if (data.empty()) {
        return;
    }
    if (state_ != State::open || write_buffer_size() > 0) {
        enqueue(data);
        check_high_water();
        return;
    }
    int errnum = 0;
    const ssize_t sent =
        detail::transfer_errno(errnum, [&] { return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL); });
    if (sent > 0) {
        note_activity();
        if (static_cast<std::size_t>(sent) == data.size()) {
            return;
        }
    } else if (errnum != 0) {
        finish(last_error(errnum));
        return;
    }
    enqueue(data.subspan(static_cast<std::size_t>(std::max<ssize_t>(sent, 0))));
    add_writer();
    if (state_ == State::open) {
        check_high_water();
    }
}

void Transport::enqueue(std::span<const std::byte> data) {
    if (queue_head_ == queue_.size()) {
        queue_.clear();
        queue_head_ = 0;
    } else if (queue_head_ > 0 && queue_.size() + data.size() > queue_.capacity()) {
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(queue_head_));
        queue_head_ = 0;
    }
    queue_.insert(queue_.end(), data.begin(), data.end());
    queued_in_ += data.size();
}

void Transport::drop_queue() noexcept {
    std::vector<std::byte>{}.swap(queue_);
    queue_head_ = 0;
    for (std::size_t i = files_head_; i < files_.size(); ++i) {
        ::close(files_[i].fd);
    }
    files_.clear();
    files_head_ = 0;
    file_bytes_ = 0;
}

void Transport::writev(std::span<const std::span<const std::byte>> buffers) {
    check_usable("Transport::writev");
    if (closing_ || eof_pending_) [[unlikely]] {
        refuse_after_close("Transport::writev");
    }
    if (state_ >= State::ended) {
        return;
    }
    if (indirect_) [[unlikely]] {
        // The completion path queues each and sends them with one submission.
        for (const std::span<const std::byte> buffer : buffers) {
            if (filter_) {
                write_filtered(buffer);
            } else {
                write_completion(buffer);
            }
            if (state_ >= State::ended) {
                return;
            }
        }
        return;
    }
    if (state_ != State::open || write_buffer_size() > 0 || buffers.size() > max_iovecs) {
        for (const std::span<const std::byte> buffer : buffers) {
            write(buffer);
            if (state_ >= State::ended) {
                return;
            }
        }
        return;
    }
    std::array<iovec, max_iovecs> vectors{};
    std::size_t total = 0;
    for (std::size_t i = 0; i < buffers.size(); ++i) {
        // iovec's base is not const; sendmsg() only reads it.
        vectors[i] = {const_cast<std::byte*>(buffers[i].data()), buffers[i].size()};  // NOLINT
        total += buffers[i].size();
    }
    if (total == 0) {
        return;
    }
    msghdr message{};
    message.msg_iov = vectors.data();
    message.msg_iovlen = buffers.size();
    int errnum = 0;
    const ssize_t sent = detail::transfer_errno(errnum, [&] { return ::sendmsg(fd_, &message, MSG_NOSIGNAL); });
    if (sent < 0 && errnum != 0) {
        finish(last_error(errnum));
        return;
    }
    auto skip = static_cast<std::size_t>(std::max<ssize_t>(sent, 0));
    if (skip > 0) {
        note_activity();
    }
    if (skip == total) {
        return;
    }
    for (const std::span<const std::byte> buffer : buffers) {
        if (skip >= buffer.size()) {
            skip -= buffer.size();
            continue;
        }
        enqueue(buffer.subspan(skip));
        skip = 0;
    }
    add_writer();
    if (state_ == State::open) {
        check_high_water();
    }
}

void Transport::send_file(int file, std::int64_t offset, std::uint64_t count) {
    if (file < 0) {
        throw std::invalid_argument("Transport::send_file: negative descriptor");
    }
    try {
        check_usable("Transport::send_file");
        if (offset < 0) [[unlikely]] {
            throw std::invalid_argument("Transport::send_file: negative offset");
        }
        if (closing_ || eof_pending_) [[unlikely]] {
            refuse_after_close("Transport::send_file");
        }
    } catch (...) {
        ::close(file);  // this process's copy: a forked child leaves the parent's alone
        throw;
    }
    if (state_ >= State::ended) {
        ::close(file);
        return;
    }
    if (count == 0) {
        ::close(file);
        return;
    }
    if (filter_) [[unlikely]] {
        send_file_filtered(file, offset, count);
        return;
    }
    try {
        files_.push_back(QueuedFile{queued_in_, file, offset, count});
    } catch (...) {
        ::close(file);
        throw;
    }
    file_bytes_ += count;
    if (completions_ && state_ == State::open) {
        // Its turn comes once the bytes queued before it went out.
        // A file sent whole now is taken at once, as on readiness: no
        // write_drained().
        if (completions_->sending == 0 && !writer_added_ && !pump_completions()) {
            return;
        }
        if (state_ == State::open) {
            check_high_water();
        }
        return;
    }
    if (state_ == State::open) {
        // Alone in the queue, it is sent now, as write() sends, and waits
        // for writability only for what the kernel does not take.
        if (files_.size() - files_head_ == 1 && queue_.size() == queue_head_ && !send_queued_file()) {
            return;
        }
        if (write_buffer_size() == 0) {
            return;
        }
        add_writer();
    }
    if (state_ == State::open || state_ == State::starting || state_ == State::connecting) {
        check_high_water();
    }
}

bool Transport::send_queued_file() {
    QueuedFile& file = files_[files_head_];
    off_t offset = file.offset;
    int errnum = 0;
    const ssize_t sent = sendfile_without_sigpipe(
        fd_, file.fd, offset, static_cast<std::size_t>(std::min(file.left, sendfile_chunk)), errnum);
    if (sent < 0) {
        if (errnum != 0) {
            finish(last_error(errnum));
            return false;
        }
        return true;
    }
    if (sent == 0) {
        finish(std::make_error_code(std::errc::no_message_available));  // ENODATA: the file is shorter
        return false;
    }
    note_activity();
    file.offset = offset;
    file.left -= static_cast<std::uint64_t>(sent);
    file_bytes_ -= static_cast<std::uint64_t>(sent);
    if (file.left == 0) {
        ::close(std::exchange(file.fd, -1));
        if (++files_head_ == files_.size()) {
            files_.clear();
            files_head_ = 0;
        }
    }
    return true;
}

void Transport::check_high_water() {
    if (!write_paused_ && write_buffer_size() > high_water_) {
        write_paused_ = true;
        (void)call_protocol([this] { protocol_->pause_writing(); });
    }
}

void Transport::set_write_buffer_limits(std::size_t high, std::size_t low) {
    check_usable("Transport::set_write_buffer_limits");
    high_water_ = high;
    low_water_ = std::min(low, high);
}

void Transport::add_writer() noexcept {
    if (writer_added_ || reactor_ == nullptr) {
        return;
    }
    // EINVAL: the selector cannot watch this descriptor (select's FD_SETSIZE).
    std::error_code error;
    reactor_->add_writer(
        fd_, [this] { on_writable(); }, error);
    if (error) {
        finish(error);
        return;
    }
    writer_added_ = true;
}

void Transport::remove_writer() noexcept {
    if (!writer_added_ || reactor_ == nullptr) {
        return;
    }
    std::error_code error;
    (void)reactor_->remove_writer(fd_, error);
    if (error) {
        finish(error);
        return;
    }
    writer_added_ = false;
}

void Transport::on_writable() {
    dispatch([this] {
        if (state_ == State::connecting) {
            on_connected();
        } else if (state_ == State::open) {
            flush_queue();
        } else if (state_ == State::handshaking) {
            flush_filtered();
        }
    });
}

long Transport::send_from_queue(std::size_t size) {
    int errnum = 0;
    const ssize_t sent =
        detail::transfer_errno(errnum, [&] { return ::send(fd_, queue_.data() + queue_head_, size, MSG_NOSIGNAL); });
    if (sent < 0) {
        if (errnum != 0) {
            finish_send_failure(errnum);
        }
        return -1;
    }
    note_activity();
    queue_head_ += static_cast<std::size_t>(sent);
    if (queue_head_ == queue_.size()) {
        queue_.clear();
        queue_head_ = 0;
        if (queue_.capacity() > keep_queue_capacity) {
            std::vector<std::byte>{}.swap(queue_);
        }
    }
    return sent;
}

void Transport::flush_queue() {
    if (indirect_) [[unlikely]] {
        if (filter_) {
            flush_filtered();
        } else if (pump_completions()) {
            settle_writes();  // a file's turn: writable again
        }
        return;
    }
    if (files_head_ < files_.size() && files_[files_head_].at == queued_out_) {
        if (!send_queued_file()) {
            return;
        }
    } else if (const std::size_t buffered = queue_.size() - queue_head_; buffered > 0) {
        // Up to the next file, if one is queued.
        const std::size_t size =
            files_head_ < files_.size()
                ? static_cast<std::size_t>(std::min<std::uint64_t>(files_[files_head_].at - queued_out_, buffered))
                : buffered;
        const long sent = send_from_queue(size);
        if (sent < 0) {
            return;
        }
        queued_out_ += static_cast<std::uint64_t>(sent);
    }
    if (write_paused_ && write_buffer_size() <= low_water_) {
        write_paused_ = false;
        if (!call_protocol([this] { protocol_->resume_writing(); }) || state_ != State::open) {
            return;
        }
    }
    if (write_buffer_size() == 0) {
        remove_writer();
        if (state_ != State::open) {
            return;
        }
        if (!call_protocol([this] { protocol_->write_drained(); }) || state_ != State::open ||
            write_buffer_size() > 0) {
            return;  // ended, or the protocol wrote again: the writer sends that
        }
        after_drain();
    }
}

void Transport::after_drain() {
    if (filter_ && (closing_ || eof_pending_) && !filter_shut_down_) [[unlikely]] {
        if (!shutdown_filter()) {
            return;  // the filter's end (close_notify) is queued: back here once it is sent
        }
    }
    if (eof_pending_ && !eof_written_) {
        eof_written_ = true;
        if (::shutdown(fd_, SHUT_WR) != 0 && errno != ENOTCONN) {
            finish(last_error(errno));
            return;
        }
    }
    if (closing_) {
        if (!read_eof_) {
            discard_unread_input(fd_);
        }
        finish({});
    }
}

void Transport::write_eof() {
    check_usable("Transport::write_eof");
    if (state_ >= State::ended || closing_ || eof_pending_) {
        return;
    }
    eof_pending_ = true;
    if (state_ == State::open && write_buffer_size() == 0) {
        after_drain();
    }
}

// ----- Ending --------------------------------------------------------------------

void Transport::close() {
    check_usable("Transport::close");
    if (state_ >= State::ended || closing_) {
        return;
    }
    if (filter_ && state_ < State::open && file_bytes_ == 0) [[unlikely]] {
        // The handshake has not completed and nothing of the protocol's
        // waits to go: there is nothing to end cleanly, and waiting would
        // take the handshake timeout, or forever without one.
        closing_ = true;
        finish(std::make_error_code(std::errc::connection_aborted));
        return;
    }
    closing_ = true;
    update_reader();
    if (state_ == State::open && write_buffer_size() == 0) {
        after_drain();
    }
}

void Transport::abort(std::error_code reason) {
    check_usable("Transport::abort");
    finish(reason);
}

void Transport::finish(std::error_code reason) noexcept {
    if (state_ >= State::ended) {
        return;
    }
    state_ = State::ended;
    reason_ = reason;
    if (completions_) {
        stop_completions(false);
    }
    release_descriptor();
    if (reactor_ == nullptr) {
        return;  // the close hook delivers
    }
    soon_.cancel();  // a start() not run yet
    timer_.cancel();
    timer_due_ = TimePoint::max();
    drop_queue();
    if (frames_ != nullptr) {
        lost_pending_ = true;
    } else {
        schedule_lost();
    }
}

void Transport::schedule_lost() noexcept {
    if (reactor_->is_closed()) {
        return;  // ending from a close hook: its own hook, still to run, delivers
    }
    try {
        soon_ = reactor_->call_soon([this] { deliver_lost(); });
    } catch (const std::exception& error) {
        // Only out of memory gets here: the methods refuse another thread
        // and a forked child before they change anything, so the end came
        // from the loop thread. Delivering now would run connection_lost()
        // inside the caller's Transport method, which the contract rules
        // out. The transport stays ended with its close hook in place, so
        // Reactor::close() still delivers it (or the owner destroys it, and
        // knows).
        try {
            logger().error(
                "Transport: fd closed, cannot schedule connection_lost ({}): delivered when the reactor closes",
                error.what());
        } catch (...) {  // NOLINT(bugprone-empty-catch): only the log line is lost
        }
    }
}

void Transport::deliver_lost() {
    soon_ = {};
    if (state_ == State::ended) {
        (void)deliver_lost_now();
    }
}

bool Transport::deliver_lost_now() {
    state_ = State::lost;
    lost_pending_ = false;
    hook_.unhook();
    reactor_ = nullptr;  // nothing of the reactor is used from now on
    detail::TransportFrame frame{frames_, false};
    frames_ = &frame;
    std::exception_ptr error;
    try {
        protocol_->connection_lost(reason_);
    } catch (...) {
        error = std::current_exception();
    }
    if (frame.destroyed) {
        if (error) {
            std::rethrow_exception(error);
        }
        return false;
    }
    frames_ = frame.previous;
    const bool released = release_ != nullptr;
    if (released) {
        release_(release_context_, *this);  // destroys this
    }
    if (error) {
        std::rethrow_exception(error);
    }
    return !released;
}

void Transport::end_now(std::error_code reason) noexcept {
    finish(reason);
    if (state_ == State::ended) {
        lost_pending_ = false;
        if (reactor_ != nullptr) {
            soon_.cancel();
        }
        try {
            (void)deliver_lost_now();
        } catch (const std::exception& error) {
            logger().error("Transport: connection_lost threw: {}", error.what());
        } catch (...) {
            logger().error("Transport: connection_lost threw");
        }
    }
}

// ----- Timers --------------------------------------------------------------------

inline void Transport::note_activity() {
    if (idle_timeout_ > Duration::zero()) {
        last_activity_ = reactor_->time();
    }
}

void Transport::set_idle_timeout(Duration timeout) {
    check_usable("Transport::set_idle_timeout");
    idle_timeout_ = std::max(timeout, Duration::zero());
    if (idle_timeout_ > Duration::zero() && state_ == State::open) {
        last_activity_ = reactor_->time();
        rearm_timer();
    }
}

void Transport::set_deadline(TimePoint when) {
    check_usable("Transport::set_deadline");
    deadline_ = when;
    if (state_ == State::open) {
        rearm_timer();
    }
}

void Transport::set_deadline_after(Duration delay) {
    check_usable("Transport::set_deadline_after");
    if (state_ >= State::ended) {
        return;
    }
    set_deadline(detail::deadline_after(reactor_->time(), delay));
}

void Transport::rearm_timer() {
    if (reactor_ == nullptr || state_ >= State::ended) {
        return;
    }
    TimePoint due = deadline_;
    if (idle_timeout_ > Duration::zero()) {
        due = std::min(due, detail::deadline_after(last_activity_, idle_timeout_));
    }
    if (due == TimePoint::max() || timer_due_ <= due) {
        // Nothing to time, or the armed timer comes first and looks again.
        return;
    }
    timer_.cancel();
    timer_ = reactor_->call_at(due, [this] { on_timer(); });
    timer_due_ = due;
}

void Transport::on_timer() {
    timer_ = {};
    timer_due_ = TimePoint::max();
    dispatch([this] {
        if (state_ != State::open) {
            return;
        }
        const TimePoint now = reactor_->time();
        TimeoutKind kind = TimeoutKind::idle;
        if (deadline_ <= now) {
            kind = TimeoutKind::deadline;
            deadline_ = TimePoint::max();
        } else if (idle_timeout_ <= Duration::zero() || detail::deadline_after(last_activity_, idle_timeout_) > now) {
            rearm_timer();
            return;
        }
        bool handled = false;
        if (!call_protocol([&] { handled = protocol_->timed_out(kind); }) || state_ != State::open) {
            return;
        }
        if (!handled) {
            finish(std::make_error_code(std::errc::timed_out));
            return;
        }
        if (kind == TimeoutKind::idle) {
            last_activity_ = now;
        }
        rearm_timer();
    });
}

// ----- Filtered streams ------------------------------------------------------------
//
// With a filter (TLS), the write queue holds what the filter produced, and
// plaintext that cannot go through the filter yet (before the handshake
// completed, or behind a file) waits in plain_, counted in file_bytes_ with
// the bytes of the files. The filter's output goes straight to the socket
// when nothing is queued, so a warm connection copies nothing more than the
// filter itself does.

namespace {

// Plaintext taken from plain_ or read from a file per filter write: a TLS
// record's worth.
constexpr std::size_t filter_chunk = std::size_t{16} * 1024;
// Files and plaintext go through the filter while less than this is queued
// for the socket, so a large file is not read into memory at once.
constexpr std::size_t filter_queue_ahead = std::size_t{64} * 1024;

}  // namespace

void Transport::begin_handshake() {
    state_ = State::handshaking;
    if (handshake_timeout_ > Duration::zero()) {
        const TimePoint due = detail::deadline_after(reactor_->time(), handshake_timeout_);
        timer_.cancel();
        timer_ = reactor_->call_at(due, [this] {
            timer_ = {};
            timer_due_ = TimePoint::max();
            dispatch([this] {
                if (state_ == State::handshaking) {
                    finish(std::make_error_code(std::errc::timed_out));
                }
            });
        });
        timer_due_ = due;
    }
    update_reader();
    if (state_ == State::handshaking) {
        drive_handshake();  // a client speaks first; a server finds it wants input
    }
}

void Transport::drive_handshake() {
    for (;;) {
        const TransportFilter::Status status = filter_->handshake();
        if (status == TransportFilter::Status::failed || status == TransportFilter::Status::closed) {
            fail_filter();
            return;
        }
        if (!pump_filter_output()) {
            return;
        }
        if (status == TransportFilter::Status::ok) {
            break;
        }
        if (status == TransportFilter::Status::want_input) {
            return;
        }
    }
    filter_ready_ = true;
    timer_.cancel();
    timer_ = {};
    timer_due_ = TimePoint::max();
    // Bytes that came with the end of the handshake are delivered in the next
    // iteration: connection_made() may destroy the transport, after which
    // nothing of it may run here.
    schedule_filtered_delivery();
    begin();
}

void Transport::schedule_filtered_delivery() {
    soon_.cancel();
    soon_ = reactor_->call_soon([this] {
        soon_ = {};
        dispatch([this] {
            if (state_ == State::open) {
                deliver_filtered();
            }
        });
    });
}

void Transport::read_filtered() {
    if ((state_ != State::open && state_ != State::handshaking) || !reader_added_) {
        return;
    }
    // Empty only while the filter holds a full input it has not taken, which
    // the steps below take.
    const std::span<std::byte> space = filter_->input_space();
    if (!space.empty()) {
        int errnum = 0;
        const ssize_t got = detail::transfer_errno(errnum, [&] { return ::recv(fd_, space.data(), space.size(), 0); });
        if (got > 0) {
            note_activity();
            filter_->commit_input(static_cast<std::size_t>(got));
        } else if (got == 0) {
            filter_->input_ended();
        } else if (errnum != 0) {
            finish(last_error(errnum));
            return;
        } else {
            return;  // nothing after all
        }
    }
    if (state_ == State::handshaking) {
        drive_handshake();
    } else {
        deliver_filtered();
    }
}

void Transport::deliver_filtered() {
    // Bounded: each turn takes input the filter holds, and none is read here.
    while (state_ == State::open && !read_paused_ && !read_eof_ && !closing_) {
        std::span<std::byte> buffer;
        if (!call_protocol([&] { buffer = protocol_->get_buffer(read_size_); }) || state_ != State::open) {
            return;
        }
        if (buffer.empty()) {
            buffer = read_buffer();
        }
        const TransportFilter::Result result = filter_->read(buffer);
        if (result.status == TransportFilter::Status::failed) {
            fail_filter();
            return;
        }
        // A read may produce output: a TLS 1.3 key update's answer.
        if (!pump_filter_output()) {
            return;
        }
        switch (result.status) {
            case TransportFilter::Status::ok:
                if (result.bytes == 0) {
                    return;
                }
                if (!call_protocol([&] { protocol_->data_received(buffer.first(result.bytes)); })) {
                    return;
                }
                break;
            case TransportFilter::Status::want_output:
                break;  // taken above
            case TransportFilter::Status::closed: {
                read_eof_ = true;
                update_reader();
                bool keep_open = false;
                if (!call_protocol([&] { keep_open = protocol_->eof_received(); })) {
                    return;
                }
                if (!keep_open) {
                    close();
                }
                return;
            }
            default:
                return;  // want_input: the reader is registered
        }
    }
}

void Transport::write_filtered(std::span<const std::byte> data) {
    if (data.empty()) {
        return;
    }
    if (state_ == State::open && file_bytes_ == 0) {
        if (!encrypt(data)) {
            return;
        }
    } else {
        // Its turn comes after the handshake or the file before it.
        if (plain_head_ == plain_.size()) {
            plain_.clear();
            plain_head_ = 0;
        }
        plain_.insert(plain_.end(), data.begin(), data.end());
        plain_in_ += data.size();
        file_bytes_ += data.size();
        if (state_ == State::open) {
            add_writer();
        }
    }
    if (state_ < State::ended) {
        check_high_water();
    }
}

void Transport::send_file_filtered(int file, std::int64_t offset, std::uint64_t count) {
    try {
        files_.push_back(QueuedFile{plain_in_, file, offset, count});
    } catch (...) {
        ::close(file);
        throw;
    }
    file_bytes_ += count;
    if (state_ == State::open) {
        add_writer();
    }
    if (state_ < State::ended) {
        check_high_water();
    }
}

bool Transport::encrypt(std::span<const std::byte> data) {
    while (!data.empty()) {
        const TransportFilter::Result result = filter_->write(data);
        if (result.status == TransportFilter::Status::failed) {
            fail_filter();
            return false;
        }
        data = data.subspan(std::min(result.bytes, data.size()));
        if (!pump_filter_output()) {
            return false;
        }
        if (result.bytes == 0 && result.status != TransportFilter::Status::want_output) {
            // A filter that takes nothing and wants nothing would loop here.
            logger().error("Transport: the filter of fd {} took no bytes to write", fd_);
            finish(std::make_error_code(std::errc::protocol_error));
            return false;
        }
    }
    return true;
}

bool Transport::pump_filter_output() {
    for (;;) {
        const std::span<const std::byte> output = filter_->output();
        if (output.empty()) {
            return true;
        }
        std::size_t sent = 0;
        if (queue_head_ == queue_.size()) {
            int errnum = 0;
            const ssize_t done =
                detail::transfer_errno(errnum, [&] { return ::send(fd_, output.data(), output.size(), MSG_NOSIGNAL); });
            if (done < 0 && errnum != 0) {
                finish_send_failure(errnum);
                return false;
            }
            if (done > 0) {
                note_activity();
                sent = static_cast<std::size_t>(done);
            }
        }
        if (sent < output.size()) {
            enqueue(output.subspan(sent));
            add_writer();
            if (state_ >= State::ended) {
                return false;
            }
        }
        filter_->consume_output(output.size());
    }
}

void Transport::flush_filtered() {
    if (const std::size_t buffered = queue_.size() - queue_head_; buffered > 0) {
        if (send_from_queue(buffered) < 0) {
            return;
        }
    }
    if (state_ == State::handshaking) {
        if (queue_head_ == queue_.size()) {
            remove_writer();  // what waits in plain_ goes once the handshake completed
        }
        return;
    }
    if (state_ != State::open) {
        return;
    }
    if (file_bytes_ > 0 && queue_head_ == queue_.size() && !refill_filtered()) {
        return;
    }
    if (write_paused_ && write_buffer_size() <= low_water_) {
        write_paused_ = false;
        if (!call_protocol([this] { protocol_->resume_writing(); }) || state_ != State::open) {
            return;
        }
    }
    if (write_buffer_size() == 0) {
        remove_writer();
        // Told once the protocol's bytes are out, not again for close_notify.
        if (!filter_shut_down_ && (!call_protocol([this] { protocol_->write_drained(); }) || state_ != State::open ||
                                   write_buffer_size() > 0)) {
            return;  // ended, or the protocol wrote again: the writer sends that
        }
        after_drain();
    }
}

bool Transport::refill_filtered() {
    // Bounded per call so one connection's large file does not hold the
    // loop; the writer stays registered for the rest.
    std::uint64_t budget = sendfile_chunk;
    while (state_ == State::open && file_bytes_ > 0 && budget > 0 && queue_.size() - queue_head_ < filter_queue_ahead) {
        if (files_head_ < files_.size() && files_[files_head_].at == plain_out_) {
            QueuedFile& file = files_[files_head_];
            if (!file_chunk_) {
                file_chunk_ = std::make_unique<std::byte[]>(filter_chunk);
            }
            const auto size = static_cast<std::size_t>(std::min<std::uint64_t>(file.left, filter_chunk));
            int errnum = 0;
            const ssize_t got = detail::transfer_errno(
                errnum, [&] { return ::pread(file.fd, file_chunk_.get(), size, static_cast<off_t>(file.offset)); });
            if (got < 0) {
                finish(last_error(errnum != 0 ? errnum : EIO));
                return false;
            }
            if (got == 0) {
                finish(std::make_error_code(std::errc::no_message_available));  // ENODATA: the file is shorter
                return false;
            }
            const auto taken = static_cast<std::uint64_t>(got);
            file.offset += static_cast<std::int64_t>(taken);
            file.left -= taken;
            file_bytes_ -= taken;
            budget -= std::min(budget, taken);
            if (file.left == 0) {
                ::close(std::exchange(file.fd, -1));
                if (++files_head_ == files_.size()) {
                    files_.clear();
                    files_head_ = 0;
                }
            }
            if (!encrypt({file_chunk_.get(), static_cast<std::size_t>(taken)})) {
                return false;
            }
            continue;
        }
        std::size_t size = std::min(plain_.size() - plain_head_, filter_chunk);
        if (files_head_ < files_.size()) {
            size = static_cast<std::size_t>(std::min<std::uint64_t>(size, files_[files_head_].at - plain_out_));
        }
        const std::span<const std::byte> chunk{plain_.data() + plain_head_, size};
        plain_head_ += size;
        plain_out_ += size;
        file_bytes_ -= size;
        budget -= std::min<std::uint64_t>(budget, size);
        if (!encrypt(chunk)) {
            return false;
        }
        if (plain_head_ == plain_.size()) {
            plain_.clear();
            plain_head_ = 0;
            if (plain_.capacity() > keep_queue_capacity) {
                std::vector<std::byte>{}.swap(plain_);
            }
        }
    }
    return state_ == State::open;
}

bool Transport::shutdown_filter() {
    filter_shut_down_ = true;
    for (;;) {
        const TransportFilter::Status status = filter_->shutdown();
        if (!pump_filter_output()) {
            return false;
        }
        if (status != TransportFilter::Status::want_output) {
            break;  // failed too: the connection ends without it
        }
    }
    if (queue_head_ < queue_.size()) {
        add_writer();
        return false;
    }
    return state_ == State::open;
}

void Transport::finish_send_failure(int errnum) noexcept {
    if (filter_shut_down_ && read_eof_) [[unlikely]] {
        // The peer ended its stream cleanly (its close_notify came) and
        // closed its socket, which may answer with a reset: our own
        // close_notify, all that can be left to send, has no one to read
        // it, and the exchange was complete.
        finish({});
        return;
    }
    finish(last_error(errnum));
}

void Transport::fail_filter() noexcept {
    std::error_code reason = filter_->error();
    if (!reason) {
        reason = std::make_error_code(std::errc::protocol_error);
    }
    try {
        logger().debug("Transport: fd {} failed: {} ({})", fd_, reason.message(), filter_->error_message());
    } catch (...) {  // NOLINT(bugprone-empty-catch): only the log line is lost
    }
    // Best effort: the alert telling the peer why, if nothing is queued
    // before it and the socket takes it now.
    if (queue_head_ == queue_.size() && fd_ >= 0) {
        const std::span<const std::byte> alert = filter_->output();
        if (!alert.empty()) {
            (void)::send(fd_, alert.data(), alert.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        }
    }
    finish(reason);
}

// ----- Completions -----------------------------------------------------------------
//
// On the io_uring completion path the receiver's multishot receive fills the
// reactor's provided buffers and on_received() hands them to the protocol;
// write() queues, and one send at a time goes out of Completions::out, so
// that bytes stay ordered and in place while the kernel reads them. Files
// still go by sendfile(2) on writability when their turn comes.

void Transport::update_completion_reader() noexcept {
    const bool open_for_reading = state_ == State::open && !closing_ && !read_eof_;
    const bool want = open_for_reading && !read_paused_;
    if (want) {
        if (!reader_added_) {
            try {
                completions_->receiver.start();
            } catch (...) {
                finish(detail::code_of_current_exception());
                return;
            }
            reader_added_ = true;
        }
        return;
    }
    reader_added_ = false;
    // A pause alone leaves the receive running: it is cancelled when bytes
    // arrive meanwhile (on_received()), so a pause and a resume within one
    // exchange (a write over the high water mark) cost nothing.
    if (!open_for_reading && completions_->ring != nullptr) {
        completions_->receiver.pause();
    }
}

void Transport::on_received() {
    dispatch([this](const detail::TransportFrame& frame) {
        if (state_ != State::open) {
            return;
        }
        if (!reader_added_) {
            if (read_paused_) {
                completions_->receiver.pause();  // bytes came during a pause: they wait
            }
            return;
        }
        deliver_received(frame);
    });
}

void Transport::deliver_received(const detail::TransportFrame& frame) {
    completions_->in_delivery = true;
    try {
        deliver_queued(frame);
    } catch (...) {
        if (!frame.destroyed) {
            completions_->in_delivery = false;
        }
        throw;
    }
    if (!frame.destroyed) {
        completions_->in_delivery = false;
    }
}

void Transport::end_of_input() {
    read_eof_ = true;
    update_reader();
    bool keep_open = false;
    if (!call_protocol([&] { keep_open = protocol_->eof_received(); })) {
        return;
    }
    if (!keep_open) {
        close();
    }
}

void Transport::deliver_queued(const detail::TransportFrame& frame) {
    detail::CompletionReceiver& receiver = completions_->receiver;
    while (state_ == State::open && reader_added_) {
        std::span<const std::byte> bytes = receiver.front();
        if (bytes.empty()) {
            if (!receiver.ended()) {
                return;
            }
            if (receiver.error()) {
                finish(receiver.error());
                return;
            }
            end_of_input();
            return;
        }
        bytes = bytes.first(std::min(bytes.size(), read_size_));
        const std::span<std::byte> buffer = protocol_->get_buffer(read_size_);
        if (frame.destroyed || state_ != State::open || !reader_added_) {
            return;
        }
        note_activity();
        if (buffer.empty()) {
            // The provided buffer itself: it goes back to the ring once the
            // protocol is done with it.
            completions_->delivering = true;
            try {
                protocol_->data_received(bytes);
            } catch (...) {
                if (!frame.destroyed) {
                    completions_->delivering = false;  // the end that follows releases it all
                }
                throw;
            }
            if (frame.destroyed) {
                return;
            }
            completions_->delivering = false;
            if (state_ >= State::ended) {
                stop_completions(true);  // what the end left for after the call
                return;
            }
            receiver.consume(bytes.size());
        } else {
            const std::size_t size = std::min(bytes.size(), buffer.size());
            std::memcpy(buffer.data(), bytes.data(), size);
            receiver.consume(size);
            protocol_->data_received(buffer.first(size));
            if (frame.destroyed) {
                return;
            }
        }
    }
}

void Transport::schedule_completion_delivery() {
    soon_.cancel();
    soon_ = reactor_->call_soon([this] {
        soon_ = {};
        dispatch([this](const detail::TransportFrame& frame) {
            if (state_ == State::open) {
                deliver_received(frame);
            }
        });
    });
}

void Transport::write_completion(std::span<const std::byte> data) {
    if (data.empty()) {
        return;
    }
    Completions& completions = *completions_;
    if (state_ == State::open && completions.sending == 0 && completions.out_head == completions.out.size() &&
        queue_head_ == queue_.size() && files_head_ == files_.size() && !writer_added_) {
        // Nothing waits before it (an answer to a request, typically): the
        // bytes go straight into the send's buffer, whose storage is kept.
        completions.out.assign(data.begin(), data.end());
        completions.out_head = 0;
        queued_in_ += data.size();
        file_bytes_ += data.size();
        if (!submit_send(data.size())) {
            return;
        }
    } else {
        enqueue(data);
        if (state_ == State::open && completions.sending == 0 && !writer_added_ && !pump_completions()) {
            return;
        }
    }
    check_high_water();
}

bool Transport::submit_send(std::size_t size) {
    Completions& completions = *completions_;
    try {
        completions.sending =
            completions.ring->send(fd_, {completions.out.data() + completions.out_head, size},
                                   {[](void* transport, std::int32_t result, std::uint32_t /*flags*/) {
                                        static_cast<Transport*>(transport)->on_sent(result);
                                    },
                                    this, fd_});
    } catch (...) {
        finish(detail::code_of_current_exception());
        return false;
    }
    return true;
}

bool Transport::pump_completions() {
    Completions& completions = *completions_;
    while (completions.sending == 0 && state_ == State::open) {
        if (files_head_ < files_.size() && files_[files_head_].at == queued_out_) {
            if (!send_queued_file()) {
                return false;
            }
            if (files_head_ < files_.size() && files_[files_head_].at == queued_out_) {
                add_writer();  // the rest once the socket drains
                return state_ == State::open;
            }
            continue;
        }
        if (completions.out_head == completions.out.size()) {
            if (queue_head_ == queue_.size()) {
                break;
            }
            // The queue becomes the send's: write() fills the other vector
            // meanwhile, so each keeps its storage and neither moves in flight.
            completions.out.clear();
            completions.out_head = 0;
            completions.out.swap(queue_);
            if (queue_head_ > 0) {
                completions.out_head = std::exchange(queue_head_, 0);
            }
            file_bytes_ += completions.out.size() - completions.out_head;
        }
        std::size_t size = completions.out.size() - completions.out_head;
        if (files_head_ < files_.size()) {
            // Up to the next file.
            size = static_cast<std::size_t>(std::min<std::uint64_t>(size, files_[files_head_].at - queued_out_));
        }
        if (!submit_send(size)) {
            return false;
        }
    }
    if (writer_added_ && !(files_head_ < files_.size() && files_[files_head_].at == queued_out_)) {
        remove_writer();
    }
    return state_ == State::open;
}

void Transport::on_sent(std::int32_t result) {
    Completions& completions = *completions_;
    completions.sending = 0;
    if (state_ != State::open) {
        // Cancelled by the end of the connection: the bytes may go now.
        return;
    }
    dispatch([this, result] {
        Completions& sent = *completions_;
        if (result <= 0) {
            // 0 for a non-empty send would make the next one spin.
            finish_send_failure(result < 0 ? -result : EIO);
            return;
        }
        const auto taken = static_cast<std::size_t>(result);
        note_activity();
        sent.out_head += taken;
        file_bytes_ -= taken;
        queued_out_ += taken;
        if (sent.out_head == sent.out.size()) {
            sent.out.clear();
            sent.out_head = 0;
            if (sent.out.capacity() > keep_queue_capacity) {
                std::vector<std::byte>{}.swap(sent.out);
            }
            if (queue_head_ == queue_.size() && files_head_ == files_.size() && !writer_added_) {
                settle_writes();  // all out: nothing to pump
                return;
            }
        }
        if (pump_completions()) {
            settle_writes();
        }
    });
}

void Transport::settle_writes() {
    if (write_paused_ && write_buffer_size() <= low_water_) {
        write_paused_ = false;
        if (!call_protocol([this] { protocol_->resume_writing(); }) || state_ != State::open) {
            return;
        }
    }
    if (write_buffer_size() == 0) {
        if (!call_protocol([this] { protocol_->write_drained(); }) || state_ != State::open ||
            write_buffer_size() > 0) {
            return;  // ended, or the protocol wrote again: that send is on its way
        }
        after_drain();
    }
}

void Transport::stop_completions(bool now) noexcept {
    Completions& completions = *completions_;
    reader_added_ = false;
    if (completions.ring == nullptr) {
        return;
    }
    if (completions.forked_away()) {
        // The parent's ring: forgotten untouched; the memory here is this
        // process's copy.
        completions.receiver.forget_ring();
        completions.sending = 0;
        completions.ring = nullptr;
        return;
    }
    // Waited for, not only cancelled: the operations hold the socket open,
    // and the peer is to see the end when connection_lost() comes, not at
    // the loop's next wait. It costs one io_uring_enter per connection end,
    // as removing a readiness registration does.
    if (completions.sending != 0) {
        completions.ring->detach_and_wait(std::exchange(completions.sending, 0));
    }
    if (completions.delivering && !now) {
        // Inside data_received(): its bytes are a provided buffer, which must
        // not go back to the kernel (a wait could refill it) before the call
        // returns; deliver_received() releases the receiver then.
        completions.receiver.pause();
        return;
    }
    completions.receiver.release(true);
    completions.ring = nullptr;
}

}  // namespace muxio
