// Sockets for coroutines: addresses; TCP, UDP and Unix-domain sockets whose
// operations are awaitable; a buffered reader for lines and delimiters;
// name resolution off the loop.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "muxio/awaitables.hpp"
#include "muxio/reactor.hpp"
#include "muxio/task.hpp"

namespace muxio {

// ----- Addresses ----------------------------------------------------------------

/// A socket address by value: IPv4, IPv6 or Unix-domain (a path, or a name in
/// Linux's abstract namespace), over `sockaddr_storage`. Trivially copyable.
///
/// A default-constructed address is *unspecified* (family AF_UNSPEC, size 0).
/// Formatted with fmt or to_string() as `127.0.0.1:80`, `[::1]:80`,
/// `[fe80::1%2]:80`, `unix:/run/app.sock`, `unix:@name` (abstract) or
/// `unix:<unnamed>`; parse() reads all of these back but the last.
/// std::hash is specialized, consistent with `==` (see hash()), so it can key
/// an unordered container.
class SocketAddress {
public:
    /// The unspecified address.
    SocketAddress() noexcept;
    /// Copies `size` bytes of an address the kernel filled in.
    /// std::invalid_argument if `size` exceeds capacity().
    SocketAddress(const sockaddr* address, socklen_t size);

    /// A numeric IPv4 address ("127.0.0.1") and port. std::invalid_argument
    /// if `host` is not one; never resolves names (see resolve()).
    [[nodiscard]] static SocketAddress ipv4(std::string_view host, std::uint16_t port);
    /// A numeric IPv6 address ("::1", "fe80::1%eth0" or "fe80::1%2", without
    /// brackets) and port. std::invalid_argument if `host` is not one.
    [[nodiscard]] static SocketAddress ipv6(std::string_view host, std::uint16_t port);
    /// A numeric IPv4 or IPv6 host, told apart by its form (an IPv6 one
    /// without brackets), and a port: how a command line's --bind and --port
    /// become an address. nullopt for anything else, a name included (see
    /// resolve()).
    [[nodiscard]] static std::optional<SocketAddress> ip(std::string_view host, std::uint16_t port) noexcept;
    /// A Unix-domain socket path. std::invalid_argument if it is empty, holds
    /// a NUL byte or is longer than `sun_path` allows (107 bytes on Linux).
    [[nodiscard]] static SocketAddress unix_path(std::string_view path);
    /// A name in Linux's abstract Unix-domain namespace (no file; gone with
    /// its last socket). std::invalid_argument if longer than 107 bytes.
    [[nodiscard]] static SocketAddress unix_abstract(std::string_view name);

    /// Reads what to_string() writes: "1.2.3.4:80", "[::1]:80", "unix:/path",
    /// "unix:@abstract". nullopt for anything else (a name to resolve, a
    /// missing or out-of-range port).
    [[nodiscard]] static std::optional<SocketAddress> parse(std::string_view text) noexcept;
    /// parse(), throwing std::invalid_argument (naming `text`) on failure.
    [[nodiscard]] static SocketAddress from_string(std::string_view text);

    /// AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC when unspecified.
    [[nodiscard]] int family() const noexcept;
    /// family() is AF_INET.
    [[nodiscard]] bool is_ipv4() const noexcept { return family() == AF_INET; }
    /// family() is AF_INET6 (an IPv4-mapped address included).
    [[nodiscard]] bool is_ipv6() const noexcept { return family() == AF_INET6; }
    /// family() is AF_UNIX: a path, an abstract name, or unnamed.
    [[nodiscard]] bool is_unix() const noexcept { return family() == AF_UNIX; }
    /// 127.0.0.0/8, ::1, or an IPv4-mapped 127.0.0.0/8.
    [[nodiscard]] bool is_loopback() const noexcept;

    /// The port in host order; 0 for a Unix-domain or unspecified address.
    [[nodiscard]] std::uint16_t port() const noexcept;
    /// A copy with another port; a non-IP address is returned unchanged.
    [[nodiscard]] SocketAddress with_port(std::uint16_t port) const noexcept;
    /// The numeric host ("127.0.0.1", "::1", "fe80::1%2"); empty if not IP.
    [[nodiscard]] std::string host() const;
    /// A Unix-domain path, or an abstract name with its leading NUL byte;
    /// empty otherwise. Valid as long as this object.
    [[nodiscard]] std::string_view path() const noexcept;
    /// True for a name in the abstract namespace.
    [[nodiscard]] bool is_abstract() const noexcept;

    /// The forms listed above; `<unspecified>` for an unspecified address.
    [[nodiscard]] std::string to_string() const;

    /// The raw address, for system calls.
    [[nodiscard]] const sockaddr* data() const noexcept;
    /// The raw storage, capacity() bytes, for the kernel to fill in; call
    /// resize() afterwards.
    [[nodiscard]] sockaddr* data() noexcept;
    /// The length of the address in data(), as system calls take it.
    [[nodiscard]] socklen_t size() const noexcept { return size_; }
    /// The size of `sockaddr_storage`: room for any address family.
    [[nodiscard]] static constexpr socklen_t capacity() noexcept { return sizeof(sockaddr_storage); }
    /// Sets size() after the kernel wrote into data() (accept, recvfrom).
    /// std::invalid_argument if `size` exceeds capacity().
    void resize(socklen_t size);

    /// Same family, host, port (and IPv6 scope), or same Unix path or name.
    /// IPv6 flow labels are ignored.
    friend bool operator==(const SocketAddress& a, const SocketAddress& b) noexcept;
    /// Consistent with ==.
    [[nodiscard]] std::size_t hash() const noexcept;

private:
    sockaddr_storage storage_;
    socklen_t size_ = 0;
};

// ----- Errors ---------------------------------------------------------------------

/// read_exact() met the end of the stream before its buffer was full.
class IncompleteRead : public std::runtime_error {
public:
    /// `message` names the operation, the peer and the counts.
    IncompleteRead(const std::string& message, std::size_t received, std::size_t expected)
        : std::runtime_error{message}, received_{received}, expected_{expected} {}
    /// Bytes read (and stored at the start of the buffer) before the end.
    [[nodiscard]] std::size_t received() const noexcept { return received_; }
    /// Bytes asked for: the size of the buffer.
    [[nodiscard]] std::size_t expected() const noexcept { return expected_; }

private:
    std::size_t received_;
    std::size_t expected_;
};

/// BufferedReader::read_until() or read_line() found no delimiter within
/// its `max` bytes. The bytes stay in the reader's buffer, unconsumed: drop
/// them with BufferedReader::consume() (or read them with read_some()) to go
/// on, or close the stream.
class LimitOverrun : public std::runtime_error {
public:
    /// `message` names the operation, the peer, the delimiter and the limit.
    LimitOverrun(const std::string& message, std::size_t limit, std::size_t buffered)
        : std::runtime_error{message}, limit_{limit}, buffered_{buffered} {}
    /// The `max` the operation was given.
    [[nodiscard]] std::size_t limit() const noexcept { return limit_; }
    /// Bytes in the reader's buffer when it gave up (at least limit()).
    [[nodiscard]] std::size_t buffered() const noexcept { return buffered_; }

private:
    std::size_t limit_;
    std::size_t buffered_;
};

/// The category of getaddrinfo's EAI_* codes (EAI_SYSTEM errors use
/// std::system_category instead); messages come from gai_strerror().
[[nodiscard]] const std::error_category& resolver_category() noexcept;

// ----- Sockets --------------------------------------------------------------------

class StreamSocket;
class BufferedReader;

namespace detail {

class BufferedIo;
class StreamCompletions;
// A listener's multishot accept on the completion path (lib/net/listener.cpp).
class AcceptQueue;
struct AcceptQueueDeleter {
    void operator()(AcceptQueue* queue) const noexcept;
};
using AcceptQueuePointer = std::unique_ptr<AcceptQueue, AcceptQueueDeleter>;

// One read or write of a StreamSocket, awaited without a coroutine frame of
// its own: it lives in the awaiting coroutine's frame (or in a Task made from
// it), tries the system call in await_ready(), and when that would block,
// waits on the socket's FdWatch with an Attempt that does the I/O on
// readiness, so the coroutine resumes once, with the operation over.
//
// Writes queue on their socket in the order they were awaited. The first
// one (the head) waits on the watch; the others are parked (a ReactorWait
// that registers nothing, ended by a stop request like any other) until
// the head ends: then the next one replaces its parked wait by the watch's
// write wait, or, when it has to end without writing (a failed or closed
// socket, a stop already requested), is resumed in the next iteration.
//
// On a reactor with a completion ring (io_uring, lib/net/stream.cpp) the
// operation runs on the ring instead (on_ring_): a read takes the bytes the
// stream's multishot receive queued, waiting for the receive's notification
// when none are; the head of the write queue submits a send of the caller's
// buffer and resumes on its completion. A stop request then cancels the
// send and resumes only once its final completion came.
class StreamIo {
public:
    enum class Op : std::uint8_t { read_some, read_exact, write_some, write_all };

    StreamIo(StreamSocket& socket, Op op, std::span<std::byte> buffer, std::stop_token token) noexcept
        : socket_{&socket}, read_buffer_{buffer}, token_{std::move(token)}, op_{op} {}
    StreamIo(StreamSocket& socket, Op op, std::span<const std::byte> buffer, std::stop_token token) noexcept
        : socket_{&socket}, write_buffer_{buffer}, token_{std::move(token)}, op_{op} {}
    // Precondition: not awaited yet (a Task is made of it before it runs).
    StreamIo(StreamIo&& other) noexcept
        : socket_{other.socket_},
          read_buffer_{other.read_buffer_},
          write_buffer_{other.write_buffer_},
          token_{std::move(other.token_)},
          op_{other.op_} {}
    StreamIo& operator=(StreamIo&&) = delete;
    StreamIo(const StreamIo&) = delete;
    StreamIo& operator=(const StreamIo&) = delete;
    ~StreamIo() {
        if (on_ring_) [[unlikely]] {
            leave_ring();  // first: the kernel may still read the buffer
        }
        if (armed_) {
            wait_.destroy();
        }
        if (queued_) [[unlikely]] {
            leave_queue(true);  // as a cancellation: part of a message may be out
        }
    }

    // std::logic_error if the socket is closed, or if this operation was
    // awaited already (its wait and its progress belong to that await).
    bool await_ready();
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiter) {
        if (on_ring_) {
            handle_ = awaiter.address();
            ambient_ = ambient_stop_token(awaiter);
            if (queued_ && !is_head()) {
                return wait_in_queue().await_suspend(awaiter);
            }
            return start_on_ring();
        }
        if (queued_) {
            handle_ = awaiter.address();
            resume_as_head_ = &suspend_on_watch<Promise>;
            if (!is_head()) {
                return wait_in_queue().await_suspend(awaiter);
            }
            on_watch_ = true;
        }
        return arm().await_suspend(awaiter);
    }
    // The bytes moved; throws what the operation ended with.
    std::size_t await_resume() {
        if (on_ring_) {
            return finish_on_ring();
        }
        if (queued_ || failure_ || ended_in_queue_) [[unlikely]] {
            return finish_queued();
        }
        if (armed_) {
            wait_->await_resume();  // muxio::Cancelled
        }
        if (error_ != 0 || end_of_stream_) [[unlikely]] {
            fail();
        }
        return done_;
    }

private:
    friend class ::muxio::StreamSocket;
    [[noreturn]] void fail() const;
    [[nodiscard]] bool reading() const noexcept { return op_ == Op::read_some || op_ == Op::read_exact; }
    [[nodiscard]] bool is_head() const noexcept;
    ReactorWait& arm();
    ReactorWait& wait_in_queue();
    std::size_t finish_queued();
    // Leaves the socket's write queue; `cancelled`: part of a message may be
    // out, which breaks the socket's write side. Starts the next write.
    void leave_queue(bool cancelled) noexcept;
    // This write became the head: waits on the watch, or ends (see the class comment).
    // False if it ended.
    bool start_as_head() noexcept;
    // Takes this write, the head, out of the queue.
    void unlink_head() noexcept;
    // Ends a write that left the queue without writing: resumes it in the
    // next iteration with `failure` (none: Cancelled).
    void end_from_queue(std::exception_ptr failure) noexcept;
    template <class Promise>
    static bool suspend_on_watch(StreamIo& self) {
        return self.wait_->await_suspend(std::coroutine_handle<Promise>::from_address(self.handle_));
    }
    // One round of system calls: true once the operation is over.
    bool attempt() noexcept;
    static bool attempt_on_ready(void* self) noexcept { return static_cast<StreamIo*>(self)->attempt(); }

    // The completion path (see the class comment).
    friend class StreamCompletions;
    struct RingStop {
        StreamIo* io;
        void operator()() const noexcept { io->on_ring_stop(); }
    };
    // await_ready() on the ring: true when the operation is over at once.
    bool ready_on_ring(StreamCompletions& completions);
    // Queues this write behind the socket's others (or as their head).
    void join_write_queue(StreamSocket& socket) noexcept;
    // Takes queued bytes: true once the read is over.
    bool read_from_ring() noexcept;
    // The reader waits for bytes, or the head submits its send. False when
    // a stop was requested already (nothing started: it ends Cancelled).
    bool start_on_ring();
    // The head of the queue submits its send (after the writes before it).
    static bool start_on_ring_as_head(StreamIo& self);
    void submit_send();
    static void on_sent(void* context, std::int32_t result, std::uint32_t flags);
    // The receive queued bytes or ended, and this read waits.
    void on_ring_data() noexcept;
    void resume_from_ring() noexcept;
    std::size_t finish_on_ring();
    void listen_for_ring_stop();
    void stop_listening_on_ring() noexcept;
    // A stop callback: posts on_ring_stop_posted() to the loop (any thread).
    void on_ring_stop() noexcept;
    void on_ring_stop_posted() noexcept;
    // No completion will resume this operation any more (its frame goes,
    // the socket closes, or the reactor does): detaches what is in flight,
    // waiting for a send's end so that the kernel is done with the buffer.
    void leave_ring() noexcept;

    // What an attempt reads and writes in the first 64 bytes (see
    // ReactorWait's members): the frame is cold when the fd turns ready.
    StreamSocket* socket_;
    std::span<std::byte> read_buffer_;
    std::span<const std::byte> write_buffer_;
    std::size_t done_ = 0;
    std::stop_token token_;
    int error_ = 0;               // errno of the failed call
    bool end_of_stream_ = false;  // read_exact met it
    bool armed_ = false;          // wait_ is alive
    bool awaited_ = false;
    Op op_;
    bool queued_ = false;          // in the socket's write queue
    bool on_watch_ = false;        // the head, waiting on the watch
    bool ended_in_queue_ = false;  // ended by end_from_queue()
    StreamIo* next_ = nullptr;     // the next write in the queue
    void* handle_ = nullptr;       // the awaiting coroutine, while queued
    bool (*resume_as_head_)(StreamIo& self) = nullptr;
    std::exception_ptr failure_;  // what end_from_queue() ended it with
    ManualLifetime<ReactorWait> wait_;

    // The completion path's state; untouched by the readiness path.
    bool on_ring_ = false;             // the operation runs on the completion ring
    bool ring_waiting_ = false;        // the reader waits, or the head's send is in flight
    bool ring_cancelling_ = false;     // a stop request asked the send to end early
    bool ring_cancelled_ = false;      // it ended by a stop request
    bool token_stop_alive_ = false;    // on_token_stop_ is alive
    bool ambient_stop_alive_ = false;  // on_ambient_stop_ is alive
    std::atomic<bool> ring_stop_seen_{false};
    std::uint64_t operation_ = 0;        // the send in flight (a CompletionRing's id)
    std::stop_token ambient_;            // the awaiting task's
    std::shared_ptr<bool> stop_posted_;  // *stop_posted_: the posted stop may still run
    ManualLifetime<std::stop_callback<RingStop>> on_token_stop_;
    ManualLifetime<std::stop_callback<RingStop>> on_ambient_stop_;
};

}  // namespace detail

/// What StreamSocket's reads and writes return: an awaitable, `co_await
/// stream.read_some(buffer)`, that allocates nothing (it runs in the
/// awaiting coroutine's frame) and converts to a Task<T> wherever one is
/// wanted: the combinators, spawn(), run_until_complete(), or a variable.
/// Like a Task it is lazy (nothing happens before it is awaited) and is
/// awaited once (std::logic_error at a second co_await); the socket and the
/// buffer must outlive it.
template <class T>
class [[nodiscard]] StreamOperation {
public:
    /// The Task it converts to.
    using task_type = Task<T>;

    /// Precondition: `other` not awaited yet (as when it is made a Task).
    StreamOperation(StreamOperation&&) noexcept = default;
    StreamOperation& operator=(StreamOperation&&) = delete;
    StreamOperation(const StreamOperation&) = delete;
    StreamOperation& operator=(const StreamOperation&) = delete;
    ~StreamOperation() = default;

    /// Awaiter protocol: tries the system call. std::logic_error for a closed
    /// socket or a second await.
    bool await_ready() { return io_.await_ready(); }
    /// Awaiter protocol: waits for readiness; what Reactor::add_reader() throws.
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiter) {
        return io_.await_suspend(awaiter);
    }
    /// Awaiter protocol: the result, or what the operation failed with
    /// (std::system_error, IncompleteRead, muxio::Cancelled).
    T await_resume() {
        if constexpr (std::is_void_v<T>) {
            (void)io_.await_resume();
        } else {
            return io_.await_resume();
        }
    }

    /// A Task that awaits the operation. Precondition: not awaited yet.
    // NOLINTNEXTLINE(google-explicit-constructor): usable where a Task is.
    operator Task<T>() && { return into_task(std::move(*this)); }

private:
    friend class StreamSocket;
    explicit StreamOperation(detail::StreamIo io) noexcept : io_{std::move(io)} {}

    static Task<T> into_task(StreamOperation operation) {
        if constexpr (std::is_void_v<T>) {
            co_await operation;
        } else {
            co_return co_await operation;
        }
    }

    detail::StreamIo io_;
};

/// What the sockets share: an owned non-blocking, close-on-exec descriptor
/// and the Reactor whose awaits it uses. Not used on its own.
///
/// Contract for every socket type:
/// - Move-only. Destruction (or close()) removes any reader or writer the
///   reactor has for the descriptor, then closes it. A socket must not be
///   destroyed while an operation of its own is pending (cancel the
///   operation first: the awaiting task holds `this`).
/// - A socket belongs to its reactor's thread, as the reactor's methods do:
///   make, move and destroy it there (a socket is one of the reactor's
///   close hooks, which a move re-links), or while the reactor is not
///   running.
/// - A socket may outlive its reactor. Closing (or destroying) the reactor
///   detaches it: is_open() is false and fileno() -1 from then on, every
///   operation throws std::logic_error "<operation>: reactor is closed",
///   the try_* forms fail with EBADF, and a pending operation stays
///   suspended (its task may be destroyed at any time, also after the
///   reactor). The socket still owns its descriptor: release() hands it
///   back (to adopt it on another reactor), close() and destruction close
///   it, touching nothing else.
/// - Every function that binds a socket to a reactor (bind, open, adopt,
///   pair, connect) refuses a closed reactor, and the parent's reactor in a
///   forked child, with what Reactor::add_reader() throws there, before it
///   opens anything. In a forked child a socket inherited from the parent
///   is the child's copy, still bound to the parent's reactor, which cannot
///   run there: close it (or release() its descriptor to adopt it on the
///   child's own reactor). Closing or destroying it closes that copy only
///   and leaves the registrations it shares with the parent alone (a
///   UnixListener leaves its path too). An operation awaited on it in the
///   child throws the fork error when it has to register, and otherwise
///   never resumes.
/// - Awaitable operations return a lazy Task, or for a stream's reads and
///   writes a StreamOperation (which becomes a Task where one is needed),
///   that refers to the socket and to the buffer passed in: both must
///   outlive it. They try the system call first and wait for readiness only
///   when it would block, so a ready socket costs no reactor round trip.
/// - At most one pending read-side operation per socket; a second one
///   throws std::logic_error, as muxio::readable() does. A stream's writes
///   (write_some, write_all) queue instead: see StreamSocket.
/// - Cancellation: each operation listens to its `token` and to the ambient
///   token of the task awaiting it, and throws muxio::Cancelled when one is
///   stopped while it waits; its reactor registration is removed. How much
///   of a partly done transfer (read_exact, write_all) was moved is then
///   unspecified.
/// - Errors: std::system_error naming the operation and the address
///   ("connect 127.0.0.1:1: Connection refused", "read from 10.0.0.2:80 on
///   fd 7: Connection reset by peer"); std::logic_error for an operation on
///   a closed socket. Writes never raise SIGPIPE: a vanished peer surfaces
///   as EPIPE or ECONNRESET.
/// - The try_* forms never throw or wait: they return the result, or
///   nullopt with `error` cleared when the call would block, or nullopt
///   with `error` set when it failed.
class Socket {
public:
    /// The descriptor, -1 once closed, released or detached.
    [[nodiscard]] int fileno() const noexcept { return watch_.fd(); }
    /// fileno() >= 0: false once closed, released or detached.
    [[nodiscard]] bool is_open() const noexcept { return watch_.fd() >= 0; }
    /// The reactor the socket waits on. Precondition: the socket is bound to
    /// one (not default-constructed, moved from, or detached by the
    /// reactor's close()).
    [[nodiscard]] Reactor& reactor() const noexcept { return *watch_.reactor(); }

    /// Removes the descriptor's reactor registrations and closes it.
    /// Harmless when already closed.
    void close() noexcept;
    /// Gives up the descriptor without closing it; the socket is then
    /// closed. The socket's own readiness registration is removed first (a
    /// pending await on it ends with muxio::Cancelled). Returns the
    /// descriptor of a detached socket too; -1 if it already was closed.
    [[nodiscard]] int release() noexcept;

    /// getsockname(). std::system_error on failure.
    [[nodiscard]] SocketAddress local_address() const;

    /// `co_await socket.readable()`: waits until the descriptor is readable,
    /// like muxio::readable(), for loops over the try_* forms that allocate
    /// nothing. Unlike muxio::readable() the registration outlives the await:
    /// the socket keeps it until it is closed or nobody waited when the fd
    /// became ready, so a read loop makes no epoll_ctl per read. Hence the
    /// socket's descriptor must not be given reader or writer callbacks of
    /// one's own. Cancelled as muxio::readable(); also when the socket is
    /// closed while the wait is pending. std::logic_error if another task
    /// waits to read this socket. Precondition: the socket is open.
    [[nodiscard]] detail::ReactorWait readable(std::stop_token token = {}) const {
        return {detail::ReactorWait::Kind::read, watch_, std::move(token)};
    }
    /// Like readable() for writability.
    [[nodiscard]] detail::ReactorWait writable(std::stop_token token = {}) const {
        return {detail::ReactorWait::Kind::write, watch_, std::move(token)};
    }

protected:
    /// A closed socket.
    Socket() noexcept = default;
    /// Owns `fd`, an open non-blocking descriptor, on `reactor`.
    /// Precondition: `reactor` is usable (Reactor::require_usable()).
    Socket(Reactor& reactor, int fd) noexcept : watch_{reactor, fd} {}
    /// Takes the descriptor, its lasting registration and a pending
    /// readable()/writable() await along; `other` ends closed. A pending read
    /// or write refers to the socket itself: none may be pending on `other`.
    Socket(Socket&& other) noexcept = default;
    /// close(), then as the move constructor.
    Socket& operator=(Socket&& other) noexcept;
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;
    // Protected and non-virtual: a socket is never deleted through a Socket*.
    ~Socket() { close(); }

    /// std::logic_error("<operation>: socket is closed") unless open;
    /// "<operation>: reactor is closed" for a detached socket.
    void require_open(std::string_view operation) const {
        if (!is_open()) [[unlikely]] {
            refuse_closed(operation);
        }
    }

private:
    friend class detail::StreamIo;
    friend class detail::BufferedIo;
    [[noreturn, gnu::cold]] void refuse_closed(std::string_view operation) const;

    // The descriptor and the reactor with the socket's readiness
    // registration. Mutable: awaiting readiness does not change the socket,
    // only whether the reactor watches it.
    mutable detail::FdWatch watch_;
};

/// How shutdown() ends a stream.
enum class ShutdownHow {
    read,   ///< SHUT_RD: ends the reading side.
    write,  ///< SHUT_WR: no more writes; the peer reads the end of the stream.
    both    ///< SHUT_RDWR: both.
};

/// A connected byte stream: what TcpStream and UnixStream share.
///
/// Writes from several tasks queue on the socket in the order they are
/// awaited (started by co_await, or when the Task made of one starts), and
/// go out one after the other, each message whole: a write starts only
/// once the one before it has ended. A write awaited while none is queued
/// tries the kernel at once (no reactor round trip). Each completes or
/// fails on its own:
/// - Cancelling a queued write that has not started takes it out of the
///   queue; the others go on untouched. Cancelling write_all() part-way
///   through its message (some bytes sent, not all) cannot take the bytes
///   back, and whatever is written next would follow a truncated message:
///   the write side is broken then. The cancelled write throws
///   muxio::Cancelled, and every write queued behind it or awaited later
///   fails with std::system_error ECANCELED, writing nothing; reads go on,
///   and close() is what is left to do. A write_some() sends nothing until
///   it returns, so cancelling one never breaks the stream.
/// - A write that fails (the peer vanished: EPIPE, ECONNRESET; never
///   SIGPIPE) breaks the write side the same way: the writes queued behind
///   it, and later ones, fail with the same error without a system call,
///   in the next iteration of the loop.
/// - close() (or destruction, or release()) ends queued writes with
///   muxio::Cancelled.
///
/// On a reactor whose selector is io_uring and whose kernel has the
/// operations (unless MUXIO_COMPLETIONS=off is set), reads and writes run
/// on the ring's completions instead of readiness, with the same results
/// and errors: the first read starts a multishot receive whose bytes wait
/// in the ring's buffers (at most 16 of 4 KiB per stream; the receive
/// pauses beyond that) until a read takes them, and a write submits a send
/// of the caller's buffer and resumes once the kernel is done with it,
/// partial sends resubmitted. Neither makes a system call of its own: the
/// requests go with the loop's next wait. A stop request cancels the send
/// in flight and resumes only after its final completion; a pending read
/// ends at once, the bytes staying queued for the next. Closing the stream
/// (or destroying the awaiting frame) with a send in flight waits for the
/// kernel to finish with the buffer. release() drops bytes received and
/// not read yet.
class StreamSocket : public Socket {
public:
    /// Reads what is there, at most `buffer.size()` bytes, waiting until at
    /// least one byte (or the end) arrives. Returns the byte count; 0 means
    /// the peer ended the stream (or `buffer` is empty). Tries the read
    /// first, unless the previous read emptied the socket: then it waits for
    /// readiness first, which saves a failing read per message in a
    /// request-response exchange. Awaited directly, the read happens in the
    /// reactor callback that resumes the task, so no other task of the loop
    /// runs between the read and the code after the co_await: tasks may read
    /// into one shared buffer if each is done with the bytes (or copied
    /// them) before it next suspends.
    StreamOperation<std::size_t> read_some(std::span<std::byte> buffer, std::stop_token token = {}) {
        return StreamOperation<std::size_t>{{*this, detail::StreamIo::Op::read_some, buffer, std::move(token)}};
    }
    /// Fills `buffer` completely. muxio::IncompleteRead if the stream ends first.
    StreamOperation<void> read_exact(std::span<std::byte> buffer, std::stop_token token = {}) {
        return StreamOperation<void>{{*this, detail::StreamIo::Op::read_exact, buffer, std::move(token)}};
    }
    /// Writes what fits now, at least one byte: returns the byte count.
    StreamOperation<std::size_t> write_some(std::span<const std::byte> buffer, std::stop_token token = {}) {
        return StreamOperation<std::size_t>{{*this, detail::StreamIo::Op::write_some, buffer, std::move(token)}};
    }
    /// Writes all of `buffer`, waiting for room as needed.
    StreamOperation<void> write_all(std::span<const std::byte> buffer, std::stop_token token = {}) {
        return StreamOperation<void>{{*this, detail::StreamIo::Op::write_all, buffer, std::move(token)}};
    }
    /// write_all() of text; `text` must outlive the operation.
    StreamOperation<void> write_all(std::string_view text, std::stop_token token = {}) {
        return write_all(std::as_bytes(std::span{text.data(), text.size()}), std::move(token));
    }

    /// One recv(): bytes read (0 at the end of the stream), or nullopt (see
    /// Socket). Once a read started the stream's receive on the completion
    /// path (see the class comment), it takes the bytes the receive queued
    /// instead, without a system call, and nullopt means none are queued yet.
    std::optional<std::size_t> try_read(std::span<std::byte> buffer, std::error_code& error) noexcept;
    /// One send() with MSG_NOSIGNAL: bytes written, or nullopt (see Socket).
    /// A system call on the completion path too; it does not wait for the
    /// queued writes, so it is meant for a stream with none pending.
    std::optional<std::size_t> try_write(std::span<const std::byte> buffer, std::error_code& error) noexcept;

    /// Whether this stream's reads and writes run on its reactor's completion
    /// ring (see the class comment) rather than readiness: there a
    /// try_write() costs a system call that write_all() would spare. False
    /// for a closed stream.
    [[nodiscard]] bool uses_completions() const noexcept;

    /// shutdown(2): ends the reading side, the writing side (the peer reads
    /// the end of the stream) or both. std::system_error on failure.
    void shutdown(ShutdownHow how = ShutdownHow::write);

    /// As Socket::close(); queued writes end with muxio::Cancelled (the one
    /// in progress as the socket's pending awaits do, the others in the next
    /// iteration of the loop).
    void close() noexcept;
    /// As Socket::release(); queued writes end as with close().
    [[nodiscard]] int release() noexcept;

    /// The peer, as known when the stream was connected, accepted or adopted
    /// (unspecified if the kernel could not tell then). Stays available after
    /// the connection broke, for messages.
    [[nodiscard]] const SocketAddress& peer_address() const noexcept { return peer_; }

protected:
    /// A closed stream.
    StreamSocket() noexcept = default;
    /// Owns the connected `fd`, whose peer is `peer` (see Socket's constructor).
    StreamSocket(Reactor& reactor, int fd, const SocketAddress& peer) noexcept : Socket{reactor, fd}, peer_{peer} {}
    /// As Socket's move constructor; the peer address and the queued
    /// writes come along.
    StreamSocket(StreamSocket&& other) noexcept;
    /// As Socket's move assignment (close() first).
    StreamSocket& operator=(StreamSocket&& other) noexcept;
    /// close().
    ~StreamSocket() { close(); }

    /// std::system_error "<verb> <peer> on fd N: <errno text>".
    [[noreturn]] void fail(int errnum, std::string_view verb) const;

private:
    friend class detail::StreamIo;
    friend class detail::BufferedIo;

    // Queued writes end: the head with the watch's release, the others in
    // the next iteration, all with muxio::Cancelled.
    void end_queued_writes() noexcept;
    // The completion path ends (close, release): a send in flight is
    // detached and waited for, a pending read ends with Cancelled in the
    // next iteration, the receive stops and its queued bytes are dropped.
    void end_completions() noexcept;

    // Makes the completion path's state on the first operation, or returns
    // it; null (remembered in no_completions_) when the reactor has no
    // completion ring. The fork error in a forked child.
    detail::StreamCompletions* completions(std::string_view operation);
    // The completion path's receive was started (by a read of the stream itself).
    [[nodiscard]] bool receiving_on_ring() const noexcept;

    // The last read_some()/read_exact() read less than it asked for, so the
    // socket was empty then: the next one waits for readiness before reading.
    // Next to the socket's watch, which a read touches anyway.
    bool drained_ = false;
    // The reactor has no completion ring: reads and writes use readiness.
    bool no_completions_ = false;
    // errno of the write that broke the write side (ECANCELED: one cancelled
    // part-way through); every later write fails with it.
    int write_error_ = 0;
    detail::StreamIo* write_head_ = nullptr;  // the write queue, oldest first
    detail::StreamIo* write_tail_ = nullptr;
    // The completion path's receive and its pending read, made by the first
    // operation on a reactor with a completion ring; null otherwise.
    detail::StreamCompletions* completions_ = nullptr;
    SocketAddress peer_;
};

namespace detail {

// One operation of a BufferedReader, awaited as StreamIo is (in the
// awaiting coroutine's frame, no allocation): it works on the buffered bytes
// in await_ready() and, when it needs more, waits on the socket's watch with
// an Attempt that reads and looks again, so the coroutine resumes once.
class BufferedIo {
public:
    enum class Op : std::uint8_t { read_until, read_line, read_some, read_exact };

    BufferedIo(BufferedReader& reader, Op op, std::string_view delimiter, std::size_t max, std::span<std::byte> buffer,
               std::stop_token token) noexcept
        : reader_{&reader}, out_{buffer}, delimiter_{delimiter}, max_{max}, token_{std::move(token)}, op_{op} {}
    // Precondition: not awaited yet.
    BufferedIo(BufferedIo&& other) noexcept
        : reader_{other.reader_},
          out_{other.out_},
          delimiter_{other.delimiter_},
          max_{other.max_},
          token_{std::move(other.token_)},
          op_{other.op_} {}
    BufferedIo& operator=(BufferedIo&&) = delete;
    BufferedIo(const BufferedIo&) = delete;
    BufferedIo& operator=(const BufferedIo&) = delete;
    ~BufferedIo() {
        if (armed_) {
            wait_.destroy();
        }
    }

    bool await_ready();
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiter) {
        return arm().await_suspend(awaiter);
    }
    // The byte count (read_some, read_exact) or the line's length with its
    // delimiter; throws what the operation ended with.
    std::size_t await_resume() {
        if (armed_) {
            wait_->await_resume();  // muxio::Cancelled
        }
        if (outcome_ != Outcome::done && outcome_ != Outcome::clean_end) [[unlikely]] {
            fail();
        }
        return done_;
    }
    // After await_resume() of read_until/read_line: the line, or nullopt at
    // a clean end of the stream.
    [[nodiscard]] std::optional<std::string_view> line() const noexcept;

private:
    enum class Outcome : std::uint8_t { pending, done, clean_end, end_of_stream, error, overrun };

    [[noreturn]] void fail() const;
    ReactorWait& arm();
    bool attempt() noexcept;
    bool attempt_line() noexcept;
    bool attempt_read() noexcept;
    static bool attempt_on_ready(void* self) noexcept { return static_cast<BufferedIo*>(self)->attempt(); }

    BufferedReader* reader_;
    std::span<std::byte> out_;
    std::string_view delimiter_;
    std::size_t max_;
    std::size_t done_ = 0;
    std::size_t scanned_ = 0;     // bytes after the reader's start searched without a match
    std::size_t line_start_ = 0;  // where the line found starts in the reader's buffer
    std::stop_token token_;
    int error_ = 0;
    Outcome outcome_ = Outcome::pending;
    bool armed_ = false;
    bool awaited_ = false;
    Op op_;
    ManualLifetime<ReactorWait> wait_;
};

}  // namespace detail

/// What BufferedReader's operations return: an awaitable like
/// StreamOperation (lazy, awaited once, allocates nothing, converts to a
/// Task<T>); the reader and the buffer passed in must outlive it.
template <class T>
class [[nodiscard]] BufferedOperation {
public:
    /// The Task it converts to.
    using task_type = Task<T>;

    /// Precondition: `other` not awaited yet.
    BufferedOperation(BufferedOperation&&) noexcept = default;
    BufferedOperation& operator=(BufferedOperation&&) = delete;
    BufferedOperation(const BufferedOperation&) = delete;
    BufferedOperation& operator=(const BufferedOperation&) = delete;
    ~BufferedOperation() = default;

    /// Awaiter protocol: works on the buffered bytes, then tries a read.
    /// std::logic_error for a closed socket or a second await.
    bool await_ready() { return io_.await_ready(); }
    /// Awaiter protocol: waits for readiness; what Reactor::add_reader() throws.
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiter) {
        return io_.await_suspend(awaiter);
    }
    /// Awaiter protocol: the result, or what the operation failed with
    /// (std::system_error, IncompleteRead, LimitOverrun, muxio::Cancelled).
    T await_resume() {
        const std::size_t done = io_.await_resume();
        if constexpr (std::is_void_v<T>) {
            (void)done;
        } else if constexpr (std::is_same_v<T, std::size_t>) {
            return done;
        } else {
            return io_.line();
        }
    }

    /// A Task that awaits the operation. Precondition: not awaited yet.
    // NOLINTNEXTLINE(google-explicit-constructor): usable where a Task is.
    operator Task<T>() && { return into_task(std::move(*this)); }

private:
    friend class BufferedReader;
    explicit BufferedOperation(detail::BufferedIo io) noexcept : io_{std::move(io)} {}

    static Task<T> into_task(BufferedOperation operation) {
        if constexpr (std::is_void_v<T>) {
            co_await operation;
        } else {
            co_return co_await operation;
        }
    }

    detail::BufferedIo io_;
};

/// A read buffer over a StreamSocket (TcpStream, UnixStream): reads up to a
/// delimiter (read_until, read_line) keeping the bytes that came after it
/// for the next read, and reads of a size (read_some, read_exact) that take
/// the buffered bytes first.
///
/// A separate object rather than members of StreamSocket, so that a stream
/// read with fixed-size frames pays for no buffer and the socket's layout
/// stays as it is; it refers to the stream, which it does not own. All
/// reads of a stream must then go through its reader, or bytes buffered
/// here would be skipped. Writes go to the stream itself.
///
/// - The stream must outlive the reader and must not be moved while it is
///   used (the reader keeps its address). One operation at a time, as on the
///   stream (a second pending read is std::logic_error).
/// - A line comes back as a std::string_view into the reader's buffer,
///   valid until the next operation on the reader or its destruction; copy
///   what must live longer. No allocation once the buffer has grown to the
///   longest line: a read loop over lines allocates nothing.
/// - Each operation reads as much as the buffer holds, so a line read is
///   usually one recv() for several lines.
/// - On the completion path (see StreamSocket) the reader reads the socket
///   with system calls, on readiness, as elsewhere; a stream already read
///   through its own read_some() or read_exact() there refuses a reader's
///   operations (std::logic_error), since bytes its receive queued would
///   be skipped.
/// - Cancellation (muxio::Cancelled, as on the stream): read_until and
///   read_line lose nothing (what was read stays buffered for the next
///   call); read_exact has consumed what it stored in its buffer.
class BufferedReader {
public:
    /// The buffer's first size; it grows to the longest line asked for.
    static constexpr std::size_t default_capacity = 4096;

    /// A reader of `stream`, with a buffer of `capacity` bytes (at least 1)
    /// allocated here.
    explicit BufferedReader(StreamSocket& stream, std::size_t capacity = default_capacity);

    /// Reads up to and including `delimiter` (one or more bytes, found also
    /// when they arrive split over several reads). Returns the bytes up to
    /// and including the delimiter, consumed from the reader; or nullopt if
    /// the stream ended with nothing buffered (a clean end).
    ///
    /// Errors: muxio::LimitOverrun if the first `max` bytes hold no whole
    /// delimiter (a line of `max` bytes, delimiter included, is accepted);
    /// the bytes stay buffered. muxio::IncompleteRead if the stream ends
    /// after some bytes but before a delimiter: received() is their count,
    /// expected() is `max`, and the bytes stay buffered (buffered()).
    /// std::system_error for a failed read; std::invalid_argument (at the
    /// co_await) for an empty delimiter or a `max` shorter than it.
    BufferedOperation<std::optional<std::string_view>> read_until(std::string_view delimiter, std::size_t max,
                                                                  std::stop_token token = {}) {
        return BufferedOperation<std::optional<std::string_view>>{
            {*this, detail::BufferedIo::Op::read_until, delimiter, max, {}, std::move(token)}};
    }
    /// read_until("\n", max) returning the line without its "\n" or "\r\n";
    /// nullopt at a clean end. `max` counts the line ending. Errors as
    /// read_until().
    BufferedOperation<std::optional<std::string_view>> read_line(std::size_t max, std::stop_token token = {}) {
        return BufferedOperation<std::optional<std::string_view>>{
            {*this, detail::BufferedIo::Op::read_line, "\n", max, {}, std::move(token)}};
    }
    /// Moves buffered bytes into `buffer` at once if there are any; reads
    /// the stream otherwise, as StreamSocket::read_some() does.
    BufferedOperation<std::size_t> read_some(std::span<std::byte> buffer, std::stop_token token = {}) {
        return BufferedOperation<std::size_t>{
            {*this, detail::BufferedIo::Op::read_some, {}, 0, buffer, std::move(token)}};
    }
    /// Fills `buffer`, buffered bytes first. muxio::IncompleteRead if the
    /// stream ends first (the bytes read are at the start of `buffer`).
    BufferedOperation<void> read_exact(std::span<std::byte> buffer, std::stop_token token = {}) {
        return BufferedOperation<void>{{*this, detail::BufferedIo::Op::read_exact, {}, 0, buffer, std::move(token)}};
    }

    /// The bytes read from the stream and not consumed yet. Valid until the
    /// next operation or consume().
    [[nodiscard]] std::span<const std::byte> buffered() const noexcept {
        return std::span{buffer_}.subspan(begin_, end_ - begin_);
    }
    /// Drops the first `count` buffered bytes (all of them if fewer).
    void consume(std::size_t count) noexcept;
    /// The stream read from.
    [[nodiscard]] StreamSocket& stream() const noexcept { return *stream_; }

private:
    friend class detail::BufferedIo;
    // Room after end_ for one more read: moves the bytes to the front, and
    // grows the buffer only when it is full of them.
    void make_room();

    StreamSocket* stream_;
    std::vector<std::byte> buffer_;
    std::size_t begin_ = 0;  // first byte not consumed
    std::size_t end_ = 0;    // one past the last byte read
};

/// A TCP connection (IPv4 or IPv6).
class TcpStream final : public StreamSocket {
public:
    /// A closed stream, to assign to later.
    TcpStream() noexcept = default;
    /// Moves the socket (see Socket's move constructor); `other` ends closed.
    TcpStream(TcpStream&&) noexcept = default;
    /// Closes this socket, then moves `other` here.
    TcpStream& operator=(TcpStream&&) noexcept = default;
    ~TcpStream() = default;

    /// Opens a socket of `address`'s family and connects it: a non-blocking
    /// connect(), a wait for writability, then SO_ERROR. On failure or
    /// cancellation the half-open socket is closed. A task already cancelled
    /// opens nothing. std::system_error "connect <address>: <reason>";
    /// std::invalid_argument if `address` is not IPv4 or IPv6.
    static Task<TcpStream> connect(Reactor& reactor, SocketAddress address, std::stop_token token = {});
    /// Resolves `host` (muxio::resolve) and tries each address in the
    /// resolver's order until one connects. If none does, std::system_error
    /// with the last failure's code, naming the host and each address tried.
    static Task<TcpStream> connect(Reactor& reactor, std::string host, std::uint16_t port, std::stop_token token = {});
    /// connect() with the kernel's answer in `error` instead of an exception
    /// (asio's convention: a refused connection is an expected failure).
    /// The awaited Task gives the connected stream with `error` cleared, or
    /// a closed stream with `error` set (ECONNREFUSED, ETIMEDOUT, EMFILE
    /// from socket(), ...); the half-open socket is closed then. `error`
    /// must outlive the Task. Mistakes still throw: std::invalid_argument
    /// for an address that is not IPv4 or IPv6, std::logic_error for a
    /// closed reactor; and cancellation throws muxio::Cancelled, as every
    /// await does.
    static Task<TcpStream> connect(Reactor& reactor, SocketAddress address, std::error_code& error,
                                   std::stop_token token = {});
    /// Takes ownership of a connected TCP socket (made non-blocking here;
    /// its close-on-exec flag is left as it is). std::invalid_argument, the
    /// caller still owning `fd`, if it is not an IPv4 or IPv6 stream socket.
    [[nodiscard]] static TcpStream adopt(Reactor& reactor, int fd);

    /// TCP_NODELAY: send small writes at once instead of coalescing them.
    /// std::logic_error if closed, std::system_error if the kernel refuses.
    void set_nodelay(bool enabled);
    /// Whether TCP_NODELAY is set. Errors as set_nodelay().
    [[nodiscard]] bool nodelay() const;

private:
    friend class TcpListener;
    TcpStream(Reactor& reactor, int fd, const SocketAddress& peer) noexcept : StreamSocket{reactor, fd, peer} {}
};

/// A connected Unix-domain stream socket.
class UnixStream final : public StreamSocket {
public:
    /// A closed stream, to assign to later.
    UnixStream() noexcept = default;
    /// Moves the socket (see Socket's move constructor); `other` ends closed.
    UnixStream(UnixStream&&) noexcept = default;
    /// Closes this socket, then moves `other` here.
    UnixStream& operator=(UnixStream&&) noexcept = default;
    ~UnixStream() = default;

    /// Connects to a listening Unix-domain socket. A Unix connect does not
    /// wait for the listener: a full backlog fails at once with EAGAIN
    /// rather than waiting. std::system_error "connect unix:/path: <reason>";
    /// std::invalid_argument if `address` is not Unix-domain.
    static Task<UnixStream> connect(Reactor& reactor, SocketAddress address, std::stop_token token = {});
    /// connect() with the kernel's answer in `error`, as
    /// TcpStream::connect(reactor, address, error, token): ENOENT (no such
    /// path), ECONNREFUSED (nobody listens), EAGAIN (backlog full) come back
    /// with a closed stream. std::invalid_argument if `address` is not
    /// Unix-domain.
    static Task<UnixStream> connect(Reactor& reactor, SocketAddress address, std::error_code& error,
                                    std::stop_token token = {});
    /// Two connected streams (socketpair(2)). std::system_error on failure.
    [[nodiscard]] static std::pair<UnixStream, UnixStream> pair(Reactor& reactor);
    /// Takes ownership of a connected Unix-domain stream socket, as
    /// TcpStream::adopt() does.
    [[nodiscard]] static UnixStream adopt(Reactor& reactor, int fd);

private:
    friend class UnixListener;
    UnixStream(Reactor& reactor, int fd, const SocketAddress& peer) noexcept : StreamSocket{reactor, fd, peer} {}
};

/// How TcpListener::bind() sets up its socket.
struct ListenOptions {
    /// SO_REUSEADDR: rebind a port whose old connections linger in TIME_WAIT.
    bool reuse_address = true;
    /// SO_REUSEPORT: several listeners on one port, the kernel balancing.
    bool reuse_port = false;
    /// IPV6_V6ONLY for an IPv6 address: false lets "::" accept IPv4 too.
    bool ipv6_only = false;
    /// listen(2)'s backlog; the kernel caps it at net.core.somaxconn.
    int backlog = SOMAXCONN;
};

/// A listening TCP socket.
class TcpListener final : public Socket {
public:
    /// A closed listener, to assign to later.
    TcpListener() noexcept = default;
    /// Moves the socket (see Socket's move constructor); `other` ends closed.
    TcpListener(TcpListener&&) noexcept = default;
    /// Closes this socket, then moves `other` here.
    TcpListener& operator=(TcpListener&&) noexcept = default;
    ~TcpListener() = default;

    /// socket(), the options, bind(), listen(). Port 0 lets the kernel pick
    /// one (see local_address()). std::system_error "bind 127.0.0.1:80:
    /// Address already in use" and the like; std::invalid_argument if
    /// `address` is not IPv4 or IPv6.
    [[nodiscard]] static TcpListener bind(Reactor& reactor, const SocketAddress& address,
                                          const ListenOptions& options = {});
    /// bind() with the kernel's refusal (EADDRINUSE, EACCES, EMFILE, ...)
    /// in `error` instead of an exception: the listener with `error`
    /// cleared, or nullopt with `error` set and nothing left open. Mistakes
    /// still throw, as bind() does: std::invalid_argument for an address
    /// that is not IPv4 or IPv6, std::logic_error for a closed reactor.
    [[nodiscard]] static std::optional<TcpListener> bind(Reactor& reactor, const SocketAddress& address,
                                                         std::error_code& error, const ListenOptions& options = {});

    /// Accepts the next connection, waiting for one if none is queued; the
    /// stream's peer_address() says who it is. Connections the peer aborted
    /// while queued are skipped. std::system_error "accept on <address>:
    /// <reason>" otherwise, notably EMFILE/ENFILE (out of descriptors): it
    /// is thrown, never retried, so a server cannot spin on it.
    Task<TcpStream> accept(std::stop_token token = {});
    /// accept() with a failure in `error` instead of an exception: the
    /// awaited Task gives the stream with `error` cleared, or a closed
    /// stream with `error` set (EMFILE, ENFILE, ENOBUFS, ...) at once,
    /// without retrying or waiting: the connection stays queued, so the
    /// caller decides when to try again (after closing something, or a
    /// delay). `error` must outlive the Task. A closed listener throws
    /// std::logic_error and cancellation muxio::Cancelled, as accept().
    Task<TcpStream> accept(std::error_code& error, std::stop_token token = {});
    /// One accept4(): for callback servers driven by Reactor::add_reader.
    /// EMFILE/ENFILE come back in `error`; retrying at once would spin, as
    /// the connection stays queued. Connections the completion path's
    /// accept (see accept()) took already come first.
    std::optional<TcpStream> try_accept(std::error_code& error) noexcept;

    /// Stops accepting (closing connections accepted and not handed out
    /// yet), then closes as Socket::close() does.
    void close() noexcept;
    /// As Socket::release(), after stopping the accept as close() does.
    [[nodiscard]] int release() noexcept;

    /// The bound address, with the port the kernel chose. No system call.
    [[nodiscard]] const SocketAddress& local_address() const noexcept { return local_; }

private:
    TcpListener(Reactor& reactor, int fd) noexcept : Socket{reactor, fd} {}
    // Both bind()s: on failure, nullopt with `error` set and, if `failed`
    // is given, the failing call named there for the exception's message.
    static std::optional<TcpListener> open(Reactor& reactor, const SocketAddress& address, const ListenOptions& options,
                                           std::error_code& error, std::string* failed);
    SocketAddress local_;
    // On a reactor with a completion ring: the multishot accept and the
    // connections it took, made by the first accept().
    detail::AcceptQueuePointer accepted_;
};

/// How UnixListener::bind() sets up its socket.
struct UnixListenOptions {
    /// listen(2)'s backlog.
    int backlog = SOMAXCONN;
    /// Before binding a path, remove what is there if it is a socket (a
    /// previous run's leftover); anything else at the path is left and
    /// bind() fails with EADDRINUSE.
    bool remove_stale = true;
    /// When the listener closes, remove its path if it is still the socket
    /// this listener created, in the process that created it (a forked child
    /// closing its copy leaves the parent's path in place).
    bool unlink_on_close = true;
};

/// A listening Unix-domain stream socket, bound to a path or an abstract name.
class UnixListener final : public Socket {
public:
    /// A closed listener, to assign to later.
    UnixListener() noexcept = default;
    /// Moves the socket and the duty to remove its path; `other` ends closed.
    UnixListener(UnixListener&& other) noexcept;
    /// close() (removing this listener's path), then as the move constructor.
    UnixListener& operator=(UnixListener&& other) noexcept;
    /// Removes the path, as close() does, and closes the socket.
    ~UnixListener();

    /// socket(), bind(), listen(), with the options above.
    /// std::system_error "bind unix:/path: <reason>"; std::invalid_argument
    /// if `address` is not Unix-domain.
    [[nodiscard]] static UnixListener bind(Reactor& reactor, const SocketAddress& address,
                                           const UnixListenOptions& options = {});
    /// bind() with the kernel's refusal in `error`, as
    /// TcpListener::bind(reactor, address, error, options) does.
    /// std::invalid_argument if `address` is not Unix-domain.
    [[nodiscard]] static std::optional<UnixListener> bind(Reactor& reactor, const SocketAddress& address,
                                                          std::error_code& error,
                                                          const UnixListenOptions& options = {});

    /// As TcpListener::accept(). The peer of a Unix stream is usually unnamed.
    Task<UnixStream> accept(std::stop_token token = {});
    /// As TcpListener::accept(error, token).
    Task<UnixStream> accept(std::error_code& error, std::stop_token token = {});
    /// As TcpListener::try_accept().
    std::optional<UnixStream> try_accept(std::error_code& error) noexcept;

    /// Removes the path (see UnixListenOptions::unlink_on_close), stops
    /// accepting as TcpListener::close() does, then closes as
    /// Socket::close() does.
    void close() noexcept;
    /// As TcpListener::release(); the path stays.
    [[nodiscard]] int release() noexcept;

    /// The address bound to. No system call.
    [[nodiscard]] const SocketAddress& local_address() const noexcept { return local_; }

private:
    UnixListener(Reactor& reactor, int fd) noexcept : Socket{reactor, fd} {}
    // As TcpListener::open().
    static std::optional<UnixListener> open(Reactor& reactor, const SocketAddress& address,
                                            const UnixListenOptions& options, std::error_code& error,
                                            std::string* failed);
    void unlink_path() noexcept;

    SocketAddress local_;
    // The file this listener created, to unlink only that one, and only in
    // the process that created it.
    std::uint64_t device_ = 0;
    std::uint64_t inode_ = 0;
    pid_t creator_ = 0;
    bool owns_path_ = false;
    detail::AcceptQueuePointer accepted_;  // as TcpListener's
};

/// How UdpSocket::bind() sets up its socket.
struct UdpOptions {
    /// SO_REUSEADDR: share the address with other sockets that set it too.
    bool reuse_address = false;
    /// SO_REUSEPORT: several sockets on one port, the kernel balancing.
    bool reuse_port = false;
    /// IPV6_V6ONLY for an IPv6 address: false lets "::" receive IPv4 too.
    bool ipv6_only = false;
    /// SO_BROADCAST: allow sending to broadcast addresses.
    bool broadcast = false;
};

/// One received datagram.
struct Datagram {
    /// Bytes stored in the buffer.
    std::size_t size = 0;
    /// The sender.
    SocketAddress peer;
    /// The datagram was longer than the buffer; the rest is lost.
    bool truncated = false;
};

/// A UDP socket (IPv4 or IPv6).
class UdpSocket final : public Socket {
public:
    /// A closed socket, to assign to later.
    UdpSocket() noexcept = default;
    /// Moves the socket (see Socket's move constructor); `other` ends closed.
    UdpSocket(UdpSocket&&) noexcept = default;
    /// Closes this socket, then moves `other` here.
    UdpSocket& operator=(UdpSocket&&) noexcept = default;
    ~UdpSocket() = default;

    /// A socket bound to `address` (port 0: the kernel picks).
    /// std::system_error "bind <address>: <reason>"; std::invalid_argument
    /// if `address` is not IPv4 or IPv6.
    [[nodiscard]] static UdpSocket bind(Reactor& reactor, const SocketAddress& address, const UdpOptions& options = {});
    /// An unbound socket of `family` (AF_INET or AF_INET6), bound by the
    /// kernel on its first send. std::invalid_argument for another family.
    [[nodiscard]] static UdpSocket open(Reactor& reactor, int family);

    /// Sets the default destination of send() and receives only from
    /// `peer`. Does not wait: UDP has no handshake. std::system_error.
    void connect(const SocketAddress& peer);
    /// The address given to connect(); unspecified before.
    [[nodiscard]] const SocketAddress& peer_address() const noexcept { return peer_; }

    /// Sends one datagram to `destination`; returns its size.
    Task<std::size_t> send_to(std::span<const std::byte> buffer, SocketAddress destination, std::stop_token token = {});
    /// Sends one datagram to the connected peer.
    Task<std::size_t> send(std::span<const std::byte> buffer, std::stop_token token = {});
    /// Receives one datagram, waiting for one.
    Task<Datagram> recv_from(std::span<std::byte> buffer, std::stop_token token = {});

    /// One sendto() with MSG_NOSIGNAL: the datagram's size, or nullopt (see Socket).
    std::optional<std::size_t> try_send_to(std::span<const std::byte> buffer, const SocketAddress& destination,
                                           std::error_code& error) noexcept;
    /// One send() to the connected peer: the datagram's size, or nullopt (see Socket).
    std::optional<std::size_t> try_send(std::span<const std::byte> buffer, std::error_code& error) noexcept;
    /// One recvmsg(): the datagram, or nullopt (see Socket).
    std::optional<Datagram> try_recv_from(std::span<std::byte> buffer, std::error_code& error) noexcept;

private:
    UdpSocket(Reactor& reactor, int fd) noexcept : Socket{reactor, fd} {}
    SocketAddress peer_;
};

// ----- Name resolution --------------------------------------------------------------

/// getaddrinfo(3)'s hints.
struct ResolveHints {
    /// AF_UNSPEC (both), AF_INET or AF_INET6.
    int family = AF_UNSPEC;
    /// SOCK_STREAM, SOCK_DGRAM, or 0 for any (duplicates are dropped).
    int socktype = SOCK_STREAM;
    /// IPPROTO_TCP, IPPROTO_UDP, or 0 for any.
    int protocol = 0;
    /// AI_* flags, e.g. AI_PASSIVE for an empty host meaning "any address".
    int flags = 0;
};

namespace detail {
// The worker threads of a Resolver (lib/net/resolver.cpp).
struct ResolverPool;
}  // namespace detail

/// Runs getaddrinfo(3) on worker threads of its own, so the loop never
/// blocks on DNS. Threads start on demand, at most `max_threads` of them,
/// and are joined by the destructor (which waits for lookups in progress and
/// fails queued ones with ECANCELED). muxio::resolve() uses one shared by
/// the process; own one to control when its threads end.
///
/// Thread-safe: any number of reactors may use one resolver.
class Resolver {
public:
    /// std::invalid_argument if `max_threads` is 0.
    explicit Resolver(std::size_t max_threads = 1);
    ~Resolver();
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;
    Resolver(Resolver&&) = delete;
    Resolver& operator=(Resolver&&) = delete;

    /// Resolves `host` (a name or a numeric address; empty: the loopback, or
    /// the wildcard with AI_PASSIVE) and `service` (a port number or a
    /// service name; may be empty) to addresses, in getaddrinfo's order,
    /// without duplicates. A numeric host and port are resolved on the loop
    /// thread at once; anything else on a worker, the coroutine resuming on
    /// `reactor` through Reactor::call_soon_threadsafe.
    ///
    /// Cancellation (muxio::Cancelled) resumes the coroutine at once; the
    /// lookup in progress finishes on its worker and its result is dropped.
    /// A stop requested after the lookup finished but before the coroutine
    /// resumed also ends in Cancelled. A task already cancelled resolves
    /// nothing.
    ///
    /// std::system_error "resolve <host>:<service>: <reason>", its code in
    /// resolver_category() (EAI_NONAME, ...) or std::system_category().
    Task<std::vector<SocketAddress>> resolve(Reactor& reactor, std::string host, std::string service,
                                             ResolveHints hints = {}, std::stop_token token = {});

private:
    std::unique_ptr<detail::ResolverPool> pool_;
};

/// Resolver::resolve() on the process's shared resolver (at most four
/// threads, started on demand, joined at exit; a forked child gets its own).
Task<std::vector<SocketAddress>> resolve(Reactor& reactor, std::string host, std::string service,
                                         ResolveHints hints = {}, std::stop_token token = {});
/// resolve() with a port number.
Task<std::vector<SocketAddress>> resolve(Reactor& reactor, std::string host, std::uint16_t port,
                                         ResolveHints hints = {}, std::stop_token token = {});

}  // namespace muxio

template <>
struct std::hash<muxio::SocketAddress> {
    std::size_t operator()(const muxio::SocketAddress& address) const noexcept { return address.hash(); }
};

// `fmt::format("{}", address)` writes to_string(); string format specs
// (width, alignment) apply. Out of the API reference, as Events' formatter is.
/// \cond
template <>
struct fmt::formatter<muxio::SocketAddress> : fmt::formatter<std::string_view> {
    auto format(const muxio::SocketAddress& address, fmt::format_context& context) const
        -> fmt::format_context::iterator {
        const std::string text = address.to_string();
        return fmt::formatter<std::string_view>::format(text, context);
    }
};
/// \endcond
