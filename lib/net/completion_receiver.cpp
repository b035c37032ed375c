#include "net/completion_receiver.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <utility>

#include "base/exception_code.hpp"

namespace muxio::detail {

void CompletionReceiver::start() {
    wanted_ = true;
    if (ring_ == nullptr || ended_ || receiving_ != 0 || waiting_for_buffers_ != 0 ||
        chunks_.size() - head_ >= queue_limit) {
        return;
    }
    arm();
}

void CompletionReceiver::arm() {
    // Room for a full queue and what arrives while its cancellation is on
    // the way: the queue does not allocate once the first receive ran.
    if (chunks_.capacity() < 2 * queue_limit) {
        chunks_.reserve(2 * queue_limit);
    }
    receiving_ = ring_->receive(fd_, {&CompletionReceiver::on_receive, this, fd_});
}

void CompletionReceiver::pause() noexcept {
    wanted_ = false;
    if (ring_ == nullptr) {
        return;
    }
    if (receiving_ != 0) {
        ring_->cancel(receiving_);
    }
    if (waiting_for_buffers_ != 0) {
        ring_->detach(std::exchange(waiting_for_buffers_, 0));
    }
}

std::span<const std::byte> CompletionReceiver::front() const noexcept {
    if (head_ == chunks_.size()) {
        return {};
    }
    const Chunk& chunk = chunks_[head_];
    return ring_->buffer(chunk.buffer, chunk.length).subspan(chunk.offset);
}

void CompletionReceiver::consume(std::size_t count) {
    while (count != 0 && head_ < chunks_.size()) {
        Chunk& chunk = chunks_[head_];
        const std::size_t taken = std::min<std::size_t>(count, chunk.length - chunk.offset);
        chunk.offset += static_cast<std::uint32_t>(taken);
        queued_bytes_ -= taken;
        count -= taken;
        if (chunk.offset == chunk.length) {
            ring_->recycle(chunk.buffer);
            ++head_;
        }
    }
    if (head_ == chunks_.size()) {
        chunks_.clear();
        head_ = 0;
    }
    if (wanted_ && receiving_ == 0 && waiting_for_buffers_ == 0 && !ended_ && ring_ != nullptr &&
        chunks_.size() - head_ < queue_limit) {
        try {
            arm();
        } catch (...) {
            finish(code_of_current_exception());
        }
    }
}

std::size_t CompletionReceiver::read(std::span<std::byte> out) {
    std::size_t copied = 0;
    while (copied < out.size()) {
        const std::span<const std::byte> bytes = front();
        if (bytes.empty()) {
            break;
        }
        const std::size_t taken = std::min(bytes.size(), out.size() - copied);
        std::memcpy(out.data() + copied, bytes.data(), taken);
        copied += taken;
        consume(taken);
    }
    return copied;
}

void CompletionReceiver::on_receive(void* context, std::int32_t result, std::uint32_t flags) {
    auto& self = *static_cast<CompletionReceiver*>(context);
    const bool final = (flags & CompletionRing::more_flag) == 0;
    if (final) {
        self.receiving_ = 0;
    }
    if (result > 0 && CompletionRing::has_buffer(flags)) {
        self.chunks_.push_back({CompletionRing::buffer_id(flags), static_cast<std::uint32_t>(result), 0});
        self.queued_bytes_ += static_cast<std::size_t>(result);
        if (!final && self.chunks_.size() - self.head_ >= queue_limit) {
            self.ring_->cancel(self.receiving_);
        } else if (final && self.wanted_ && self.chunks_.size() - self.head_ < queue_limit) {
            // The kernel may end a multishot receive at will (its queue of
            // completions overflowed): the stream goes on.
            try {
                self.arm();
            } catch (...) {
                self.finish(code_of_current_exception());
            }
        }
        self.notify_(self.owner_);
        return;
    }
    if (result == 0) {
        self.finish({});
    } else if (result == -ENOBUFS) {
        // The ring ran dry; the bytes wait in the socket.
        if (self.wanted_ && self.ring_ != nullptr) {
            try {
                self.waiting_for_buffers_ =
                    self.ring_->wait_for_buffers({&CompletionReceiver::on_buffers, &self, self.fd_});
            } catch (...) {
                self.finish(code_of_current_exception());
            }
        }
        return;
    } else if (result == -ECANCELED) {
        // pause(), or a full queue: consume() or start() starts it again.
        if (self.wanted_ && self.chunks_.size() - self.head_ < queue_limit) {
            try {
                self.arm();
            } catch (...) {
                self.finish(code_of_current_exception());
            }
        }
        return;
    } else {
        self.finish({-result, std::system_category()});
    }
    if (self.ended_) {
        self.notify_(self.owner_);
    }
}

void CompletionReceiver::on_buffers(void* context, std::int32_t /*result*/, std::uint32_t /*flags*/) {
    auto& self = *static_cast<CompletionReceiver*>(context);
    self.waiting_for_buffers_ = 0;
    if (self.wanted_ && !self.ended_ && self.receiving_ == 0 && self.ring_ != nullptr &&
        self.chunks_.size() - self.head_ < queue_limit) {
        try {
            self.arm();
        } catch (...) {
            self.finish(code_of_current_exception());
            self.notify_(self.owner_);
        }
    }
}

void CompletionReceiver::finish(std::error_code error) noexcept {
    ended_ = true;
    error_ = error;
}

void CompletionReceiver::release(bool wait) noexcept {
    if (ring_ == nullptr) {
        return;
    }
    if (receiving_ != 0) {
        if (wait) {
            ring_->detach_and_wait(std::exchange(receiving_, 0));
        } else {
            ring_->detach(std::exchange(receiving_, 0));
        }
    }
    if (waiting_for_buffers_ != 0) {
        ring_->detach(std::exchange(waiting_for_buffers_, 0));
    }
    for (std::size_t index = head_; index < chunks_.size(); ++index) {
        ring_->recycle(chunks_[index].buffer);
    }
    chunks_.clear();
    head_ = 0;
    queued_bytes_ = 0;
    ring_ = nullptr;
}

void CompletionReceiver::forget_ring() noexcept {
    ring_ = nullptr;
    receiving_ = 0;
    waiting_for_buffers_ = 0;
    chunks_.clear();
    head_ = 0;
    queued_bytes_ = 0;
}

}  // namespace muxio::detail
