// poll(2): portable, no descriptor limit; the kernel scans every entry.
#include <poll.h>

#include <cerrno>
#include <cstdint>

#include "muxio/detail/poller.hpp"
#include "selector/descriptor_table.hpp"
#include "selector/poll_mask.hpp"

namespace muxio::detail {
namespace {

class PollPoller final : public Poller {
public:
    std::string_view name() const noexcept override { return "poll"; }

    void add(int fd, Events events, std::uint64_t token) override {
        require_open_descriptor(fd, "poll: register");
        int& position = positions_.at_growing(fd);
        entries_.push_back({fd, to_poll_mask(events), 0});
        tokens_.push_back(token);
        position = static_cast<int>(entries_.size() - 1);
    }

    void modify(int fd, Events /*old_events*/, Events new_events, std::uint64_t token) override {
        const auto position = static_cast<std::size_t>(positions_[fd]);
        entries_[position].events = to_poll_mask(new_events);
        tokens_[position] = token;
    }

    std::error_code remove(int fd, Events /*events*/) noexcept override {
        const int position = positions_[fd];
        if (position < 0) {
            return {};
        }
        // Swap with the last entry so removal is O(1); poll(2) does not care
        // about order.
        const auto index = static_cast<std::size_t>(position);
        entries_[index] = entries_.back();
        tokens_[index] = tokens_.back();
        positions_.at_growing(entries_[index].fd) = position;
        entries_.pop_back();
        tokens_.pop_back();
        positions_.reset(fd);
        return {};
    }

    void close() noexcept override {
        entries_.clear();
        tokens_.clear();
        positions_.clear();
    }

    // No kernel object to share with a parent: closing is abandoning.
    void abandon() noexcept override { close(); }

protected:
    int wait_once(Timeout timeout, std::vector<PollEvent>& ready) override {
        const int count = ::poll(entries_.data(), entries_.size(), to_milliseconds(timeout));
        if (count < 0) {
            return errno;
        }
        for (std::size_t i = 0, left = static_cast<std::size_t>(count); i < entries_.size() && left > 0; ++i) {
            const short revents = entries_[i].revents;
            if (revents == 0) {
                continue;
            }
            --left;
            ready.push_back({tokens_[i], from_poll_mask(revents)});
        }
        return 0;
    }

private:
    std::vector<pollfd> entries_;
    std::vector<std::uint64_t> tokens_;   // parallel to entries_
    DescriptorTable<int> positions_{-1};  // fd -> index in entries_
};

}  // namespace

std::unique_ptr<Poller> make_poll_poller() {
    return std::make_unique<PollPoller>();
}

}  // namespace muxio::detail
