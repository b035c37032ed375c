// FifoQueue (apps/http/fifo_queue.hpp): order, the reset of popped
// elements, reuse of its memory, and the bound on a queue that never empties.
#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>

#include <doctest/doctest.h>

#include "fifo_queue.hpp"

using muxio::http::FifoQueue;

TEST_CASE("FifoQueue: first in, first out") {
    FifoQueue<std::string> queue;
    CHECK(queue.empty());
    queue.emplace_back("a");
    queue.push_back("b");
    queue.emplace_back(3, 'c');
    REQUIRE(queue.size() == 3);
    CHECK(queue.front() == "a");
    CHECK(queue.back() == "ccc");
    queue.pop_front();
    CHECK(queue.front() == "b");
    queue.back() += "!";
    queue.pop_front();
    CHECK(queue.front() == "ccc!");
    queue.pop_front();
    CHECK(queue.empty());
    CHECK(queue.size() == 0);
}

TEST_CASE("FifoQueue: a popped element is released at once") {
    FifoQueue<std::shared_ptr<int>> queue;
    const auto held = std::make_shared<int>(7);
    queue.push_back(std::shared_ptr<int>{held});
    queue.push_back(std::make_shared<int>(8));
    REQUIRE(held.use_count() == 2);
    queue.pop_front();
    CHECK(held.use_count() == 1);
    CHECK(*queue.front() == 8);
}

TEST_CASE("FifoQueue: one element at a time reuses the same slot") {
    FifoQueue<std::string> queue;
    for (int i = 0; i < 1000; ++i) {
        queue.emplace_back(std::to_string(i));
        CHECK(queue.footprint() == 1);
        CHECK(queue.front() == std::to_string(i));
        queue.pop_front();
        CHECK(queue.footprint() == 0);
    }
}

TEST_CASE("FifoQueue: a queue that never empties stays bounded and in order") {
    FifoQueue<int> queue;
    queue.push_back(0);
    queue.push_back(1);
    int next_in = 2;
    int next_out = 0;
    std::size_t largest = 0;
    for (int i = 0; i < 10000; ++i) {
        queue.push_back(int{next_in++});
        REQUIRE(queue.front() == next_out);
        queue.pop_front();
        ++next_out;
        CHECK(queue.size() == 2);
        largest = std::max(largest, queue.footprint());
    }
    CHECK(largest <= 34);  // two live, the rest reclaimed once 16 or more and half
}
