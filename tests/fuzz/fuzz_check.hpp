// How a fuzz harness reports a finding: a message naming what disagreed,
// then abort(), which libFuzzer records as a crash with its input. Unlike
// assert(), it stays in the optimised fuzz build.
#pragma once

#include <cstdio>
#include <cstdlib>

#define MUXIO_FUZZ_CHECK(condition)                                                                 \
    do {                                                                                            \
        if (!(condition)) {                                                                         \
            std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #condition); \
            std::abort();                                                                           \
        }                                                                                           \
    } while (false)
