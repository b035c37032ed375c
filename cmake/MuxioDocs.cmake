# The API reference: `cmake --build --preset dev --target docs` runs Doxygen
# over the public headers into <build>/docs/html. The target exists only when
# Doxygen is found; the library never needs it. Any Doxygen warning, an
# undocumented public name above all, fails the target (cmake/Doxyfile.in).
find_package(Doxygen QUIET)

if(DOXYGEN_FOUND)
  set(MUXIO_DOCS_DIR "${PROJECT_BINARY_DIR}/docs")
  configure_file("${PROJECT_SOURCE_DIR}/cmake/Doxyfile.in" "${MUXIO_DOCS_DIR}/Doxyfile" @ONLY)
  # The html folder is made anew each time, so no page of a name since removed stays.
  add_custom_target(docs
    COMMAND "${CMAKE_COMMAND}" -E rm -rf "${MUXIO_DOCS_DIR}/html"
    COMMAND Doxygen::doxygen "${MUXIO_DOCS_DIR}/Doxyfile"
    WORKING_DIRECTORY "${MUXIO_DOCS_DIR}"
    COMMENT "Doxygen: API reference in ${MUXIO_DOCS_DIR}/html"
    VERBATIM)
endif()
