// The differential selector harness: one sequence of operations applied to a
// selector of every backend compiled here (select, poll, epoll, io_uring) and
// to a small reference model of the documented contract, compared after
// every step. selector_model_fuzzer.cpp feeds it libFuzzer's inputs; any
// disagreement prints what differed and aborts.
//
// Input: a sequence of operations, an opcode byte each and up to three
// argument bytes (a missing byte reads as 0), at most `max_operations` of
// them on at most `max_handles` descriptors the harness owns:
// socketpair, pipe, dup, close (behind the selectors' back when registered),
// shutdown, write, fill, read (whole or split, with selects in between or
// not), register_, unregister, modify (with or without data), reregister,
// select(0) and select_tokens(0), one short timed select, giving a closed
// number to a new file or back to a duplicate of its old one, lookups,
// fileno() and closing a selector.
//
// The model, per backend (the contract of muxio/selector.hpp,
// muxio/detail/poller.hpp and docs/ARCHITECTURE.md, "Registrations and
// closed or duplicated descriptors"):
//  - Keys: what register_, unregister, modify and reregister leave, with the
//    errors in the order BaseSelector checks them: logic_error once closed,
//    invalid_argument for a bad mask or a negative number (or an object whose
//    fileno() fails and that is not registered), KeyError, then the
//    mechanism: select refuses FD_SETSIZE and above (invalid_argument), and
//    every backend refuses a closed number with system_error EBADF. A file
//    object whose fileno() fails is found by identity.
//  - Readiness, per key. Level-triggered truth is poll(2) on the live
//    descriptor, errors and hang-ups counting as ready for both directions
//    (for the select backend a hang-up without an error counts as readable
//    only, as select(2) has it; tests/selector/select_quirks_test.cpp).
//    select and poll watch numbers: an open number reports its truth masked
//    by the key's events, a closed one reports all its events (a closed
//    registration). epoll and io_uring watch the file a call bound the key
//    to (register_, reregister, modify with new events): while the number
//    still names that file, its truth; once a call met the number closed
//    (modify, reregister), all its events while it stays closed. In the
//    window the contract leaves to each mechanism (the number closed behind
//    the selector's back, or closed and reused, with no call since), what is
//    reported is one of: nothing, all its events, the truth of the file it
//    was bound to (if a descriptor of it is left to ask), or the truth of
//    the file the number names now.
//  - /dev/null, always ready, is a file epoll cannot watch: register_ and
//    reregister on it throw system_error EPERM there (documented); a modify
//    with new events of a key whose number now names it is either refused
//    with EPERM and the key unregistered (Python's rule for a refused
//    modify) or kept as a closed registration, depending on what epoll had
//    found before, which the model does not track.
//  - A closed number the library takes for itself (epoll's set of fileno())
//    is not the harness's: calls aimed at it are skipped, and what a key on
//    it reports is not judged.
//  - Reads: the bytes a read gets do not depend on how it is split, and the
//    readiness after it follows from the bytes left (a model that counts
//    bytes, checked against poll(2), then every selector against that).
//  - A timed select that reports nothing waited at least its timeout.
//
// The corpus starts from seeds written by selector_model_seeds.py, one per
// point of the contract.
//
// Nothing leaks from one input to the next: every descriptor the harness
// made is closed at the end, and the lowest numbers are checked to be as
// they were before the input.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "muxio/detail/poller.hpp"
#include "muxio/detail/selector_loop.hpp"
#include "muxio/selectors.hpp"

namespace muxio::fuzz::selector_model {

using Clock = std::chrono::steady_clock;
using Selector = BaseSelector<int>;

inline constexpr std::size_t max_operations = 64;
inline constexpr std::size_t max_handles = 8;
// Descriptor numbers checked for leaks after each input: the harness's own
// stay far below this (the kernel hands out the lowest free number).
inline constexpr int leak_scan_limit = 128;

[[noreturn]] inline void fail(const std::string& what) {
    std::fprintf(stderr, "selector_model: %s\n", what.c_str());
    std::abort();
}

inline bool tracing() {
    static const bool on = std::getenv("MUXIO_FUZZ_TRACE") != nullptr;
    return on;
}

template <class... Args>
void trace(fmt::format_string<Args...> format, Args&&... args) {
    if (tracing()) {
        std::fprintf(stderr, "%s\n", fmt::format(format, std::forward<Args>(args)...).c_str());
    }
}

// ---- The environment: the descriptors and open files the harness owns ----

// /dev/null: always ready, and a file epoll refuses to watch (EPERM).
enum class Kind : std::uint8_t { socket, pipe_read, pipe_write, devnull };

struct File {
    Kind kind = Kind::socket;
    int peer = -1;            // the file at the other end
    std::size_t pending = 0;  // bytes queued to be read from this file
    int descriptors = 0;      // the harness's descriptors naming it
};

// A descriptor slot, and also a file object registrable by identity: its
// fileno() is -1 once closed, as a closed socket object's is.
struct Handle {
    int fd = -1;
    int file = -1;
    int last_fd = -1;  // the number it had, kept after close: a closed number to aim at
    [[nodiscard]] int fileno() const noexcept { return fd; }
};

// What a number is now, as far as the harness can tell.
struct NumberState {
    enum Kind : std::uint8_t { closed, owned, foreign } kind = closed;
    int file = -1;  // owned: the file it names
};

// ---- Outcomes of a call ----

enum class Error : std::uint8_t { none, invalid_argument, key_error, system_error, logic_error, other };

struct Outcome {
    Error error = Error::none;
    int code = 0;  // system_error: the errno
    std::string what;
    friend bool operator==(const Outcome& a, const Outcome& b) noexcept {
        return a.error == b.error && a.code == b.code;
    }
};

inline std::string describe(const Outcome& outcome) {
    static constexpr std::array<std::string_view, 6> names{"no error",     "invalid_argument", "KeyError",
                                                           "system_error", "logic_error",      "other exception"};
    std::string text{names[static_cast<std::size_t>(outcome.error)]};
    if (outcome.error == Error::system_error) {
        text += fmt::format(" (errno {})", outcome.code);
    }
    if (!outcome.what.empty()) {
        text += fmt::format(": {}", outcome.what);
    }
    return text;
}

template <class Call>
Outcome attempt(Call&& call) {
    try {
        call();
        return {};
    } catch (const KeyError& error) {  // before its base, std::logic_error
        return {Error::key_error, 0, error.what()};
    } catch (const std::invalid_argument& error) {
        return {Error::invalid_argument, 0, error.what()};
    } catch (const std::system_error& error) {
        return {Error::system_error, error.code().value(), error.what()};
    } catch (const std::logic_error& error) {
        return {Error::logic_error, 0, error.what()};
    } catch (const std::exception& error) {
        return {Error::other, 0, error.what()};
    }
}

// ---- The model of one backend ----

// What the kernel watches behind a key of epoll or io_uring (select and poll
// look the number up at every wait and need none of this).
enum class Binding : std::uint8_t {
    file,    // the file `ModelKey::file`, which the number still names
    closed,  // a call met the number closed, and it still is
    loose,   // the window the contract leaves to the mechanism
};

struct ModelKey {
    FileObject fileobj;
    int fd = -1;
    Events events;
    int data = 0;
    Binding binding = Binding::file;
    int file = -1;  // the file bound to (file, and loose when it came from file)
};

struct Backend {
    std::string_view name;
    std::unique_ptr<Selector> selector;
    bool closed = false;
    bool watches_numbers = false;  // select, poll
    std::map<int, ModelKey> keys;  // by descriptor
    int fileno = -2;               // what fileno() said first, -2 before it was asked
};

// A call's target: a bare number or a handle as a file object.
struct Target {
    bool is_object = false;
    int number = -1;
    Handle* object = nullptr;
    [[nodiscard]] FileObject fileobj() const { return is_object ? FileObject{*object} : FileObject{number}; }
    [[nodiscard]] std::string describe() const {
        return is_object ? fmt::format("object(fileno {})", object->fd) : fmt::format("fd {}", number);
    }
};

// select(2) has no hang-up of its own: the kernel puts one in the read set
// only, unlike an error, which is in both. The select backend passes that
// on, as its contract says, so its truth is this.
inline Events from_revents_as_select(int revents) {
    Events events;
    if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        events |= EVENT_READ;
    }
    if ((revents & (POLLOUT | POLLERR)) != 0) {
        events |= EVENT_WRITE;
    }
    return events;
}

// Written out here rather than taken from lib/selector/poll_mask.hpp: the model must
// not share the code it checks.
inline Events from_revents(int revents) {
    Events events;
    if ((revents & POLLIN) != 0) {
        events |= EVENT_READ;
    }
    if ((revents & POLLOUT) != 0) {
        events |= EVENT_WRITE;
    }
    if ((revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
        events |= EVENT_READ_WRITE;
    }
    return events;
}

class Harness {
public:
    Harness(const std::uint8_t* data, std::size_t size) : input_{data, size} {
        for (const std::string_view name : available_selectors()) {
            if (name != "select" && name != "poll" && name != "epoll" && name != "io_uring") {
                continue;  // kqueue and devpoll: not compiled on Linux, and not yet on the contract
            }
            Backend backend;
            backend.name = name;
            backend.watches_numbers = name == "select" || name == "poll";
            try {
                backend.selector = make_selector<int>(name);
            } catch (const std::system_error&) {
                continue;  // the kernel refuses the mechanism (io_uring under seccomp)
            }
            backends_.push_back(std::move(backend));
        }
        files_.reserve(2 * max_operations + 2);
    }

    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    ~Harness() {
        for (Backend& backend : backends_) {
            backend.selector.reset();
        }
        for (Handle& handle : handles_) {
            if (handle.fd >= 0) {
                ::close(handle.fd);
            }
        }
    }

    void run() {
        for (operation_ = 0; operation_ < max_operations && position_ < input_.size(); ++operation_) {
            step(next());
            check_keys(operation_ % 8 == 7);
        }
        // Whatever the sequence left, every selector agrees with the model once more.
        check_keys(true);
        compare_select(false);
    }

private:
    // ---- Input decoding ----

    std::uint8_t next() { return position_ < input_.size() ? input_[position_++] : 0; }

    Handle* pick_handle(std::uint8_t byte, bool open_only) {
        for (std::size_t i = 0; i < max_handles; ++i) {
            Handle& handle = handles_[(byte + i) % max_handles];
            if (handle.fd >= 0 || (!open_only && handle.last_fd >= 0)) {
                return &handle;
            }
        }
        return nullptr;
    }

    Handle* free_slot() {
        for (Handle& handle : handles_) {
            if (handle.fd < 0) {
                return &handle;
            }
        }
        return nullptr;
    }

    [[nodiscard]] std::size_t free_slots() const {
        return static_cast<std::size_t>(
            std::count_if(handles_.begin(), handles_.end(), [](const Handle& h) { return h.fd < 0; }));
    }

    static Events decode_events(std::uint8_t byte) {
        // Mostly valid masks; now and then an empty one or one with unknown bits.
        switch (byte % 8) {
            case 0:
            case 3:
                return EVENT_READ;
            case 1:
            case 4:
                return EVENT_WRITE;
            case 2:
            case 5:
                return EVENT_READ_WRITE;
            case 6:
                return Events{};
            default:
                return Events::from_bits(byte);  // byte % 8 == 7: an unknown bit
        }
    }

    // A target for a call; nullopt when it would name a descriptor the
    // harness does not own and the kernel has open (the library's own).
    std::optional<Target> decode_target(std::uint8_t byte) {
        Target target;
        switch (byte % 8) {
            case 0:
            case 1:
            case 2:
            case 3: {  // a handle's number, or the number it had
                Handle* handle = pick_handle(static_cast<std::uint8_t>(byte / 8), false);
                if (handle == nullptr) {
                    return std::nullopt;
                }
                target.number = handle->fd >= 0 ? handle->fd : handle->last_fd;
                break;
            }
            case 4:
            case 5: {  // a handle as an object, open or closed
                Handle* handle = pick_handle(static_cast<std::uint8_t>(byte / 8), false);
                if (handle == nullptr) {
                    return std::nullopt;
                }
                target.is_object = true;
                target.object = handle;
                break;
            }
            case 6: {  // a number the harness closed
                if (closed_numbers_.empty()) {
                    return std::nullopt;
                }
                target.number = closed_numbers_[(byte / 8) % closed_numbers_.size()];
                break;
            }
            default: {  // numbers no one has
                static constexpr std::array<int, 8> odd{-1,      -1000,   FD_SETSIZE - 1, FD_SETSIZE,
                                                        1 << 20, INT_MAX, 0x7ffffff0,     200};
                target.number = odd[(byte / 8) % odd.size()];
                break;
            }
        }
        if (!target.is_object && target.number >= 0 && number_state(target.number).kind == NumberState::foreign) {
            return std::nullopt;
        }
        return target;
    }

    // ---- The environment ----

    [[nodiscard]] NumberState number_state(int fd) const {
        if (fd < 0) {
            return {};
        }
        for (const Handle& handle : handles_) {
            if (handle.fd == fd) {
                return {NumberState::owned, handle.file};
            }
        }
        if (::fcntl(fd, F_GETFD) != -1) {
            return {NumberState::foreign, -1};
        }
        return {};
    }

    [[nodiscard]] int descriptor_of(int file) const {
        for (const Handle& handle : handles_) {
            if (handle.fd >= 0 && handle.file == file) {
                return handle.fd;
            }
        }
        return -1;
    }

    int new_file(Kind kind) {
        files_.push_back(File{kind, -1, 0, 0});
        return static_cast<int>(files_.size() - 1);
    }

    // `handle` is a free_slot() the caller made sure of: null only if the
    // harness miscounted, which is its own failure.
    void adopt(Handle* handle, int fd, int file) {
        if (handle == nullptr) {
            fail(fmt::format("no free handle for fd {}", fd));
        }
        handle->fd = fd;
        handle->file = file;
        ++files_[static_cast<std::size_t>(file)].descriptors;
        number_opened(fd);
    }

    // A number was given to a file: a closed registration of epoll and
    // io_uring on it now watches whatever the mechanism makes of that.
    void number_opened(int fd) {
        std::erase(closed_numbers_, fd);
        for (Backend& backend : backends_) {
            if (auto it = backend.keys.find(fd); it != backend.keys.end() && it->second.binding == Binding::closed) {
                it->second.binding = Binding::loose;
            }
        }
    }

    void close_handle(Handle& handle) {
        trace("  close fd {}", handle.fd);
        if (::close(handle.fd) != 0) {
            fail(fmt::format("close({}) failed: errno {}", handle.fd, errno));
        }
        --files_[static_cast<std::size_t>(handle.file)].descriptors;
        for (Backend& backend : backends_) {
            if (auto it = backend.keys.find(handle.fd);
                it != backend.keys.end() && it->second.binding == Binding::file) {
                it->second.binding = Binding::loose;
            }
        }
        handle.last_fd = handle.fd;
        closed_numbers_.push_back(handle.fd);
        if (closed_numbers_.size() > 8) {
            closed_numbers_.erase(closed_numbers_.begin());
        }
        handle.fd = -1;
    }

    static void small_buffers(int fd, Kind kind) {
        // Small buffers, so that filling one takes a system call or two.
        if (kind == Kind::socket) {
            const int size = 4096;
            (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        } else if (kind == Kind::pipe_write) {
            (void)::fcntl(fd, F_SETPIPE_SZ, 4096);
        }
    }

    // Two new connected files on two new descriptors, into free slots.
    bool make_pair(bool pipe, Handle*& first, Handle*& second) {
        if (free_slots() < 2) {
            return false;
        }
        int fds[2];
        if (pipe) {
            if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
                fail(fmt::format("pipe2: errno {}", errno));
            }
        } else if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
            fail(fmt::format("socketpair: errno {}", errno));
        }
        const int a = new_file(pipe ? Kind::pipe_read : Kind::socket);
        const int b = new_file(pipe ? Kind::pipe_write : Kind::socket);
        files_[static_cast<std::size_t>(a)].peer = b;
        files_[static_cast<std::size_t>(b)].peer = a;
        small_buffers(fds[0], files_[static_cast<std::size_t>(a)].kind);
        small_buffers(fds[1], files_[static_cast<std::size_t>(b)].kind);
        first = free_slot();
        adopt(first, fds[0], a);
        second = free_slot();
        adopt(second, fds[1], b);
        trace("  {} fd {} <-> fd {}", pipe ? "pipe" : "socketpair", fds[0], fds[1]);
        return true;
    }

    bool make_devnull(Handle*& handle) {
        handle = free_slot();
        if (handle == nullptr) {
            return false;
        }
        const int fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            fail(fmt::format("open /dev/null: errno {}", errno));
        }
        adopt(handle, fd, new_file(Kind::devnull));
        trace("  /dev/null fd {}", fd);
        return true;
    }

    [[nodiscard]] bool names_devnull(int fd) const {
        const NumberState state = number_state(fd);
        return state.kind == NumberState::owned && files_[static_cast<std::size_t>(state.file)].kind == Kind::devnull;
    }

    // ---- Operations ----

    void step(std::uint8_t opcode) {
        // The argument bytes in input order: a function's arguments are
        // evaluated in an order the compiler picks (g++ and clang differ).
        std::array<std::uint8_t, 3> arg{};
        const auto args = [&](std::size_t count) {
            for (std::size_t i = 0; i < count; ++i) {
                arg[i] = next();
            }
        };
        switch (opcode % 20) {
            case 0:
            case 1: {
                Handle* a = nullptr;
                Handle* b = nullptr;
                trace("#{} new {}", operation_, opcode % 2 == 0 ? "socketpair" : "pipe");
                (void)make_pair(opcode % 2 == 1, a, b);
                break;
            }
            case 2:
                args(1);
                op_dup(arg[0]);
                break;
            case 3:
                args(1);
                op_close(arg[0]);
                break;
            case 4:
                args(2);
                op_shutdown(arg[0], arg[1]);
                break;
            case 5:
                args(2);
                op_write(arg[0], arg[1]);
                break;
            case 6:
                args(1);
                op_fill(arg[0]);
                break;
            case 7:
                args(3);
                op_read(arg[0], arg[1], arg[2]);
                break;
            case 8:
            case 9:
                args(3);
                op_register(arg[0], arg[1], arg[2]);
                break;
            case 10:
                args(1);
                op_unregister(arg[0]);
                break;
            case 11:
            case 12:
                args(3);
                op_modify(arg[0], arg[1], arg[2]);
                break;
            case 13:
                args(2);
                op_reregister(arg[0], arg[1]);
                break;
            case 14:
            case 15:
                trace("#{} {}(0)", operation_, opcode % 2 == 1 ? "select_tokens" : "select");
                compare_select(opcode % 2 == 1);
                break;
            case 16:
                args(2);
                op_reuse(arg[0], arg[1]);
                break;
            case 17:
                args(1);
                op_lookup(arg[0]);
                break;
            case 18:
                args(1);
                op_fileno_or_timed_select(arg[0]);
                break;
            default:
                args(1);
                op_close_selector(arg[0]);
                break;
        }
    }

    void op_dup(std::uint8_t which) {
        Handle* source = pick_handle(which, true);
        Handle* slot = free_slot();
        if (source == nullptr || slot == nullptr) {
            return;
        }
        const int fd = ::fcntl(source->fd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            fail(fmt::format("dup: errno {}", errno));
        }
        trace("#{} dup fd {} -> fd {}", operation_, source->fd, fd);
        adopt(slot, fd, source->file);
    }

    void op_close(std::uint8_t which) {
        if (Handle* handle = pick_handle(which, true)) {
            trace("#{} close", operation_);
            close_handle(*handle);
        }
    }

    void op_shutdown(std::uint8_t which, std::uint8_t how_byte) {
        Handle* handle = pick_handle(which, true);
        if (handle == nullptr || files_[static_cast<std::size_t>(handle->file)].kind != Kind::socket) {
            return;
        }
        static constexpr std::array<int, 3> hows{SHUT_WR, SHUT_RD, SHUT_RDWR};
        const int how = hows[how_byte % hows.size()];
        trace("#{} shutdown fd {} how {}", operation_, handle->fd, how);
        (void)::shutdown(handle->fd, how);
    }

    // Writes through `handle`; returns the bytes the kernel took.
    std::size_t write_some(Handle& handle, std::size_t size) {
        static const std::vector<char> bytes(65536, 'x');
        File& file = files_[static_cast<std::size_t>(handle.file)];
        if (file.kind == Kind::pipe_read) {
            return 0;
        }
        if (file.kind == Kind::devnull) {
            const bool taken = ::write(handle.fd, bytes.data(), size) > 0;  // and gone: nothing to read
            (void)taken;
            return 0;
        }
        const ssize_t written = file.kind == Kind::socket
                                    ? ::send(handle.fd, bytes.data(), size, MSG_NOSIGNAL | MSG_DONTWAIT)
                                    : ::write(handle.fd, bytes.data(), size);
        if (written <= 0) {
            return 0;
        }
        files_[static_cast<std::size_t>(file.peer)].pending += static_cast<std::size_t>(written);
        return static_cast<std::size_t>(written);
    }

    void op_write(std::uint8_t which, std::uint8_t size_byte) {
        static constexpr std::array<std::size_t, 6> sizes{1, 7, 100, 1000, 4096, 20000};
        if (Handle* handle = pick_handle(which, true)) {
            const std::size_t size = sizes[size_byte % sizes.size()];
            const std::size_t written = write_some(*handle, size);
            trace("#{} write fd {} {} bytes: {}", operation_, handle->fd, size, written);
        }
    }

    void op_fill(std::uint8_t which) {
        if (Handle* handle = pick_handle(which, true);
            handle != nullptr && files_[static_cast<std::size_t>(handle->file)].kind != Kind::devnull) {
            std::size_t total = 0;
            for (int round = 0; round < 64; ++round) {
                const std::size_t written = write_some(*handle, 65536);
                total += written;
                if (written == 0) {
                    break;
                }
            }
            trace("#{} fill fd {}: {} bytes", operation_, handle->fd, total);
        }
    }

    // Reads `amount` bytes (or what there is) in `pieces` reads, selecting
    // between them or not. Whatever the split, the reads get the same bytes,
    // and the readiness after them follows from what is left.
    void op_read(std::uint8_t which, std::uint8_t amount_byte, std::uint8_t split_byte) {
        static constexpr std::array<std::size_t, 5> amounts{1, 10, 100, 4096, 65536};
        Handle* handle = pick_handle(which, true);
        if (handle == nullptr) {
            return;
        }
        File& file = files_[static_cast<std::size_t>(handle->file)];
        if (file.kind == Kind::pipe_write || file.kind == Kind::devnull) {
            return;
        }
        const std::size_t amount = amounts[amount_byte % amounts.size()];
        const std::size_t pieces = 1 + split_byte % 4;
        const bool select_between = (split_byte & 0x10U) != 0;
        trace("#{} read fd {} {} bytes in {} reads{}", operation_, handle->fd, amount, pieces,
              select_between ? ", selecting between" : "");
        static std::vector<char> buffer(65536);
        const std::size_t pending_before = file.pending;
        std::size_t got = 0;
        bool stopped = false;  // end of file, an error, or nothing more
        for (std::size_t piece = 0; piece < pieces && !stopped; ++piece) {
            const std::size_t want = piece + 1 == pieces ? amount - got : amount / pieces;
            if (want == 0) {
                continue;
            }
            const ssize_t n = ::read(handle->fd, buffer.data(), want);
            if (n > 0) {
                got += static_cast<std::size_t>(n);
                file.pending -= std::min(file.pending, static_cast<std::size_t>(n));
                stopped = static_cast<std::size_t>(n) < want;
            } else {
                stopped = true;
            }
            if (select_between && piece + 1 < pieces) {
                compare_select(false);
            }
        }
        if (got != std::min(amount, pending_before)) {
            fail(fmt::format("read of {} bytes in {} pieces from fd {} got {}, with {} pending", amount, pieces,
                             handle->fd, got, pending_before));
        }
        // The byte count alone says whether the file is still readable.
        pollfd entry{handle->fd, POLLIN | POLLRDHUP, 0};
        if (::poll(&entry, 1, 0) < 0) {
            fail(fmt::format("poll: errno {}", errno));
        }
        const bool kernel_readable = (entry.revents & (POLLIN | POLLERR | POLLHUP)) != 0;
        const bool model_readable = file.pending > 0 || (entry.revents & (POLLRDHUP | POLLERR | POLLHUP)) != 0;
        if (kernel_readable != model_readable) {
            fail(fmt::format("fd {}: {} bytes left by the count, but poll(2) says revents {:#x}", handle->fd,
                             file.pending, entry.revents));
        }
    }

    // Gives a number the harness closed to a new file: a duplicate of an open
    // handle (possibly of the very file the number had) or a new socket.
    void op_reuse(std::uint8_t number_byte, std::uint8_t source_byte) {
        if (closed_numbers_.empty()) {
            return;
        }
        const int number = closed_numbers_[number_byte % closed_numbers_.size()];
        if (number_state(number).kind != NumberState::closed) {
            return;  // the library took it meanwhile
        }
        Handle* slot = free_slot();
        if (slot == nullptr) {
            return;
        }
        int source = -1;
        int file = -1;
        Handle* fresh_first = nullptr;
        Handle* fresh_second = nullptr;
        if (source_byte % 2 == 0) {
            Handle* original = pick_handle(static_cast<std::uint8_t>(source_byte / 2), true);
            if (original == nullptr) {
                return;
            }
            source = original->fd;
            file = original->file;
        } else if ((source_byte & 4U) != 0) {
            if (!make_devnull(fresh_first)) {
                return;
            }
            source = fresh_first->fd;
            file = fresh_first->file;
        } else {
            if (!make_pair((source_byte & 2U) != 0, fresh_first, fresh_second)) {
                return;
            }
            source = fresh_first->fd;
            file = fresh_first->file;
        }
        if (source == number) {
            return;  // the new pair got the number itself
        }
        if (number_state(number).kind != NumberState::closed) {
            return;  // taken by the new pair's other end
        }
        slot = free_slot();
        if (slot == nullptr) {
            return;
        }
        if (::dup3(source, number, O_CLOEXEC) != number) {
            fail(fmt::format("dup3({}, {}): errno {}", source, number, errno));
        }
        trace("#{} reuse fd {} for the file of fd {}", operation_, number, source);
        adopt(slot, number, file);
        if (fresh_first != nullptr) {
            close_handle(*fresh_first);  // the pair's end lives on under `number` only
        }
    }

    // ---- Selector calls, each against the model ----

    // The number a target resolves to in `backend`'s model, as BaseSelector's
    // fd_of() resolves it, or the error it throws.
    static std::optional<int> resolve(const Backend& backend, const Target& target, Outcome& error) {
        if (!target.is_object) {
            if (target.number < 0) {
                error = {Error::invalid_argument, 0, {}};
                return std::nullopt;
            }
            return target.number;
        }
        if (target.object->fd >= 0) {
            return target.object->fd;
        }
        const FileObject fileobj = target.fileobj();
        for (const auto& [fd, key] : backend.keys) {
            if (key.fileobj == fileobj) {
                return fd;
            }
        }
        error = {Error::invalid_argument, 0, {}};
        return std::nullopt;
    }

    enum class Registered { must, must_not };

    // What every call checks first, in BaseSelector's order: the selector is
    // open, the events are valid (for calls that take events), the target
    // resolves to a number, and that number is registered or not as the call
    // requires. Sets `expected` to the first failure; returns the number
    // whenever the target resolved.
    static std::optional<int> expect_first_checks(const Backend& backend, const Target& target, const Events* events,
                                                  Registered registered, Outcome& expected) {
        if (backend.closed) {
            expected = {Error::logic_error, 0, {}};
            return std::nullopt;
        }
        if (events != nullptr && !events->is_valid()) {
            expected = {Error::invalid_argument, 0, {}};
            return std::nullopt;
        }
        const std::optional<int> fd = resolve(backend, target, expected);
        if (fd && backend.keys.contains(*fd) != (registered == Registered::must)) {
            expected = {Error::key_error, 0, {}};
        }
        return fd;
    }

    void expect(const Backend& backend, std::string_view call, const Target& target, const Outcome& expected,
                const Outcome& got) {
        if (!(expected == got)) {
            fail(fmt::format("operation #{}: {} {} on {}: expected {}, got {}", operation_, call, target.describe(),
                             backend.name, describe(expected), describe(got)));
        }
    }

    void expect_key(const Backend& backend, std::string_view call, const ModelKey& model, const SelectorKey<int>& key) {
        if (key.fd != model.fd || key.events != model.events || key.data != model.data ||
            !(key.fileobj == model.fileobj)) {
            fail(fmt::format(
                "operation #{}: {} on {}: key fd {} events {} data {}, the model's fd {} events {} data {}", operation_,
                call, backend.name, key.fd, key.events, key.data, model.fd, model.events, model.data));
        }
    }

    // For a key whose number is found open, closed or foreign now, what
    // epoll and io_uring watch: see Binding.
    static Binding bind_now(const NumberState& state) {
        return state.kind == NumberState::owned    ? Binding::file
               : state.kind == NumberState::closed ? Binding::closed
                                                   : Binding::loose;
    }

    void op_register(std::uint8_t target_byte, std::uint8_t events_byte, std::uint8_t data) {
        const std::optional<Target> target = decode_target(target_byte);
        if (!target) {
            return;
        }
        const Events events = decode_events(events_byte);
        trace("#{} register_ {} {} data {}", operation_, target->describe(), events, data);
        for (Backend& backend : backends_) {
            Outcome expected;
            const std::optional<int> fd =
                expect_first_checks(backend, *target, &events, Registered::must_not, expected);
            if (expected.error != Error::none) {
                // refused before the backend is asked
            } else if (backend.name == "select" && *fd >= FD_SETSIZE) {
                expected = {Error::invalid_argument, 0, {}};
            } else if (number_state(*fd).kind != NumberState::owned) {
                expected = {Error::system_error, EBADF, {}};
            } else if (backend.name == "epoll" && names_devnull(*fd)) {
                expected = {Error::system_error, EPERM, {}};  // documented: epoll cannot watch it
            }
            const SelectorKey<int>* key = nullptr;
            const Outcome got = attempt([&] { key = &backend.selector->register_(target->fileobj(), events, data); });
            expect(backend, "register_", *target, expected, got);
            if (got.error == Error::none) {
                const NumberState state = number_state(*fd);
                ModelKey model{target->fileobj(), *fd, events, data, Binding::file, state.file};
                expect_key(backend, "register_", model, *key);
                backend.keys.emplace(*fd, model);
            }
        }
    }

    void op_unregister(std::uint8_t target_byte) {
        const std::optional<Target> target = decode_target(target_byte);
        if (!target) {
            return;
        }
        trace("#{} unregister {}", operation_, target->describe());
        for (Backend& backend : backends_) {
            Outcome expected;
            const std::optional<int> fd = expect_first_checks(backend, *target, nullptr, Registered::must, expected);
            std::optional<SelectorKey<int>> removed;
            const Outcome got = attempt([&] { removed.emplace(backend.selector->unregister(target->fileobj())); });
            expect(backend, "unregister", *target, expected, got);
            if (got.error == Error::none) {
                expect_key(backend, "unregister", backend.keys.at(*fd), *removed);
                backend.keys.erase(*fd);
            }
        }
    }

    void op_modify(std::uint8_t target_byte, std::uint8_t events_byte, std::uint8_t data_byte) {
        const std::optional<Target> target = decode_target(target_byte);
        if (!target) {
            return;
        }
        const Events events = decode_events(events_byte);
        const bool with_data = (data_byte & 1U) != 0;
        const int data = data_byte >> 1U;
        trace("#{} modify {} {}{}", operation_, target->describe(), events,
              with_data ? fmt::format(" data {}", data) : std::string{});
        for (Backend& backend : backends_) {
            Outcome expected;
            const std::optional<int> fd = expect_first_checks(backend, *target, &events, Registered::must, expected);
            const SelectorKey<int>* key = nullptr;
            const Outcome got = attempt([&] {
                key = with_data ? &backend.selector->modify(target->fileobj(), events, data)
                                : &backend.selector->modify(target->fileobj(), events);
            });
            if (expected.error == Error::none && backend.name == "epoll" && names_devnull(*fd) &&
                events != backend.keys.at(*fd).events && got == Outcome{Error::system_error, EPERM, {}}) {
                // The number names a file epoll cannot watch. A registration
                // epoll watched is refused and dropped (a refused modify
                // unregisters, as Python's does); one it had found closed
                // stays closed. The model cannot tell which epoll holds.
                backend.keys.erase(*fd);
                continue;
            }
            expect(backend, "modify", *target, expected, got);
            if (got.error == Error::none) {
                ModelKey& model = backend.keys.at(*fd);
                if (events != model.events) {
                    // A system call: it finds the number closed (a closed
                    // registration) or watches the file it names now.
                    const NumberState state = number_state(*fd);
                    model.binding = bind_now(state);
                    model.file = state.file;
                    model.events = events;
                    if (backend.name == "epoll" && names_devnull(*fd)) {
                        model.binding = Binding::loose;  // kept as closed: the kernel watches nothing
                        model.file = -1;
                    }
                }
                if (with_data) {
                    model.data = data;
                }
                expect_key(backend, "modify", model, *key);
            }
        }
    }

    void op_reregister(std::uint8_t target_byte, std::uint8_t events_byte) {
        const std::optional<Target> target = decode_target(target_byte);
        if (!target) {
            return;
        }
        const Events events = decode_events(events_byte);
        trace("#{} reregister {} {}", operation_, target->describe(), events);
        for (Backend& backend : backends_) {
            Outcome expected;
            const std::optional<int> fd = expect_first_checks(backend, *target, &events, Registered::must, expected);
            if (expected.error != Error::none) {
                // refused before the backend is asked
            } else if (const NumberState state = number_state(*fd); state.kind == NumberState::foreign) {
                continue;  // the library's own descriptor: nothing the model can tell
            } else if (state.kind == NumberState::closed) {
                expected = {Error::system_error, EBADF, {}};
            } else if (backend.name == "epoll" && names_devnull(*fd)) {
                expected = {Error::system_error, EPERM, {}};  // the kernel refuses the file it names
            }
            const SelectorKey<int>* key = nullptr;
            std::uint64_t token_before = 0;
            if (fd && backend.keys.contains(*fd) && !backend.closed) {
                token_before = muxio::detail::token_of(*backend.selector, backend.selector->get_map().at(*fd));
            }
            const Outcome got = attempt([&] { key = &backend.selector->reregister(target->fileobj(), events); });
            expect(backend, "reregister", *target, expected, got);
            if (got.error == Error::none) {
                ModelKey& model = backend.keys.at(*fd);
                const NumberState state = number_state(*fd);
                model.binding = Binding::file;
                model.file = state.file;
                model.events = events;
                expect_key(backend, "reregister", model, *key);
                if (muxio::detail::token_of(*backend.selector, *key) == token_before) {
                    fail(fmt::format("operation #{}: reregister on {} kept the token", operation_, backend.name));
                }
            } else if (got.error == Error::system_error) {
                // The key stays, with its events and token: a closed
                // registration if the number is closed; if the kernel refused
                // the file it names, epoll may still watch the old one.
                ModelKey& model = backend.keys.at(*fd);
                model.binding = number_state(*fd).kind == NumberState::closed ? Binding::closed : Binding::loose;
                const SelectorKey<int>& kept = backend.selector->get_map().at(*fd);
                expect_key(backend, "reregister", model, kept);
                if (muxio::detail::token_of(*backend.selector, kept) != token_before) {
                    fail(fmt::format("operation #{}: a refused reregister on {} changed the token", operation_,
                                     backend.name));
                }
            }
        }
    }

    void op_lookup(std::uint8_t target_byte) {
        const std::optional<Target> target = decode_target(target_byte);
        if (!target) {
            return;
        }
        trace("#{} lookup {}", operation_, target->describe());
        for (Backend& backend : backends_) {
            Outcome expected;
            const std::optional<int> fd = expect_first_checks(backend, *target, nullptr, Registered::must, expected);
            if (!fd && !backend.closed) {
                expected = {Error::key_error, 0, {}};  // get_key: not there, whatever fileno() says
            }
            const SelectorKey<int>* key = nullptr;
            const Outcome got = attempt([&] { key = &backend.selector->get_key(target->fileobj()); });
            expect(backend, "get_key", *target, expected, got);
            if (got.error == Error::none) {
                expect_key(backend, "get_key", backend.keys.at(*fd), *key);
                const auto map = backend.selector->get_map();
                if (map.find(target->fileobj()) != key || !map.contains(target->fileobj())) {
                    fail(fmt::format("operation #{}: get_map().find disagrees with get_key on {}", operation_,
                                     backend.name));
                }
            } else if (!backend.closed) {
                const auto map = backend.selector->get_map();
                if (map.find(target->fileobj()) != nullptr || map.contains(target->fileobj())) {
                    fail(fmt::format("operation #{}: get_map() finds what get_key does not on {}", operation_,
                                     backend.name));
                }
            }
        }
    }

    void op_fileno_or_timed_select(std::uint8_t byte) {
        if (byte % 4 == 0 && !timed_select_done_) {
            timed_select_done_ = true;  // one per input: it costs a millisecond per backend
            trace("#{} select(1ms)", operation_);
            compare_select(false, std::chrono::milliseconds{1});
            return;
        }
        trace("#{} fileno", operation_);
        for (Backend& backend : backends_) {
            if (!backend.watches_numbers && backend.name == "epoll") {
                // From now on a rebuild moves epoll's working set to a new
                // number, possibly one the harness closed.
                library_may_take_numbers_ = true;
            }
            const int fileno = backend.selector->fileno();
            if (backend.closed || backend.watches_numbers) {
                if (fileno != -1) {
                    fail(fmt::format("{}: fileno() {} where -1 was expected", backend.name, fileno));
                }
                continue;
            }
            if (fileno < 0 || (backend.fileno != -2 && fileno != backend.fileno)) {
                fail(fmt::format("{}: fileno() {}, before {}", backend.name, fileno, backend.fileno));
            }
            backend.fileno = fileno;
        }
    }

    void op_close_selector(std::uint8_t which) {
        if (backends_.empty() || which % 4 != 0) {
            // Mostly not: a closed selector only ever says logic_error.
            trace("#{} (close no selector)", operation_);
            return;
        }
        Backend& backend = backends_[(which / 4) % backends_.size()];
        trace("#{} close the {} selector", operation_, backend.name);
        backend.selector->close();
        backend.selector->close();  // harmless
        backend.closed = true;
        backend.keys.clear();
        if (!backend.selector->is_closed() || backend.selector->fileno() != -1) {
            fail(fmt::format("{}: closed, but is_closed() or fileno() says otherwise", backend.name));
        }
    }

    // ---- Comparisons ----

    // Every key against the model: by lookup after each operation, and by
    // walking get_map() (which scans the selector's table) now and then.
    void check_keys(bool walk) {
        for (Backend& backend : backends_) {
            if (backend.closed) {
                const Outcome got = attempt([&] { (void)backend.selector->get_map(); });
                if (got.error != Error::logic_error) {
                    fail(fmt::format("{}: get_map() on a closed selector: {}", backend.name, describe(got)));
                }
                continue;
            }
            const auto map = backend.selector->get_map();
            if (map.size() != backend.keys.size()) {
                fail(fmt::format("operation #{}: {} holds {} keys, the model {}", operation_, backend.name, map.size(),
                                 backend.keys.size()));
            }
            for (const auto& [fd, model] : backend.keys) {
                const SelectorKey<int>* key = map.find(fd);
                if (key == nullptr) {
                    fail(fmt::format("operation #{}: {} has no key for fd {}", operation_, backend.name, fd));
                }
                expect_key(backend, "get_map().find", model, *key);
            }
            if (!walk) {
                continue;
            }
            auto model = backend.keys.begin();
            for (const SelectorKey<int>& key : map) {
                if (model == backend.keys.end()) {
                    fail(fmt::format("{}: more keys than the model", backend.name));
                }
                expect_key(backend, "get_map", model->second, key);
                ++model;
            }
        }
    }

    // poll(2) on every open number registered anywhere: level-triggered truth.
    [[nodiscard]] std::map<int, Events> truths(const Backend& reader) const {
        std::vector<pollfd> entries;
        for (const Backend& backend : backends_) {
            for (const auto& entry : backend.keys) {
                const int fd = entry.first;  // a structured binding cannot be captured (clang 14)
                if (number_state(fd).kind == NumberState::owned &&
                    std::none_of(entries.begin(), entries.end(), [&](const pollfd& e) { return e.fd == fd; })) {
                    entries.push_back({fd, POLLIN | POLLOUT, 0});
                }
            }
        }
        if (!entries.empty() && ::poll(entries.data(), entries.size(), 0) < 0) {
            fail(fmt::format("poll: errno {}", errno));
        }
        std::map<int, Events> result;
        for (const pollfd& entry : entries) {
            result[entry.fd] =
                reader.name == "select" ? from_revents_as_select(entry.revents) : from_revents(entry.revents);
        }
        return result;
    }

    [[nodiscard]] Events truth_of_file(int file) const {
        const int fd = descriptor_of(file);
        pollfd entry{fd, POLLIN | POLLOUT, 0};
        if (::poll(&entry, 1, 0) < 0) {
            fail(fmt::format("poll: errno {}", errno));
        }
        return from_revents(entry.revents);
    }

    // What `backend` may report for `key` now: the answers allowed, or
    // nullopt for any subset of the key's events.
    [[nodiscard]] std::optional<std::vector<Events>> allowed(const Backend& backend, const ModelKey& key,
                                                             const std::map<int, Events>& truth) const {
        const NumberState state = number_state(key.fd);
        if (state.kind == NumberState::foreign) {
            return std::nullopt;  // the library's own descriptor under a number the harness closed
        }
        const Events now = state.kind == NumberState::owned ? truth.at(key.fd) & key.events : key.events;
        if (backend.watches_numbers) {
            return std::vector<Events>{now};
        }
        switch (key.binding) {
            case Binding::file:
                if (state.kind != NumberState::owned || state.file != key.file) {
                    fail(fmt::format("harness: key fd {} bound to file {} names {}", key.fd, key.file, state.file));
                }
                return std::vector<Events>{now};
            case Binding::closed:
                if (state.kind != NumberState::closed) {
                    fail(fmt::format("harness: closed key fd {} is open", key.fd));
                }
                if (library_may_take_numbers_ && backend.name == "io_uring") {
                    // A re-arm may have met the library's own descriptor under
                    // this number between two waits, and holds on to it.
                    return std::nullopt;
                }
                return std::vector<Events>{now};
            case Binding::loose: {
                std::vector<Events> answers{Events{}, key.events, now};
                if (key.file >= 0) {
                    if (descriptor_of(key.file) < 0) {
                        // No descriptor left to ask; the file may live on
                        // (io_uring holds what its armed polls watch).
                        return std::nullopt;
                    }
                    answers.push_back(truth_of_file(key.file) & key.events);
                }
                return answers;
            }
        }
        return std::nullopt;
    }

    void compare_select(bool tokens, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        for (Backend& backend : backends_) {
            if (backend.closed) {
                const Outcome got = attempt([&] { (void)backend.selector->select(std::chrono::nanoseconds{0}); });
                if (got.error != Error::logic_error) {
                    fail(fmt::format("{}: select on a closed selector: {}", backend.name, describe(got)));
                }
                continue;
            }
            const std::map<int, Events> truth = truths(backend);
            std::map<int, Events> reported;
            const auto started = Clock::now();
            const Outcome got = attempt([&] {
                const detail::Timeout wait =
                    timeout ? detail::Timeout{*timeout} : detail::Timeout{std::chrono::nanoseconds{0}};
                if (tokens) {
                    for (const detail::PollEvent& event : muxio::detail::select_tokens(*backend.selector, wait)) {
                        const SelectorKey<int>* key = muxio::detail::find_current(*backend.selector, event.token);
                        if (key == nullptr) {
                            continue;  // stale: the reactor skips it too
                        }
                        const Events ready = event.events & key->events;
                        if (ready && !reported.emplace(key->fd, ready).second) {
                            fail(fmt::format("operation #{}: {} select_tokens reports fd {} twice", operation_,
                                             backend.name, key->fd));
                        }
                    }
                } else {
                    for (const auto& ready : backend.selector->select(wait)) {
                        const SelectorKey<int>& key = ready.key();
                        if (!backend.selector->is_current(ready) ||
                            muxio::detail::token_of(*backend.selector, key) != ready.token() || !ready.events() ||
                            !key.events.contains(ready.events())) {
                            fail(fmt::format("operation #{}: {} select reports fd {} {} not as its key", operation_,
                                             backend.name, key.fd, ready.events()));
                        }
                        if (!reported.emplace(key.fd, ready.events()).second) {
                            fail(fmt::format("operation #{}: {} select reports fd {} twice", operation_, backend.name,
                                             key.fd));
                        }
                    }
                }
            });
            const auto elapsed = Clock::now() - started;
            if (got.error != Error::none) {
                fail(fmt::format("operation #{}: select on {}: {}", operation_, backend.name, describe(got)));
            }
            if (timeout && reported.empty() && elapsed < *timeout) {
                fail(fmt::format("operation #{}: select({} ms) on {} returned nothing after {} ns", operation_,
                                 timeout->count(), backend.name,
                                 std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()));
            }
            for (const auto& [fd, events] : reported) {
                if (!backend.keys.contains(fd)) {
                    fail(fmt::format("operation #{}: {} reports fd {}, which the model has no key for", operation_,
                                     backend.name, fd));
                }
            }
            for (const auto& [fd, key] : backend.keys) {
                const auto it = reported.find(fd);
                const Events events = it == reported.end() ? Events{} : it->second;
                const std::optional<std::vector<Events>> answers = allowed(backend, key, truth);
                if (!answers) {
                    continue;  // any subset of the key's events; select() masks them already
                }
                if (std::find(answers->begin(), answers->end(), events) == answers->end()) {
                    std::string list;
                    for (const Events answer : *answers) {
                        list += fmt::format(" {}", answer);
                    }
                    fail(fmt::format("operation #{}: {} {} reports fd {} (events {}) as {}; the model allows{}",
                                     operation_, backend.name, tokens ? "select_tokens" : "select", fd, key.events,
                                     events, list));
                }
            }
        }
    }

    std::span<const std::uint8_t> input_;
    std::size_t position_ = 0;
    std::size_t operation_ = 0;
    std::vector<Backend> backends_;
    std::array<Handle, max_handles> handles_{};
    std::vector<File> files_;
    std::vector<int> closed_numbers_;  // the newest last
    bool timed_select_done_ = false;
    bool library_may_take_numbers_ = false;
};

// The descriptors open among the lowest numbers, one bit each.
inline std::array<bool, leak_scan_limit> open_numbers() {
    std::array<bool, leak_scan_limit> open{};
    for (int fd = 0; fd < leak_scan_limit; ++fd) {
        open[static_cast<std::size_t>(fd)] = ::fcntl(fd, F_GETFD) != -1;
    }
    return open;
}

/// Runs one input; aborts with a message on any disagreement or leak.
inline void run_input(const std::uint8_t* data, std::size_t size) {
    static const bool sigpipe_ignored = [] {
        (void)std::signal(SIGPIPE, SIG_IGN);  // writes to a pipe without reader fail with EPIPE instead
        return true;
    }();
    (void)sigpipe_ignored;
    // Taken per input: the process around the harness (libFuzzer, the
    // replay's file reading) opens and closes descriptors of its own between inputs.
    const std::array<bool, leak_scan_limit> before = open_numbers();
    {
        Harness harness{data, size};
        harness.run();
    }
    const std::array<bool, leak_scan_limit> after = open_numbers();
    for (int fd = 0; fd < leak_scan_limit; ++fd) {
        const auto index = static_cast<std::size_t>(fd);
        if (after[index] != before[index]) {
            fail(fmt::format("fd {} is {} after the input, {} before", fd, after[index] ? "open" : "closed",
                             before[index] ? "open" : "closed"));
        }
    }
}

}  // namespace muxio::fuzz::selector_model
