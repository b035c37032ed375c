// Name resolution off the loop: getaddrinfo(3) on a Resolver's worker
// threads, the awaiting coroutine resumed on its reactor through
// Reactor::call_soon_threadsafe.
//
// One Request is shared by the awaiting coroutine (through LookupAwaiter,
// which lives in its frame), a worker, and the resumption posted to the
// loop. Its mutex guards three facts:
//   claimed   the outcome is decided, by the worker's result, a stop request,
//             or the resolver shutting down, whichever comes first; only the
//             one that claims posts the resumption, so there is exactly one.
//   attached  the awaiting frame still exists. The destructor of the awaiter
//             clears it (on the loop thread), so a resumption posted earlier
//             and a worker finishing later both leave the frame alone, and a
//             worker never posts to a reactor whose task is gone.
//   cancelled the claim was a stop request.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <coroutine>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "muxio/error.hpp"
#include "muxio/net.hpp"

namespace muxio {

namespace {

class ResolverCategory final : public std::error_category {
public:
    [[nodiscard]] const char* name() const noexcept override { return "resolver"; }
    [[nodiscard]] std::string message(int code) const override { return ::gai_strerror(code); }
};

struct Request : std::enable_shared_from_this<Request> {
    Request(Reactor& loop, std::string name, std::string port, ResolveHints wanted)
        : reactor{&loop}, host{std::move(name)}, service{std::move(port)}, hints{wanted} {}

    // Set before the request is queued, read-only afterwards.
    Reactor* reactor;
    std::string host;
    std::string service;
    ResolveHints hints;
    std::coroutine_handle<> continuation;

    std::mutex mutex;
    bool claimed = false;
    bool attached = true;
    bool cancelled = false;
    std::vector<SocketAddress> addresses;
    std::error_code error;

    // With `mutex` held, by whoever claimed the request.
    void post_locked() noexcept {
        if (!attached) {
            return;
        }
        try {
            reactor->call_soon_threadsafe([self = shared_from_this()] { self->resume_on_loop(); });
        } catch (...) {
            // The reactor is closed: nothing will resume the coroutine, whose
            // owner destroys its frame (and detaches this request) instead.
        }
    }

    // On the loop thread, where the frame is also destroyed: once `attached`
    // is read true here, the frame lives until resume() returns to us.
    void resume_on_loop() {
        std::coroutine_handle<> handle;
        {
            const std::lock_guard lock{mutex};
            if (!attached) {
                return;
            }
            handle = continuation;
        }
        detail::ResumeLoop::run(handle);
    }
};

[[nodiscard]] bool is_numeric_host(const std::string& host) noexcept {
    std::array<unsigned char, sizeof(in6_addr)> scratch{};
    return ::inet_pton(AF_INET, host.c_str(), scratch.data()) == 1 ||
           ::inet_pton(AF_INET6, host.c_str(), scratch.data()) == 1;
}

[[nodiscard]] bool is_numeric_service(const std::string& service) noexcept {
    return std::all_of(service.begin(), service.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// getaddrinfo(), its list copied without duplicates (several socket types
// give the same address several times).
std::vector<SocketAddress> lookup(const std::string& host, const std::string& service, const ResolveHints& hints,
                                  std::error_code& error) {
    addrinfo wanted{};
    wanted.ai_family = hints.family;
    wanted.ai_socktype = hints.socktype;
    wanted.ai_protocol = hints.protocol;
    wanted.ai_flags = hints.flags;
    addrinfo* found = nullptr;
    const int status = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.empty() ? nullptr : service.c_str(),
                                     &wanted, &found);
    if (status != 0) {
        if (status == EAI_SYSTEM) {
            error = {errno != 0 ? errno : EIO, std::system_category()};
        } else {
            error = {status, resolver_category()};
        }
        return {};
    }
    const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owner{found, &::freeaddrinfo};
    std::vector<SocketAddress> addresses;
    for (const addrinfo* entry = found; entry != nullptr; entry = entry->ai_next) {
        if (entry->ai_addr == nullptr || entry->ai_addrlen > SocketAddress::capacity()) {
            continue;
        }
        SocketAddress address{entry->ai_addr, entry->ai_addrlen};
        if (std::find(addresses.begin(), addresses.end(), address) == addresses.end()) {
            addresses.push_back(address);
        }
    }
    error.clear();
    return addresses;
}

[[noreturn]] void throw_lookup_error(const std::error_code& error, const std::string& host,
                                     const std::string& service) {
    throw std::system_error{error, fmt::format("resolve {}:{}", host, service)};
}

}  // namespace

const std::error_category& resolver_category() noexcept {
    static const ResolverCategory category;
    return category;
}

// ----- The worker pool ----------------------------------------------------------------

struct detail::ResolverPool {
    explicit ResolverPool(std::size_t threads) : max_threads{threads} {}
    ResolverPool(const ResolverPool&) = delete;
    ResolverPool& operator=(const ResolverPool&) = delete;
    ResolverPool(ResolverPool&&) = delete;
    ResolverPool& operator=(ResolverPool&&) = delete;
    ~ResolverPool() { shutdown(); }

    void submit(const std::shared_ptr<Request>& request) {
        const std::lock_guard lock{mutex};
        if (stopping) {
            throw std::logic_error("resolve: the resolver is shutting down");
        }
        queue.push_back(request);
        if (queue.size() > idle && workers.size() < max_threads) {
            try {
                start_worker();
            } catch (...) {
                if (workers.empty()) {
                    queue.pop_back();
                    throw;  // no thread will ever take it
                }
                // The workers running take it in turn.
            }
        }
        wake.notify_one();
    }

    void shutdown() noexcept {
        std::deque<std::shared_ptr<Request>> abandoned;
        {
            const std::lock_guard lock{mutex};
            if (stopping) {
                return;
            }
            stopping = true;
            abandoned.swap(queue);
        }
        wake.notify_all();
        for (const auto& request : abandoned) {
            const std::lock_guard lock{request->mutex};
            if (!request->claimed) {
                request->claimed = true;
                request->error = std::make_error_code(std::errc::operation_canceled);
                request->post_locked();
            }
        }
        // A lookup in progress is waited for: getaddrinfo cannot be interrupted.
        for (std::thread& worker : workers) {
            worker.join();
        }
    }

private:
    // With `mutex` held.
    void start_worker() {
        // Workers block every signal, so a process's handlers run on its own
        // threads and a lookup is never cut short by EINTR.
        sigset_t all{};
        sigset_t previous{};
        ::sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &previous);
        try {
            workers.emplace_back([this] { work(); });
        } catch (...) {
            ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
            throw;
        }
        ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    }

    void work() noexcept {
        ::pthread_setname_np(::pthread_self(), "muxio-resolve");
        std::unique_lock lock{mutex};
        for (;;) {
            ++idle;
            wake.wait(lock, [this] { return stopping || !queue.empty(); });
            --idle;
            if (stopping) {
                return;
            }
            std::shared_ptr<Request> request = std::move(queue.front());
            queue.pop_front();
            lock.unlock();
            run(*request);
            request.reset();
            lock.lock();
        }
    }

    static void run(Request& request) noexcept {
        {
            const std::lock_guard lock{request.mutex};
            if (request.claimed) {
                return;  // cancelled, or its task is gone, while queued
            }
        }
        std::error_code error;
        std::vector<SocketAddress> addresses;
        try {
            addresses = lookup(request.host, request.service, request.hints, error);
        } catch (...) {
            error = std::make_error_code(std::errc::not_enough_memory);
        }
        const std::lock_guard lock{request.mutex};
        if (request.claimed) {
            return;  // cancelled meanwhile: the result is dropped
        }
        request.claimed = true;
        request.addresses = std::move(addresses);
        request.error = error;
        request.post_locked();
    }

    std::mutex mutex;
    std::condition_variable wake;
    std::deque<std::shared_ptr<Request>> queue;
    std::vector<std::thread> workers;
    std::size_t idle = 0;  // workers waiting for a request
    std::size_t max_threads;
    bool stopping = false;
};

namespace {

// `co_await`ed by Resolver::resolve(): queues the request, and resumes with
// its result or with Cancelled. Hooked onto the reactor while it waits: if
// the reactor closes first, the request is detached (the worker posts
// nothing to it) and the coroutine stays suspended for its owner to destroy.
class LookupAwaiter : private detail::CloseHook {
public:
    LookupAwaiter(detail::ResolverPool& pool, std::shared_ptr<Request> request, std::stop_token token) noexcept
        : pool_{&pool}, request_{std::move(request)}, token_{std::move(token)} {}
    LookupAwaiter(const LookupAwaiter&) = delete;
    LookupAwaiter& operator=(const LookupAwaiter&) = delete;
    LookupAwaiter(LookupAwaiter&&) = delete;
    LookupAwaiter& operator=(LookupAwaiter&&) = delete;

    // Also runs when the frame is destroyed while suspended here.
    ~LookupAwaiter() {
        // Destroying a stop_callback waits for it if it runs elsewhere now.
        on_token_stop_.reset();
        on_ambient_stop_.reset();
        const std::lock_guard lock{request_->mutex};
        request_->attached = false;
        request_->claimed = true;  // a worker that has not started it skips it
    }

    [[nodiscard]] bool await_ready() const noexcept { return false; }

    template <class Promise>
    void await_suspend(std::coroutine_handle<Promise> awaiter) {
        ambient_ = detail::ambient_stop_token(awaiter);
        request_->continuation = awaiter;
        pool_->submit(request_);
        hook(*request_->reactor, Phase::late, &on_reactor_close);
        // From here a stop request may claim the request, on any thread,
        // even inside these constructors if it was made already.
        if (token_.stop_possible()) {
            on_token_stop_.emplace(token_, OnStop{this});
        }
        if (ambient_.stop_possible()) {
            on_ambient_stop_.emplace(ambient_, OnStop{this});
        }
    }

    void await_resume() {
        on_token_stop_.reset();
        on_ambient_stop_.reset();
        // A stop that came after the lookup finished, before the loop got to
        // resume us, still cancels: the result is dropped, as asyncio does.
        if (token_.stop_requested() || ambient_.stop_requested()) {
            throw Cancelled{};
        }
        const std::lock_guard lock{request_->mutex};
        if (request_->cancelled) {
            throw Cancelled{};
        }
        if (request_->error) {
            throw_lookup_error(request_->error, request_->host, request_->service);
        }
    }

private:
    struct OnStop {
        LookupAwaiter* awaiter;
        void operator()() const noexcept { awaiter->on_stop(); }
    };

    static void on_reactor_close(CloseHook& hook) noexcept {
        auto& self = static_cast<LookupAwaiter&>(hook);
        self.on_token_stop_.reset();
        self.on_ambient_stop_.reset();
        const std::lock_guard lock{self.request_->mutex};
        self.request_->attached = false;
        self.request_->claimed = true;
    }

    void on_stop() noexcept {
        const std::lock_guard lock{request_->mutex};
        if (request_->claimed) {
            return;
        }
        request_->claimed = true;
        request_->cancelled = true;
        request_->post_locked();
    }

    detail::ResolverPool* pool_;
    std::shared_ptr<Request> request_;
    std::stop_token token_;
    std::stop_token ambient_;
    std::optional<std::stop_callback<OnStop>> on_token_stop_;
    std::optional<std::stop_callback<OnStop>> on_ambient_stop_;
};

// The process's resolver for muxio::resolve(). A forked child does not have
// its parent's worker threads: it leaks the parent's resolver (never
// touching its state, which a worker may have held locked at the fork) and
// makes its own.
class SharedResolver {
public:
    SharedResolver() = default;
    SharedResolver(const SharedResolver&) = delete;
    SharedResolver& operator=(const SharedResolver&) = delete;
    SharedResolver(SharedResolver&&) = delete;
    SharedResolver& operator=(SharedResolver&&) = delete;
    ~SharedResolver() {
        if (owner_ != ::getpid()) {
            (void)resolver_.release();  // the parent's: its threads are not ours to join
        }
    }

    Resolver& get() {
        const std::lock_guard lock{mutex_};
        if (!resolver_ || owner_ != ::getpid()) {
            (void)resolver_.release();
            resolver_ = std::make_unique<Resolver>(shared_threads);
            owner_ = ::getpid();
        }
        return *resolver_;
    }

private:
    // Enough for a few slow DNS lookups not to hold up the others.
    static constexpr std::size_t shared_threads = 4;

    std::mutex mutex_;
    std::unique_ptr<Resolver> resolver_;
    pid_t owner_ = 0;
};

Resolver& shared_resolver() {
    static SharedResolver shared;
    return shared.get();
}

}  // namespace

// ----- Resolver -----------------------------------------------------------------------

Resolver::Resolver(std::size_t max_threads) {
    if (max_threads == 0) {
        throw std::invalid_argument("Resolver: max_threads must be at least 1");
    }
    pool_ = std::make_unique<detail::ResolverPool>(max_threads);
}

Resolver::~Resolver() = default;

Task<std::vector<SocketAddress>> Resolver::resolve(Reactor& reactor, std::string host, std::string service,
                                                   ResolveHints hints, std::stop_token token) {
    reactor.require_usable("resolve");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    if (is_numeric_host(host) && is_numeric_service(service)) {
        // Nothing to look up: getaddrinfo only parses, so it runs here.
        hints.flags |= AI_NUMERICHOST | AI_NUMERICSERV;
        std::error_code error;
        std::vector<SocketAddress> addresses = lookup(host, service, hints, error);
        if (error) {
            throw_lookup_error(error, host, service);
        }
        co_return addresses;
    }
    auto request = std::make_shared<Request>(reactor, std::move(host), std::move(service), hints);
    co_await LookupAwaiter{*pool_, request, std::move(token)};
    co_return std::move(request->addresses);
}

Task<std::vector<SocketAddress>> resolve(Reactor& reactor, std::string host, std::string service, ResolveHints hints,
                                         std::stop_token token) {
    return shared_resolver().resolve(reactor, std::move(host), std::move(service), hints, std::move(token));
}

Task<std::vector<SocketAddress>> resolve(Reactor& reactor, std::string host, std::uint16_t port, ResolveHints hints,
                                         std::stop_token token) {
    return resolve(reactor, std::move(host), std::to_string(port), hints, std::move(token));
}

}  // namespace muxio
