// io_uring(7): Linux 5.5 and later (5.11 for single-call timed waits).
// Readiness comes from one-shot IORING_OP_POLL_ADD requests. A completed poll
// is armed again by the next wait(), in the same io_uring_enter as the wait
// itself; a poll armed on a descriptor that is still ready completes at
// once, which gives back the level-triggered meaning of the contract.
// Multishot polls are not used: they report transitions, i.e. edges.
// Needs liburing 2.3 (io_uring_submit_and_get_events, io_uring_get_events).
//
// The same ring runs the socket operations of the completion path
// (selector/completion_ring.hpp): their requests are queued during dispatch
// and go to the kernel with the wait's io_uring_enter, and their completions
// are reaped by it, next to the polls'.
#include <liburing.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "selector/completion_ring.hpp"
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
// A loop iteration of the completion path queues a send and often a
// receive per connection served, hence the larger queue.
constexpr unsigned submission_entries = 1024;
constexpr unsigned completion_entries = 8192;

// user_data layout: bits 0-31 the descriptor, bits 32-61 the arm sequence,
// bit 63 set for requests whose completion carries no readiness (POLL_REMOVE,
// cancellations, the no-ops of refused submissions, liburing's timeout).
// Bit 62 marks the completion path's operations: bits 0-31 their slot,
// bits 32-61 its generation.
constexpr std::uint64_t control_bit = std::uint64_t{1} << 63U;
constexpr std::uint64_t operation_bit = std::uint64_t{1} << 62U;
constexpr std::uint32_t sequence_mask = 0x3fff'ffffU;
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

// ----- What the kernel supports ---------------------------------------------------

// The provided buffers of the completion path: a ring of equal buffers per
// poller, set up by the first receive. Their memory is reserved up front but
// touched only as the kernel fills buffers.
constexpr unsigned buffer_count = 2048;  // a power of two
constexpr unsigned buffer_size = 4096;
constexpr unsigned short buffer_group = 0;

// Maps and registers a ring of `count` provided buffers (liburing 2.3 has no
// io_uring_setup_buf_ring). Returns the mapping, or nullptr with `error` set.
io_uring_buf_ring* register_buffer_ring(io_uring& ring, unsigned count, int& error) noexcept {
    const std::size_t bytes = std::size_t{count} * sizeof(io_uring_buf);
    void* mapped = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mapped == MAP_FAILED) {
        error = errno;
        return nullptr;
    }
    auto* buffers = static_cast<io_uring_buf_ring*>(mapped);
    io_uring_buf_ring_init(buffers);
    io_uring_buf_reg registration{};
    registration.ring_addr = reinterpret_cast<std::uintptr_t>(mapped);
    registration.ring_entries = count;
    registration.bgid = buffer_group;
    if (const int refused = io_uring_register_buf_ring(&ring, &registration, 0); refused < 0) {
        ::munmap(mapped, bytes);
        error = -refused;
        return nullptr;
    }
    return buffers;
}

// A multishot receive into provided buffers, tried on a socket pair: kernels
// before 6.0 refuse the flag (EINVAL), which no opcode probe shows. Kernels
// that have it have multishot accept and cancellation by descriptor too
// (5.19), so this one try answers for all of them.
CompletionFeatures probe_completion_features() noexcept {
    CompletionFeatures found;
    io_uring ring{};
    if (io_uring_queue_init(4, &ring, 0) < 0) {
        return found;
    }
    int pair[2] = {-1, -1};
    io_uring_buf_ring* buffers = nullptr;
    int error = 0;
    char storage[64];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) == 0 &&
        (buffers = register_buffer_ring(ring, 1, error)) != nullptr) {
        io_uring_buf_ring_add(buffers, storage, sizeof storage, 0, io_uring_buf_ring_mask(1), 0);
        io_uring_buf_ring_advance(buffers, 1);
        const char byte = 'x';
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);  // never null: the queue is empty
        if (sqe == nullptr) {
            io_uring_queue_exit(&ring);
            ::munmap(buffers, sizeof(io_uring_buf));
            ::close(pair[0]);
            ::close(pair[1]);
            return found;
        }
        io_uring_prep_recv(sqe, pair[0], nullptr, 0, 0);
        sqe->ioprio |= IORING_RECV_MULTISHOT;
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = buffer_group;
        io_uring_cqe* cqe = nullptr;
        if (::write(pair[1], &byte, 1) == 1 && io_uring_submit_and_wait(&ring, 1) >= 0 &&
            io_uring_peek_cqe(&ring, &cqe) == 0) {
            found.receive = cqe->res == 1;
            found.accept = found.receive;
            found.send = found.receive;
        }
    }
    io_uring_queue_exit(&ring);  // ends the receive, releases the registration
    if (buffers != nullptr) {
        ::munmap(buffers, sizeof(io_uring_buf));
    }
    for (const int fd : pair) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
    return found;
}

std::atomic<const CompletionFeatures*> forced_features{nullptr};

}  // namespace

// Every thread that submitted to a ring is sent task work, as a signal,
// when the ring is torn down, which the kernel does in a worker some
// milliseconds after io_uring_queue_exit() returns: a blocking system call
// of the probing thread, with a timeout (SO_RCVTIMEO), would fail with
// EINTR then. A thread of its own takes that signal and ends.
CompletionFeatures probe_completion_features_on_own_thread() noexcept {
    CompletionFeatures found;
    try {
        std::thread{[&found] { found = probe_completion_features(); }}.join();
    } catch (...) {
        // No thread to spare (std::system_error), or no memory for one: the
        // caller probes, and takes the teardown's interruption itself.
        found = probe_completion_features();
    }
    return found;
}

CompletionFeatures completion_features() noexcept {
    if (const CompletionFeatures* forced = forced_features.load(std::memory_order_acquire)) {
        return *forced;
    }
    static const CompletionFeatures probed = [] {
        const char* setting = std::getenv("MUXIO_COMPLETIONS");
        if (setting != nullptr && (std::strcmp(setting, "off") == 0 || std::strcmp(setting, "0") == 0)) {
            return CompletionFeatures{};
        }
        return probe_completion_features_on_own_thread();
    }();
    return probed;
}

void set_completion_features_for_testing(const CompletionFeatures* features) noexcept {
    static CompletionFeatures kept;
    static std::mutex keeping;
    const std::scoped_lock lock{keeping};
    if (features == nullptr) {
        forced_features.store(nullptr, std::memory_order_release);
        return;
    }
    kept = *features;
    forced_features.store(&kept, std::memory_order_release);
}

namespace {

class IoUringPoller final : public Poller, public CompletionRing {
public:
    IoUringPoller() : features_{completion_features()} {
        io_uring_params params{};
        // Completions are posted when the loop enters the kernel anyway:
        // cooperative task running spares the interrupts that would post
        // them earlier (Linux 5.19; older kernels refuse the flags).
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
        params.cq_entries = completion_entries;
        int result = io_uring_queue_init_params(submission_entries, &ring_, &params);
        if (result == -EINVAL) {
            params = io_uring_params{};
            params.flags = IORING_SETUP_CQSIZE;
            params.cq_entries = completion_entries;
            result = io_uring_queue_init_params(submission_entries, &ring_, &params);
        }
        if (result < 0) {
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
    CompletionRing* completion_ring() noexcept override { return features_.send ? this : nullptr; }
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
        if (in_kernel_ != 0 ||
            std::any_of(entries_.begin(), entries_.end(), [](const Entry& entry) { return entry.armed; })) {
            int error = 0;
            if (io_uring_sqe* sqe = acquire_sqe(error); sqe != nullptr) {
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
                io_uring_sqe_set_data64(sqe, ignored_data);
                (void)io_uring_submit(&ring_);
            }
            // A send still in the kernel reads memory its owner may free
            // once the reactor is closed: wait for the cancellations.
            await_operations([this] { return in_kernel_ == 0; });
        }
        io_uring_queue_exit(&ring_);
        release_completion_state();
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
        release_completion_state();
    }

    // ----- CompletionRing -------------------------------------------------------

    const CompletionFeatures& features() const noexcept override { return features_; }

    OperationId receive(int fd, CompletionTarget target) override {
        require_open("io_uring RECV", fd);
        if (buffers_ == nullptr) {
            set_up_buffers();
        }
        const OperationId id = start_operation(target);
        io_uring_sqe* sqe = operation_sqe(id, "io_uring_submit(RECV)", fd);
        io_uring_prep_recv(sqe, fd, nullptr, 0, 0);
        sqe->ioprio |= IORING_RECV_MULTISHOT;
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = buffer_group;
        io_uring_sqe_set_data64(sqe, id);
        submit_now_if_polled();
        return id;
    }

    OperationId send(int fd, std::span<const std::byte> bytes, CompletionTarget target) override {
        require_open("io_uring SEND", fd);
        const OperationId id = start_operation(target);
        io_uring_sqe* sqe = operation_sqe(id, "io_uring_submit(SEND)", fd);
        io_uring_prep_send(sqe, fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, id);
        submit_now_if_polled();
        return id;
    }

    OperationId accept(int fd, CompletionTarget target) override {
        require_open("io_uring ACCEPT", fd);
        const OperationId id = start_operation(target);
        io_uring_sqe* sqe = operation_sqe(id, "io_uring_submit(ACCEPT)", fd);
        io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        io_uring_sqe_set_data64(sqe, id);
        submit_now_if_polled();
        return id;
    }

    OperationId wait_for_buffers(CompletionTarget target) override {
        const OperationId id = start_operation(target);
        operations_[slot_of(id)].in_kernel = false;
        --in_kernel_;
        if (buffers_held_ < buffer_count) {
            // Buffers came back since the kernel found the ring dry (the
            // receive's -ENOBUFS was reaped before their recycle): no later
            // recycle may come to wake this waiter, so it runs at once.
            try {
                completed_.push_back({id, 0, 0});
            } catch (...) {
                free_operation(slot_of(id));
                throw;
            }
        } else {
            buffer_waiters_.push_back(id);
        }
        return id;
    }

    void cancel(OperationId id) noexcept override {
        Operation* operation = find_operation(id);
        if (operation == nullptr || !operation->in_kernel || operation->cancelled || !open_) {
            return;
        }
        int error = 0;
        io_uring_sqe* sqe = acquire_sqe(error);
        if (sqe == nullptr) {
            // The ring refused even a flush: the operation runs its course.
            logger().warn("io_uring: cannot cancel an operation on fd {}: {}", operation->target.fd,
                          std::system_category().message(error));
            return;
        }
        io_uring_prep_cancel64(sqe, id, 0);
        io_uring_sqe_set_data64(sqe, ignored_data);
        operation->cancelled = true;
        submit_now_if_polled();
    }

    void detach(OperationId id) noexcept override {
        Operation* operation = find_operation(id);
        if (operation == nullptr) {
            return;
        }
        operation->target.function = nullptr;
        if (operation->in_kernel) {
            cancel(id);  // freed when its final completion is dispatched
        } else {
            free_operation(slot_of(id));  // its completions waiting for dispatch become stale
        }
    }

    void detach_and_wait(OperationId id) noexcept override {
        Operation* operation = find_operation(id);
        if (operation == nullptr) {
            return;
        }
        const bool in_kernel = operation->in_kernel;
        detach(id);
        if (!in_kernel || !open_) {
            return;
        }
        (void)io_uring_submit(&ring_);
        const std::uint32_t slot = slot_of(id);
        const std::uint32_t generation = generation_of(id);
        await_operations([&] {
            const Operation& watched = operations_[slot];
            return watched.generation != generation || !watched.in_kernel;
        });
        // Its final completion waits for dispatch, which would only drop it.
        if (find_operation(id) != nullptr && !operations_[slot].in_kernel) {
            free_operation(slot);
        }
    }

    std::span<const std::byte> buffer(std::uint16_t id, std::size_t length) const noexcept override {
        return {buffer_storage_.get() + std::size_t{id} * buffer_size, std::min<std::size_t>(length, buffer_size)};
    }

    void recycle(std::uint16_t id) noexcept override {
        if (buffers_ == nullptr) {
            return;  // closed meanwhile
        }
        io_uring_buf_ring_add(buffers_, buffer_storage_.get() + std::size_t{id} * buffer_size, buffer_size, id,
                              io_uring_buf_ring_mask(buffer_count), static_cast<int>(buffers_returned_++));
        if (buffers_held_ > 0) {
            --buffers_held_;
        }
        if (!buffer_waiters_.empty()) {
            // Within the capacity reserve_completions() keeps for them.
            for (const OperationId waiter : buffer_waiters_) {
                completed_.push_back({waiter, 0, 0});
            }
            buffer_waiters_.clear();
        }
    }

    std::size_t dispatch(void (*report)(void* owner, std::exception_ptr error, int fd), void* owner) override {
        if (completed_.empty()) {
            return 0;
        }
        // Targets start operations and may reap (detach_and_wait): what they
        // add waits in completed_ for the next dispatch, and dispatching_ is
        // left alone while it is walked. Both keep the capacity that
        // start_operation() gave completed_, so recycle() need not allocate.
        dispatching_.reserve(completed_.capacity());
        std::swap(completed_, dispatching_);
        std::size_t ran = 0;
        for (const Completion& completion : dispatching_) {
            Operation* operation = find_operation(completion.data);
            const bool final = (completion.flags & IORING_CQE_F_MORE) == 0;
            if (operation == nullptr || operation->target.function == nullptr) {
                drop(completion);
                if (operation != nullptr && final && !operation->in_kernel) {
                    free_operation(slot_of(completion.data));
                }
                continue;
            }
            const CompletionTarget target = operation->target;
            if (final && !operation->in_kernel) {
                free_operation(slot_of(completion.data));
            }
            try {
                target.function(target.context, completion.result, completion.flags);
            } catch (...) {
                report(owner, std::current_exception(), target.fd);
            }
            ++ran;
        }
        dispatching_.clear();
        return ran;
    }

    bool has_completions() const noexcept override { return !completed_.empty(); }
    std::size_t operations_in_flight() const noexcept override { return live_operations_; }

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
        publish_buffers();
        // Operation completions already reaped are answers: they are
        // dispatched after this wait, which must not block.
        const bool poll_only = (timeout && *timeout <= std::chrono::nanoseconds::zero()) || !completed_.empty();
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
        if (ready.size() > before || !completed_.empty()) {
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

    // See fileno(): a request queued between iterations would otherwise wait
    // for a wait that nothing triggers. Best effort, as rearm_now_if_polled().
    void submit_now_if_polled() noexcept {
        if (keep_armed_) {
            (void)io_uring_submit(&ring_);
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
            // Room for every operation completion first: they cannot be
            // seen twice, so none may be consumed and then lost to a throw.
            completed_.reserve(completed_.size() + io_uring_cq_ready(&ring_));
            io_uring_for_each_cqe(&ring_, head, cqe) {
                ++count;
                const std::uint64_t data = cqe->user_data;
                if (watch && data == *watch) {
                    watched = cqe->res;
                } else if ((data & (control_bit | operation_bit)) == operation_bit) {
                    if (has_buffer(cqe->flags)) {
                        ++buffers_held_;  // out of the ring until recycle()
                    }
                    record_completion(data, cqe->res, cqe->flags);
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

    // ----- The completion path's state ----------------------------------------

    struct Operation {
        CompletionTarget target;
        std::uint32_t generation = 0;
        bool live = false;       // the slot names an operation
        bool in_kernel = false;  // its final completion has not been reaped
        bool cancelled = false;  // a cancellation was queued for it
    };
    struct Completion {
        std::uint64_t data;
        std::int32_t result;
        std::uint32_t flags;
    };

    static std::uint32_t slot_of(OperationId id) noexcept { return static_cast<std::uint32_t>(id & 0xffff'ffffU); }
    static std::uint32_t generation_of(OperationId id) noexcept {
        return static_cast<std::uint32_t>(id >> 32U) & sequence_mask;
    }
    static OperationId operation_data(std::uint32_t slot, std::uint32_t generation) noexcept {
        return operation_bit | (std::uint64_t{generation} << 32U) | slot;
    }

    Operation* find_operation(OperationId id) noexcept {
        if ((id & operation_bit) == 0) {
            return nullptr;
        }
        const std::uint32_t slot = slot_of(id);
        if (slot >= operations_.size()) {
            return nullptr;
        }
        Operation& operation = operations_[slot];
        return operation.live && operation.generation == generation_of(id) ? &operation : nullptr;
    }

    // Takes a slot for an operation about to be queued. Everything that may
    // throw for want of memory happens here, before the request exists.
    OperationId start_operation(CompletionTarget target) {
        std::uint32_t slot = 0;
        if (!free_operations_.empty()) {
            slot = free_operations_.back();
            free_operations_.pop_back();
        } else {
            // Each live operation may have one completion waiting, and each
            // buffer waiter one more: with room for them reserved as the
            // table grows, dispatch() and recycle() never allocate.
            const std::size_t grown = operations_.size() + 1;
            free_operations_.reserve(grown);
            buffer_waiters_.reserve(grown);
            completed_.reserve(grown + completion_entries);
            operations_.emplace_back();
            slot = static_cast<std::uint32_t>(operations_.size() - 1);
        }
        Operation& operation = operations_[slot];
        operation.target = target;
        operation.live = true;
        operation.in_kernel = true;
        operation.cancelled = false;
        ++live_operations_;
        ++in_kernel_;
        return operation_data(slot, operation.generation);
    }

    void free_operation(std::uint32_t slot) noexcept {
        Operation& operation = operations_[slot];
        if (!operation.live) {
            return;
        }
        if (operation.in_kernel) {
            --in_kernel_;
        }
        operation = Operation{{}, next_sequence(operation.generation), false, false, false};
        --live_operations_;
        free_operations_.push_back(slot);  // within the capacity start_operation() reserved
    }

    // An SQE for operation `id`; on failure the slot goes back and this throws.
    io_uring_sqe* operation_sqe(OperationId id, std::string_view operation, int fd) {
        int error = 0;
        io_uring_sqe* sqe = acquire_sqe(error);
        if (sqe == nullptr) {
            free_operation(slot_of(id));
            throw_system_error(error, operation, fd);
        }
        return sqe;
    }

    // Called by reap() for each completion of an operation.
    void record_completion(std::uint64_t data, std::int32_t result, std::uint32_t flags) noexcept {
        Operation* operation = find_operation(data);
        if (operation == nullptr) {
            drop({data, result, flags});
            return;
        }
        if ((flags & IORING_CQE_F_MORE) == 0 && operation->in_kernel) {
            operation->in_kernel = false;
            --in_kernel_;
        }
        completed_.push_back({data, result, flags});  // reap() reserved the room
    }

    // A completion nobody takes: the buffer it may carry goes back.
    void drop(const Completion& completion) noexcept {
        if (has_buffer(completion.flags)) {
            recycle(buffer_id(completion.flags));
        }
    }

    void set_up_buffers() {
        int error = 0;
        std::unique_ptr<std::byte[]> storage{new std::byte[std::size_t{buffer_count} * buffer_size]};
        io_uring_buf_ring* buffers = register_buffer_ring(ring_, buffer_count, error);
        if (buffers == nullptr) {
            throw_system_error(error, "io_uring_register_buf_ring");
        }
        buffers_ = buffers;
        buffer_storage_ = std::move(storage);
        for (unsigned id = 0; id < buffer_count; ++id) {
            io_uring_buf_ring_add(buffers_, buffer_storage_.get() + std::size_t{id} * buffer_size, buffer_size,
                                  static_cast<unsigned short>(id), io_uring_buf_ring_mask(buffer_count),
                                  static_cast<int>(id));
        }
        io_uring_buf_ring_advance(buffers_, static_cast<int>(buffer_count));
    }

    // Buffers recycled since the last wait go back to the kernel in one step.
    void publish_buffers() noexcept {
        if (buffers_returned_ != 0) {
            io_uring_buf_ring_advance(buffers_, static_cast<int>(buffers_returned_));
            buffers_returned_ = 0;
        }
    }

    // Waits, reaping, until `done()` or a bounded time has passed: a
    // cancelled socket operation ends at once, so the bound is only against
    // a kernel that does not answer.
    template <class Done>
    void await_operations(Done done) noexcept {
        constexpr auto patience = std::chrono::seconds{5};
        const Clock::time_point give_up = Clock::now() + patience;
        publish_buffers();
        while (!done()) {
            if (Clock::now() >= give_up) {
                logger().error("io_uring: {} operations did not end {} s after their cancellation", in_kernel_,
                               patience.count());
                return;
            }
            __kernel_timespec slice{0, 100'000'000};
            io_uring_cqe* first = nullptr;
            const int result = io_uring_submit_and_wait_timeout(&ring_, &first, 1, &slice, nullptr);
            if (result < 0 && result != -ETIME && result != -EINTR && result != -EBUSY) {
                logger().error("io_uring: waiting for cancelled operations: {}",
                               std::system_category().message(-result));
                return;
            }
            try {
                (void)reap(nullptr, std::nullopt);
            } catch (...) {
                return;  // out of memory for completions: they stay in the ring
            }
        }
    }

    void release_completion_state() noexcept {
        entries_.clear();
        rearm_.clear();
        if (buffers_ != nullptr) {
            ::munmap(buffers_, std::size_t{buffer_count} * sizeof(io_uring_buf));
            buffers_ = nullptr;
        }
        buffer_storage_.reset();
        // The operations' owners may still detach them: their slots stay,
        // none of them in the kernel any more.
        for (Operation& operation : operations_) {
            operation.in_kernel = false;
        }
        in_kernel_ = 0;
        buffers_held_ = 0;
        completed_.clear();
        buffer_waiters_.clear();
    }

    CompletionFeatures features_;
    std::vector<Operation> operations_;
    std::vector<std::uint32_t> free_operations_;
    std::vector<Completion> completed_;    // reaped, waiting for dispatch()
    std::vector<Completion> dispatching_;  // what dispatch() runs now
    std::vector<OperationId> buffer_waiters_;
    std::size_t live_operations_ = 0;
    std::size_t in_kernel_ = 0;
    io_uring_buf_ring* buffers_ = nullptr;
    std::unique_ptr<std::byte[]> buffer_storage_;
    unsigned buffers_returned_ = 0;  // recycled since the last publish_buffers()
    unsigned buffers_held_ = 0;      // filled by the kernel and not recycled yet

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
