#include "server.hpp"

#include <sys/socket.h>

#include <ctime>
#include <span>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "muxio/config.hpp"
#include "muxio/log.hpp"
#include "muxio/net.hpp"
#include "muxio/transport.hpp"
#if MUXIO_HAS_TLS
#include "muxio/tls.hpp"
#endif

namespace muxio::http {

namespace {

constexpr std::size_t read_size = std::size_t{64} << 10U;
// Answers are written once this many are gathered, even with more to parse.
constexpr std::size_t write_batch = std::size_t{64} << 10U;
// The shared answer buffer is freed past this (a burst of pipelined answers).
constexpr std::size_t keep_out_capacity = std::size_t{256} << 10U;
// A condition that may recur at every accept is logged at most this often.
constexpr auto log_interval = std::chrono::seconds{10};

// The tail of a rate-limited log message.
std::string more_since(std::uint64_t unlogged) {
    return unlogged == 0 ? std::string{} : fmt::format(" ({} more since the last message)", unlogged);
}

// What a connection waits for from its client, with a deadline of its own.
enum class Awaiting : unsigned char { nothing, head, body };

}  // namespace

// One connection's protocol: parses what the transport reads, answers in
// order into the server's shared buffer and writes it. Back-pressure is the
// transport's: parsing and reading stop at pause_writing() and go on at
// resume_writing(). write_drained() tells when the queue has emptied: a
// file sent (no answer follows one until then), the last answer out before
// the linger.
class Server::Connection final : public Protocol {
public:
    Connection(Server& server, const SocketAddress& peer)
        : server_{server}, peer_{peer}, parser_{server.config_.limits} {}

    void connection_made(Transport& transport) override {
        transport_ = &transport;
        // Watched now rather than after this call, so that a descriptor the
        // reactor refuses (select: FD_SETSIZE) is told apart from the rest.
        transport.resume_reading();
        if (transport.is_closed()) {
            ++server_.stats_.register_failures;
            if (const std::optional<std::uint64_t> unlogged =
                    server_.register_failure_log_.allow(server_.reactor_.time())) {
                muxio::logger().warn("muxio-http: cannot watch a connection from {}, closed it{}",
                                     transport.peer_address(), more_since(*unlogged));
            }
            return;
        }
        counted_ = true;
        ++server_.open_;
    }

    void data_received(std::span<const std::byte> data) override {
        if (lingering_ || close_after_output_) {
            return;  // after the last answer, input is dropped
        }
        server_.stats_.bytes_read += data.size();
        const std::string_view fresh{reinterpret_cast<const char*>(data.data()), data.size()};
        if (input_.empty()) {
            // The usual case: requests parsed where they were read, and only
            // what back-pressure holds back is kept.
            const std::size_t parsed = parse_requests(fresh);
            if (parsed < fresh.size() && !close_after_output_) {
                input_.assign(fresh.substr(parsed));
            }
        } else {
            input_.erase(0, std::exchange(input_parsed_, 0));
            input_.append(fresh);
            parse_input();
        }
        finish_batch();
    }

    bool eof_received() override {
        peer_closed_ = true;
        if (lingering_) {
            return false;
        }
        // Requests held back are answered first; then, or now if there are
        // none, it closes once what is queued is sent.
        if (!output_held()) {
            parse_input();
            finish_batch();
        }
        return true;
    }

    void pause_writing() override { transport_->pause_reading(); }

    void resume_writing() override {
        if (transport_->is_closing()) {
            return;
        }
        parse_input();
        finish_batch();
    }

    void write_drained() override {
        sending_file_ = false;
        if (lingering_ || transport_->is_closing()) {
            return;
        }
        parse_input();
        finish_batch();
    }

    bool timed_out(TimeoutKind kind) override {
        if (lingering_) {
            return false;
        }
        if (kind == TimeoutKind::deadline && awaiting_ == Awaiting::nothing) {
            return true;  // the request it was set for has been answered
        }
        ++server_.stats_.timed_out;
        if (awaiting_ != Awaiting::nothing && !close_after_output_) {
            respond_timeout();
            return true;
        }
        muxio::logger().debug("muxio-http: fd {}: idle, closing", transport_->fileno());
        return false;
    }

    void connection_lost(std::error_code reason) override {
        if (transport_ == nullptr) {
            if (server_.uses_tls()) {
                handshake_lost(reason);
            }
            return;
        }
        uncount();
        if (reason) {
            muxio::logger().debug("muxio-http: connection from {}: {}", peer_, reason.message());
        }
    }

    // shutdown(): an idle connection closes now; one sending closes once
    // sent; one in the middle of a request gets its answer, then closes;
    // one still in its TLS handshake has nothing to finish.
    void stop(Transport& transport) {
        if (transport_ == nullptr) {
            transport.abort();
            return;
        }
        if (transport_->is_closing() || lingering_) {
            return;
        }
        if (transport_->write_buffer_size() > 0 || close_after_output_) {
            close_after_output_ = true;
            transport_->close();
        } else if (input_.empty() && !parser_.in_request()) {
            uncount();
            transport_->close();
        }
    }

    void abort(Transport& transport) {
        uncount();
        transport.abort();
    }

private:
    // With TLS, a connection that ends before connection_made() is a
    // handshake that failed or ran out of time: it never served a request.
    void handshake_lost(std::error_code reason) {
        if (server_.stopping_) {
            return;  // shutdown() ended it
        }
        if (reason == std::errc::timed_out) {
            ++server_.stats_.timed_out;
            ++server_.stats_.handshake_timeouts;
            muxio::logger().debug("muxio-http: connection from {}: TLS handshake not complete in time", peer_);
        } else {
            ++server_.stats_.handshake_failures;
            muxio::logger().debug("muxio-http: connection from {}: TLS handshake did not complete: {}", peer_,
                                  reason ? reason.message() : std::string{"closed"});
        }
    }

    void uncount() noexcept {
        if (std::exchange(counted_, false)) {
            --server_.open_;
        }
    }

    // Answers wait: the queue is over its high water mark, or a file is
    // being sent.
    [[nodiscard]] bool output_held() const noexcept { return sending_file_ || transport_->writing_paused(); }

    [[nodiscard]] bool may_parse() const noexcept {
        return !close_after_output_ && !output_held() && !transport_->is_closing();
    }

    void parse_input() {
        if (!input_.empty()) {
            input_parsed_ += parse_requests(std::string_view{input_}.substr(input_parsed_));
            if (input_parsed_ == input_.size() || close_after_output_) {
                drop_input();
            }
        }
    }

    // Parses and answers requests from `input` while back-pressure allows;
    // returns the bytes used.
    std::size_t parse_requests(std::string_view input) {
        std::string& out = server_.out_;
        std::size_t parsed = 0;
        while (may_parse() && parsed < input.size()) {
            const std::size_t consumed = parser_.feed(input.substr(parsed));
            parsed += consumed;
            if (parser_.expects_continue()) {
                out += "HTTP/1.1 100 Continue\r\n\r\n";  // behind the answers before it
                parser_.continue_sent();
            }
            if (parser_.has_request()) {
                respond(parser_.current_request());
                parser_.finish_request();
                if (out.size() >= write_batch) {
                    flush();
                }
            } else if (parser_.failed()) {
                muxio::logger().debug("muxio-http: fd {}: bad request: {}", transport_->fileno(),
                                      parser_.error()->reason);
                answer_and_close(parser_.error()->status);
            } else if (consumed == 0) {
                break;  // not expected of the parser; never spin on it
            }
        }
        return parsed;
    }

    void respond(const Request& request) {
        ++server_.stats_.requests;
        if (awaiting_ != Awaiting::nothing) {
            awaiting_ = Awaiting::nothing;  // what follows is another request
            transport_->clear_deadline();
        }
        Response response = server_.handler_.handle(request);
        const bool keep_alive = request.keep_alive && !response.close && !server_.stopping_;
        muxio::logger().debug("muxio-http: fd {}: {} {} -> {}", transport_->fileno(), request.method, request.target,
                              response.status);
        append_head(server_.out_, response,
                    HeadOptions{server_.date_.get(std::time(nullptr)), keep_alive,
                                request.version_major == 1 && request.version_minor == 0});
        close_after_output_ = close_after_output_ || !keep_alive;
        if (!response.send_body) {
            return;
        }
        if (!response.file) {
            server_.out_ += response.body;
        } else if (response.content_length > 0) {
            // No answer follows until the file is sent (write_drained()),
            // so a connection holds one file at most.
            flush();
            transport_->send_file(response.file.release(), 0, response.content_length);
            sending_file_ = transport_->write_buffer_size() > 0;
        }
    }

    // Queues a small error answer with Connection: close, the last one.
    void answer_and_close(int status) {
        const Response response = Handler::error(status, true);
        append_head(server_.out_, response, HeadOptions{server_.date_.get(std::time(nullptr)), false, false});
        server_.out_ += response.body;
        close_after_output_ = true;
    }

    void respond_timeout() {
        const bool head = awaiting_ == Awaiting::head;
        ++(head ? server_.stats_.head_timeouts : server_.stats_.body_timeouts);
        muxio::logger().debug("muxio-http: fd {}: request {} not complete in time, closing", transport_->fileno(),
                              head ? "head" : "body");
        // Sent now or never: waiting for the client to make room would let
        // it hold the connection past its deadline. A client that does not
        // read what it was sent either gets no answer.
        if (transport_->write_buffer_size() == 0) {
            answer_and_close(408);
            drop_input();
            flush();
        }
        if (transport_->write_buffer_size() > 0) {
            transport_->abort(std::make_error_code(std::errc::timed_out));
            return;
        }
        begin_linger();
    }

    void flush() {
        std::string& out = server_.out_;
        if (out.empty()) {
            return;
        }
        transport_->write(out);
        out.clear();
        if (out.capacity() > keep_out_capacity) {
            std::string{}.swap(out);
        }
    }

    // After a callback's parsing: writes the answers, ends the connection
    // or starts its linger once they are out, arms the request deadline
    // and sets reading on or off.
    void finish_batch() {
        flush();
        if (transport_->is_closing()) {
            return;
        }
        if (peer_closed_ && input_.empty()) {
            close_after_output_ = true;  // nothing more can come; a request cut short gets no answer
        }
        if (close_after_output_) {
            if (peer_closed_ || server_.stopping_) {
                transport_->close();
            } else if (transport_->write_buffer_size() == 0) {
                begin_linger();
            }  // else write_drained() comes when the queue is sent
            return;
        }
        track_request();
        if (output_held() || input_.size() - input_parsed_ >= server_.config_.input_buffer_limit) {
            transport_->pause_reading();
        } else {
            transport_->resume_reading();
        }
    }

    void begin_linger() {
        if (peer_closed_ || server_.stopping_) {
            transport_->close();
            return;
        }
        lingering_ = true;
        drop_input();
        transport_->write_eof();
        transport_->set_idle_timeout(Transport::Duration::zero());
        transport_->set_deadline_after(server_.config_.linger_timeout);
        transport_->resume_reading();
    }

    // Only a head or body that did not arrive in the read that began it is
    // seen here; respond() resets `awaiting_`, so each request starts afresh.
    void track_request() {
        const Awaiting now = parser_.in_body()      ? Awaiting::body
                             : parser_.in_request() ? Awaiting::head
                                                    : Awaiting::nothing;
        if (now == awaiting_) {
            return;
        }
        awaiting_ = now;
        if (now == Awaiting::nothing) {
            transport_->clear_deadline();
        } else {
            transport_->set_deadline_after(now == Awaiting::head ? server_.config_.header_timeout
                                                                 : server_.config_.body_timeout);
        }
    }

    void drop_input() noexcept {
        input_.clear();
        input_parsed_ = 0;
    }

    Server& server_;
    SocketAddress peer_;
    Transport* transport_ = nullptr;
    bool counted_ = false;
    bool close_after_output_ = false;
    bool peer_closed_ = false;
    bool lingering_ = false;
    bool sending_file_ = false;  // a file is queued: write_drained() tells when it is out
    Awaiting awaiting_ = Awaiting::nothing;
    // Read, not yet parsed: input_[input_parsed_...], held back by
    // back-pressure. What is parsed stays in front until the next read, so
    // taking the pipelined requests one file at a time does not move the
    // rest each time. Empty when all is parsed.
    std::string input_;
    std::size_t input_parsed_ = 0;
    RequestParser parser_;
};

ServerOptions Server::server_options(const ServerConfig& config) {
    ServerOptions options;
    options.transport.high_water = config.output_high_water;
    options.transport.low_water = config.output_high_water / 4;
    options.transport.read_size = read_size;
    options.transport.idle_timeout = config.idle_timeout;
    options.max_connections = config.max_connections;
    options.over_limit = OverLimit::refuse;
    if (config.tls_certificate_file.empty() != config.tls_key_file.empty()) {
        throw std::invalid_argument{"TLS needs both a certificate file and a key file (--tls-cert and --tls-key)"};
    }
    if (config.tls_certificate_file.empty()) {
        return options;
    }
#if MUXIO_HAS_TLS
    TlsServerOptions tls;
    tls.certificate_chain_file = config.tls_certificate_file;
    tls.private_key_file = config.tls_key_file;
    tls.alpn_protocols = {"http/1.1"};
    options.transport.filter = tls_filter(TlsContext::server(tls));
    options.transport.handshake_timeout = config.tls_handshake_timeout;
    return options;
#else
    throw std::invalid_argument{"muxio-http was built without TLS (MUXIO_TLS=OFF)"};
#endif
}

Server::Server(Reactor& reactor, Handler handler, ServerConfig config)
    : reactor_{reactor},
      handler_{std::move(handler)},
      config_{std::move(config)},
      server_{reactor, [this](const SocketAddress& peer) { return std::make_unique<Connection>(*this, peer); },
              server_options(config_)} {
    const std::optional<SocketAddress> address = SocketAddress::ip(config_.bind, config_.port);
    if (!address) {
        throw std::invalid_argument(fmt::format("--bind {}: not a numeric IPv4 or IPv6 address", config_.bind));
    }
    ListenOptions options;
    options.ipv6_only = true;  // --bind :: means IPv6 only; IPv4 has its own addresses
    options.reuse_port = config_.reuse_port;
    port_ = server_.listen(*address, options).port();
    server_.set_refusal_handler([this](int fd, const SocketAddress& /*peer*/) { refuse(fd); });
}

Server::~Server() {
    if (!reactor_.is_closed()) {
        grace_timer_.cancel();
    }
}

ServerStats Server::stats() const noexcept {
    ServerStats stats = stats_;
    const muxio::ServerStats& accepts = server_.stats();
    stats.accepted = accepts.accepted;
    stats.accept_pauses = accepts.accept_pauses;
    stats.refused = accepts.refused;
    stats.register_failures += accepts.setup_failures;
    return stats;
}

void Server::close_all() noexcept {
    server_.for_each_connection(
        [](Transport& transport) { static_cast<Connection&>(transport.protocol()).abort(transport); });
    server_.close();
}

void Server::shutdown() {
    if (stopping_) {
        muxio::logger().info("muxio-http: second shutdown request, closing everything");
        grace_timer_.cancel();
        close_all();
        reactor_.stop();
        return;
    }
    stopping_ = true;
    server_.stop_listening();
    server_.for_each_connection(
        [](Transport& transport) { static_cast<Connection&>(transport.protocol()).stop(transport); });
    muxio::logger().info("muxio-http: shutting down, {} connection(s) finishing", open_);
    grace_timer_ = reactor_.call_later(config_.shutdown_grace, [this] {
        muxio::logger().info("muxio-http: grace period over, closing {} connection(s)", open_);
        close_all();
        reactor_.stop();
    });
    server_.drain([this] {
        grace_timer_.cancel();
        reactor_.stop();
    });
}

// Over max_connections: whatever the client sent already is read first, as
// closing over unread bytes resets the connection, and the answer with it.
// One read and one write, neither waited for: the answer is a courtesy.
// Over TLS there is no plain answer to give: the connection just closes.
void Server::refuse(int fd) {
    if (const std::optional<std::uint64_t> unlogged = refusal_log_.allow(reactor_.time())) {
        muxio::logger().warn("muxio-http: {} connections open, the most allowed: refusing new ones{}",
                             server_.connection_count(), more_since(*unlogged));
    }
    if (uses_tls()) {
        return;
    }
    refusal_input_.resize(read_size);
    (void)::recv(fd, refusal_input_.data(), refusal_input_.size(), 0);
    const Response response = Handler::error(503, true);
    std::string answer;
    append_head(answer, response, HeadOptions{date_.get(std::time(nullptr)), false, false});
    answer += response.body;
    (void)::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
}

std::optional<std::uint64_t> Server::LogLimiter::allow(Reactor::TimePoint now) {
    if (next_ && now < *next_) {
        ++suppressed_;
        return std::nullopt;
    }
    next_ = now + log_interval;
    return std::exchange(suppressed_, 0);
}

}  // namespace muxio::http
