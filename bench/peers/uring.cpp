// The completion floor: a hand-written liburing echo server. One multishot
// accept, one multishot receive per connection into a provided-buffer ring,
// one send per message straight from the buffer that received it, and one
// io_uring_submit_and_wait per loop iteration that submits every send and
// re-arm of the previous iteration and reaps what completed. With
// SINGLE_ISSUER|DEFER_TASKRUN the kernel runs the completion work inside
// that call only, so the iteration's one system call is all there is.
#include <liburing.h>
#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <stdexcept>

#include "common.hpp"

namespace bench {
namespace {

constexpr unsigned ring_entries = 4096;         // submission queue; the completion queue is 4x
constexpr unsigned buffer_count = 4096;         // provided buffers, a power of two
constexpr unsigned receive_buffer_size = 4096;  // a 4096-byte message fits one
constexpr unsigned short buffer_group = 0;

// user_data: the connection's address with the operation in the low bits
// (connections are at least 8-byte aligned).
enum Op : std::uint64_t { accept_op = 0, receive_op = 1, send_op = 2 };
constexpr std::uint64_t op_mask = 7;

/// A received buffer still to be echoed: its id, how much it holds and how
/// much of it went out already.
struct Chunk {
    unsigned short bid;
    unsigned length;
    unsigned sent;
};

struct UringConnection {
    int fd = -1;
    bool receiving = false;  // a multishot receive is armed
    bool sending = false;    // a send is in flight (one at a time keeps the bytes in order)
    bool closing = false;    // no more receives: close once nothing is in flight
    // What is still to be echoed, from pending[next] (the one being sent) on:
    // a vector emptied in place, so echoing allocates nothing once it grew.
    std::vector<Chunk> pending;
    std::size_t next = 0;
    Chunk& front() { return pending[next]; }
    [[nodiscard]] bool empty() const { return next == pending.size(); }
    void pop_front() {
        if (++next == pending.size()) {
            pending.clear();
            next = 0;
        }
    }
};

class Server {
public:
    explicit Server(const Options& options) : listener_{make_listener(options.port)} {
        io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        params.cq_entries = ring_entries * 4;
        int error = ::io_uring_queue_init_params(ring_entries, &ring_, &params);
        if (error == -EINVAL) {  // a kernel before 6.1: the same loop, task work run on any entry
            params = io_uring_params{};
            params.flags = IORING_SETUP_CQSIZE;
            params.cq_entries = ring_entries * 4;
            error = ::io_uring_queue_init_params(ring_entries, &ring_, &params);
        }
        if (error < 0) {
            throw std::system_error(-error, std::system_category(), "io_uring_queue_init_params");
        }
        // liburing 2.3 has no io_uring_setup_buf_ring: map the ring and register it.
        const std::size_t ring_bytes = buffer_count * sizeof(io_uring_buf);
        void* mapped = ::mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapped == MAP_FAILED) {
            fail_errno("mmap");
        }
        buffers_ring_ = static_cast<io_uring_buf_ring*>(mapped);
        io_uring_buf_ring_init(buffers_ring_);
        io_uring_buf_reg registration{};
        registration.ring_addr = reinterpret_cast<std::uintptr_t>(mapped);
        registration.ring_entries = buffer_count;
        registration.bgid = buffer_group;
        if (const int failed = ::io_uring_register_buf_ring(&ring_, &registration, 0); failed < 0) {
            throw std::system_error(-failed, std::system_category(), "io_uring_register_buf_ring");
        }
        // Not value-initialised: a page is touched when the kernel first receives into it.
        storage_.reset(new char[std::size_t{buffer_count} * receive_buffer_size]);
        for (unsigned bid = 0; bid < buffer_count; ++bid) {
            give_back(static_cast<unsigned short>(bid));
        }
        publish_buffers();
        arm_accept();
    }

    [[noreturn]] void run() {
        for (;;) {
            if (const int error = ::io_uring_submit_and_wait(&ring_, 1); error < 0 && error != -EINTR) {
                throw std::system_error(-error, std::system_category(), "io_uring_submit_and_wait");
            }
            unsigned head = 0;
            unsigned seen = 0;
            io_uring_cqe* cqe = nullptr;
            io_uring_for_each_cqe(&ring_, head, cqe) {
                complete(*cqe);
                ++seen;
            }
            io_uring_cq_advance(&ring_, seen);
            publish_buffers();
        }
    }

private:
    io_uring_sqe* next_sqe() {
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {  // the queue is full: hand it over now, without waiting
            (void)::io_uring_submit(&ring_);
            sqe = ::io_uring_get_sqe(&ring_);
            if (sqe == nullptr) {
                throw std::runtime_error("io_uring submission queue full after a submit");
            }
        }
        return sqe;
    }

    static std::uint64_t tag(UringConnection* connection, Op op) {
        return reinterpret_cast<std::uintptr_t>(connection) | op;
    }

    void arm_accept() {
        io_uring_sqe* sqe = next_sqe();
        ::io_uring_prep_multishot_accept(sqe, listener_, nullptr, nullptr, SOCK_CLOEXEC);
        ::io_uring_sqe_set_data64(sqe, accept_op);
    }

    void arm_receive(UringConnection* connection) {
        io_uring_sqe* sqe = next_sqe();
        ::io_uring_prep_recv_multishot(sqe, connection->fd, nullptr, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = buffer_group;
        ::io_uring_sqe_set_data64(sqe, tag(connection, receive_op));
        connection->receiving = true;
    }

    void send_front(UringConnection* connection) {
        const Chunk& chunk = connection->front();
        io_uring_sqe* sqe = next_sqe();
        ::io_uring_prep_send(sqe, connection->fd, buffer(chunk.bid) + chunk.sent, chunk.length - chunk.sent,
                             MSG_NOSIGNAL);
        ::io_uring_sqe_set_data64(sqe, tag(connection, send_op));
        connection->sending = true;
    }

    char* buffer(unsigned short bid) { return storage_.get() + std::size_t{bid} * receive_buffer_size; }

    void give_back(unsigned short bid) {
        io_uring_buf_ring_add(buffers_ring_, buffer(bid), receive_buffer_size, bid,
                              io_uring_buf_ring_mask(buffer_count), static_cast<int>(returned_++));
    }

    void publish_buffers() {
        if (returned_ != 0) {
            io_uring_buf_ring_advance(buffers_ring_, static_cast<int>(returned_));
            returned_ = 0;
        }
    }

    void complete(const io_uring_cqe& cqe) {
        const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        if (cqe.user_data == accept_op) {
            if (cqe.res >= 0) {
                set_nodelay(cqe.res);
                auto* connection = new UringConnection{};
                connection->fd = cqe.res;
                arm_receive(connection);
            }
            if (!more) {
                arm_accept();
            }
            return;
        }
        auto* connection = reinterpret_cast<UringConnection*>(cqe.user_data & ~op_mask);
        if ((cqe.user_data & op_mask) == receive_op) {
            received(connection, cqe, more);
        } else {
            sent(connection, cqe.res);
        }
        if (connection->closing && !connection->receiving && !connection->sending) {
            ::close(connection->fd);
            delete connection;
        }
    }

    void received(UringConnection* connection, const io_uring_cqe& cqe, bool more) {
        connection->receiving = more;
        if (cqe.res > 0) {
            const auto bid = static_cast<unsigned short>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
            if (connection->closing) {
                give_back(bid);
            } else {
                connection->pending.push_back({bid, static_cast<unsigned>(cqe.res), 0});
                if (!connection->sending) {
                    send_front(connection);
                }
            }
        } else if (cqe.res != -ENOBUFS) {  // end of stream or an error: the multishot is over
            connection->closing = true;
        }
        if (!connection->receiving && !connection->closing) {  // ran dry, or the kernel ended it
            arm_receive(connection);
        }
    }

    void sent(UringConnection* connection, int result) {
        connection->sending = false;
        if (result < 0) {
            drop_pending(connection);
            if (!connection->closing) {
                connection->closing = true;
                ::shutdown(connection->fd, SHUT_RDWR);  // ends the armed receive
            }
            return;
        }
        Chunk& chunk = connection->front();
        chunk.sent += static_cast<unsigned>(result);
        if (chunk.sent == chunk.length) {
            give_back(chunk.bid);
            connection->pop_front();
        }
        if (connection->closing) {
            drop_pending(connection);
        } else if (!connection->empty()) {
            send_front(connection);
        }
    }

    void drop_pending(UringConnection* connection) {
        for (; !connection->empty(); connection->pop_front()) {
            give_back(connection->front().bid);
        }
    }

    io_uring ring_{};
    int listener_;
    io_uring_buf_ring* buffers_ring_ = nullptr;
    std::unique_ptr<char[]> storage_;
    unsigned returned_ = 0;  // buffers added to the ring since the last publish
};

void serve(Mode mode, const Options& options) {
    if (mode != Mode::echo) {
        throw std::invalid_argument("bench-uring serves echo only");
    }
    Server server{options};
    server.run();
}

}  // namespace

const Library library{.name = "uring", .variants = "", .serve = serve};

}  // namespace bench
