#include "server.hpp"

#include <sys/sendfile.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <span>
#include <stdexcept>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "fifo_queue.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "muxio/net.hpp"

namespace muxio::http {

// ----- Socket glue ------------------------------------------------------------
//
// The sockets are muxio's (include/muxio/net.hpp): TcpListener::try_accept
// and TcpStream::try_read / try_write, driven by the reactor's readers and
// writers. What net.hpp has no call for is here: sendfile(2), and the
// translation of their results into one small struct.
namespace {

struct IoResult {
    std::size_t bytes = 0;  // 0 with no error: end of stream (reads)
    int error = 0;          // an errno value; EAGAIN means "not now"

    [[nodiscard]] bool would_block() const noexcept { return error == EAGAIN; }
};

IoResult io_result(std::optional<std::size_t> done, const std::error_code& error) noexcept {
    if (done) {
        return {*done, 0};
    }
    return {0, error ? error.value() : EAGAIN};
}

IoResult read_some(StreamSocket& stream, std::span<char> buffer) {
    std::error_code error;
    const std::optional<std::size_t> got = stream.try_read(std::as_writable_bytes(buffer), error);
    return io_result(got, error);
}

IoResult write_some(StreamSocket& stream, std::string_view bytes) {
    std::error_code error;
    const std::optional<std::size_t> sent =
        stream.try_write(std::as_bytes(std::span{bytes.data(), bytes.size()}), error);
    return io_result(sent, error);
}

// sendfile(2) advances `offset`. It has no MSG_NOSIGNAL: the process
// ignores SIGPIPE (main.cpp), so a client gone away is an EPIPE.
IoResult send_file(const StreamSocket& stream, int file, off_t& offset, std::size_t count) {
    for (;;) {
        const ssize_t sent = ::sendfile(stream.fileno(), file, &offset, count);
        if (sent >= 0) {
            return {static_cast<std::size_t>(sent), 0};
        }
        if (errno != EINTR) {
            return {0, errno == EWOULDBLOCK ? EAGAIN : errno};
        }
    }
}

}  // namespace

// ----- Connections ------------------------------------------------------------

namespace {

constexpr std::size_t scratch_size = std::size_t{64} << 10U;
// Accepts per readiness of the listener, so a flood of connections cannot
// keep the loop from serving the ones it has.
constexpr int accepts_per_wakeup = 64;
// Bytes one writability callback sends at most before yielding to others.
constexpr std::size_t write_budget = std::size_t{4} << 20U;
constexpr std::size_t sendfile_chunk = std::size_t{1} << 20U;
// How long accepting pauses when the process is out of descriptors (or the
// kernel out of memory), unless a connection closes first.
constexpr auto accept_backoff = std::chrono::milliseconds{100};

// The largest text buffer kept for the next responses (Server::spare_text_);
// a larger one (a burst of pipelined answers) is freed once sent.
constexpr std::size_t spare_text_limit = 16 * 1024;
// A condition that may recur at every accept is logged at most this often.
constexpr auto log_interval = std::chrono::seconds{10};

// `start + delay`, or the end of time rather than an overflow.
Reactor::TimePoint later(Reactor::TimePoint start, std::chrono::milliseconds delay) noexcept {
    const auto room = std::chrono::duration_cast<std::chrono::milliseconds>(Reactor::TimePoint::max() - start);
    if (delay >= room) {
        return Reactor::TimePoint::max();
    }
    return start + delay;
}

// The tail of a rate-limited log message.
std::string more_since(std::uint64_t unlogged) {
    return unlogged == 0 ? std::string{} : fmt::format(" ({} more since the last message)", unlogged);
}

// What a connection waits for from its client, with a deadline of its own.
enum class Awaiting : unsigned char { nothing, head, body };

// Queued output: text, or a slice of a file to sendfile.
struct OutChunk {
    std::string text;
    std::size_t sent = 0;
    OwnedFd file;
    off_t offset = 0;
    std::uint64_t left = 0;
};

}  // namespace

struct Server::Connection {
    Connection(TcpStream accepted, const ParserLimits& limits) : stream{std::move(accepted)}, parser{limits} {}

    // What every request reads or writes comes first, on as few cache lines
    // as can be: with hundreds of connections each one is cold when its
    // request arrives, and the parser behind them is hundreds of bytes.
    bool reading = false;  // a reader is registered
    bool writing = false;  // a writer is registered
    bool close_after_output = false;
    bool peer_closed = false;  // read end of stream
    bool lingering = false;
    Awaiting awaiting = Awaiting::nothing;
    std::size_t files_queued = 0;  // file chunks in `output`
    std::size_t output_bytes = 0;  // pending in `output`
    Reactor::TimePoint last_active{};
    Reactor::TimePoint awaiting_since{};  // when the head or body under way began
    Reactor::TimePoint timer_due{};
    // Closing it (with the connection) also drops its reactor registrations.
    TcpStream stream;
    // Read, not yet parsed: input[input_parsed...]. What is parsed stays
    // in front until the next read, so that taking the pipelined requests
    // one at a time (one per queued file) does not move the rest each time.
    // Empty when all is parsed.
    std::string input;
    std::size_t input_parsed = 0;
    FifoQueue<OutChunk> output;
    RequestParser parser;
    TimerHandle timer;

    [[nodiscard]] std::string_view unparsed() const noexcept { return std::string_view{input}.substr(input_parsed); }
    void consume_input(std::size_t bytes) noexcept {
        input_parsed += bytes;
        if (input_parsed == input.size()) {
            drop_input();
        }
    }
    void append_input(std::string_view bytes) {
        input.erase(0, std::exchange(input_parsed, 0));
        input.append(bytes);
    }
    void drop_input() noexcept {
        input.clear();
        input_parsed = 0;
    }

    // `spare` is the server's emptied text buffer: a new text chunk takes it.
    void append_text(std::string_view text, std::string& spare) {
        text_tail(spare) += text;
        output_bytes += text.size();
    }
    std::string& text_tail(std::string& spare) {
        if (output.empty() || output.back().file) {
            output.emplace_back().text = std::move(spare);
        }
        return output.back().text;
    }
};

Server::Server(Reactor& reactor, Handler handler, ServerConfig config)
    : reactor_{reactor}, handler_{std::move(handler)}, config_{std::move(config)}, scratch_(scratch_size) {
    ListenOptions options;
    options.ipv6_only = true;  // --bind :: means IPv6 only; IPv4 has its own addresses
    const std::optional<SocketAddress> address = SocketAddress::ip(config_.bind, config_.port);
    if (!address) {
        throw std::invalid_argument(fmt::format("--bind {}: not a numeric IPv4 or IPv6 address", config_.bind));
    }
    listener_ = TcpListener::bind(reactor_, *address, options);
    resume_accepting();
}

Server::~Server() {
    close_all();
}

void Server::close_all() {
    if (reactor_.is_closed()) {
        connections_.clear();
        listener_.close();
        return;
    }
    accept_retry_.cancel();
    grace_timer_.cancel();
    listener_.close();
    accepting_ = false;
    std::vector<int> fds;
    fds.reserve(connections_.size());
    for (const auto& entry : connections_) {
        fds.push_back(entry.first);
    }
    for (const int fd : fds) {
        destroy(*connections_.at(fd));
    }
}

void Server::shutdown() {
    if (stopping_) {
        muxio::logger().info("muxio-http: second shutdown request, closing everything");
        close_all();
        reactor_.stop();
        return;
    }
    stopping_ = true;
    accept_retry_.cancel();
    listener_.close();
    accepting_ = false;
    // Idle connections close now. One sending a response closes after it;
    // one in the middle of a request gets its answer, with Connection: close.
    std::vector<int> idle;
    for (const auto& [fd, connection] : connections_) {
        if (!connection->output.empty()) {
            connection->close_after_output = true;
        } else if (connection->input.empty() && !connection->parser.in_request() && !connection->lingering) {
            idle.push_back(fd);
        }
    }
    for (const int fd : idle) {
        destroy(*connections_.at(fd));
    }
    muxio::logger().info("muxio-http: shutting down, {} connection(s) finishing", connections_.size());
    if (connections_.empty()) {
        reactor_.stop();
        return;
    }
    grace_timer_ = reactor_.call_later(config_.shutdown_grace, [this] {
        muxio::logger().info("muxio-http: grace period over, closing {} connection(s)", connections_.size());
        close_all();
        reactor_.stop();
    });
}

// ----- Accepting --------------------------------------------------------------

void Server::on_acceptable() {
    for (int i = 0; i < accepts_per_wakeup && accepting_; ++i) {
        std::error_code error;
        std::optional<TcpStream> accepted = listener_.try_accept(error);
        if (!accepted) {
            if (!error) {
                return;  // none queued
            }
            // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued
            // and the listener readable, so retrying now would spin. Stop
            // watching the listener until a connection closes or a short
            // while has passed. Anything else pauses the same way.
            if (stats_.accept_pauses++ == 0) {
                muxio::logger().warn("muxio-http: accept: {}; pausing accepts", error.message());
            } else {
                muxio::logger().debug("muxio-http: accept: {}; pausing accepts", error.message());
            }
            pause_accepting();
            return;
        }
        ++stats_.accepted;
        if (connections_.size() >= config_.max_connections) {
            refuse(std::move(*accepted));
        } else {
            open_connection(std::move(*accepted));
        }
    }
}

void Server::open_connection(TcpStream accepted) {
    try {
        accepted.set_nodelay(true);  // a head and its body go out as soon as written
    } catch (const std::system_error& refused) {
        muxio::logger().debug("muxio-http: {}", refused.what());
    }
    const int fd = accepted.fileno();
    // If either throws (std::bad_alloc), the stream is destroyed with what
    // holds it, which closes it.
    auto owned = std::make_unique<Connection>(std::move(accepted), config_.limits);
    Connection& connection = *owned;
    if (!connections_.try_emplace(fd, std::move(owned)).second) {
        // A connection still in the table under this number would mean its
        // descriptor was closed behind the server's back.
        muxio::logger().error("muxio-http: fd {} accepted while still in use; closing the new connection", fd);
        return;
    }
    try {
        connection.last_active = reactor_.time();
        arm_timer(connection, later(connection.last_active, config_.idle_timeout));
        update_interest(connection);
    } catch (const std::exception& error) {
        // The selector refused the descriptor (select: at or above
        // FD_SETSIZE; epoll: out of watches) or memory ran out. Nothing is
        // kept: a connection no one watches would never be served or closed.
        ++stats_.register_failures;
        if (const std::optional<std::uint64_t> unlogged = register_failure_log_.allow(reactor_.time())) {
            muxio::logger().warn("muxio-http: fd {}: cannot watch the connection, closing it: {}{}", fd, error.what(),
                                 more_since(*unlogged));
        }
        destroy(connection);
    }
}

void Server::refuse(TcpStream accepted) {
    ++stats_.refused;
    if (const std::optional<std::uint64_t> unlogged = refusal_log_.allow(reactor_.time())) {
        muxio::logger().warn("muxio-http: {} connections open, the most allowed: refusing new ones{}",
                             connections_.size(), more_since(*unlogged));
    }
    // Whatever the client sent already is read first, as closing over
    // unread bytes resets the connection, and the answer with it. One read
    // and one write, neither waited for: the answer is a courtesy.
    (void)read_some(accepted, scratch_);
    const Response response = Handler::error(503, true);
    std::string answer;
    append_head(answer, response, HeadOptions{date_.get(std::time(nullptr)), false, false});
    answer += response.body;
    (void)write_some(accepted, answer);
}  // closed here

std::optional<std::uint64_t> Server::LogLimiter::allow(Reactor::TimePoint now) {
    if (next_ && now < *next_) {
        ++suppressed_;
        return std::nullopt;
    }
    next_ = later(now, log_interval);
    return std::exchange(suppressed_, 0);
}

void Server::pause_accepting() {
    if (!accepting_) {
        return;
    }
    reactor_.remove_reader(listener_.fileno());
    accepting_ = false;
    accept_paused_ = true;
    accept_retry_ = reactor_.call_later(accept_backoff, [this] { resume_accepting(); });
}

void Server::resume_accepting() {
    accept_retry_.cancel();
    accept_paused_ = false;
    if (accepting_ || stopping_ || !listener_.is_open()) {
        return;
    }
    reactor_.add_reader(listener_.fileno(), [this] { on_acceptable(); });
    accepting_ = true;
}

// ----- One connection ---------------------------------------------------------

void Server::on_readable(Connection& connection) {
    if (connection.lingering) {
        drain_linger(connection);
        return;
    }
    const std::size_t unparsed = connection.input.size() - connection.input_parsed;
    const std::size_t room = config_.input_buffer_limit - std::min(config_.input_buffer_limit, unparsed);
    if (room == 0) {
        update_interest(connection);  // a zero-byte read would look like the end of the stream
        return;
    }
    const IoResult got = read_some(connection.stream, std::span<char>{scratch_}.first(std::min(room, scratch_.size())));
    if (got.would_block()) {
        return;
    }
    if (got.error != 0) {
        muxio::logger().debug("muxio-http: fd {}: read: {}", connection.stream.fileno(), std::strerror(got.error));
        destroy(connection);
        return;
    }
    connection.last_active = reactor_.time();
    stats_.bytes_read += got.bytes;
    if (got.bytes == 0) {
        // The client sent all it will; answer what it asked, then close.
        connection.peer_closed = true;
    } else if (connection.input.empty()) {
        // The usual case: requests parsed where they were read, and only
        // what is left over (a request cut short, or held back by
        // back-pressure) is kept.
        const std::string_view fresh{scratch_.data(), got.bytes};
        const std::size_t parsed = parse_requests(connection, fresh);
        if (parsed < fresh.size()) {
            connection.input.assign(fresh.substr(parsed));
        }
    } else {
        connection.append_input({scratch_.data(), got.bytes});
    }
    pump(connection);
}

void Server::on_writable(Connection& connection) {
    pump(connection);
}

bool Server::pump(Connection& connection) {
    // Parsing stops while output is high; when a flush empties the output,
    // the requests still waiting in `input` (pipelined behind a large
    // response) are taken up here, as no new byte may arrive to prompt it.
    // A few rounds per call, then the writer's next turn goes on.
    for (int round = 0; round < 8; ++round) {
        parse_input(connection);
        if (!flush(connection)) {
            return false;
        }
        if (connection.lingering || connection.close_after_output || connection.input.empty() ||
            !connection.output.empty()) {
            break;
        }
    }
    track_request(connection);
    update_interest(connection);
    return true;
}

void Server::parse_input(Connection& connection) {
    if (!connection.input.empty()) {
        connection.consume_input(parse_requests(connection, connection.unparsed()));
    }
    // After the end of the stream, once everything read is parsed, nothing
    // more can come: a request cut short gets no answer.
    if (connection.peer_closed && connection.input.empty()) {
        connection.close_after_output = true;
    }
}

std::size_t Server::parse_requests(Connection& connection, std::string_view input) {
    RequestParser& parser = connection.parser;
    std::size_t parsed = 0;
    // No request is answered while a file is queued: each answer to a GET
    // of a file holds the file open until it is sent.
    while (!connection.close_after_output && connection.output_bytes < config_.output_high_water &&
           connection.files_queued == 0 && parsed < input.size()) {
        const std::size_t consumed = parser.feed(input.substr(parsed));
        parsed += consumed;
        if (parser.expects_continue()) {
            // Behind any answers still queued, as responses go out in order.
            connection.append_text("HTTP/1.1 100 Continue\r\n\r\n", spare_text_);
            parser.continue_sent();
        }
        if (parser.has_request()) {
            respond(connection, parser.current_request());
            parser.finish_request();
        } else if (parser.failed()) {
            respond_error(connection, *parser.error());
        } else if (consumed == 0) {
            break;  // not expected of the parser; never spin on it
        }
    }
    return parsed;
}

void Server::respond(Connection& connection, const Request& request) {
    ++stats_.requests;
    connection.awaiting = Awaiting::nothing;  // what follows is another request
    Response response = handler_.handle(request);
    const bool keep_alive = request.keep_alive && !response.close && !stopping_;
    muxio::logger().debug("muxio-http: fd {}: {} {} -> {}", connection.stream.fileno(), request.method, request.target,
                          response.status);
    std::string& out = connection.text_tail(spare_text_);
    const std::size_t before = out.size();
    append_head(out, response,
                HeadOptions{date_.get(std::time(nullptr)), keep_alive,
                            request.version_major == 1 && request.version_minor == 0});
    connection.output_bytes += out.size() - before;
    if (response.send_body) {
        if (response.file) {
            if (response.content_length > 0) {
                OutChunk chunk;
                chunk.file = std::move(response.file);
                chunk.left = response.content_length;
                connection.output.push_back(std::move(chunk));
                ++connection.files_queued;
                connection.output_bytes += response.content_length;
            }
        } else {
            connection.append_text(response.body, spare_text_);
        }
    }
    if (!keep_alive) {
        connection.close_after_output = true;
    }
}

void Server::respond_error(Connection& connection, const ParseError& error) {
    muxio::logger().debug("muxio-http: fd {}: bad request: {}", connection.stream.fileno(), error.reason);
    answer_and_close(connection, error.status);
}

void Server::answer_and_close(Connection& connection, int status) {
    const Response response = Handler::error(status, true);
    std::string& out = connection.text_tail(spare_text_);
    const std::size_t before = out.size();
    append_head(out, response, HeadOptions{date_.get(std::time(nullptr)), false, false});
    out += response.body;
    connection.output_bytes += out.size() - before;
    connection.close_after_output = true;
}

bool Server::flush(Connection& connection) {
    std::size_t budget = write_budget;
    while (!connection.output.empty() && budget > 0) {
        OutChunk& chunk = connection.output.front();
        IoResult sent;
        if (!chunk.file) {
            const std::string_view rest = std::string_view{chunk.text}.substr(chunk.sent);
            sent = write_some(connection.stream, rest.substr(0, budget));
            chunk.sent += sent.bytes;
        } else {
            const auto count = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.left, sendfile_chunk));
            sent = send_file(connection.stream, chunk.file.get(), chunk.offset, std::min(count, budget));
            chunk.left -= sent.bytes;
            if (sent.error == 0 && sent.bytes == 0) {
                // The file shrank since its size went out in Content-Length:
                // the only honest end is to cut the connection.
                muxio::logger().warn("muxio-http: fd {}: file shorter than announced", connection.stream.fileno());
                destroy(connection);
                return false;
            }
        }
        if (sent.would_block()) {
            break;
        }
        if (sent.error != 0) {
            muxio::logger().debug("muxio-http: fd {}: write: {}", connection.stream.fileno(),
                                  std::strerror(sent.error));
            destroy(connection);
            return false;
        }
        connection.output_bytes -= sent.bytes;
        budget -= std::min(budget, sent.bytes);
        connection.last_active = reactor_.time();
        if (chunk.file ? chunk.left == 0 : chunk.sent == chunk.text.size()) {
            if (!chunk.file && chunk.text.capacity() <= spare_text_limit &&
                chunk.text.capacity() >= spare_text_.capacity()) {
                chunk.text.clear();
                spare_text_ = std::move(chunk.text);
            }
            if (chunk.file) {
                --connection.files_queued;
            }
            connection.output.pop_front();
        }
    }
    if (connection.output.empty() && connection.close_after_output) {
        return begin_linger(connection);
    }
    return true;
}

bool Server::begin_linger(Connection& connection) {
    if (connection.peer_closed || stopping_) {
        destroy(connection);
        return false;
    }
    try {
        connection.stream.shutdown(ShutdownHow::write);
    } catch (const std::system_error& error) {
        // ENOTCONN: the peer reset meanwhile; nothing left to linger for.
        muxio::logger().debug("muxio-http: {}", error.what());
        destroy(connection);
        return false;
    }
    connection.lingering = true;
    connection.drop_input();
    connection.timer.cancel();
    arm_timer(connection, later(reactor_.time(), config_.linger_timeout));
    return true;
}

void Server::drain_linger(Connection& connection) {
    // A few reads per wakeup; the linger timer bounds the whole.
    for (int i = 0; i < 4; ++i) {
        const IoResult got = read_some(connection.stream, scratch_);
        if (got.would_block()) {
            return;
        }
        if (got.error != 0 || got.bytes == 0) {
            destroy(connection);
            return;
        }
    }
}

void Server::update_interest(Connection& connection) {
    // Input left unparsed with nothing to send (pump() stopped after its
    // rounds) is taken up at the next writability, which comes at once.
    const bool want_write = !connection.output.empty() ||
                            (!connection.input.empty() && !connection.lingering && !connection.close_after_output);
    const bool want_read =
        connection.lingering || (!connection.peer_closed && !connection.close_after_output &&
                                 connection.output_bytes < config_.output_high_water &&
                                 connection.input.size() - connection.input_parsed < config_.input_buffer_limit);
    const int fd = connection.stream.fileno();
    Connection* const target = &connection;
    if (want_read != connection.reading) {
        if (want_read) {
            reactor_.add_reader(fd, [this, target] { on_readable(*target); });
        } else {
            reactor_.remove_reader(fd);
        }
        connection.reading = want_read;
    }
    if (want_write != connection.writing) {
        if (want_write) {
            reactor_.add_writer(fd, [this, target] { on_writable(*target); });
        } else {
            reactor_.remove_writer(fd);
        }
        connection.writing = want_write;
    }
}

void Server::arm_timer(Connection& connection, Reactor::TimePoint when) {
    Connection* const target = &connection;
    connection.timer = reactor_.call_at(when, [this, target] { on_timer(*target); });
    connection.timer_due = when;
}

Reactor::TimePoint Server::deadline_of(const Connection& connection) const noexcept {
    const Reactor::TimePoint idle = later(connection.last_active, config_.idle_timeout);
    switch (connection.awaiting) {
        case Awaiting::head:
            return std::min(idle, later(connection.awaiting_since, config_.header_timeout));
        case Awaiting::body:
            return std::min(idle, later(connection.awaiting_since, config_.body_timeout));
        case Awaiting::nothing:
            break;
    }
    return idle;
}

void Server::track_request(Connection& connection) {
    // Only a head or body that did not arrive in the read that began it is
    // seen here; respond() resets `awaiting`, so each request starts afresh.
    const RequestParser& parser = connection.parser;
    const Awaiting now = parser.in_body() ? Awaiting::body : parser.in_request() ? Awaiting::head : Awaiting::nothing;
    if (now == connection.awaiting) {
        return;
    }
    connection.awaiting = now;
    if (now == Awaiting::nothing || connection.lingering) {
        return;
    }
    connection.awaiting_since = reactor_.time();
    const Reactor::TimePoint due = deadline_of(connection);
    if (due < connection.timer_due) {
        connection.timer.cancel();
        arm_timer(connection, due);
    }
}

void Server::on_timer(Connection& connection) {
    if (connection.lingering) {
        destroy(connection);
        return;
    }
    const Reactor::TimePoint now = reactor_.time();
    const Reactor::TimePoint due = deadline_of(connection);
    if (now < due) {
        arm_timer(connection, due);
        return;
    }
    ++stats_.timed_out;
    if (connection.awaiting != Awaiting::nothing && !connection.close_after_output) {
        respond_timeout(connection);
        return;
    }
    muxio::logger().debug("muxio-http: fd {}: idle for {} ms, closing", connection.stream.fileno(),
                          std::chrono::duration_cast<std::chrono::milliseconds>(now - connection.last_active).count());
    destroy(connection);
}

void Server::respond_timeout(Connection& connection) {
    const bool head = connection.awaiting == Awaiting::head;
    ++(head ? stats_.head_timeouts : stats_.body_timeouts);
    muxio::logger().debug("muxio-http: fd {}: request {} not complete in time, closing", connection.stream.fileno(),
                          head ? "head" : "body");
    if (!connection.output.empty()) {
        // The client does not read what it was sent either: no use answering.
        destroy(connection);
        return;
    }
    answer_and_close(connection, 408);
    connection.drop_input();
    // Sent now or never: waiting for the client to make room would let it
    // hold the connection past its deadline.
    if (!flush(connection)) {
        return;
    }
    if (!connection.output.empty()) {
        destroy(connection);
        return;
    }
    update_interest(connection);
}

void Server::destroy(Connection& connection) {
    const int fd = connection.stream.fileno();
    connection.timer.cancel();
    // Unregistered before the descriptor closes, so the number can be reused.
    if (connection.reading) {
        reactor_.remove_reader(fd);
    }
    if (connection.writing) {
        reactor_.remove_writer(fd);
    }
    connections_.erase(fd);  // closes the descriptor and any file being sent
    if (accept_paused_) {
        resume_accepting();  // a descriptor is free again
    }
    if (stopping_ && connections_.empty()) {
        grace_timer_.cancel();
        reactor_.stop();
    }
}

}  // namespace muxio::http
