// The TCP and Unix-domain listeners of include/muxio/net.hpp.
#include "muxio/net.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "muxio/awaitables.hpp"
#include "muxio/error.hpp"

#include "base/exception_code.hpp"
#include "net/socket_ops.hpp"
#include "reactor/completions.hpp"

namespace muxio {

// ----- The completion path's accept ---------------------------------------------------

namespace detail {

// A listener's multishot accept on the reactor's completion ring and the
// connections it took, oldest first. Started by the first accept() and
// again by any accept() that finds nothing queued after the kernel ended it
// (an error such as EMFILE ends it: reported once, then retried only by the
// next accept(), so nothing spins). Paused while `limit` connections wait:
// a server that stops accepting leaves the rest in the kernel's backlog.
// On the heap, so that a move of the listener moves nothing the ring points to.
class AcceptQueue : private CloseHook {
public:
    static constexpr std::size_t limit = 64;

    // An accept() waiting for a connection: a parked wait, woken by the
    // completion (in the next iteration; accepting is no hot path) or
    // ended with Cancelled by a stop request, as any other await.
    class Wait {
    public:
        Wait(AcceptQueue& queue, Reactor& reactor, std::stop_token token) noexcept
            : queue_{&queue}, wait_{reactor, ReactorWait::Kind::parked, -1, Reactor::TimePoint{}, std::move(token)} {}
        Wait(const Wait&) = delete;
        Wait& operator=(const Wait&) = delete;
        ~Wait() { leave(); }
        [[nodiscard]] bool await_ready() const noexcept { return false; }
        template <class Promise>
        bool await_suspend(std::coroutine_handle<Promise> awaiter) {
            queue_->waiter_ = this;
            if (!wait_.await_suspend(awaiter)) {
                leave();
                return false;
            }
            return true;
        }
        void await_resume() {
            leave();
            wait_.await_resume();  // Cancelled
            if (closed_) {
                throw Cancelled{};
            }
        }

    private:
        friend class AcceptQueue;
        void leave() noexcept {
            if (queue_ != nullptr && queue_->waiter_ == this) {
                queue_->waiter_ = nullptr;
            }
        }
        AcceptQueue* queue_;
        ReactorWait wait_;
        bool closed_ = false;  // the listener closed while it waited
    };

    AcceptQueue(Reactor& reactor, CompletionRing& ring, int fd) noexcept
        : ring_{&ring}, fd_{fd}, generation_{fork_generation.load(std::memory_order_relaxed)} {
        hook(reactor, Phase::late, &on_reactor_close);
    }
    AcceptQueue(const AcceptQueue&) = delete;
    AcceptQueue& operator=(const AcceptQueue&) = delete;
    ~AcceptQueue() {
        if (accepting_ != 0) {
            if (CompletionRing* ring = usable_ring()) {
                ring->detach(accepting_);
            }
        }
        for (const int fd : accepted_) {
            ::close(fd);
        }
        if (Wait* waiting = std::exchange(waiter_, nullptr)) {
            waiting->queue_ = nullptr;
            waiting->closed_ = true;
            try {
                (void)waiting->wait_.wake();
            } catch (...) {
                // The reactor is closed, or the wait was cancelled already.
            }
        }
    }

    [[nodiscard]] CompletionRing* usable_ring() const noexcept {
        return ring_ != nullptr && fork_generation.load(std::memory_order_relaxed) == generation_ ? ring_ : nullptr;
    }

    // The oldest connection taken; or -1 with `error` set to what ended the
    // accept, reported once; or -1 with `error` clear, the accept running.
    // Throws what the ring throws when it refuses the request.
    int take(std::error_code& error) {
        error.clear();
        if (!accepted_.empty()) {
            const int fd = accepted_.front();
            accepted_.pop_front();
            if (accepting_ == 0 && accepted_.size() < limit) {
                start();
            }
            return fd;
        }
        if (error_ != 0) {
            error = errno_code(std::exchange(error_, 0));
            return -1;
        }
        if (accepting_ == 0) {
            start();
        }
        return -1;
    }

private:
    void start() {
        if (CompletionRing* ring = usable_ring()) {
            accepting_ = ring->accept(fd_, {&AcceptQueue::on_accept, this, fd_});
        }
    }

    static void on_accept(void* context, std::int32_t result, std::uint32_t flags) {
        auto& self = *static_cast<AcceptQueue*>(context);
        if ((flags & CompletionRing::more_flag) == 0) {
            self.accepting_ = 0;
        }
        if (result >= 0) {
            self.accepted_.push_back(result);
            if (self.accepting_ != 0 && self.accepted_.size() >= limit) {
                if (CompletionRing* ring = self.usable_ring()) {
                    ring->cancel(self.accepting_);
                }
            }
        } else if (result == -ECANCELED) {
            // Paused with a full queue. An accept that drained the queue and
            // waits since would wait for ever: it restarts the accept now.
            if (self.waiter_ == nullptr || !self.accepted_.empty()) {
                return;  // the next take() starts it again
            }
            try {
                self.start();
                return;
            } catch (...) {
                self.error_ = code_of_current_exception().value();
            }
        } else if (-result == EINTR || -result == EAGAIN || is_connection_error(-result)) {
            // One queued connection's trouble, not the listener's.
            if (self.accepting_ == 0 && self.waiter_ != nullptr) {
                self.start();
            }
            return;
        } else {
            self.error_ = -result;
        }
        if (self.waiter_ != nullptr) {
            try {
                (void)self.waiter_->wait_.wake();
            } catch (...) {
                // Out of memory for the wake: the connection stays queued for the next accept().
            }
        }
    }

    static void on_reactor_close(CloseHook& hook) noexcept {
        auto& self = static_cast<AcceptQueue&>(hook);
        if (self.accepting_ != 0) {
            if (CompletionRing* ring = self.usable_ring()) {
                ring->detach(self.accepting_);
            }
            self.accepting_ = 0;
        }
        // Its parked wait forgets the reactor on its own; the frame may go
        // after the listener, so it forgets the queue too.
        if (Wait* waiting = std::exchange(self.waiter_, nullptr)) {
            waiting->queue_ = nullptr;
        }
        self.ring_ = nullptr;
    }

    CompletionRing* ring_;
    int fd_;
    std::uint64_t generation_;  // fork_generation when made
    OperationId accepting_ = 0;
    std::deque<int> accepted_;
    int error_ = 0;  // what ended the accept, not reported yet
    Wait* waiter_ = nullptr;
};

void AcceptQueueDeleter::operator()(AcceptQueue* queue) const noexcept {
    delete queue;
}

namespace {

// The listener's queue, made by its first accept() on a reactor whose ring
// accepts; null on readiness. The fork error in a forked child.
AcceptQueue* accept_queue(Reactor& reactor, int fd, AcceptQueuePointer& queue) {
    if (queue) {
        if (queue->usable_ring() == nullptr) {
            reactor.require_usable("accept");
        }
        return queue.get();
    }
    CompletionRing* const ring = ReactorCompletions::ring(reactor);
    if (ring == nullptr || !ring->features().accept) {
        return nullptr;
    }
    reactor.require_usable("accept");
    queue.reset(new AcceptQueue{reactor, *ring, fd});
    return queue.get();
}

// accept() of either listener on the completion path: the accepted
// descriptor, or -1 with `error` set when `error` is given (thrown otherwise).
template <class Listener>
Task<int> accept_completed(Listener& listener, AcceptQueue& queue, std::error_code* error, std::stop_token token) {
    for (;;) {
        std::error_code failure;
        const int fd = queue.take(failure);
        if (fd >= 0) {
            if (error != nullptr) {
                error->clear();
            }
            co_return fd;
        }
        if (failure) {
            if (error == nullptr) {
                throw_system_error(failure.value(), fmt::format("accept on {}", listener.local_address()),
                                   listener.fileno());
            }
            *error = failure;
            co_return -1;  // not retried: the connection stays queued
        }
        co_await AcceptQueue::Wait{queue, listener.reactor(), token};
    }
}

}  // namespace

}  // namespace detail

// ----- TcpListener ----------------------------------------------------------------

std::optional<TcpListener> TcpListener::open(Reactor& reactor, const SocketAddress& address,
                                             const ListenOptions& options, std::error_code& error,
                                             std::string* failed) {
    reactor.require_usable("TcpListener::bind");
    detail::require_ip(address, "TcpListener::bind");
    const int fd = detail::open_socket(address.family(), SOCK_STREAM, error);
    if (fd < 0) {
        if (failed != nullptr) {
            *failed = detail::socket_call(address.family(), SOCK_STREAM);
        }
        return std::nullopt;
    }
    TcpListener listener{reactor, fd};
    const auto option = [&](int level, int name, int value, std::string_view what) {
        if (detail::set_option(fd, level, name, value, error)) {
            return true;
        }
        if (failed != nullptr) {
            *failed = fmt::format("setsockopt({}) on fd {}", what, fd);
        }
        return false;
    };
    if (options.reuse_address && !option(SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")) {
        return std::nullopt;
    }
    if (options.reuse_port && !option(SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT")) {
        return std::nullopt;
    }
    // Set either way, so "::" means the same whatever net.ipv6.bindv6only says.
    if (address.is_ipv6() && !option(IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0, "IPV6_V6ONLY")) {
        return std::nullopt;
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("bind {}", address);
        }
        return std::nullopt;
    }
    if (::listen(fd, options.backlog) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("listen on {} on fd {}", address, fd);
        }
        return std::nullopt;
    }
    listener.local_ = listener.Socket::local_address();
    error.clear();
    return listener;
}

TcpListener TcpListener::bind(Reactor& reactor, const SocketAddress& address, const ListenOptions& options) {
    std::error_code error;
    std::string failed;
    std::optional<TcpListener> listener = open(reactor, address, options, error, &failed);
    if (!listener) {
        throw_system_error(error.value(), failed);
    }
    return std::move(*listener);
}

std::optional<TcpListener> TcpListener::bind(Reactor& reactor, const SocketAddress& address, std::error_code& error,
                                             const ListenOptions& options) {
    return open(reactor, address, options, error, nullptr);
}

void TcpListener::close() noexcept {
    accepted_.reset();
    Socket::close();
}

int TcpListener::release() noexcept {
    accepted_.reset();
    return Socket::release();
}

std::optional<TcpStream> TcpListener::try_accept(std::error_code& error) noexcept {
    if (accepted_ && is_open()) {
        try {
            if (const int fd = accepted_->take(error); fd >= 0) {
                return TcpStream{reactor(), fd, detail::peer_of(fd)};
            }
        } catch (...) {
            // The ring refused to start the accept again: the kernel's call below answers.
        }
        if (error) {
            return std::nullopt;
        }
    }
    SocketAddress peer;
    const int fd = detail::accept_one(fileno(), peer, error);
    if (fd < 0) {
        return std::nullopt;
    }
    return TcpStream{reactor(), fd, peer};
}

namespace {

// One accept attempt for the awaiting accept() of either listener: true
// with `out` set, false when none is queued, std::system_error otherwise.
template <class Listener, class Stream>
bool accept_now(Listener& listener, Stream& out) {
    std::error_code error;
    std::optional<Stream> stream = listener.try_accept(error);
    if (stream) {
        out = std::move(*stream);
        return true;
    }
    if (error) {
        throw_system_error(error.value(), fmt::format("accept on {}", listener.local_address()), listener.fileno());
    }
    return false;
}

}  // namespace

Task<TcpStream> TcpListener::accept(std::stop_token token) {
    require_open("accept");
    if (detail::AcceptQueue* queue = detail::accept_queue(reactor(), fileno(), accepted_)) {
        const int fd = co_await detail::accept_completed(*this, *queue, nullptr, std::move(token));
        co_return TcpStream{reactor(), fd, detail::peer_of(fd)};
    }
    TcpStream accepted;
    while (!accept_now(*this, accepted)) {
        co_await readable(token);
    }
    co_return accepted;
}

Task<TcpStream> TcpListener::accept(std::error_code& error, std::stop_token token) {
    require_open("accept");
    if (detail::AcceptQueue* queue = detail::accept_queue(reactor(), fileno(), accepted_)) {
        const int fd = co_await detail::accept_completed(*this, *queue, &error, std::move(token));
        if (fd < 0) {
            co_return TcpStream{};
        }
        co_return TcpStream{reactor(), fd, detail::peer_of(fd)};
    }
    for (;;) {
        std::optional<TcpStream> accepted = try_accept(error);
        if (accepted) {
            co_return std::move(*accepted);
        }
        if (error) {
            co_return TcpStream{};  // not retried: the connection stays queued
        }
        co_await readable(token);
    }
}

// ----- UnixListener ---------------------------------------------------------------

UnixListener::UnixListener(UnixListener&& other) noexcept
    : Socket{std::move(other)},
      local_{other.local_},
      device_{other.device_},
      inode_{other.inode_},
      creator_{other.creator_},
      owns_path_{std::exchange(other.owns_path_, false)},
      accepted_{std::move(other.accepted_)} {}

UnixListener& UnixListener::operator=(UnixListener&& other) noexcept {
    if (this != &other) {
        close();
        Socket::operator=(std::move(other));
        local_ = other.local_;
        device_ = other.device_;
        inode_ = other.inode_;
        creator_ = other.creator_;
        owns_path_ = std::exchange(other.owns_path_, false);
        accepted_ = std::move(other.accepted_);
    }
    return *this;
}

UnixListener::~UnixListener() {
    unlink_path();
}

void UnixListener::close() noexcept {
    unlink_path();
    accepted_.reset();
    Socket::close();
}

int UnixListener::release() noexcept {
    accepted_.reset();
    return Socket::release();
}

void UnixListener::unlink_path() noexcept {
    if (!std::exchange(owns_path_, false) || creator_ != ::getpid()) {
        return;  // a forked child's copy: the path is the parent's
    }
    // Only the file this listener made: another server may have replaced it.
    const std::string path{local_.path()};
    struct stat info {};
    if (::lstat(path.c_str(), &info) == 0 && info.st_dev == device_ && info.st_ino == inode_) {
        ::unlink(path.c_str());
    }
}

std::optional<UnixListener> UnixListener::open(Reactor& reactor, const SocketAddress& address,
                                               const UnixListenOptions& options, std::error_code& error,
                                               std::string* failed) {
    reactor.require_usable("UnixListener::bind");
    detail::require_unix(address, "UnixListener::bind");
    const int fd = detail::open_socket(AF_UNIX, SOCK_STREAM, error);
    if (fd < 0) {
        if (failed != nullptr) {
            *failed = detail::socket_call(AF_UNIX, SOCK_STREAM);
        }
        return std::nullopt;
    }
    UnixListener listener{reactor, fd};
    const bool has_file = !address.path().empty() && !address.is_abstract();
    const std::string path{has_file ? address.path() : std::string_view{}};
    struct stat info {};
    if (has_file && options.remove_stale && ::lstat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode)) {
        ::unlink(path.c_str());
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("bind {}", address);
        }
        return std::nullopt;
    }
    listener.local_ = address;
    if (has_file && options.unlink_on_close && ::lstat(path.c_str(), &info) == 0) {
        listener.device_ = static_cast<std::uint64_t>(info.st_dev);
        listener.inode_ = static_cast<std::uint64_t>(info.st_ino);
        listener.creator_ = ::getpid();
        listener.owns_path_ = true;
    }
    if (::listen(fd, options.backlog) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("listen on {} on fd {}", address, fd);
        }
        return std::nullopt;  // the listener removes the path it made
    }
    error.clear();
    return listener;
}

UnixListener UnixListener::bind(Reactor& reactor, const SocketAddress& address, const UnixListenOptions& options) {
    std::error_code error;
    std::string failed;
    std::optional<UnixListener> listener = open(reactor, address, options, error, &failed);
    if (!listener) {
        throw_system_error(error.value(), failed);
    }
    return std::move(*listener);
}

std::optional<UnixListener> UnixListener::bind(Reactor& reactor, const SocketAddress& address, std::error_code& error,
                                               const UnixListenOptions& options) {
    return open(reactor, address, options, error, nullptr);
}

std::optional<UnixStream> UnixListener::try_accept(std::error_code& error) noexcept {
    if (accepted_ && is_open()) {
        try {
            if (const int fd = accepted_->take(error); fd >= 0) {
                return UnixStream{reactor(), fd, detail::peer_of(fd)};
            }
        } catch (...) {
            // As TcpListener::try_accept().
        }
        if (error) {
            return std::nullopt;
        }
    }
    SocketAddress peer;
    const int fd = detail::accept_one(fileno(), peer, error);
    if (fd < 0) {
        return std::nullopt;
    }
    return UnixStream{reactor(), fd, peer};
}

Task<UnixStream> UnixListener::accept(std::stop_token token) {
    require_open("accept");
    if (detail::AcceptQueue* queue = detail::accept_queue(reactor(), fileno(), accepted_)) {
        const int fd = co_await detail::accept_completed(*this, *queue, nullptr, std::move(token));
        co_return UnixStream{reactor(), fd, detail::peer_of(fd)};
    }
    UnixStream accepted;
    while (!accept_now(*this, accepted)) {
        co_await readable(token);
    }
    co_return accepted;
}

Task<UnixStream> UnixListener::accept(std::error_code& error, std::stop_token token) {
    require_open("accept");
    if (detail::AcceptQueue* queue = detail::accept_queue(reactor(), fileno(), accepted_)) {
        const int fd = co_await detail::accept_completed(*this, *queue, &error, std::move(token));
        if (fd < 0) {
            co_return UnixStream{};
        }
        co_return UnixStream{reactor(), fd, detail::peer_of(fd)};
    }
    for (;;) {
        std::optional<UnixStream> accepted = try_accept(error);
        if (accepted) {
            co_return std::move(*accepted);
        }
        if (error) {
            co_return UnixStream{};  // not retried: the connection stays queued
        }
        co_await readable(token);
    }
}

}  // namespace muxio
