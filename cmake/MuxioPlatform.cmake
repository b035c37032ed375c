# Which kernel mechanisms this platform offers; each becomes MUXIO_HAS_<NAME>
# (0 or 1) in the generated muxio/config.hpp.
include(CheckCXXSymbolExists)

check_cxx_symbol_exists(epoll_create1 "sys/epoll.h" MUXIO_HAVE_EPOLL_CREATE1)
check_cxx_symbol_exists(kqueue "sys/types.h;sys/event.h;sys/time.h" MUXIO_HAVE_KQUEUE_CALL)
# illumos' <sys/devpoll.h> uses sigset_t without declaring it, so the header
# alone does not compile: include what it needs first.
check_cxx_symbol_exists(DP_POLL "sys/types.h;signal.h;sys/devpoll.h" MUXIO_HAVE_DEVPOLL_DP_POLL)

set(MUXIO_HAS_EPOLL 0)
set(MUXIO_HAS_IO_URING 0)
set(MUXIO_HAS_KQUEUE 0)
set(MUXIO_HAS_DEVPOLL 0)
if(MUXIO_HAVE_EPOLL_CREATE1)
  set(MUXIO_HAS_EPOLL 1)
endif()
if(MUXIO_HAVE_KQUEUE_CALL)
  set(MUXIO_HAS_KQUEUE 1)
endif()
if(MUXIO_HAVE_DEVPOLL_DP_POLL)
  set(MUXIO_HAS_DEVPOLL 1)
endif()

if(NOT MUXIO_IO_URING STREQUAL "OFF" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(LIBURING QUIET IMPORTED_TARGET liburing>=2.3)
  endif()
  if(LIBURING_FOUND)
    set(MUXIO_HAS_IO_URING 1)
  elseif(MUXIO_IO_URING STREQUAL "ON")
    message(FATAL_ERROR "MUXIO_IO_URING=ON but liburing (>= 2.3, via pkg-config) was not found")
  endif()
endif()
