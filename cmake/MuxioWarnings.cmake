# Warnings for muxio's own targets only: third-party headers (fmt, spdlog,
# doctest, liburing) come in as system includes and never break -Werror.
function(muxio_set_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
    -Woverloaded-virtual -Wconversion -Wsign-conversion -Wnull-dereference -Wdouble-promotion
    -Wimplicit-fallthrough)
  # g++ 12 at -O2 and above reports overlapping copies inside libstdc++'s own
  # std::string concatenation ("literal" + std::string) that cannot happen
  # (GCC bug 105651, fixed in 13): off there, on everywhere else.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12
     AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE -Wno-restrict)
  endif()
  if(MUXIO_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
