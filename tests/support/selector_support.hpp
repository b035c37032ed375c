// Helpers for the selector suites: reading select()'s result by descriptor,
// and the allocation counter the no-allocation tests read.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/selector.hpp"

namespace muxio::test {

/// select()'s result as descriptor -> ready events. Fails the test when a
/// descriptor appears twice (the contract says at most once per select()).
template <class Data>
std::map<int, Events> ready_by_fd(std::span<const ReadyKey<Data>> ready) {
    std::map<int, Events> result;
    for (const ReadyKey<Data>& entry : ready) {
        const bool inserted = result.emplace(entry.key().fd, entry.events()).second;
        CHECK_MESSAGE(inserted, "fd ", entry.key().fd, " reported twice by one select()");
    }
    return result;
}

}  // namespace muxio::test

// Readable assertion messages: `READ|WRITE` and `{5: READ, 7: WRITE}`.
template <>
struct doctest::StringMaker<muxio::Events> {
    static doctest::String convert(muxio::Events events) { return fmt::format("{}", events).c_str(); }
};
template <>
struct doctest::StringMaker<std::map<int, muxio::Events>> {
    static doctest::String convert(const std::map<int, muxio::Events>& ready) {
        std::string text = "{";
        for (const auto& [fd, events] : ready) {
            text += fmt::format("{}{}: {}", text.size() > 1 ? ", " : "", fd, events);
        }
        return (text + "}").c_str();
    }
};
