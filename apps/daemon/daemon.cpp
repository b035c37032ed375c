#include "daemon.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "muxio/awaitables.hpp"
#include "muxio/error.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"

namespace muxio::apps::daemon {

namespace {

using namespace std::chrono_literals;

// The longest line either service takes; a longer one ends the connection,
// so a client cannot make the daemon buffer without end.
constexpr std::size_t max_tcp_line = std::size_t{64} * 1024;
constexpr std::size_t max_control_line = 1024;
constexpr std::size_t read_size = 4096;
// How long accepting pauses when the process is out of descriptors: the
// connection stays queued, so retrying at once would spin.
constexpr auto accept_pause = 100ms;

bool out_of_descriptors(const std::error_code& error) noexcept {
    return error == std::errc::too_many_files_open || error == std::errc::too_many_files_open_in_system;
}

Reactor::Duration to_duration(Seconds seconds) {
    return std::chrono::ceil<Reactor::Duration>(seconds);
}

// True if a process accepts connections on the Unix socket at `path`: then
// the path is another daemon's, and binding would steal it.
bool someone_listens(const std::string& path) {
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0 || !S_ISSOCK(info.st_mode)) {
        return false;
    }
    const SocketAddress address = SocketAddress::unix_path(path);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    // A Unix connect never waits for the listener: it succeeds or fails at once.
    const bool connected = ::connect(fd, address.data(), address.size()) == 0;
    ::close(fd);
    return connected;
}

}  // namespace

std::string_view to_string(State state) noexcept {
    switch (state) {
        case State::running:
            return "running";
        case State::draining:
            return "draining";
        case State::stopping:
            return "stopping";
    }
    return "unknown";
}

// Everything the tasks and the timer share. It answers the control commands
// itself (ControlTarget), so a control client needs nothing but this.
struct Daemon::Core final : ControlTarget {
    Core(Reactor& loop, std::shared_ptr<spdlog::logger> logger, Config initial, DaemonOptions settings)
        : reactor{loop}, log{std::move(logger)}, config{std::move(initial)}, options{std::move(settings)} {}

    // ControlTarget.
    [[nodiscard]] StatusReport status() const override;
    bool stop() override { return request_stop("control command 'stop'"); }
    ReloadResult reload() override;

    bool request_stop(std::string_view reason);
    void end_drain();
    void apply_log_level();
    void schedule_heartbeat(Reactor::TimePoint when);
    void heartbeat();

    Reactor& reactor;
    std::shared_ptr<spdlog::logger> log;
    Config config;
    DaemonOptions options;
    SocketAddress tcp_address;

    State state = State::running;
    Reactor::TimePoint started = reactor.time();
    Reactor::TimePoint next_tick{};
    std::optional<Reactor::TimePoint> drain_deadline;
    TimerHandle heartbeat_timer;
    std::uint64_t generation = 1;
    std::uint64_t ticks = 0;
    std::uint64_t served = 0;
    std::uint64_t connection_errors = 0;
    std::size_t connections = 0;
    std::size_t control_clients = 0;
    std::size_t tasks = 0;

    // Three groups of tasks, cancelled at different moments: the TCP accept
    // loop when the stop begins, the TCP clients when the drain ends, the
    // control channel last.
    std::stop_source accept_stop;
    std::stop_source connection_stop;
    std::stop_source control_stop;
};

namespace {

using Core = Daemon::Core;

// Counts one thing (a task, a connection) for as long as it lives. Passed to
// a coroutine by value, it lives in the coroutine's frame, so the count drops
// however the frame ends: the task returned, or Reactor::close() destroyed it
// suspended or before it started. It keeps Core alive for the same time.
class Ticket {
public:
    Ticket(std::shared_ptr<Core> core, std::size_t Core::*counter) : core_{std::move(core)}, counter_{counter} {
        ++((*core_).*counter_);
    }
    Ticket(Ticket&& other) noexcept : core_{std::move(other.core_)}, counter_{other.counter_} {}
    Ticket& operator=(Ticket&&) = delete;
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() {
        if (core_) {
            --((*core_).*counter_);
        }
    }
    [[nodiscard]] Core& core() const noexcept { return *core_; }
    [[nodiscard]] const std::shared_ptr<Core>& shared() const noexcept { return core_; }

private:
    std::shared_ptr<Core> core_;
    std::size_t Core::*counter_;
};

// The reply to every complete line in `lines`, each answered by `answer`
// (nullopt: no reply), ending with an error line if a line was too long:
// what one read brings is answered with one write.
template <class Answer>
std::string answer_lines(LineBuffer& lines, Answer&& answer) {
    std::string reply;
    while (std::optional<std::string> line = lines.next_line()) {
        if (std::optional<std::string> out = answer(*line)) {
            reply += *out;
            reply += '\n';
        }
    }
    if (lines.overflowed()) {
        reply += "error: line too long\n";
    }
    return reply;
}

// One TCP client: the greeting, then each line sent back.
// `task` only counts: it lives as long as the frame.
Task<void> serve_tcp_client([[maybe_unused]] Ticket task, Ticket connection, TcpStream stream) {
    Core& core = connection.core();
    const SocketAddress peer = stream.peer_address();
    core.log->debug("connection from {}", peer);
    try {
        if (!core.config.greeting.empty()) {
            const std::string greeting = core.config.greeting + '\n';
            co_await stream.write_all(greeting);
        }
        LineBuffer lines{max_tcp_line};
        std::array<std::byte, read_size> buffer{};
        for (;;) {
            const std::size_t got = co_await stream.read_some(buffer);
            if (got == 0) {
                break;
            }
            lines.append(std::span<const std::byte>{buffer.data(), got});
            const std::string reply = answer_lines(lines, [](std::string& line) { return std::move(line); });
            if (!reply.empty()) {
                co_await stream.write_all(reply);
            }
            if (lines.overflowed()) {
                core.log->warn("connection from {}: line longer than {} bytes; closing", peer, max_tcp_line);
                break;
            }
        }
        core.log->debug("connection from {} closed by the client", peer);
    } catch (const Cancelled&) {
        core.log->debug("connection from {} closed by the daemon", peer);
    } catch (const std::system_error& error) {
        // Mostly the peer's doing (reset, gone).
        ++core.connection_errors;
        core.log->debug("connection from {}: {}", peer, error.what());
    } catch (const std::exception& error) {
        // The daemon's: the reactor could not watch the descriptor (select
        // from FD_SETSIZE up), or memory ran out. The stream closes with the
        // frame, now.
        ++core.connection_errors;
        core.log->warn("connection from {}: cannot serve it, closed it: {}", peer, error.what());
    }
}

// Accepts until cancelled, handing each connection to `serve`. When the
// process is out of descriptors the connection stays queued, so the loop
// pauses instead of spinning on it; so it does after any error but the
// kernel's for one connection. A connection `serve` fails to take is closed
// (it is destroyed with the exception) and counted. `channel` prefixes the
// warnings.
template <class Listener, class Serve>
Task<void> accept_until_cancelled(Core& core, Listener& listener, std::string_view channel, Serve serve) {
    for (;;) {
        bool pause = false;
        try {
            auto stream = co_await listener.accept();
            try {
                serve(std::move(stream));
            } catch (const std::exception& error) {
                ++core.connection_errors;
                core.log->warn("{}cannot serve a connection, closed it: {}", channel, error.what());
            }
        } catch (const Cancelled&) {
            co_return;
        } catch (const std::system_error& error) {
            core.log->warn("{}{}", channel, error.what());
            pause = out_of_descriptors(error.code());
        } catch (const std::exception& error) {
            // The listener itself may not be watchable: retrying at once could spin.
            core.log->warn("{}accept: {}; pausing accepts for {} ms", channel, error.what(),
                           std::chrono::duration_cast<std::chrono::milliseconds>(accept_pause).count());
            pause = true;
        }
        if (pause) {
            try {
                co_await sleep_for(core.reactor, accept_pause);
            } catch (const Cancelled&) {
                co_return;
            }
        }
    }
}

Task<void> accept_tcp(Ticket task, TcpListener listener) {
    Core& core = task.core();
    co_await accept_until_cancelled(core, listener, "", [&task, &core](TcpStream stream) {
        ++core.served;
        spawn(core.reactor,
              serve_tcp_client(Ticket{task.shared(), &Core::tasks}, Ticket{task.shared(), &Core::connections},
                               std::move(stream)),
              core.connection_stop.get_token());
    });
    core.log->info("no longer accepting connections on {}", listener.local_address());
    // The listener closes here, with the frame: new connections are refused.
}

// One control client: each line is a command, each answered by one line.
Task<void> serve_control_client([[maybe_unused]] Ticket task, Ticket client, UnixStream stream) {
    Core& core = client.core();
    try {
        LineBuffer lines{max_control_line};
        std::array<std::byte, read_size> buffer{};
        for (;;) {
            const std::size_t got = co_await stream.read_some(buffer);
            if (got == 0) {
                break;
            }
            lines.append(std::span<const std::byte>{buffer.data(), got});
            const std::string reply =
                answer_lines(lines, [&core](const std::string& line) { return handle_control_line(line, core); });
            if (!reply.empty()) {
                co_await stream.write_all(reply);
            }
            if (lines.overflowed()) {
                break;
            }
        }
    } catch (const Cancelled&) {
        // The daemon is stopping.
    } catch (const std::system_error& error) {
        ++core.connection_errors;
        core.log->debug("control client: {}", error.what());
    } catch (const std::exception& error) {
        // As for a TCP client: the stream closes with the frame, now.
        ++core.connection_errors;
        core.log->warn("control client: cannot serve it, closed it: {}", error.what());
    }
}

Task<void> accept_control(Ticket task, UnixListener listener) {
    Core& core = task.core();
    co_await accept_until_cancelled(core, listener, "control channel: ", [&task, &core](UnixStream stream) {
        spawn(core.reactor,
              serve_control_client(Ticket{task.shared(), &Core::tasks}, Ticket{task.shared(), &Core::control_clients},
                                   std::move(stream)),
              core.control_stop.get_token());
    });
    // The listener closes with the frame and removes its socket file.
}

}  // namespace

// ----- Core ---------------------------------------------------------------------------------

StatusReport Core::status() const {
    StatusReport report;
    report.pid = ::getpid();
    report.uptime = std::chrono::duration<double>(reactor.time() - started).count();
    report.ticks = ticks;
    report.connections = connections;
    report.served = served;
    report.errors = connection_errors;
    report.control_clients = control_clients;
    report.generation = generation;
    report.state = to_string(state);
    return report;
}

ReloadResult Core::reload() {
    if (options.config_path.empty()) {
        log->warn("reload: no configuration file (start with --config FILE); generation {} kept", generation);
        return {false, generation, "no configuration file (start with --config FILE)"};
    }
    Config next;
    try {
        next = load_config(options.config_path);
    } catch (const std::exception& error) {
        // ConfigError, or anything else reading the file ran into: whatever
        // it is, the configuration in force stays and the caller hears why.
        log->error("reload failed, generation {} kept: {}", generation, error.what());
        return {false, generation, error.what()};
    }
    const bool new_interval = next.interval != config.interval;
    config = std::move(next);
    ++generation;
    apply_log_level();
    if (new_interval && state != State::stopping) {
        heartbeat_timer.cancel();
        schedule_heartbeat(reactor.time() + to_duration(config.interval));
    }
    log->info("reloaded {}: generation {}", options.config_path, generation);
    return {true, generation, {}};
}

bool Core::request_stop(std::string_view reason) {
    if (state != State::running) {
        return false;
    }
    state = State::draining;
    drain_deadline = reactor.time() + to_duration(config.drain_timeout);
    accept_stop.request_stop();
    log->info("{}: stopping; draining {} connection(s) for up to {} s", reason, connections,
              config.drain_timeout.count());
    return true;
}

void Core::end_drain() {
    if (state == State::stopping) {
        return;
    }
    if (state == State::running) {
        accept_stop.request_stop();
    }
    if (connections != 0) {
        log->warn("closing {} connection(s) still open at the end of the drain", connections);
    }
    state = State::stopping;
    drain_deadline.reset();
    heartbeat_timer.cancel();
    connection_stop.request_stop();
    control_stop.request_stop();
}

void Core::apply_log_level() {
    log->set_level(options.log_level_override.value_or(config.log_level.value_or(spdlog::level::warn)));
}

void Core::schedule_heartbeat(Reactor::TimePoint when) {
    next_tick = when;
    heartbeat_timer = reactor.call_at(when, [this] { heartbeat(); });
}

void Core::heartbeat() {
    ++ticks;
    log->info("heartbeat: uptime {:.3f} s, {} ticks, {} connection(s) open, {} served, generation {}, {}",
              std::chrono::duration<double>(reactor.time() - started).count(), ticks, connections, served, generation,
              to_string(state));
    // On a fixed grid, so heartbeats do not drift; one that came too late
    // for the next slot skips it rather than firing twice.
    const Reactor::Duration interval = to_duration(config.interval);
    Reactor::TimePoint next = next_tick + interval;
    if (const Reactor::TimePoint now = reactor.time(); next <= now) {
        next = now + interval;
    }
    schedule_heartbeat(next);
}

// ----- Daemon -------------------------------------------------------------------------------

Daemon::Daemon(Reactor& reactor, std::shared_ptr<spdlog::logger> log, Config config, DaemonOptions options)
    : core_{std::make_shared<Core>(reactor, std::move(log), std::move(config), std::move(options))} {
    Core& core = *core_;
    core.apply_log_level();
    TcpListener tcp = TcpListener::bind(reactor, core.options.tcp_address);
    core.tcp_address = tcp.local_address();
    UnixListener control;
    if (!core.options.control_path.empty()) {
        if (someone_listens(core.options.control_path)) {
            throw std::runtime_error(
                fmt::format("control socket {} is in use by a running process", core.options.control_path));
        }
        control = UnixListener::bind(reactor, SocketAddress::unix_path(core.options.control_path));
    }
    core.schedule_heartbeat(reactor.time() + to_duration(core.config.interval));
    spawn(reactor, accept_tcp(Ticket{core_, &Core::tasks}, std::move(tcp)), core.accept_stop.get_token());
    if (control.is_open()) {
        spawn(reactor, accept_control(Ticket{core_, &Core::tasks}, std::move(control)), core.control_stop.get_token());
    }
}

Daemon::~Daemon() {
    core_->heartbeat_timer.cancel();
    core_->accept_stop.request_stop();
    core_->connection_stop.request_stop();
    core_->control_stop.request_stop();
}

const SocketAddress& Daemon::tcp_address() const noexcept {
    return core_->tcp_address;
}

const std::string& Daemon::control_path() const noexcept {
    return core_->options.control_path;
}

bool Daemon::request_stop(std::string_view reason) {
    return core_->request_stop(reason);
}

void Daemon::end_drain() {
    core_->end_drain();
}

ReloadResult Daemon::reload() {
    return core_->reload();
}

bool Daemon::advance() {
    Core& core = *core_;
    if (core.state == State::draining && (core.connections == 0 || core.reactor.time() >= *core.drain_deadline)) {
        core.end_drain();
    }
    return core.state == State::stopping && core.tasks == 0;
}

State Daemon::state() const noexcept {
    return core_->state;
}

std::optional<Reactor::TimePoint> Daemon::drain_deadline() const noexcept {
    return core_->drain_deadline;
}

std::size_t Daemon::connections() const noexcept {
    return core_->connections;
}

std::size_t Daemon::tasks() const noexcept {
    return core_->tasks;
}

StatusReport Daemon::status() const {
    return core_->status();
}

const Config& Daemon::config() const noexcept {
    return core_->config;
}

}  // namespace muxio::apps::daemon
