# `cmake --install` puts headers, the library, a CMake package
# (find_package(muxio) -> muxio::muxio) and a pkg-config file in the prefix.
include(CMakePackageConfigHelpers)

set(MUXIO_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/muxio")

install(TARGETS muxio EXPORT muxioTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/muxio"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  FILES_MATCHING PATTERN "*.hpp")
install(FILES "${PROJECT_BINARY_DIR}/include/muxio/config.hpp"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/muxio")
install(EXPORT muxioTargets
  NAMESPACE muxio::
  DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/muxioConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/muxioConfig.cmake"
  INSTALL_DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/muxioConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/muxioConfig.cmake" "${PROJECT_BINARY_DIR}/muxioConfigVersion.cmake"
  DESTINATION "${MUXIO_INSTALL_CMAKEDIR}")

set(MUXIO_PC_PRIVATE_REQUIRES "")
if(MUXIO_HAS_IO_URING)
  set(MUXIO_PC_PRIVATE_REQUIRES "liburing")
endif()
configure_file("${PROJECT_SOURCE_DIR}/cmake/muxio.pc.in" "${PROJECT_BINARY_DIR}/muxio.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/muxio.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
