#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/events.hpp"

using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::EVENT_WRITE;
using muxio::Events;

TEST_CASE("events: read and write are the only valid bits") {
    CHECK(EVENT_READ.bits() == 1);
    CHECK(EVENT_WRITE.bits() == 2);
    CHECK(EVENT_READ.is_valid());
    CHECK(EVENT_WRITE.is_valid());
    CHECK(EVENT_READ_WRITE.is_valid());
    CHECK_FALSE(Events{}.is_valid());
    CHECK_FALSE(Events::from_bits(4).is_valid());
    CHECK_FALSE((EVENT_READ | Events::from_bits(8)).is_valid());
}

TEST_CASE("events: set operations") {
    const Events both = EVENT_READ | EVENT_WRITE;
    CHECK(both.contains(EVENT_READ));
    CHECK(both.contains(EVENT_WRITE));
    CHECK_FALSE(EVENT_READ.contains(EVENT_WRITE));
    CHECK((both & EVENT_WRITE) == EVENT_WRITE);
    CHECK((both & ~EVENT_READ) == EVENT_WRITE);
    CHECK_FALSE(static_cast<bool>(EVENT_READ & EVENT_WRITE));
    Events accumulated;
    CHECK(accumulated.empty());
    accumulated |= EVENT_WRITE;
    CHECK(accumulated == EVENT_WRITE);
}

TEST_CASE("events: format names the bits") {
    CHECK(fmt::format("{}", EVENT_READ) == "READ");
    CHECK(fmt::format("{}", EVENT_WRITE) == "WRITE");
    CHECK(fmt::format("{}", EVENT_READ_WRITE) == "READ|WRITE");
    CHECK(fmt::format("{}", Events{}) == "0");
    CHECK(fmt::format("{}", EVENT_READ | Events::from_bits(8)) == "READ|0x8");
}
