// Construction under allocation failure: fail the 1st, 2nd, ... allocation
// of making an object and check that each failure comes out as
// std::bad_alloc and leaves no descriptor behind.
#pragma once

#include <cstddef>
#include <exception>
#include <new>
#include <string>

#include <doctest/doctest.h>

#include "support/support.hpp"

namespace muxio::test {

/// Runs `construct` (it makes an object and returns it, e.g. as a
/// unique_ptr) with its 1st, 2nd, ... allocation failing, until a run makes
/// the object without meeting the armed failure. After each run the object
/// is destroyed and the open descriptors are counted: none may be left
/// behind; a run that met the failure must have thrown std::bad_alloc.
/// Returns how many runs failed. Needs counts_allocations.
template <class Construct>
std::size_t fail_each_allocation_of(Construct construct, std::size_t limit = 10'000) {
    const int before = count_open_fds();
    for (std::size_t nth = 1; nth <= limit; ++nth) {
        CAPTURE(nth);
        bool threw_bad_alloc = false;
        std::string other_error;
        bool failed = false;
        {
            decltype(construct()) object{};
            {
                const FailNthAllocation failure{nth};
                try {
                    object = construct();
                } catch (const std::bad_alloc&) {
                    threw_bad_alloc = true;
                } catch (const std::exception& error) {
                    other_error = error.what();
                }
                failed = failure.failed();
            }
            CHECK_MESSAGE(other_error.empty(), "an allocation failure came out as: ", other_error);
        }
        CHECK_MESSAGE(count_open_fds() == before, "descriptors leaked");
        if (!failed) {
            CHECK_FALSE(threw_bad_alloc);
            return nth - 1;
        }
        // A failure that was swallowed (the object was made anyway) is fine;
        // one that escaped must be std::bad_alloc.
        CHECK((threw_bad_alloc || other_error.empty()));
    }
    FAIL("construction still allocating after ", limit, " allocations");
    return limit;
}

}  // namespace muxio::test
