// ReactorGroup: setups in index order, each on its reactor's thread, then
// every reactor runs; stopping goes through each reactor's own queue.
#include "muxio/reactor_group.hpp"

#include <pthread.h>

#include <csignal>
#include <stdexcept>
#include <thread>
#include <utility>

#include <fmt/format.h>

namespace muxio {

ReactorGroup::ReactorGroup(std::size_t threads, const ReactorOptions& options) {
    if (threads == 0) {
        throw std::invalid_argument("ReactorGroup: needs at least one thread");
    }
    reactors_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) {
        reactors_.push_back(std::make_unique<Reactor>(options));
    }
}

ReactorGroup::~ReactorGroup() = default;

Reactor& ReactorGroup::reactor(std::size_t index) {
    if (index >= reactors_.size()) {
        throw std::out_of_range(fmt::format("ReactorGroup::reactor: index {} of {} reactors", index, reactors_.size()));
    }
    return *reactors_[index];
}

void ReactorGroup::post(std::size_t index, Callback callback) {
    if (index >= reactors_.size()) {
        throw std::out_of_range(fmt::format("ReactorGroup::post: index {} of {} reactors", index, reactors_.size()));
    }
    reactors_[index]->call_soon_threadsafe(std::move(callback));
}

void ReactorGroup::stop_threadsafe() {
    stop_requested_.store(true, std::memory_order_release);
    std::exception_ptr error;
    for (std::size_t i = 0; i < reactors_.size(); ++i) {
        try {
            reactors_[i]->call_soon_threadsafe([this, i] { run_stop_callback(i); });
        } catch (...) {
            if (!error) {
                error = std::current_exception();
            }
        }
    }
    if (error) {
        std::rethrow_exception(error);
    }
}

void ReactorGroup::stop_on_signals(std::initializer_list<int> signals) {
    for (const int signo : signals) {
        reactors_.front()->add_signal_handler(signo, [this, signo] {
            int none = 0;
            stop_signal_.compare_exchange_strong(none, signo, std::memory_order_acq_rel);
            stop_threadsafe();
        });
        stop_signals_.push_back(signo);
    }
}

void ReactorGroup::run(const Setup& setup) {
    if (!setup) {
        throw std::invalid_argument("ReactorGroup::run: empty setup");
    }
    for (const auto& reactor : reactors_) {
        if (reactor->is_running()) {
            throw std::logic_error("ReactorGroup::run: one of the group's reactors is running already");
        }
    }
    if (ran_.exchange(true, std::memory_order_acq_rel)) {
        throw std::logic_error("ReactorGroup::run: the group runs once, and it has run or runs now");
    }
    stop_callbacks_.resize(reactors_.size());
    {
        // Threads that started wait for their turn; if the next one cannot
        // be started, they are told the setups failed, and end.
        std::vector<std::jthread> threads;
        threads.reserve(reactors_.size() - 1);
        // A thread starts with its creator's signal mask.
        sigset_t blocked;
        sigset_t previous;
        sigemptyset(&blocked);
        for (const int signo : stop_signals_) {
            sigaddset(&blocked, signo);
        }
        ::pthread_sigmask(SIG_BLOCK, &blocked, &previous);
        try {
            for (std::size_t i = 1; i < reactors_.size(); ++i) {
                threads.emplace_back([this, i, &setup] { thread_main(i, setup); });
            }
            ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
        } catch (...) {
            ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
            fail(std::current_exception());
            {
                std::lock_guard lock{mutex_};
                setup_failed_ = true;
            }
            turn_changed_.notify_all();
        }
        thread_main(0, setup);
    }  // joins the threads
    std::lock_guard lock{mutex_};
    if (first_error_) {
        std::rethrow_exception(first_error_);
    }
}

bool ReactorGroup::wait_for_turn(std::size_t index) {
    std::unique_lock lock{mutex_};
    turn_changed_.wait(lock, [&] { return setup_failed_ || setups_done_ == index; });
    return !setup_failed_;
}

void ReactorGroup::finish_setup(std::size_t index, bool succeeded) {
    std::unique_lock lock{mutex_};
    if (succeeded) {
        setups_done_ = index + 1;
    } else {
        setup_failed_ = true;
    }
    turn_changed_.notify_all();
}

void ReactorGroup::thread_main(std::size_t index, const Setup& setup) noexcept {
    Reactor& reactor = *reactors_[index];
    if (!wait_for_turn(index)) {
        return;
    }
    try {
        stop_callbacks_[index] = setup(reactor, index);
    } catch (...) {
        fail(std::current_exception());
        finish_setup(index, false);
        return;
    }
    finish_setup(index, true);
    bool everyone_set_up = false;
    {
        std::unique_lock lock{mutex_};
        turn_changed_.wait(lock, [&] { return setup_failed_ || setups_done_ == reactors_.size(); });
        everyone_set_up = !setup_failed_;
    }
    if (everyone_set_up) {
        try {
            reactor.run();
            // Stopped by its own code, or by a stop request: the others stop
            // too, unless someone asked already.
            if (!stop_requested_.exchange(true, std::memory_order_acq_rel)) {
                stop_threadsafe();
            }
        } catch (...) {
            fail(std::current_exception());
            stop_all_at_once();
        }
    }
    // What setup made on this thread goes on this thread.
    stop_callbacks_[index] = {};
}

void ReactorGroup::run_stop_callback(std::size_t index) noexcept {
    Reactor& reactor = *reactors_[index];
    try {
        if (StopCallback& stop = stop_callbacks_[index]) {
            stop();
        } else {
            reactor.stop();
        }
    } catch (...) {
        fail(std::current_exception());
        reactor.stop();
        stop_all_at_once();
    }
}

void ReactorGroup::fail(std::exception_ptr error) noexcept {
    std::lock_guard lock{mutex_};
    if (!first_error_) {
        first_error_ = std::move(error);
    }
}

void ReactorGroup::stop_all_at_once() noexcept {
    stop_requested_.store(true, std::memory_order_release);
    for (const auto& reactor : reactors_) {
        try {
            reactor->stop_threadsafe();
        } catch (...) {
            // Closed already, or the kernel refused the wakeup: nothing
            // better to do from here; the first error is already recorded.
        }
    }
}

}  // namespace muxio
