// io_uring(7): Linux 5.5 and later (5.11 for single-call timed waits).
// Readiness comes from one-shot IORING_OP_POLL_ADD requests. A completed poll
// is armed again by the next wait(), in the same io_uring_enter as the wait
// itself; a poll armed on a descriptor that is still ready completes at
// once, which gives back the level-triggered meaning of the contract.
// Multishot polls are not used: they report transitions, i.e. edges.
// Needs liburing 2.3 (io_uring_submit_and_get_events, io_uring_get_events).
#include <liburing.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "selector/descriptor_table.hpp"
#include "selector/poll_mask.hpp"

namespace muxio::detail {
namespace {

using Clock = std::chrono::steady_clock;

// The submission queue only has to hold the re-arms of one wait; when more
// descriptors fired, wait() submits in batches. The completion queue holds
// one completion per armed descriptor plus the few that control requests
// post; beyond that the kernel keeps them aside (IORING_FEAT_NODROP) and
// reap() fetches them, so the sizes are about speed, not correctness.
constexpr unsigned submission_entries = 256;
constexpr unsigned completion_entries = 4096;

// user_data layout: bits 0-31 the descriptor, bits 32-62 the arm sequence,
// bit 63 set for requests whose completion carries no readiness (POLL_REMOVE,
// cancellations, the no-ops of refused submissions, liburing's timeout).
constexpr std::uint64_t control_bit = std::uint64_t{1} << 63U;
constexpr std::uint32_t sequence_mask = 0x7fff'ffffU;
// Descriptor field 0x8000'0000 is no valid descriptor: never a watched value.
constexpr std::uint64_t ignored_data = control_bit | 0x8000'0000U;

std::uint64_t arm_data(int fd, std::uint32_t sequence) noexcept {
    return (std::uint64_t{sequence} << 32U) | static_cast<std::uint32_t>(fd);
}

std::uint64_t control_data(int fd) noexcept {
    return control_bit | static_cast<std::uint32_t>(fd);
}

std::uint32_t next_sequence(std::uint32_t sequence) noexcept {
    return (sequence + 1) & sequence_mask;
}

// POLL_ADD takes poll(2)'s mask widened to 32 bits.
unsigned poll_add_mask(Events events) noexcept {
    return static_cast<unsigned short>(to_poll_mask(events));
}

Events from_poll_result(std::int32_t result) noexcept {
    if (result < 0) {
        // A cancelled arm reports nothing; any other failure (e.g. EBADF when a
        // re-arm finds the descriptor closed) is an error condition.
        return result == -ECANCELED ? Events{} : EVENT_READ_WRITE;
    }
    return from_poll_mask(result);
}

// The kernel adds a relative timeout to the current time in signed 64-bit
// nanoseconds, so values near the maximum would wrap and expire at once.
// A capped wait that ends is seen as early by wait_once() and retried.
constexpr std::time_t max_kernel_wait_seconds = std::time_t{1} << 30U;

class IoUringPoller final : public Poller {
public:
    IoUringPoller() {
        io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE;
        params.cq_entries = completion_entries;
        if (const int result = io_uring_queue_init_params(submission_entries, &ring_, &params); result < 0) {
            throw_system_error(-result, "io_uring_queue_init");
        }
        // The destructor does not run for a constructor that throws: until
        // the end, the ring is this guard's.
        struct ExitUnlessKept {
            io_uring* ring;
            ~ExitUnlessKept() {
                if (ring != nullptr) {
                    io_uring_queue_exit(ring);
                }
            }
        } guard{&ring_};
        // Without NODROP a full completion queue loses completions, and a lost
        // poll completion silences its descriptor for good.
        if ((params.features & IORING_FEAT_NODROP) == 0) {
            throw_system_error(EOPNOTSUPP, "io_uring_queue_init (the kernel lacks IORING_FEAT_NODROP)");
        }
        guard.ring = nullptr;
        open_ = true;
    }
    ~IoUringPoller() override { close(); }

    std::string_view name() const noexcept override { return "io_uring"; }
    // Handing the ring out means someone may poll it (a reactor embedded in
    // another loop). The ring polls readable only while completions wait in
    // it, so from then on every poll is kept armed between waits: re-arms are
    // submitted as soon as completions are reaped, not with the next wait.
    // That costs a second io_uring_enter in a select that reports something,
    // which is why it is not the default.
    int fileno() const noexcept override {
        if (!open_) {
            return -1;
        }
        keep_armed_ = true;
        return ring_.ring_fd;
    }

    // The poll is submitted at once, as epoll_ctl would be, rather than with
    // the next wait: the kernel looks the descriptor up during submission,
    // so a bad one fails here, where the caller made the mistake, with
    // nothing recorded. Completions of other descriptors reaped meanwhile are
    // not lost: their descriptors are queued for re-arming, and the re-arm
    // reports whatever is still ready at the next wait (level-triggered).
    void add(int fd, Events events, std::uint64_t token) override {
        require_open("io_uring POLL_ADD", fd);
        // The table grows to reach `fd` only for a number that names an open
        // descriptor: a closed one up to INT_MAX would otherwise cost (or
        // fail for want of) memory in proportion to its value before the
        // kernel refused it. One check, and only when the table grows.
        if (static_cast<std::size_t>(fd) >= entries_.size()) {
            require_open_descriptor(fd, "io_uring POLL_ADD");
        }
        // Everything that can throw for want of memory happens first.
        Entry& entry = grow_to(fd);
        entry.sequence = next_sequence(entry.sequence);
        entry.mask = poll_add_mask(events);
        entry.token = token;
        const int refused = arm_now(fd, entry);
        entry.registered = refused == 0;
        rearm_now_if_polled();
        if (refused != 0) {
            throw_system_error(refused, "io_uring POLL_ADD", fd);
        }
    }

    // The old arm is cancelled and a new one submitted (arm_again()).
    void modify(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        Entry& entry = registered_entry(fd);
        if (arm_again(fd, entry, poll_add_mask(new_events), token) != 0) {
            // The descriptor was closed (EBADF): the kernel watches nothing
            // for it. The registration stays; every wait arms it again, is
            // refused again and reports an error condition, until remove(),
            // as poll(2) reports POLLNVAL.
            queue_rearm(fd, entry);
        }
        rearm_now_if_polled();
    }

    // A poll submitted at once looks the number up: it watches the open file
    // the number names now, whatever the old arm watched.
    void reregister(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        Entry& entry = registered_entry(fd);
        const unsigned old_mask = entry.mask;
        const std::uint64_t old_token = entry.token;
        if (const int refused = arm_again(fd, entry, poll_add_mask(new_events), token); refused != 0) {
            entry.mask = old_mask;
            entry.token = old_token;
            queue_rearm(fd, entry);  // a closed registration, as in modify()
            rearm_now_if_polled();
            throw_system_error(refused, "io_uring POLL_ADD", fd);
        }
        rearm_now_if_polled();
    }

    // Submitted at once: an armed poll holds a reference to the file, so a
    // socket closed after unregistering would otherwise stay open (no FIN to
    // the peer) until the next wait.
    std::error_code remove(int fd, Events /*events*/) noexcept override {
        if (!open_) {
            return {EBADF, std::system_category()};
        }
        Entry* entry = find(fd);
        if (entry == nullptr || !entry->registered) {
            return {ENOENT, std::system_category()};
        }
        entry->registered = false;
        if (!entry->armed) {
            return {};  // the poll completed: the kernel holds nothing
        }
        int error = 0;
        io_uring_sqe* sqe = acquire_sqe(error);
        if (sqe == nullptr) {
            // The poll stays until it fires or the ring closes; the new
            // sequence makes its completion stale.
            entry->armed = false;
            entry->sequence = next_sequence(entry->sequence);
            return {error, std::system_category()};
        }
        prepare_cancel(sqe, fd, *entry);
        entry->sequence = next_sequence(entry->sequence);
        // On failure the POLL_REMOVE stays queued and goes with the next call.
        if (const int submitted = io_uring_submit(&ring_); submitted < 0) {
            return {-submitted, std::system_category()};
        }
        const std::optional<std::int32_t> result = reap(nullptr, control_data(fd));
        rearm_now_if_polled();
        if (result && *result < 0) {
            return {-*result, std::system_category()};  // ENOENT: it fired meanwhile
        }
        return {};
    }

    void close() noexcept override {
        if (!open_) {
            return;
        }
        open_ = false;
        // The kernel cancels leftover polls from a worker after the ring is
        // closed; cancelling them here releases the files they hold before
        // close() returns. Kernels before 5.19 refuse the request: harmless.
        if (std::any_of(entries_.begin(), entries_.end(), [](const Entry& entry) { return entry.armed; })) {
            int error = 0;
            if (io_uring_sqe* sqe = acquire_sqe(error); sqe != nullptr) {
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
                io_uring_sqe_set_data64(sqe, ignored_data);
                (void)io_uring_submit(&ring_);
            }
        }
        io_uring_queue_exit(&ring_);
        entries_.clear();
        rearm_.clear();
    }

    // The ring's memory and descriptor are shared with the parent after a
    // fork: a cancellation submitted here would cancel the parent's polls,
    // and reaping would take its completions. Only this process's mappings
    // and descriptor go (io_uring_queue_exit unmaps and closes, nothing more).
    void abandon() noexcept override {
        if (!open_) {
            return;
        }
        open_ = false;
        io_uring_queue_exit(&ring_);
        entries_.clear();
        rearm_.clear();
    }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        if (!open_) {
            return EBADF;
        }
        // Completions posted since the last wait are hints, not answers: the
        // descriptor may have been drained since (epoll and poll would not
        // report it then). Their polls are armed again with this wait and
        // report the state as it is now.
        (void)reap(nullptr, std::nullopt);
        if (const int error = queue_rearms(); error != 0) {
            return error;
        }
        const bool poll_only = timeout && *timeout <= std::chrono::nanoseconds::zero();
        std::optional<Clock::time_point> deadline;
        int result = 0;
        if (poll_only) {
            result = io_uring_submit_and_get_events(&ring_);
        } else {
            std::optional<__kernel_timespec> limit;
            if (const auto spec = to_timespec(timeout)) {
                deadline = deadline_after(*timeout);
                limit = __kernel_timespec{std::min(spec->tv_sec, max_kernel_wait_seconds), spec->tv_nsec};
            }
            // Without IORING_FEAT_EXT_ARG (before 5.11) liburing expresses the
            // timeout as an extra IORING_OP_TIMEOUT request, which needs room
            // in the queue; its completion has the control bit set.
            if ((ring_.features & IORING_FEAT_EXT_ARG) == 0 && io_uring_sq_space_left(&ring_) == 0) {
                if (const int submitted = io_uring_submit(&ring_); submitted < 0) {
                    return -submitted;
                }
            }
            io_uring_cqe* first = nullptr;
            result = io_uring_submit_and_wait_timeout(&ring_, &first, 1, limit ? &*limit : nullptr, nullptr);
        }
        const std::size_t before = ready.size();
        (void)reap(&ready, std::nullopt);
        rearm_now_if_polled();
        if (ready.size() > before) {
            return 0;
        }
        // EBUSY: older kernels refuse to wait while completions are kept
        // aside; reap() has just fetched them.
        if (result < 0 && result != -ETIME && result != -EINTR && result != -EBUSY) {
            return -result;
        }
        if (poll_only) {
            return 0;
        }
        // Nothing to report. The wait may have ended for a stale completion,
        // or for a signal that the return value hides (when requests were
        // also submitted the kernel reports the count submitted). Unless the
        // time is up, report an interruption: the base waits again for the
        // time left, so a wait never ends before its timeout.
        if (!deadline || Clock::now() < *deadline) {
            return EINTR;
        }
        return 0;
    }

private:
    struct Entry {
        std::uint64_t token = 0;
        unsigned mask = 0;
        // Sequence of the current arm. It changes whenever an arm is
        // abandoned (modify, remove), so the abandoned arm's completion is
        // recognised as stale, also after the descriptor number was
        // registered again. Never reset while the ring lives.
        std::uint32_t sequence = 0;
        bool registered = false;
        bool armed = false;         // a poll with `sequence` is in the kernel or the queue
        bool rearm_queued = false;  // listed in rearm_
    };

    static Clock::time_point deadline_after(std::chrono::nanoseconds timeout) noexcept {
        const Clock::time_point now = Clock::now();
        return timeout < Clock::time_point::max() - now ? now + timeout : Clock::time_point::max();
    }

    Entry* find(int fd) noexcept {
        const auto index = static_cast<std::size_t>(fd);
        return fd >= 0 && index < entries_.size() ? &entries_[index] : nullptr;
    }

    Entry& grow_to(int fd) {
        const auto index = static_cast<std::size_t>(fd);
        if (index >= entries_.size()) {
            entries_.resize(index + 1);
        }
        // A descriptor is listed at most once (rearm_queued), so this capacity
        // means reap() and wait() never allocate.
        rearm_.reserve(entries_.size());
        return entries_[index];
    }

    // An SQE, submitting what is queued when the ring is full; nullptr with
    // `error` set if the kernel refuses that submission.
    io_uring_sqe* acquire_sqe(int& error) noexcept {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {
            const int submitted = io_uring_submit(&ring_);
            if (submitted < 0) {
                error = -submitted;
                return nullptr;
            }
            sqe = io_uring_get_sqe(&ring_);
            if (sqe == nullptr) {
                error = EBUSY;
            }
        }
        return sqe;
    }

    static void prepare_arm(io_uring_sqe* sqe, int fd, const Entry& entry) noexcept {
        io_uring_prep_poll_add(sqe, fd, entry.mask);
        io_uring_sqe_set_data64(sqe, arm_data(fd, entry.sequence));
    }

    static void prepare_cancel(io_uring_sqe* sqe, int fd, Entry& entry) noexcept {
        io_uring_prep_poll_remove(sqe, arm_data(fd, entry.sequence));
        io_uring_sqe_set_data64(sqe, control_data(fd));
        entry.armed = false;
    }

    // Submits everything queued, `last` being the newest entry. Returns 0 or
    // an errno. If the kernel did not take `last`, it becomes a no-op, so a
    // request reported as refused never reaches the kernel later.
    int submit_or_cancel(io_uring_sqe* last) noexcept {
        const unsigned queued = io_uring_sq_ready(&ring_);
        const int submitted = io_uring_submit(&ring_);
        if (submitted >= 0 && static_cast<unsigned>(submitted) >= queued) {
            return 0;
        }
        io_uring_prep_nop(last);
        io_uring_sqe_set_data64(last, ignored_data);
        return submitted < 0 ? -submitted : EAGAIN;
    }

    // Submits a poll for `entry` at once (see add()) and reaps what that
    // posted. Afterwards the poll is either pending in the kernel, or it
    // completed at once (the descriptor was ready) and is queued to be armed
    // again. Returns the errno when the kernel refuses the poll (`entry` is
    // then not armed); throws when the submission itself fails.
    int arm_now(int fd, Entry& entry) {
        int error = 0;
        io_uring_sqe* sqe = acquire_sqe(error);
        if (sqe == nullptr) {
            throw_system_error(error, "io_uring_submit(POLL_ADD)", fd);
        }
        prepare_arm(sqe, fd, entry);
        if (error = submit_or_cancel(sqe); error != 0) {
            throw_system_error(error, "io_uring_submit(POLL_ADD)", fd);
        }
        const std::optional<std::int32_t> result = reap(nullptr, arm_data(fd, entry.sequence));
        if (result && *result < 0) {
            return -*result;
        }
        entry.armed = !result;
        if (result) {
            queue_rearm(fd, entry);
        }
        return 0;
    }

    Entry& registered_entry(int fd) {
        require_open("io_uring POLL_ADD", fd);
        Entry* entry = find(fd);
        if (entry == nullptr || !entry->registered) {
            throw_system_error(ENOENT, "io_uring modify", fd);
        }
        return *entry;
    }

    // Cancels the current arm and submits one for `mask` and `token` in the
    // same call. The new sequence makes any completion of the old arm stale,
    // whether it fired before the cancellation reached it or reports
    // -ECANCELED. (IORING_OP_POLL_REMOVE's update mode would save one request
    // but fails with ENOENT when the old arm already fired, which needs the
    // same re-arm anyway.) Returns the errno of a refused poll (see arm_now());
    // throws, with the old mask and token back, when the submission fails.
    int arm_again(int fd, Entry& entry, unsigned mask, std::uint64_t token) {
        if (entry.armed) {
            int error = 0;
            io_uring_sqe* cancel = acquire_sqe(error);
            if (cancel == nullptr) {
                throw_system_error(error, "io_uring_submit(POLL_REMOVE)", fd);
            }
            prepare_cancel(cancel, fd, entry);
        }
        const unsigned old_mask = entry.mask;
        const std::uint64_t old_token = entry.token;
        entry.sequence = next_sequence(entry.sequence);
        entry.mask = mask;
        entry.token = token;
        try {
            return arm_now(fd, entry);
        } catch (...) {
            // The submission failed: the new poll never reaches the kernel,
            // the cancellation of the old one (if any) goes with the next
            // call. The registration stays as it was (Poller::modify()): the
            // next wait arms it again, and a level-triggered poll reports
            // whatever is still ready.
            entry.mask = old_mask;
            entry.token = old_token;
            queue_rearm(fd, entry);
            throw;
        }
    }

    // See fileno(). Best effort: whatever fails here is retried by the next wait.
    void rearm_now_if_polled() noexcept {
        if (keep_armed_ && !rearm_.empty() && queue_rearms() == 0) {
            (void)io_uring_submit(&ring_);
        }
    }

    void require_open(std::string_view operation, int fd) const {
        if (!open_) {
            throw_system_error(EBADF, operation, fd);
        }
    }

    void queue_rearm(int fd, Entry& entry) noexcept {
        if (!entry.rearm_queued) {
            entry.rearm_queued = true;
            rearm_.push_back(fd);  // within the capacity reserved by grow_to()
        }
    }

    // Queues a poll for every registered descriptor whose last poll completed.
    // They reach the kernel with the wait's io_uring_enter, or in batches
    // before it when more fired than the submission queue holds.
    int queue_rearms() noexcept {
        int error = 0;
        std::size_t done = 0;
        for (; done < rearm_.size(); ++done) {
            const int fd = rearm_[done];
            Entry& entry = entries_[static_cast<std::size_t>(fd)];
            if (entry.registered && !entry.armed) {
                io_uring_sqe* sqe = acquire_sqe(error);
                if (sqe == nullptr) {
                    break;
                }
                prepare_arm(sqe, fd, entry);
                entry.armed = true;
            }
            entry.rearm_queued = false;
        }
        rearm_.erase(rearm_.begin(), rearm_.begin() + static_cast<std::ptrdiff_t>(done));
        return error;
    }

    // Consumes every posted completion. A completion of a current arm queues
    // its descriptor for re-arming and, when `ready` is given, reports its
    // readiness; all others are stale and dropped. Returns the result of the
    // completion whose user_data is `watch`, if there was one. Throws only
    // if `ready` cannot grow; the completions not yet consumed are then seen
    // again by the next call, as stale, and their descriptors re-armed.
    std::optional<std::int32_t> reap(std::vector<PollEvent>* ready, std::optional<std::uint64_t> watch) {
        std::optional<std::int32_t> watched;
        bool asked_kernel = false;
        for (;;) {
            unsigned head = 0;
            unsigned count = 0;
            io_uring_cqe* cqe = nullptr;
            io_uring_for_each_cqe(&ring_, head, cqe) {
                ++count;
                const std::uint64_t data = cqe->user_data;
                if (watch && data == *watch) {
                    watched = cqe->res;
                } else if ((data & control_bit) == 0) {
                    complete(static_cast<int>(data & 0xffff'ffffU), static_cast<std::uint32_t>(data >> 32U), cqe->res,
                             ready);
                }
            }
            io_uring_cq_advance(&ring_, count);
            // With NODROP, completions that did not fit wait in the kernel and
            // move to the ring only when asked.
            if (!io_uring_cq_has_overflow(&ring_) || (asked_kernel && count == 0)) {
                return watched;
            }
            asked_kernel = true;
            if (io_uring_get_events(&ring_) < 0) {
                return watched;
            }
        }
    }

    void complete(int fd, std::uint32_t sequence, std::int32_t result, std::vector<PollEvent>* ready) {
        Entry* entry = find(fd);
        if (entry == nullptr || !entry->registered || !entry->armed || entry->sequence != sequence) {
            return;
        }
        entry->armed = false;
        queue_rearm(fd, *entry);
        if (ready == nullptr) {
            return;
        }
        if (const Events events = from_poll_result(result)) {
            ready->push_back({entry->token, events});
        }
    }

    io_uring ring_{};
    bool open_ = false;
    mutable bool keep_armed_ = false;  // see fileno()
    std::vector<Entry> entries_;       // indexed by descriptor
    std::vector<int> rearm_;           // descriptors whose poll completed
};

}  // namespace

std::unique_ptr<Poller> make_io_uring_poller() {
    return std::make_unique<IoUringPoller>();
}

}  // namespace muxio::detail
