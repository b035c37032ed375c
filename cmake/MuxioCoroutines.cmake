# Options for a target whose own code has coroutines (tests, apps). Nothing
# here is needed for correctness at any optimisation level: Task keeps a
# chain of awaits in constant stack without the compiler's help (see
# include/muxio/detail/resume_loop.hpp), so a user's build needs no flag.
#  - clang 14's -fsanitize=function cannot compile an inline or template
#    coroutine ("Cannot represent a difference across sections"); fixed in
#    clang 15.
function(muxio_set_coroutine_options target)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 15
     AND "undefined" IN_LIST MUXIO_SANITIZE)
    target_compile_options(${target} PRIVATE -fno-sanitize=function)
  endif()
endfunction()
