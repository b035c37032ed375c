// Buffered stream transports on the reactor's callbacks: a Protocol receives
// a connection's events, a Transport owns its socket, reads on readiness and
// queues what the kernel does not take at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"

namespace muxio {

class Transport;
class Server;

/// Which of a transport's timers ran out (see Protocol::timed_out()).
enum class TimeoutKind : std::uint8_t {
    idle,     ///< No byte read or written for Transport::idle_timeout().
    deadline  ///< The deadline set with Transport::set_deadline() passed.
};

/// The receiving side of a Transport: what a connection does with its events,
/// the counterpart of asyncio's Protocol. Override what matters; the
/// defaults do nothing, except eof_received() (closes) and timed_out()
/// (aborts).
///
/// Order: connection_made() once, then any number of get_buffer() /
/// data_received(), pause_writing() / resume_writing(), write_drained() and
/// timed_out(), at most one eof_received(), and last exactly one
/// connection_lost(). When the queue drains after pause_writing(),
/// resume_writing() comes first, then write_drained(); both come before a
/// pending write_eof() or close() takes effect. A
/// transport whose connect fails calls connection_lost() without
/// connection_made(). All run on the reactor's thread, from its callbacks
/// or (pause_writing()) from inside Transport::write().
///
/// Reentrancy: any callback may call any method of its transport (write,
/// close, abort, pause_reading, ...) and may destroy a transport it owns;
/// the transport touches nothing of itself afterwards. connection_lost()
/// never runs inside another callback of the same transport, nor inside a
/// Transport method: it is delivered once the callback that ended the
/// connection has returned, or in the reactor's next iteration.
///
/// An exception escaping a callback aborts the connection
/// (connection_lost() with ECONNABORTED) and goes on to the reactor's
/// exception handler.
class Protocol {
public:
    virtual ~Protocol() = default;
    Protocol() = default;
    Protocol(const Protocol&) = delete;
    Protocol& operator=(const Protocol&) = delete;
    Protocol(Protocol&&) = delete;
    Protocol& operator=(Protocol&&) = delete;

    /// The connection is up; `transport` stays valid until connection_lost()
    /// returns (unless its owner destroys it first).
    virtual void connection_made(Transport& transport) { (void)transport; }
    /// Where the next read goes, like asyncio's BufferedProtocol: return a
    /// span of at least one byte to read into it (a parser's own buffer,
    /// saving a copy), or an empty span (the default) to read into the
    /// transport's read buffer. `size_hint` is the transport's read size.
    virtual std::span<std::byte> get_buffer(std::size_t size_hint) {
        (void)size_hint;
        return {};
    }
    /// Bytes arrived: one read. `data` is the start of the span get_buffer()
    /// returned, or of the transport's read buffer, which is valid only
    /// during the call and shared with other transports of the server.
    virtual void data_received(std::span<const std::byte> data) { (void)data; }
    /// The peer ended its side (reading stopped). Return true to keep the
    /// connection open for writing (half-close, then call close() later);
    /// false, the default, to close() it (queued bytes are still sent).
    virtual bool eof_received() { return false; }
    /// The write queue rose above the high water mark: stop producing.
    virtual void pause_writing() {}
    /// The write queue drained to the low water mark after pause_writing().
    virtual void resume_writing() {}
    /// The write queue (bytes and files) became empty after holding
    /// something: the last queued byte went to the kernel. Not called for a
    /// write() or send_file() the kernel took whole at once, nor when the
    /// queue is dropped (abort(), an error). Also called when close() or
    /// write_eof() is pending, before it takes effect (write() is refused
    /// then).
    virtual void write_drained() {}
    /// A timer of the transport ran out. Return false, the default, to have
    /// the transport abort with ETIMEDOUT; true if the protocol dealt with it
    /// (wrote an answer such as HTTP's 408 and closed, or decided to go on:
    /// the idle timer then counts from now, the deadline is cleared).
    virtual bool timed_out(TimeoutKind kind) {
        (void)kind;
        return false;
    }
    /// The connection ended, exactly once, however it ended: an empty
    /// `reason` for a clean close (close() drained, or the peer's end of
    /// stream closed it); otherwise the error, e.g. ECONNRESET or EPIPE from
    /// the kernel, ETIMEDOUT from a timer, ECONNABORTED from abort() or an
    /// exception in a callback, ECANCELED when the reactor closed. The
    /// descriptor is closed already.
    virtual void connection_lost(std::error_code reason) { (void)reason; }
};

/// A byte-stream layer between a Transport's socket and its Protocol, one
/// per connection, without I/O of its own: the extension point through
/// which muxio::tls runs TLS (tls_filter() in muxio/tls.hpp). A user may
/// write one too (a test's scrambling filter, a framing or compression
/// layer), shaped as TLS is: a handshake, then records.
///
/// The transport drives it: ciphertext read from the socket goes into
/// input_space()/commit_input() (input_ended() at the end of the stream),
/// and whatever output() holds goes to the socket, or to the write queue
/// behind what is queued there, after every step. A step says with a
/// Status what it needs next. All calls come from the reactor's thread.
class TransportFilter {
public:
    /// What a step asks for next.
    enum class Status : std::uint8_t {
        ok,           ///< Done (read, write: some bytes were moved).
        want_input,   ///< Needs bytes from the peer; repeat after input.
        want_output,  ///< Its output is full: repeat once it was taken.
        closed,       ///< read(): the peer ended its stream cleanly.
        failed        ///< Failed for good: error() says why; output() may hold an alert.
    };
    /// Bytes of plaintext moved by read() or write() and what comes next.
    struct Result {
        std::size_t bytes = 0;       ///< Plaintext moved.
        Status status = Status::ok;  ///< ok when bytes > 0.
    };

    virtual ~TransportFilter() = default;
    TransportFilter() = default;
    TransportFilter(const TransportFilter&) = delete;
    TransportFilter& operator=(const TransportFilter&) = delete;
    TransportFilter(TransportFilter&&) = delete;
    TransportFilter& operator=(TransportFilter&&) = delete;

    /// Runs the handshake as far as the input allows: ok once complete.
    virtual Status handshake() noexcept = 0;
    /// Plaintext into `buffer` (not empty): ok with bytes, want_input,
    /// want_output, closed or failed. Called only after handshake() said ok.
    virtual Result read(std::span<std::byte> buffer) noexcept = 0;
    /// Takes plaintext from `buffer`: ok with bytes taken (possibly fewer),
    /// want_output, or failed. Called only after handshake() said ok.
    virtual Result write(std::span<const std::byte> buffer) noexcept = 0;
    /// Queues the end of this side's stream (TLS's close_notify) in the
    /// output: ok, want_output or failed.
    virtual Status shutdown() noexcept = 0;
    /// Where bytes from the socket go; empty when the filter holds all it
    /// can until read() or handshake() took some.
    virtual std::span<std::byte> input_space() noexcept = 0;
    /// `size` bytes were written at input_space().
    virtual void commit_input(std::size_t size) noexcept = 0;
    /// The socket's stream from the peer ended.
    virtual void input_ended() noexcept = 0;
    /// Bytes for the socket, oldest first (a contiguous part; empty: none).
    virtual std::span<const std::byte> output() noexcept = 0;
    /// `size` bytes of output() were taken.
    virtual void consume_output(std::size_t size) noexcept = 0;
    /// After failed: why, the code given to Protocol::connection_lost().
    [[nodiscard]] virtual std::error_code error() const noexcept = 0;
    /// After failed: a longer explanation for the log; empty if none.
    [[nodiscard]] virtual std::string_view error_message() const noexcept { return {}; }
};

/// Makes the TransportFilter of each new transport (see
/// TransportOptions::filter); it may throw to refuse the connection.
using TransportFilterFactory = std::function<std::unique_ptr<TransportFilter>()>;

/// How a Transport buffers.
struct TransportOptions {
    /// Above this many queued bytes the protocol is told pause_writing().
    std::size_t high_water = std::size_t{64} * 1024;
    /// At or below this many (after pause_writing()) resume_writing().
    /// Clamped to high_water.
    std::size_t low_water = std::size_t{16} * 1024;
    /// The most one read asks for, and the size of the read buffer a
    /// transport allocates for itself when neither the protocol nor a Server
    /// provides one. At least 1.
    std::size_t read_size = std::size_t{64} * 1024;
    /// Close with ETIMEDOUT (see Protocol::timed_out()) after this long
    /// without a byte read or written; zero: no idle timeout.
    std::chrono::steady_clock::duration idle_timeout{0};
    /// Makes a filter between the socket and the protocol for each transport
    /// (TLS: muxio::tls_filter()). Empty: plain bytes.
    ///
    /// With a filter, connection_made() runs once its handshake completed;
    /// a failed handshake gives connection_lost(filter's error) without
    /// connection_made(). write() passes the bytes through the filter at
    /// once and the water marks count what it produced and what waits to go
    /// through it (bytes written before the handshake completed, or queued
    /// behind a send_file(), whose file is read with pread(2) in pieces as
    /// the queue drains). close() and write_eof() end the filter's stream
    /// first (TLS's close_notify); abort() does not. The filter's clean end
    /// (Status::closed) is the end of stream (eof_received()); an end of the
    /// socket's stream is whatever error the filter makes of it (TLS:
    /// truncated). resume_reading() delivers what the filter holds already,
    /// even if the socket never turns readable again. A filtered transport
    /// runs on readiness also where the reactor offers completions.
    TransportFilterFactory filter{};
    /// With a filter: the handshake must complete within this, or the
    /// connection ends with connection_lost(ETIMEDOUT) and no
    /// connection_made(). Zero: no bound (the idle timeout does not run
    /// during the handshake).
    std::chrono::steady_clock::duration handshake_timeout = std::chrono::seconds{60};
};

namespace detail {
// A frame of a call into a protocol, on the stack, so that a transport
// destroyed meanwhile tells the code that will run after the call returns.
struct TransportFrame {
    TransportFrame* previous = nullptr;
    bool destroyed = false;
};
}  // namespace detail

/// A connected stream socket (TCP or Unix-domain) driven by the reactor for
/// a Protocol: the counterpart of asyncio's selector transports and libuv's
/// uv_read_start()/uv_write().
///
/// Reading: one read system call per readiness, into Protocol::get_buffer()
/// or the transport's buffer, then Protocol::data_received().
///
/// Writing: write() sends at once when nothing is queued, and only what the
/// kernel does not take is copied into the write queue, which a writer
/// callback sends as the socket drains. So the common case costs one send
/// system call, no copy and no allocation. The queue keeps its storage once
/// it has grown (up to a bound), so a warm connection does not allocate.
///
/// On the io_uring completion path (a reactor whose selector is io_uring on
/// a kernel with multishot receive, unless MUXIO_COMPLETIONS=off) a
/// transport without a filter makes no read or send system call per
/// message: a multishot receive fills the reactor's provided buffers and
/// data_received() gets such a buffer itself (or a copy in the span
/// get_buffer() returned), and write() copies into the write queue, which
/// goes out as one send submission at a time; the loop's one io_uring_enter
/// per iteration carries them. The contract is the same, with these
/// differences of degree: every write is queued until its send completes
/// (write_buffer_size() counts it, the water marks apply to it, and
/// write_drained() follows each send that empties the queue); after
/// pause_reading(), the receive is cancelled only once bytes arrive, which
/// then wait, queued, for resume_reading(); send_file() still calls
/// sendfile(2) when the file's turn comes. A transport with a filter (TLS)
/// stays on readiness.
///
/// Ownership: whoever creates a transport owns it (a Server owns the
/// transports and protocols of its connections and frees them after
/// connection_lost() returns). A transport does not own its Protocol, which
/// must outlive it or its connection_lost(). The transport owns the
/// descriptor and closes it when the connection ends: at close() once the
/// queue is sent, at abort(), at an error, when its reactor closes, or when
/// the transport is destroyed. Destroying a transport ends the connection
/// without calling the protocol (its owner knows); any callback may do it.
/// Closing the descriptor behind the transport's back is a misuse the
/// mechanisms see differently: poll and select report it, and the
/// connection ends with EBADF; epoll drops the registration silently, and
/// the transport hears nothing more until a write fails or a timer runs
/// out (an idle timeout bounds it). Use close() or abort().
///
/// Reactor closed first: the transport closes its descriptor and delivers
/// connection_lost(ECANCELED) from inside Reactor::close(); it may then be
/// destroyed at any time, also after the reactor.
///
/// Not movable (the reactor's callbacks refer to it); use
/// std::unique_ptr.
///
/// Belongs to the reactor's thread: while the connection is live, the
/// methods that act on it (write(), writev(), send_file(), write_eof(),
/// close(), abort(), pause_reading(), resume_reading(), the set_*()
/// methods) throw std::logic_error naming the call, and change nothing,
/// when called from another thread while the reactor runs (use
/// Reactor::call_soon_threadsafe()) or in a process forked after the
/// reactor was made (the connection stays the parent's). Once the
/// connection ended or the reactor closed they are harmless no-ops from
/// anywhere.
class Transport {
public:
    using Duration = Reactor::Duration;    ///< A delay on the reactor's clock.
    using TimePoint = Reactor::TimePoint;  ///< A time on the reactor's clock.

    /// Takes ownership of `fd`, a connected stream socket (made non-blocking
    /// here), for `protocol`. connection_made() runs in the reactor's next
    /// iteration, and reading starts then. On any throw the caller keeps
    /// `fd`: std::invalid_argument if it is negative, std::system_error if
    /// it cannot be made non-blocking, what Reactor::require_usable() and
    /// Reactor::call_soon() throw (a closed reactor: std::logic_error).
    Transport(Reactor& reactor, int fd, Protocol& protocol, TransportOptions options = {});
    /// Ends the connection if it is not over (closing the descriptor, no
    /// protocol callback), removes every registration and timer.
    ~Transport();
    Transport(const Transport&) = delete;
    Transport& operator=(const Transport&) = delete;
    Transport(Transport&&) = delete;
    Transport& operator=(Transport&&) = delete;

    /// Connects to `address` (IPv4, IPv6 or Unix-domain) without waiting:
    /// writes are queued until the connection is up, then
    /// Protocol::connection_made() runs; if it fails,
    /// Protocol::connection_lost() gets the reason (ECONNREFUSED, ...).
    /// std::system_error if no socket can be made (EMFILE);
    /// std::logic_error for a closed reactor.
    [[nodiscard]] static std::unique_ptr<Transport> connect(Reactor& reactor, const SocketAddress& address,
                                                            Protocol& protocol, TransportOptions options = {});

    // ----- Writing ------------------------------------------------------------

    /// Sends `data`, or queues what the kernel does not take now (a copy);
    /// may call Protocol::pause_writing() before it returns. After the
    /// connection broke (the protocol will be told by connection_lost())
    /// the bytes are dropped silently. std::logic_error after close() or
    /// write_eof(): nothing can follow those (also once the connection they
    /// began has ended cleanly; a connection that ended by an error drops
    /// the bytes silently then too). std::logic_error from another thread
    /// or a forked child (see the class comment).
    void write(std::span<const std::byte> data);
    /// write() of text.
    void write(std::string_view text) { write(std::as_bytes(std::span{text.data(), text.size()})); }
    /// write() of several buffers in order, with one sendmsg(2) when nothing
    /// is queued (a response's head and body without joining them first).
    /// Same contract as write().
    void writev(std::span<const std::span<const std::byte>> buffers);
    /// Sends `count` bytes of the file `file` from `offset` with sendfile(2),
    /// never reading them into memory: at once when nothing is queued (as
    /// write() does), queueing what the kernel does not take; otherwise
    /// after what is queued before it. The transport owns `file` from the call on (also when it
    /// throws) and closes it once sent or when the connection ends. They
    /// count in write_buffer_size(). A file that ends before `count` bytes
    /// ends the connection with ENODATA (the peer was promised more). Errors
    /// as write(); std::invalid_argument for a negative `file` or `offset`.
    void send_file(int file, std::int64_t offset, std::uint64_t count);
    /// Ends the writing side once the queue is sent (shutdown(SHUT_WR): the
    /// peer reads the end of the stream); reading goes on. Harmless when
    /// closing or already done.
    void write_eof();
    /// Bytes queued, not yet taken by the kernel.
    [[nodiscard]] std::size_t write_buffer_size() const noexcept {
        return queue_.size() - queue_head_ + static_cast<std::size_t>(file_bytes_);
    }
    /// Sets the marks of pause_writing() and resume_writing() (low clamped
    /// to high); takes effect at the next write or drain.
    void set_write_buffer_limits(std::size_t high, std::size_t low);
    /// The high water mark.
    [[nodiscard]] std::size_t high_water() const noexcept { return high_water_; }
    /// The low water mark.
    [[nodiscard]] std::size_t low_water() const noexcept { return low_water_; }
    /// Whether the protocol was told pause_writing() and not yet resume_writing().
    [[nodiscard]] bool writing_paused() const noexcept { return write_paused_; }

    // ----- Reading ------------------------------------------------------------

    /// Stops reading (no data_received() until resume_reading()); the
    /// kernel's buffer then fills and the peer's writes stall. Harmless when
    /// paused or closing.
    void pause_reading();
    /// Undoes pause_reading(). If the reactor refuses to watch the
    /// descriptor, the connection is aborted with the kernel's error.
    void resume_reading();
    /// Reading is on: started, not paused, no end of stream yet, not closing.
    [[nodiscard]] bool is_reading() const noexcept { return reader_added_; }

    // ----- Ending -------------------------------------------------------------

    /// Stops reading and ends the connection once the queue is sent:
    /// connection_lost() with an empty reason. A peer that never reads
    /// keeps it waiting: the idle timeout bounds that (or abort()).
    /// Harmless when closing or over.
    ///
    /// With a filter whose handshake has not completed and nothing of the
    /// protocol's to send (no write() yet): the connection ends at once,
    /// connection_lost(ECONNABORTED) in the next iteration and no
    /// connection_made(), instead of waiting for the handshake.
    ///
    /// Just before the descriptor is closed, input the protocol did not
    /// read is read and discarded, up to 64 KiB and without waiting: the
    /// kernel answers a close with unread input by resetting the
    /// connection, and a reset can destroy the last bytes the peer has not
    /// read yet. With more unread than that, the peer may still see
    /// ECONNRESET after reading what was sent.
    void close();
    /// Ends the connection now, dropping the queue: connection_lost() with
    /// `reason` (ECONNABORTED unless given). Harmless when over.
    void abort(std::error_code reason = std::make_error_code(std::errc::connection_aborted));
    /// close(), write_eof() or abort() was called, or the connection ended.
    [[nodiscard]] bool is_closing() const noexcept { return closing_ || state_ >= State::ended; }
    /// The connection ended (the descriptor is closed); connection_lost()
    /// may still be on its way.
    [[nodiscard]] bool is_closed() const noexcept { return state_ >= State::ended; }

    // ----- Timers -------------------------------------------------------------

    /// Sets (zero: removes) the idle timeout, counted from the last byte
    /// read or written, or from now if later. A read does not touch the
    /// timer: it only notes the time, and the timer, armed at most once per
    /// period, looks again when it runs out.
    void set_idle_timeout(Duration timeout);
    /// The idle timeout; zero when none.
    [[nodiscard]] Duration idle_timeout() const noexcept { return idle_timeout_; }
    /// Protocol::timed_out(TimeoutKind::deadline) at `when` (a whole request
    /// must have arrived by then, however its bytes trickle in). Replaces an
    /// earlier deadline. Costs a timer operation only when it is nearer than
    /// the timer already armed.
    void set_deadline(TimePoint when);
    /// set_deadline() `delay` from now.
    void set_deadline_after(Duration delay);
    /// Removes the deadline (no timer operation: a timer armed for it finds
    /// nothing due when it runs).
    void clear_deadline() noexcept { deadline_ = TimePoint::max(); }
    /// The deadline; TimePoint::max() when none.
    [[nodiscard]] TimePoint deadline() const noexcept { return deadline_; }

    // ----- Introspection ------------------------------------------------------

    /// The descriptor; -1 once the connection ended.
    [[nodiscard]] int fileno() const noexcept { return fd_; }
    /// The peer address, read when the transport was made (unspecified if
    /// the kernel could not tell).
    [[nodiscard]] const SocketAddress& peer_address() const noexcept { return peer_; }
    /// The protocol.
    [[nodiscard]] Protocol& protocol() const noexcept { return *protocol_; }
    /// Hands the connection's events to another protocol from now on (as
    /// asyncio's set_protocol); it gets no connection_made().
    void set_protocol(Protocol& protocol) {
        check_usable("Transport::set_protocol");
        protocol_ = &protocol;
    }
    /// The filter made by TransportOptions::filter; nullptr for plain bytes.
    [[nodiscard]] TransportFilter* filter() const noexcept { return filter_.get(); }

private:
    friend class Server;
    enum class State : std::uint8_t { starting, connecting, handshaking, open, ended, lost };

    Transport(Reactor& reactor, int fd, Protocol& protocol, const TransportOptions& options, State state);

    // Called after connection_lost() returned (the Server frees the connection).
    using Release = void (*)(void* context, Transport& transport) noexcept;

    // Refuses another thread and a forked child while the connection is
    // live; a closed reactor ends its transports (late close hooks), and one
    // whose hook has not run yet is left to it.
    void check_usable(std::string_view operation) const {
        if (state_ < State::ended && !reactor_->is_closed()) {
            reactor_->require_usable(operation);
        }
    }
    // After close() or write_eof(): throws unless an error ended the connection.
    [[gnu::cold, gnu::noinline]] void refuse_after_close(const char* operation) const;
    void start();
    void begin();
    void on_readable();
    void on_writable();
    void on_connected();
    void on_timer();
    void flush_queue();
    // Sends up to `size` bytes from the queue's head: the count sent, or -1
    // when the kernel takes nothing now or the send failed (ended then).
    long send_from_queue(std::size_t size);
    void after_drain();
    void enqueue(std::span<const std::byte> data);
    void drop_queue() noexcept;
    bool send_queued_file();
    void check_high_water();
    void update_reader() noexcept;
    void add_writer() noexcept;
    void remove_writer() noexcept;
    void note_activity();
    void rearm_timer();
    void finish(std::error_code reason) noexcept;
    void deliver_lost();
    bool deliver_lost_now();
    void end_now(std::error_code reason) noexcept;
    void schedule_lost() noexcept;
    void release_descriptor() noexcept;
    [[nodiscard]] std::span<std::byte> read_buffer();
    static void reactor_closed(detail::CloseHook& hook) noexcept;

    // With a filter (lib/net/transport.cpp, "Filtered streams").
    void begin_handshake();
    void drive_handshake();
    void read_filtered();
    void deliver_filtered();
    void write_filtered(std::span<const std::byte> data);
    void send_file_filtered(int file, std::int64_t offset, std::uint64_t count);
    void flush_filtered();
    bool encrypt(std::span<const std::byte> data);
    bool refill_filtered();
    bool pump_filter_output();
    bool shutdown_filter();
    void fail_filter() noexcept;
    // A send failed with `errnum`: ends the connection with it, or cleanly
    // when only the filter's end was left after the peer's clean end.
    void finish_send_failure(int errnum) noexcept;
    void schedule_filtered_delivery();

    // On the completion path (lib/net/transport.cpp, "Completions").
    struct Completions;
    void write_completion(std::span<const std::byte> data);
    void update_completion_reader() noexcept;
    void on_received();
    void deliver_received(const detail::TransportFrame& frame);
    void deliver_queued(const detail::TransportFrame& frame);
    // The peer ended its stream: eof_received(), and close() unless it keeps it open.
    [[gnu::cold]] void end_of_input();
    void schedule_completion_delivery();
    void on_sent(std::int32_t result);
    bool pump_completions();
    bool submit_send(std::size_t size);
    void settle_writes();
    void stop_completions(bool now) noexcept;

    // Runs `body`, a call into the protocol, in a frame; false if the
    // transport was destroyed meanwhile (touch nothing then). An exception
    // aborts the connection and is rethrown after the frame closes.
    template <class Body>
    bool call_protocol(Body&& body);
    // Runs `body`, a reactor callback of this transport, in the outermost
    // frame: a connection that ended meanwhile gets its connection_lost()
    // when the frame closes.
    template <class Body>
    void dispatch(Body&& body);

    // Told when the reactor closes first.
    struct Hook : detail::CloseHook {
        Transport* owner = nullptr;
    };

    Hook hook_;
    Reactor* reactor_;
    Protocol* protocol_;
    int fd_;
    State state_;
    bool closing_ = false;       // close() called: end once drained
    bool eof_pending_ = false;   // write_eof() called: shutdown once drained
    bool eof_written_ = false;   // shutdown(SHUT_WR) done
    bool read_eof_ = false;      // the peer ended its side
    bool read_paused_ = false;   // pause_reading()
    bool reader_added_ = false;  // a reader is registered
    bool writer_added_ = false;  // a writer is registered
    bool write_paused_ = false;  // pause_writing() told, resume_writing() not yet
    bool lost_pending_ = false;  // connection_lost() to deliver when the frames unwind
    std::size_t high_water_;
    std::size_t low_water_;
    std::size_t read_size_;
    // A file queued by send_file(), sent once the bytes queued before it
    // (up to stream position `at`) are out.
    struct QueuedFile {
        std::uint64_t at = 0;
        int fd = -1;
        std::int64_t offset = 0;
        std::uint64_t left = 0;
    };

    std::vector<std::byte> queue_;
    std::size_t queue_head_ = 0;
    std::uint64_t queued_in_ = 0;   // bytes ever put into queue_
    std::uint64_t queued_out_ = 0;  // bytes of queue_ ever sent
    std::vector<QueuedFile> files_;
    std::size_t files_head_ = 0;
    // Counted in write_buffer_size() outside queue_: left to send of files_,
    // and on the completion path the bytes of the send in flight.
    std::uint64_t file_bytes_ = 0;
    std::span<std::byte> shared_buffer_;       // a Server's, shared by its connections
    std::unique_ptr<std::byte[]> own_buffer_;  // allocated at the first read needing it
    detail::TransportFrame* frames_ = nullptr;
    std::error_code reason_;
    TimerHandle soon_;  // start() or deliver_lost(), queued
    TimerHandle timer_;
    TimePoint timer_due_ = TimePoint::max();
    TimePoint last_activity_{};
    TimePoint deadline_ = TimePoint::max();
    Duration idle_timeout_{0};
    SocketAddress peer_;
    SocketAddress connect_to_;  // while connecting
    Release release_ = nullptr;
    void* release_context_ = nullptr;
    // With a filter: plaintext waiting to go through it (written before the
    // handshake completed, or behind a file), counted in file_bytes_ with
    // the files' bytes; files_[].at are positions in this plaintext stream.
    std::unique_ptr<TransportFilter> filter_;
    std::vector<std::byte> plain_;
    std::size_t plain_head_ = 0;
    std::uint64_t plain_in_ = 0;
    std::uint64_t plain_out_ = 0;
    std::unique_ptr<std::byte[]> file_chunk_;  // pread() buffer of send_file()
    Duration handshake_timeout_{0};
    bool filter_ready_ = false;      // the handshake completed
    bool filter_shut_down_ = false;  // shutdown() queued (close_notify)
    // A filter or the completion path: write() and writev() go their own
    // way (one test on the plain path for both).
    bool indirect_ = false;
    // The completion path's receive and send; null on readiness.
    std::unique_ptr<Completions> completions_;
};

}  // namespace muxio
