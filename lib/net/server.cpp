// Server of include/muxio/server.hpp: listeners, the accept loop, the
// connection limit and the connections' lifetimes.
#include "muxio/server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <utility>

#include "muxio/log.hpp"

#include "net/socket_ops.hpp"

namespace muxio {

struct Server::Listener {
    Server* server = nullptr;
    TcpListener tcp;
    UnixListener local;
    SocketAddress address;
    int fd = -1;
    bool is_tcp = true;
    bool watched = false;
};

struct Server::Connection {
    Connection(Server& owner, std::unique_ptr<Protocol> made, int fd, const SocketAddress& peer)
        : server{&owner},
          protocol{std::move(made)},
          transport{*owner.reactor_, fd, *protocol, owner.options_.transport, Transport::State::starting} {
        transport.peer_ = peer;
        transport.shared_buffer_ = owner.read_buffer_;
        transport.release_ = &Server::release;
        transport.release_context_ = this;
    }

    Server* server;
    std::unique_ptr<Protocol> protocol;
    Transport transport;
    Connection* previous = nullptr;
    Connection* next = nullptr;
};

Server::Server(Reactor& reactor, ProtocolFactory factory, ServerOptions options)
    : reactor_{&reactor}, factory_{std::move(factory)}, options_{std::move(options)} {
    reactor.require_usable("Server");
    if (!factory_) {
        throw std::invalid_argument("Server: the protocol factory is empty");
    }
    options_.accepts_per_wakeup = std::max(options_.accepts_per_wakeup, 1);
    options_.transport.read_size = std::max<std::size_t>(options_.transport.read_size, 1);
    hook_.owner = this;
    hook_.hook(reactor, detail::CloseHook::Phase::late, &Server::reactor_closed);
    // The accept path warns when descriptors have run out; the logger is
    // made now, while making it cannot fail for want of one.
    (void)logger();
}

Server::~Server() {
    destroying_ = true;
    close_listeners();
    if (reactor_ != nullptr) {
        retry_.cancel();
    }
    while (connections_ != nullptr) {
        // Delivers connection_lost() now, which frees the connection.
        connections_->transport.end_now(std::make_error_code(std::errc::connection_aborted));
    }
}

void Server::reactor_closed(detail::CloseHook& hook) noexcept {
    Server& self = *static_cast<Hook&>(hook).owner;
    // The connections' transports are told by their own hooks; the
    // listeners are detached by theirs.
    self.reactor_ = nullptr;
    self.retry_ = {};
    for (auto& listener : self.listeners_) {
        listener->watched = false;
    }
}

// ----- Listening -------------------------------------------------------------------

SocketAddress Server::listen(const SocketAddress& address, const ListenOptions& options) {
    if (reactor_ == nullptr) {
        throw std::logic_error("Server::listen: reactor is closed");
    }
    auto listener = std::make_unique<Listener>();
    if (address.is_unix()) {
        UnixListenOptions unix_options;
        unix_options.backlog = options.backlog;
        listener->local = UnixListener::bind(*reactor_, address, unix_options);
        listener->fd = listener->local.fileno();
        listener->address = listener->local.local_address();
        listener->is_tcp = false;
    } else if (address.is_ipv4() || address.is_ipv6()) {
        listener->tcp = TcpListener::bind(*reactor_, address, options);
        listener->fd = listener->tcp.fileno();
        listener->address = listener->tcp.local_address();
    } else {
        throw std::invalid_argument(fmt::format("Server::listen: cannot listen on {}", address));
    }
    return add_listener(std::move(listener));
}

SocketAddress Server::listen(std::string_view host, std::uint16_t port, const ListenOptions& options) {
    const std::optional<SocketAddress> address = SocketAddress::ip(host, port);
    if (!address) {
        throw std::invalid_argument(fmt::format("Server::listen: '{}' is not a numeric IPv4 or IPv6 address", host));
    }
    return listen(*address, options);
}

SocketAddress Server::listen_unix(std::string_view path, const UnixListenOptions& options) {
    if (reactor_ == nullptr) {
        throw std::logic_error("Server::listen_unix: reactor is closed");
    }
    auto listener = std::make_unique<Listener>();
    listener->local = UnixListener::bind(*reactor_, SocketAddress::unix_path(path), options);
    listener->fd = listener->local.fileno();
    listener->address = listener->local.local_address();
    listener->is_tcp = false;
    return add_listener(std::move(listener));
}

SocketAddress Server::listen(TcpListener listener) {
    if (reactor_ == nullptr) {
        throw std::logic_error("Server::listen: reactor is closed");
    }
    if (!listener.is_open()) {
        throw std::invalid_argument("Server::listen: the TCP listener is closed");
    }
    auto adopted = std::make_unique<Listener>();
    adopted->fd = listener.fileno();
    adopted->address = listener.local_address();
    adopted->tcp = std::move(listener);
    return add_listener(std::move(adopted));
}

SocketAddress Server::listen(UnixListener listener) {
    if (reactor_ == nullptr) {
        throw std::logic_error("Server::listen: reactor is closed");
    }
    if (!listener.is_open()) {
        throw std::invalid_argument("Server::listen: the Unix-domain listener is closed");
    }
    auto adopted = std::make_unique<Listener>();
    adopted->fd = listener.fileno();
    adopted->address = listener.local_address();
    adopted->local = std::move(listener);
    adopted->is_tcp = false;
    return add_listener(std::move(adopted));
}

SocketAddress Server::add_listener(std::unique_ptr<Listener> listener) {
    listener->server = this;
    Listener& added = *listener;
    listeners_.push_back(std::move(listener));
    if (read_buffer_.empty()) {
        try {
            read_buffer_.resize(options_.transport.read_size);
        } catch (...) {
            listeners_.pop_back();
            throw;
        }
    }
    const bool paused = resource_paused_ || (options_.over_limit == OverLimit::pause && options_.max_connections > 0 &&
                                             count_ >= options_.max_connections);
    if (!paused) {
        try {
            reactor_->add_reader(added.fd, [&added] { added.server->on_acceptable(added); });
        } catch (...) {
            listeners_.pop_back();  // closes it
            throw;
        }
        added.watched = true;
    }
    return added.address;
}

void Server::stop_listening() {
    check_usable("Server::stop_listening");
    close_listeners();
}

void Server::close_listeners() noexcept {
    for (auto& listener : listeners_) {
        if (listener->watched && reactor_ != nullptr) {
            try {
                reactor_->remove_reader(listener->fd);
            } catch (...) {  // NOLINT(bugprone-empty-catch): closing the listener removes it anyway
            }
        }
        listener->watched = false;
    }
    // Closing a listener removes its registrations; a Unix one its path.
    listeners_.clear();
    if (reactor_ != nullptr) {
        retry_.cancel();
    }
    resource_paused_ = false;
}

bool Server::is_accepting() const noexcept {
    for (const auto& listener : listeners_) {
        if (listener->watched) {
            return true;
        }
    }
    return false;
}

std::vector<SocketAddress> Server::addresses() const {
    std::vector<SocketAddress> bound;
    bound.reserve(listeners_.size());
    for (const auto& listener : listeners_) {
        bound.push_back(listener->address);
    }
    return bound;
}

// ----- Accepting -------------------------------------------------------------------

void Server::on_acceptable(Listener& listener) {
    for (int i = 0; i < options_.accepts_per_wakeup && listener.watched; ++i) {
        if (options_.max_connections > 0 && count_ >= options_.max_connections &&
            options_.over_limit == OverLimit::pause) {
            update_accepting();
            return;
        }
        SocketAddress peer;
        std::error_code error;
        const int fd = detail::accept_one(listener.fd, peer, error);
        if (fd < 0) {
            if (!error) {
                return;  // none queued
            }
            ++stats_.accept_errors;
            // Out of descriptors or memory, the connection stays queued; any
            // other error left here is the listener's own (accept_one()
            // skips those of one connection). Either way the listener stays
            // readable, so trying again at once would spin: pause. A
            // shortage that lasts lets one connection in each time another
            // ends, so the warning is rate-limited rather than once per spell.
            const Reactor::TimePoint now = reactor_->time();
            if (!shortage_warned_ || now - shortage_warned_at_ >= shortage_warning_interval) {
                if (shortage_unwarned_ == 0) {
                    logger().warn("Server: accept on {}: {}; pausing accepts", listener.address,
                                  std::strerror(error.value()));
                } else {
                    logger().warn("Server: accept on {}: {}; pausing accepts ({} more since the last warning)",
                                  listener.address, std::strerror(error.value()), shortage_unwarned_);
                }
                shortage_warned_ = true;
                shortage_warned_at_ = now;
                shortage_unwarned_ = 0;
            } else {
                ++shortage_unwarned_;
                logger().debug("Server: accept on {}: {}; pausing accepts", listener.address,
                               std::strerror(error.value()));
            }
            pause_accepting();
            return;
        }
        ++stats_.accepted;
        if (options_.max_connections > 0 && count_ >= options_.max_connections) {
            refuse(fd, peer);
            continue;
        }
        open_connection(fd, peer, listener.is_tcp);
    }
}

void Server::refuse(int fd, const SocketAddress& peer) noexcept {
    ++stats_.refused;
    if (refusal_) {
        try {
            refusal_(fd, peer);
        } catch (const std::exception& error) {
            logger().debug("Server: refusal handler: {}", error.what());
        } catch (...) {  // NOLINT(bugprone-empty-catch): the connection is refused either way
        }
    }
    ::close(fd);
}

void Server::open_connection(int fd, const SocketAddress& peer, bool tcp) {
    if (tcp && options_.tcp_nodelay) {
        const int on = 1;
        (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    Connection* connection = nullptr;
    try {
        std::unique_ptr<Protocol> protocol = factory_(peer);
        if (!protocol) {
            ++stats_.setup_failures;
            ::close(fd);
            return;
        }
        connection = new Connection{*this, std::move(protocol), fd, peer};
    } catch (const std::exception& error) {
        ++stats_.setup_failures;
        logger().warn("Server: cannot serve the connection from {}, closed it: {}", peer, error.what());
        ::close(fd);
        return;
    }
    connection->next = connections_;
    if (connections_ != nullptr) {
        connections_->previous = connection;
    }
    connections_ = connection;
    ++count_;
    // Starts now rather than in the next iteration: connection_made(), then
    // reading. A failure to watch the descriptor ends it like any other.
    connection->transport.start();
}

void Server::pause_accepting() {
    ++stats_.accept_pauses;
    resource_paused_ = true;
    update_accepting();
    if (reactor_ == nullptr) {
        return;
    }
    retry_.cancel();
    try {
        retry_ = reactor_->call_later(options_.accept_retry, [this] {
            retry_ = {};
            resource_paused_ = false;
            update_accepting();
        });
    } catch (const std::exception& error) {
        // Without the timer only a connection ending resumes accepting.
        logger().error("Server: cannot schedule the accept retry: {}", error.what());
    }
}

void Server::update_accepting() noexcept {
    if (reactor_ == nullptr || reactor_->is_closed() || destroying_) {
        return;
    }
    const bool want = !resource_paused_ && !(options_.over_limit == OverLimit::pause && options_.max_connections > 0 &&
                                             count_ >= options_.max_connections);
    for (auto& owned : listeners_) {
        Listener& listener = *owned;
        if (listener.watched == want) {
            continue;
        }
        try {
            if (want) {
                reactor_->add_reader(listener.fd, [&listener] { listener.server->on_acceptable(listener); });
            } else {
                reactor_->remove_reader(listener.fd);
            }
            listener.watched = want;
        } catch (const std::exception& error) {
            // Not watching the listener would end the server for good: try
            // again after a while.
            logger().warn("Server: cannot watch the listener {}: {}; retrying", listener.address, error.what());
            if (!retry_.pending()) {
                resource_paused_ = true;
                try {
                    retry_ = reactor_->call_later(options_.accept_retry, [this] {
                        retry_ = {};
                        resource_paused_ = false;
                        update_accepting();
                    });
                } catch (...) {  // NOLINT(bugprone-empty-catch): a connection ending tries again
                }
            }
        }
    }
}

// ----- Connections -----------------------------------------------------------------

void Server::release(void* context, Transport& /*transport*/) noexcept {
    auto* connection = static_cast<Connection*>(context);
    connection->server->released(*connection);
}

void Server::released(Connection& connection) noexcept {
    if (connection.previous != nullptr) {
        connection.previous->next = connection.next;
    } else {
        connections_ = connection.next;
    }
    if (connection.next != nullptr) {
        connection.next->previous = connection.previous;
    }
    --count_;
    delete &connection;
    if (destroying_) {
        return;
    }
    if (resource_paused_ && reactor_ != nullptr && !reactor_->is_closed()) {
        // A descriptor is free again.
        retry_.cancel();
        resource_paused_ = false;
    }
    update_accepting();
    if (shutting_down_ && count_ == 0) {
        shutting_down_ = false;
        std::function<void()> drained = std::move(drained_);
        if (drained) {
            drained();  // may destroy the server: nothing follows
        }
    }
}

void Server::close() {
    check_usable("Server::close");
    close_listeners();
    for (Connection* connection = connections_; connection != nullptr; connection = connection->next) {
        connection->transport.abort();
    }
}

void Server::shutdown(std::function<void()> drained) {
    check_usable("Server::shutdown");
    close_listeners();
    for (Connection* connection = connections_; connection != nullptr; connection = connection->next) {
        connection->transport.close();
    }
    drain(std::move(drained));
}

void Server::drain(std::function<void()> drained) {
    check_usable("Server::drain");
    close_listeners();
    drained_ = std::move(drained);
    shutting_down_ = true;
    if (count_ == 0) {
        shutting_down_ = false;
        std::function<void()> done = std::move(drained_);
        if (done) {
            done();
        }
    }
}

void Server::for_each_connection(const std::function<void(Transport&)>& visit) {
    for (Connection* connection = connections_; connection != nullptr;) {
        Connection* const next = connection->next;
        visit(connection->transport);
        connection = next;
    }
}

}  // namespace muxio
