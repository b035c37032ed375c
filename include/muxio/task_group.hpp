// TaskGroup: structured concurrency; children that cannot outlive their group.
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <utility>

#include "muxio/combinators.hpp"
#include "muxio/task.hpp"

namespace muxio {

namespace detail {

template <class T>
JoinChild group_child(Join& join, Task<T> task) {
    co_await Completion<T>{TaskAccess::handle(task)};
    try {
        TaskAccess::handle(task).promise().rethrow_if_failed();
    } catch (...) {
        if (!join.first_error) {
            join.first_error = std::current_exception();
            join.stop.request_stop();
        }
    }
}

}  // namespace detail

/// A scope for concurrent child tasks, trio's nursery in small:
///
///     TaskGroup group;
///     group.spawn(serve(a));
///     group.spawn(serve(b));
///     co_await group.join();  // both ended; rethrows the first failure
///
/// spawn() starts a child at once (it runs until its first suspension before
/// spawn() returns). The first child to fail stops the group's token, which
/// every child has as its ambient token, so its siblings' pending awaits throw
/// muxio::Cancelled; join() waits for all and rethrows that first failure.
/// While a task awaits join(), a stop request on its own ambient token
/// cancels the children too.
///
/// Children cannot outlive the group: destroying it destroys the frames of
/// those still running (their pending awaits removed, nothing resumed), so
/// a parent unwinding past its group leaves nothing behind. Fire-and-forget
/// tasks that outlive their creator go through muxio::spawn() instead.
///
/// Exit paths: a task awaiting join() may be destroyed while suspended there
/// (the group then resumes nobody); a group destroyed while another task
/// awaits its join() leaves that task suspended for good, detached from the
/// group (cancelling or destroying it later is safe): destroy the group only
/// from the task that joins it, or after the join.
///
/// A child's frame is freed as soon as it ends, so a group may serve an
/// unbounded stream of children (one per connection, say).
/// Not movable: the children point to it.
class TaskGroup {
public:
    TaskGroup() = default;
    TaskGroup(const TaskGroup&) = delete;
    TaskGroup& operator=(const TaskGroup&) = delete;
    TaskGroup(TaskGroup&&) = delete;
    TaskGroup& operator=(TaskGroup&&) = delete;
    ~TaskGroup() {
        if (joiner_ != nullptr) {
            joiner_->detach();  // the awaiting task stays suspended, pointing nowhere
        }
        // The frames of running children go first (the Join must outlive
        // them), latest first.
        detail::JoinChild::destroy_all(children_);
    }

    /// Adds `task` as a child and starts it; its value is discarded.
    /// std::logic_error for an empty task.
    template <class T>
    void spawn(Task<T> task) {
        if (!task.valid()) {
            throw std::logic_error("TaskGroup::spawn: empty Task");
        }
        detail::TaskAccess::set_stop_token(task, join_.stop.get_token());
        detail::group_child(join_, std::move(task)).start_in(join_, children_);
    }
    /// spawn() of a socket operation (see StreamOperation), made a Task.
    template <detail::TaskConvertible A>
    void spawn(A&& operation) {
        spawn(detail::into_task(std::forward<A>(operation)));
    }

    /// Stops the group's token: the children's pending awaits throw Cancelled.
    void cancel() noexcept { join_.stop.request_stop(); }

    /// Number of children still running.
    [[nodiscard]] std::size_t running() const noexcept { return join_.running; }

    /// `co_await group.join()` resumes once no child runs, and rethrows the
    /// first failure of a child (once: a second join() does not rethrow it).
    /// One task at a time may await it: std::logic_error (at the co_await)
    /// for a second one while the first waits.
    [[nodiscard]] auto join() noexcept { return JoinAwaiter{this}; }

private:
    class JoinAwaiter {
    public:
        explicit JoinAwaiter(TaskGroup* group) noexcept : group_{group} {}
        JoinAwaiter(const JoinAwaiter&) = delete;
        JoinAwaiter& operator=(const JoinAwaiter&) = delete;
        JoinAwaiter(JoinAwaiter&&) = delete;
        JoinAwaiter& operator=(JoinAwaiter&&) = delete;
        // Also runs when the awaiting frame is destroyed while suspended
        // here: the group then resumes nobody when its last child ends.
        ~JoinAwaiter() {
            if (group_ != nullptr && group_->joiner_ == this) {
                group_->joiner_ = nullptr;
                group_->join_.parent = {};
            }
        }

        [[nodiscard]] bool await_ready() const noexcept { return group_->join_.running == 0; }
        template <class Promise>
        void await_suspend(std::coroutine_handle<Promise> awaiter) {
            if (group_->joiner_ != nullptr) {
                throw std::logic_error("TaskGroup::join: another task is awaiting this group's join() already");
            }
            group_->joiner_ = this;
            group_->join_.parent = awaiter;
            const std::stop_token outer = detail::ambient_stop_token(awaiter);
            if (outer.stop_possible()) {
                forward_.emplace(outer, detail::ForwardStop{&group_->join_.stop});
            }
        }
        void await_resume() {
            forward_.reset();
            if (group_->joiner_ == this) {
                group_->joiner_ = nullptr;
            }
            if (group_->join_.first_error) {
                std::rethrow_exception(std::exchange(group_->join_.first_error, nullptr));
            }
        }

    private:
        friend class TaskGroup;
        // The group is being destroyed: forget it.
        void detach() noexcept {
            forward_.reset();
            group_->joiner_ = nullptr;
            group_->join_.parent = {};
            group_ = nullptr;
        }

        TaskGroup* group_;
        std::optional<std::stop_callback<detail::ForwardStop>> forward_;
    };

    detail::Join join_;
    detail::JoinChild::promise_type* children_ = nullptr;  // running, newest first
    JoinAwaiter* joiner_ = nullptr;                        // the join() awaited now, if any
};

}  // namespace muxio
