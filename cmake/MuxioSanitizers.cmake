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
  list(APPEND flags -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_compile_options(${target} PRIVATE ${flags})
  target_link_options(${target} PRIVATE ${flags})
endfunction()
