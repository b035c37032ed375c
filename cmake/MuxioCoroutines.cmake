# Options for a target whose own code has coroutines (tests, apps):
#  - g++ makes symmetric transfer a tail call only with sibling-call
#    optimisation, which -O0 turns off: without it a chain of synchronous
#    completions (a read loop that never suspends, the deep-chain tests)
#    grows the stack;
#  - clang 14's -fsanitize=function cannot compile an inline or template
#    coroutine ("Cannot represent a difference across sections"); fixed in
#    clang 15.
function(muxio_set_coroutine_options target)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE -foptimize-sibling-calls)
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 15
     AND "undefined" IN_LIST MUXIO_SANITIZE)
    target_compile_options(${target} PRIVATE -fno-sanitize=function)
  endif()
endfunction()
