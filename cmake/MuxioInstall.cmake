# `cmake --install` puts headers, the library, a CMake package
# (find_package(muxio) -> muxio::muxio) and a pkg-config file in the prefix.
include(CMakePackageConfigHelpers)

set(MUXIO_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/muxio")

install(TARGETS muxio EXPORT muxioTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
# muxio/tls.hpp only with the library behind it.
set(muxio_header_excludes "")
if(NOT MUXIO_HAS_TLS)
  set(muxio_header_excludes PATTERN "tls.hpp" EXCLUDE)
endif()
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/muxio"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  FILES_MATCHING PATTERN "*.hpp" ${muxio_header_excludes})
install(FILES "${PROJECT_BINARY_DIR}/include/muxio/config.hpp"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/muxio")
install(EXPORT muxioTargets
  NAMESPACE muxio::
  DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")

# muxio::tls, in an export set of its own: muxioConfig.cmake loads it only
# when OpenSSL is found, so that a consumer of the core library alone never
# needs OpenSSL (find_package(muxio COMPONENTS tls) asks for it).
set(MUXIO_CONFIG_HAS_TLS ${MUXIO_HAS_TLS})
set(MUXIO_CONFIG_TLS_NEEDS_OPENSSL 0)
if(MUXIO_HAS_TLS)
  install(TARGETS muxio_tls EXPORT muxioTlsTargets
    ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
    LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
    RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
  install(EXPORT muxioTlsTargets
    NAMESPACE muxio::
    DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")
  # A static libmuxio_tls carries no record of OpenSSL: its exported target
  # names OpenSSL::SSL, which the package must then find.
  get_target_property(muxio_tls_library_type muxio_tls TYPE)
  if(muxio_tls_library_type STREQUAL "STATIC_LIBRARY")
    set(MUXIO_CONFIG_TLS_NEEDS_OPENSSL 1)
  endif()
endif()

# A static libmuxio carries no record of liburing: whoever links it must
# link liburing too. The CMake package then looks liburing up (the exported
# target names PkgConfig::LIBURING), and muxio.pc lists it in Requires rather
# than Requires.private so a plain `pkg-config --libs muxio` links.
get_target_property(muxio_library_type muxio TYPE)
set(MUXIO_CONFIG_FIND_LIBURING 0)
set(MUXIO_PC_REQUIRES "fmt spdlog")
set(MUXIO_PC_PRIVATE_REQUIRES "")
if(MUXIO_HAS_IO_URING)
  if(muxio_library_type STREQUAL "STATIC_LIBRARY")
    set(MUXIO_CONFIG_FIND_LIBURING 1)
    string(APPEND MUXIO_PC_REQUIRES " liburing")
  else()
    set(MUXIO_PC_PRIVATE_REQUIRES "liburing")
  endif()
endif()

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/muxioConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/muxioConfig.cmake"
  INSTALL_DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/muxioConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/muxioConfig.cmake" "${PROJECT_BINARY_DIR}/muxioConfigVersion.cmake"
  DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")

# muxio.pc finds the prefix from its own location (${pcfiledir}), so the
# install can be moved, and `cmake --install --prefix` elsewhere than
# CMAKE_INSTALL_PREFIX works (the install test relies on it).
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(MUXIO_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(MUXIO_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(MUXIO_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH pc_to_prefix "/muxio-prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/muxio-prefix")
  string(REGEX REPLACE "/$" "" pc_to_prefix "${pc_to_prefix}")
  set(MUXIO_PC_PREFIX "\${pcfiledir}/${pc_to_prefix}")
  set(MUXIO_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(MUXIO_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file("${PROJECT_SOURCE_DIR}/cmake/muxio.pc.in" "${PROJECT_BINARY_DIR}/muxio.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/muxio.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
# muxio-tls.pc: `pkg-config --libs muxio-tls` links muxio::tls, muxio and OpenSSL.
if(MUXIO_HAS_TLS)
  if(muxio_tls_library_type STREQUAL "STATIC_LIBRARY")
    set(MUXIO_TLS_PC_REQUIRES "muxio libssl libcrypto")
    set(MUXIO_TLS_PC_PRIVATE_REQUIRES "")
  else()
    set(MUXIO_TLS_PC_REQUIRES "muxio")
    set(MUXIO_TLS_PC_PRIVATE_REQUIRES "libssl libcrypto")
  endif()
  configure_file("${PROJECT_SOURCE_DIR}/cmake/muxio-tls.pc.in" "${PROJECT_BINARY_DIR}/muxio-tls.pc" @ONLY)
  install(FILES "${PROJECT_BINARY_DIR}/muxio-tls.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
endif()
