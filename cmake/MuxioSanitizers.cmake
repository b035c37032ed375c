# Sanitizers are applied per target (muxio's own), never globally, so a
# sanitizer build does not instrument or break third-party code.
function(muxio_set_sanitizers target)
  if(NOT MUXIO_SANITIZE)
    return()
  endif()
  set(flags "")
  foreach(sanitizer IN LISTS MUXIO_SANITIZE)
    list(APPEND flags "-fsanitize=${sanitizer}")
  endforeach()
  # clang 14's -fsanitize=function cannot compile a coroutine defined in a
  # header or a template ("Cannot represent a difference across sections");
  # fixed in clang 15.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 15
     AND "undefined" IN_LIST MUXIO_SANITIZE)
    list(APPEND flags -fno-sanitize=function)
  endif()
  list(APPEND flags -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_compile_options(${target} PRIVATE ${flags})
  target_link_options(${target} PRIVATE ${flags})
endfunction()
