// The reactor awaits: registration, resumption exactly once, cancellation.
#include <fmt/format.h>

#include <memory>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/detail/resume_loop.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "muxio/task_group.hpp"

namespace muxio::detail {

bool ReactorWait::start(std::coroutine_handle<> awaiter, std::stop_token ambient) {
    if (token_.stop_requested() || ambient.stop_requested()) {
        cancelled_ = true;
        return false;  // resumes at once and throws Cancelled
    }
    awaiter_ = awaiter;
    if (watch_ != nullptr) {
        watch_->start(*this, kind_ == Kind::read ? EVENT_READ : EVENT_WRITE);
        registered_ = true;
        listen_for_stop(std::move(ambient));
        return true;
    }
    // A reader or writer callback holds only `this`: stored inline, no allocation.
    switch (kind_) {
        case Kind::read:
            if (reactor_->has_reader(fd_)) {
                throw std::logic_error(
                    fmt::format("readable: fd {} already has a reader (is another task reading it?)", fd_));
            }
            reactor_->add_reader(fd_, [this] { on_ready(); });
            break;
        case Kind::write:
            if (reactor_->has_writer(fd_)) {
                throw std::logic_error(
                    fmt::format("writable: fd {} already has a writer (is another task writing it?)", fd_));
            }
            reactor_->add_writer(fd_, [this] { on_ready(); });
            break;
        case Kind::timer:
            timer_ = reactor_->call_at(when_, [this] { on_ready(); });
            break;
        case Kind::soon:
            timer_ = reactor_->call_soon([this] { on_ready(); });
            break;
        case Kind::parked:
            break;  // only the close hook: wake() or a stop request ends it
    }
    hook_.construct(*this).hook(*reactor_, CloseHook::Phase::late, &on_reactor_close);
    registered_ = true;
    listen_for_stop(std::move(ambient));
    return true;
}

void ReactorWait::listen_for_stop_requests(std::stop_token ambient) {
    if (token_.stop_possible()) {
        on_token_stop_.construct(token_, OnStop{this});
        on_token_stop_alive_ = true;
    }
    if (ambient.stop_possible()) {
        on_ambient_stop_.construct(std::move(ambient), OnStop{this});
        on_ambient_stop_alive_ = true;
    }
}

void ReactorWait::on_ready() {
    if (!claim()) {
        return;  // a stop request won; its post resumes the coroutine
    }
    if (attempt_ != nullptr && !attempt_(operation_)) {
        // Would block again: wait on. A stop request meanwhile found the
        // wait claimed and left; seq_cst on both sides (the exchange in
        // claim(), these) means that either it claims now or this sees it.
        claimed_.store(false);
        if (!stop_seen_.load() || !claim()) {
            return;
        }
        cancelled_ = true;  // on the loop thread, in a callback: resuming here is fine
    }
    // Destroying a stop_callback waits for it if it runs on another thread
    // now; that run loses the claim and does nothing.
    stop_listening();
    disarm();
    ResumeLoop::run(awaiter_);
}

bool ReactorWait::wake() {
    if (kind_ != Kind::parked || !registered_) {
        throw std::logic_error("ReactorWait::wake: not a pending parked wait (awaited, and its reactor not closed)");
    }
    // Posted before the claim, so that a refusal (wrong thread, no memory)
    // leaves the wait as it was.
    TimerHandle posted = reactor_->call_soon([this] { on_woken(); });
    if (!claim()) {
        posted.cancel();
        return false;  // a stop request won; its post resumes the coroutine
    }
    // Claimed: a stop callback running now on another thread loses and does
    // nothing, and destroying it waits for that run to end.
    stop_listening();
    timer_ = posted;
    return true;
}

void ReactorWait::on_woken() {
    disarm();
    ResumeLoop::run(awaiter_);
}

void ReactorWait::on_stop() noexcept {
    stop_seen_.store(true);
    if (!claim()) {
        return;
    }
    // Written before the post, read on the loop thread after it (the
    // reactor's queue lock orders them) or by the destructor after it has
    // destroyed this stop_callback (which waits for this call to return).
    cancel_posted_ = std::make_shared<bool>(true);
    try {
        reactor_->call_soon_threadsafe([this, still_waiting = cancel_posted_] {
            if (*still_waiting) {
                finish_cancel();
            }
        });
    } catch (const std::logic_error&) {
        // The reactor is closed: nothing will resume the coroutine; whoever
        // owns its frame destroys it.
    }
}

void ReactorWait::finish_cancel() {
    *cancel_posted_ = false;
    stop_listening();
    disarm();
    cancelled_ = true;
    ResumeLoop::run(awaiter_);
}

void ReactorWait::disarm() {
    if (!registered_) {
        return;
    }
    registered_ = false;
    if (watch_ != nullptr) {
        watch_->stop(*this, kind_ == Kind::read ? EVENT_READ : EVENT_WRITE);
        return;
    }
    hook_.destroy();
    switch (kind_) {
        case Kind::read:
            reactor_->remove_reader(fd_);
            break;
        case Kind::write:
            reactor_->remove_writer(fd_);
            break;
        case Kind::timer:
        case Kind::soon:
        case Kind::parked:  // a wake() posted and not run yet, if any
            timer_.cancel();
            break;
    }
}

void ReactorWait::on_reactor_close(CloseHook& hook) noexcept {
    static_cast<Hook&>(hook).wait->forget_reactor();
}

void ReactorWait::forget_reactor() noexcept {
    // Waits for a stop callback running on another thread; none runs after.
    stop_listening();
    if (registered_ && watch_ == nullptr) {
        hook_.destroy();
    }
    registered_ = false;
    watch_ = nullptr;
    reactor_ = nullptr;
}

void ReactorWait::abandon() noexcept {
    // The frame is destroyed while suspended here: stop listening first
    // (waits for a stop callback running elsewhere), then neutralise a posted
    // cancellation and remove the registration.
    stop_listening();
    if (cancel_posted_) {
        *cancel_posted_ = false;
    }
    try {
        disarm();
    } catch (...) {
        // Only a kernel refusing to drop the fd gets here; a destructor
        // cannot report it, and the fd's owner will close it anyway.
    }
}

// ----- FdWatch ------------------------------------------------------------------------

FdWatch::FdWatch(FdWatch&& other) noexcept {
    take(other);
}

FdWatch& FdWatch::operator=(FdWatch&& other) noexcept {
    if (this != &other) {
        (void)release();
        unhook();
        take(other);
    }
    return *this;
}

void FdWatch::take(FdWatch& other) noexcept {
    reactor_ = std::exchange(other.reactor_, nullptr);
    replace(other);
    fd_ = std::exchange(other.fd_, -1);
    detached_fd_ = std::exchange(other.detached_fd_, -1);
    reader_ = std::exchange(other.reader_, nullptr);
    writer_ = std::exchange(other.writer_, nullptr);
    reading_ = std::exchange(other.reading_, false);
    writing_ = std::exchange(other.writing_, false);
    adopt();
}

void FdWatch::adopt() noexcept {
    for (ReactorWait* waiting : {reader_, writer_}) {
        if (waiting != nullptr) {
            waiting->watch_ = this;
        }
    }
    if (!reading_ && !writing_) {
        return;
    }
    try {
        // Only the callbacks move: the kernel registration stays as it is, so
        // no system call, and no allocation for a one-pointer capture.
        if (reading_) {
            reactor_->replace_handler(fd_, EVENT_READ, [this] { ready(EVENT_READ); });
        }
        if (writing_) {
            reactor_->replace_handler(fd_, EVENT_WRITE, [this] { ready(EVENT_WRITE); });
        }
    } catch (...) {
        // The reactor is closed (its registrations are gone) or belongs to
        // the parent of a fork: nothing will call back, so nothing points
        // to the old place. A pending wait then ends like one whose watch
        // is released.
        reading_ = false;
        writing_ = false;
        end_waits();
    }
}

void FdWatch::register_side(Events side) {
    if (side == EVENT_READ) {
        reactor_->add_reader(fd_, [this] { ready(EVENT_READ); });
    } else {
        reactor_->add_writer(fd_, [this] { ready(EVENT_WRITE); });
    }
}

void FdWatch::start_registering(ReactorWait& wait, Events side) {
    const bool reading = side == EVENT_READ;
    const std::string_view awaiting = reading ? "readable" : "writable";
    if (fd_ < 0) {
        throw std::logic_error(fmt::format("{}: {} is closed", awaiting, detached() ? "reactor" : "socket"));
    }
    ReactorWait*& slot = reading ? reader_ : writer_;
    bool& registered = reading ? reading_ : writing_;
    if (slot != nullptr) {
        throw std::logic_error(fmt::format("{}: fd {} already has a waiting {} (is another task {} it?)", awaiting, fd_,
                                           reading ? "reader" : "writer", reading ? "reading" : "writing"));
    }
    if (!registered) {
        if (reading ? reactor_->has_reader(fd_) : reactor_->has_writer(fd_)) {
            throw std::logic_error(fmt::format("{}: fd {} has a {} callback that is not its socket's", awaiting, fd_,
                                               reading ? "reader" : "writer"));
        }
        register_side(side);
        registered = true;
    }
    slot = &wait;
}

void FdWatch::stop(const ReactorWait& wait, Events side) noexcept {
    ReactorWait*& slot = side == EVENT_READ ? reader_ : writer_;
    if (slot == &wait) {
        slot = nullptr;
    }
}

void FdWatch::ready(Events side) {
    const bool reading = side == EVENT_READ;
    // The slot stays taken until the wait ends (disarm() frees it): an
    // operation that would block again keeps waiting.
    if (ReactorWait* waiting = reading ? reader_ : writer_) {
        waiting->on_ready();
        return;
    }
    // Nobody waits: stop watching until someone does.
    (reading ? reading_ : writing_) = false;
    if (reading) {
        reactor_->remove_reader(fd_);
    } else {
        reactor_->remove_writer(fd_);
    }
}

void FdWatch::end_waits() noexcept {
    for (ReactorWait* waiting : {std::exchange(reader_, nullptr), std::exchange(writer_, nullptr)}) {
        if (waiting != nullptr) {
            // The wait no longer points here; it ends with Cancelled, posted.
            waiting->watch_ = nullptr;
            waiting->registered_ = false;
            waiting->on_stop();
        }
    }
}

int FdWatch::release() noexcept {
    end_waits();
    try {
        if (std::exchange(reading_, false)) {
            reactor_->remove_reader(fd_);
        }
        if (std::exchange(writing_, false)) {
            reactor_->remove_writer(fd_);
        }
    } catch (...) {
        // A kernel refusing to drop the fd, or a forked child, whose reactor
        // refuses to touch the registrations it shares with the parent. The
        // owner closes the fd next, which drops it from this process anyway.
    }
    const int fd = fd_ >= 0 ? fd_ : detached_fd_;
    fd_ = -1;
    detached_fd_ = -1;
    return fd;
}

void FdWatch::on_reactor_close(CloseHook& hook) noexcept {
    static_cast<FdWatch&>(hook).detach();
}

void FdWatch::detach() noexcept {
    // The reactor drops its callbacks, which point here, without calling
    // them; the waits are left suspended for their owners to destroy.
    for (ReactorWait* waiting : {std::exchange(reader_, nullptr), std::exchange(writer_, nullptr)}) {
        if (waiting != nullptr) {
            waiting->forget_reactor();
        }
    }
    reading_ = false;
    writing_ = false;
    reactor_ = nullptr;
    if (fd_ >= 0) {
        detached_fd_ = std::exchange(fd_, -1);
    }
}

void ReactorWait::throw_cancelled() {
    throw Cancelled{};
}

// ----- Combinators and task groups ----------------------------------------------------

void warn_stop_not_heard(const char* combinator) noexcept {
    try {
        logger().warn(
            "{}: cancelling an awaitable that is not declared stop-aware (muxio::enable_stop_aware); "
            "waiting for it to end",
            combinator);
    } catch (...) {
        // A stop callback must not throw; losing the warning is the lesser harm.
    }
}

void log_child_failure(const std::exception_ptr& failure, const char* context) noexcept {
    try {
        try {
            std::rethrow_exception(failure);
        } catch (const std::exception& error) {
            logger().error("TaskGroup: {}: {}", context, error.what());
        } catch (...) {
            logger().error("TaskGroup: {}: an exception not derived from std::exception", context);
        }
    } catch (...) {
        // Logging itself failed (out of memory): nothing is left to tell.
    }
}

}  // namespace muxio::detail
