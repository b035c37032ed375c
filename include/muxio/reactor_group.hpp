// ReactorGroup: one server on several reactors, each on a thread of its own.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <vector>

#include "muxio/reactor.hpp"

namespace muxio {

/// N reactors on N threads serving one server: the model of a reactor per
/// core. Each reactor gets its own copy of the server (typically a listener
/// on one port shared with SO_REUSEPORT, ListenOptions::reuse_port, so that
/// the kernel spreads the connections), and a connection stays on the
/// reactor that accepted it for its whole life. Threads meet only where the
/// caller makes them: post() runs a callback on another reactor's thread.
///
/// Lifecycle:
/// 1. The constructor makes the reactors (on the calling thread; a reactor
///    may be made on one thread and run on another, see Reactor,
///    "Threading").
/// 2. run(setup) calls `setup(reactor(i), i)` on reactor i's own thread, one
///    reactor after the other in index order (setup 0 returns before setup 1
///    begins, so setup 0 can bind port 0 and the others the port it got),
///    then runs all of them: reactor 0 on the calling thread, the others on
///    threads of their own. Nothing runs before every setup succeeded.
/// 3. Each setup returns a stop callback. stop_threadsafe() runs every
///    reactor's stop callback on that reactor's thread; the callback must
///    make its reactor's run() return: at once (Reactor::stop()) or once what
///    it serves is drained (a server's shutdown(), then Reactor::stop() when
///    it reports drained). An empty stop callback stops its reactor at once.
///    Whatever each server does to its connections on stop (close them,
///    send what is queued first, wait for requests to finish) happens on its
///    own thread, in its own reactor.
/// 4. run() returns once every reactor has stopped. A reactor whose run()
///    returns by itself (its own code called stop()) before any stop was
///    asked for asks the others to stop as stop_threadsafe() does, so that
///    run() does not wait forever on the rest. Each stop callback is destroyed on its reactor's thread after
///    that reactor's run() returned, so it may own what setup made there.
///
/// Errors: the first exception that a setup, a reactor's run() or a stop
/// callback throws is rethrown by run(), after the others stopped and every
/// thread was joined. A failed setup means no reactor runs: the setups after
/// it are not called and the stop callbacks of those before it are destroyed
/// uncalled. A run() or a stop callback that throws stops the other reactors
/// at once (Reactor::stop_threadsafe(), no stop callback, no drain).
///
/// Threading: post(), stop_threadsafe(), size() and stopped_by_signal() may
/// be called from any thread at any time, a signal-handler callback
/// included. reactor(i) hands out the reactor, whose own rules apply. The
/// group runs once: run() a second time throws std::logic_error. Destroy the
/// group once run() returned (or never was called): the destructor closes
/// the reactors, on the destroying thread.
class ReactorGroup {
public:
    /// Called on reactor i's thread when the group stops; see the class comment.
    using StopCallback = Callback;
    /// Makes reactor `index`'s share of the server; returns its stop callback.
    using Setup = std::function<StopCallback(Reactor& reactor, std::size_t index)>;

    /// Makes `threads` reactors, each with `options`. std::invalid_argument
    /// for zero threads; what Reactor's constructor throws (the kernel
    /// refuses the selector or a descriptor).
    explicit ReactorGroup(std::size_t threads, const ReactorOptions& options = {});
    /// Closes the reactors. Must not be destroyed while run() runs.
    ~ReactorGroup();
    ReactorGroup(const ReactorGroup&) = delete;
    ReactorGroup& operator=(const ReactorGroup&) = delete;
    ReactorGroup(ReactorGroup&&) = delete;
    ReactorGroup& operator=(ReactorGroup&&) = delete;

    /// The number of reactors (and of threads run() uses).
    [[nodiscard]] std::size_t size() const noexcept { return reactors_.size(); }
    /// Reactor `index`. std::out_of_range past size().
    [[nodiscard]] Reactor& reactor(std::size_t index);

    /// Sets up and runs every reactor until all have stopped (see the class
    /// comment). std::invalid_argument for an empty `setup`;
    /// std::logic_error, with nothing started, if run() was called before
    /// (also while it runs, from any thread, one of its reactors' callbacks
    /// included) or a reactor is already running; otherwise the first
    /// exception a setup, a run() or a stop callback threw. std::system_error
    /// if a thread cannot be started (the reactors that run are stopped
    /// first).
    void run(const Setup& setup);

    /// Runs every reactor's stop callback on its thread. Each call does it
    /// again, so a second request can hurry a drain that the first one began;
    /// callbacks must allow being called more than once. Before run(), or
    /// while setups still run, the request waits in the reactors' queues and
    /// the stop callbacks run as soon as the reactors start. Errors: what
    /// Reactor::call_soon_threadsafe() throws (std::system_error if the
    /// kernel refuses a wakeup, std::logic_error once the group's reactors
    /// are closed), after asking every reactor it could.
    void stop_threadsafe();

    /// Makes `signals` stop the group: a handler on reactor 0 for each
    /// (Reactor::add_signal_handler, so the rules of one reactor per signal
    /// apply) records the signal (stopped_by_signal()) and calls
    /// stop_threadsafe(). Call it before run(), or on reactor 0's thread.
    /// Called before run(), the group's other threads start with these
    /// signals blocked, so the kernel delivers them to reactor 0's thread
    /// (the one that calls run()) and no other thread's system calls are
    /// interrupted by them. The handlers stay until the reactors close. What
    /// add_signal_handler() throws.
    void stop_on_signals(std::initializer_list<int> signals);
    /// The first signal that stop_on_signals() saw, or 0.
    [[nodiscard]] int stopped_by_signal() const noexcept { return stop_signal_.load(std::memory_order_acquire); }

    /// Runs `callback` on reactor `index`'s thread, in an iteration of its
    /// loop (Reactor::call_soon_threadsafe()). Before run() it waits for the
    /// reactor to start; once that reactor stopped, it never runs and is
    /// destroyed when the group is. std::out_of_range past size();
    /// otherwise what call_soon_threadsafe() throws.
    void post(std::size_t index, Callback callback);

private:
    void thread_main(std::size_t index, const Setup& setup) noexcept;
    bool wait_for_turn(std::size_t index);
    void finish_setup(std::size_t index, bool succeeded);
    void run_stop_callback(std::size_t index) noexcept;
    void fail(std::exception_ptr error) noexcept;
    void stop_all_at_once() noexcept;

    std::vector<std::unique_ptr<Reactor>> reactors_;
    // Each reactor's stop callback, touched only on that reactor's thread
    // (written by its setup, called from its loop, destroyed after its run()).
    std::vector<StopCallback> stop_callbacks_;
    std::atomic<bool> ran_{false};
    std::atomic<bool> stop_requested_{false};
    std::atomic<int> stop_signal_{0};
    std::vector<int> stop_signals_;  // blocked in the threads run() starts

    // Setups run one at a time in index order; then every reactor runs.
    std::mutex mutex_;
    std::condition_variable turn_changed_;
    std::size_t setups_done_ = 0;     // guarded by mutex_
    bool setup_failed_ = false;       // guarded by mutex_
    std::exception_ptr first_error_;  // guarded by mutex_
};

}  // namespace muxio
