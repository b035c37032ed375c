// Registrations under misuse, on every selector: a Reactor made while
// allocations fail, descriptors closed or duplicated behind the reactor's
// back, and descriptor numbers reused without telling it.
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/allocation_failure.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;
using muxio::test::write_all;

TEST_CASE("an allocation failing while a reactor is made leaks no descriptor" *
          doctest::skip(!muxio::test::counts_allocations)) {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const std::size_t failures =
            muxio::test::fail_each_allocation_of([&] { return std::make_unique<Reactor>(with_selector(name)); });
        CHECK(failures >= 3);  // the reactor, its state, its selector at least
        Reactor reactor{with_selector(name)};
        bool ran = false;
        reactor.call_soon_threadsafe([&] { ran = true; });
        CHECK(reactor.run_once(1s) == 1);
        CHECK(ran);
    }
}
