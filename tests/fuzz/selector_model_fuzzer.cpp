// libFuzzer harness: the differential selector fuzzer. Every input is a
// sequence of selector calls and descriptor operations applied to each
// backend compiled here and to a reference model of the documented
// contract; selector_model.hpp says what is compared and what the model
// allows.
#include <cstddef>
#include <cstdint>

#include "selector_model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    muxio::fuzz::selector_model::run_input(data, size);
    return 0;
}
