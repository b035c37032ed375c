# cmake -P script behind the CTest test "install: ..." (see CMakeLists.txt):
#  1. cmake --install the muxio build tree into PREFIX (emptied first);
#  2. configure, build and run consumer/ with CMAKE_PREFIX_PATH=PREFIX,
#     checking that find_package(muxio) found the copy in PREFIX;
#  3. compile consumer/main.cpp with `pkg-config --cflags --libs muxio`
#     (PKG_CONFIG_PATH=PREFIX/LIBDIR/pkgconfig) and run that too;
#  4. with TLS=1 (muxio::tls built), the same for consumer/tls_main.cpp:
#     find_package(muxio COMPONENTS tls) and muxio-tls.pc.
# The consumer is built as a user's debug build is, whatever CONFIG muxio
# was built in: CMake's Debug (no -O, so -O0) and, through pkg-config,
# -O0 -g, with no flag but what the package gives. Its coroutine chains
# must run in constant stack there.
cmake_minimum_required(VERSION 3.25)

foreach(variable IN ITEMS MUXIO_BINARY_DIR PREFIX LIBDIR CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR GENERATOR
                          CXX_COMPILER)
  if(NOT DEFINED ${variable} OR "${${variable}}" STREQUAL "")
    message(FATAL_ERROR "run_install_test.cmake: -D${variable}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Debug)
endif()

function(run description)
  string(REPLACE ";" " " command_line "${ARGN}")
  message(STATUS "${description}: ${command_line}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${description} failed (${result}): ${command_line}")
  endif()
endfunction()

file(REMOVE_RECURSE "${PREFIX}" "${CONSUMER_BINARY_DIR}")

run("install" "${CMAKE_COMMAND}" --install "${MUXIO_BINARY_DIR}" --prefix "${PREFIX}" --config "${CONFIG}")

# find_package(muxio) through CMAKE_PREFIX_PATH, and nowhere else.
set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}"
  -G "${GENERATOR}"
  -DCMAKE_BUILD_TYPE=Debug
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCMAKE_PREFIX_PATH=${PREFIX}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_FLAGS)
  list(APPEND configure_args "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
endif()
if(TLS)
  list(APPEND configure_args -DMUXIO_EXPECT_TLS=ON)
endif()
run("configure consumer" "${CMAKE_COMMAND}" ${configure_args})
file(STRINGS "${CONSUMER_BINARY_DIR}/CMakeCache.txt" found_dir REGEX "^muxio_DIR:")
string(REGEX REPLACE "^muxio_DIR:[A-Z]+=" "" found_dir "${found_dir}")
file(REAL_PATH "${PREFIX}" real_prefix)
file(REAL_PATH "${found_dir}" found_dir)
string(FIND "${found_dir}/" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "find_package(muxio) found ${found_dir}, not the package installed in ${PREFIX}")
endif()
run("build consumer" "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}")
run("run consumer (find_package)" "${CONSUMER_BINARY_DIR}/muxio_consumer")
if(TLS)
  run("run TLS consumer (find_package, component tls)" "${CONSUMER_BINARY_DIR}/muxio_tls_consumer")
endif()

# The same program through muxio.pc.
if(NOT PKG_CONFIG)
  message(FATAL_ERROR "pkg-config was not found at configure time; it is needed to check muxio.pc")
endif()
set(pc_path "${PREFIX}/${LIBDIR}/pkgconfig")
if(DEFINED ENV{PKG_CONFIG_PATH} AND NOT "$ENV{PKG_CONFIG_PATH}" STREQUAL "")
  string(APPEND pc_path ":$ENV{PKG_CONFIG_PATH}")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" -E env "PKG_CONFIG_PATH=${pc_path}" "${PKG_CONFIG}" --cflags --libs muxio
  RESULT_VARIABLE result
  OUTPUT_VARIABLE pc_flags
  ERROR_VARIABLE pc_error
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs muxio failed (${result}): ${pc_error}")
endif()
message(STATUS "pkg-config --cflags --libs muxio: ${pc_flags}")
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
separate_arguments(extra_flags UNIX_COMMAND "${CXX_FLAGS}")
set(pc_program "${CONSUMER_BINARY_DIR}/muxio_consumer_pkgconfig")
run("compile consumer (pkg-config)" "${CXX_COMPILER}" -std=c++20 -O0 -g ${extra_flags} "${CONSUMER_SOURCE_DIR}/main.cpp"
  ${pc_flags} -o "${pc_program}")
# For a shared libmuxio: the pkg-config build has no run path into PREFIX.
run("run consumer (pkg-config)" "${CMAKE_COMMAND}" -E env "LD_LIBRARY_PATH=${PREFIX}/${LIBDIR}" "${pc_program}")

# muxio::tls through muxio-tls.pc.
if(TLS)
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env "PKG_CONFIG_PATH=${pc_path}" "${PKG_CONFIG}" --cflags --libs muxio-tls
    RESULT_VARIABLE result
    OUTPUT_VARIABLE tls_pc_flags
    ERROR_VARIABLE pc_error
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "pkg-config --cflags --libs muxio-tls failed (${result}): ${pc_error}")
  endif()
  message(STATUS "pkg-config --cflags --libs muxio-tls: ${tls_pc_flags}")
  separate_arguments(tls_pc_flags UNIX_COMMAND "${tls_pc_flags}")
  set(tls_pc_program "${CONSUMER_BINARY_DIR}/muxio_tls_consumer_pkgconfig")
  run("compile TLS consumer (pkg-config)" "${CXX_COMPILER}" -std=c++20 -O0 -g ${extra_flags}
    "${CONSUMER_SOURCE_DIR}/tls_main.cpp" ${tls_pc_flags} -o "${tls_pc_program}")
  run("run TLS consumer (pkg-config)" "${CMAKE_COMMAND}" -E env "LD_LIBRARY_PATH=${PREFIX}/${LIBDIR}" "${tls_pc_program}")
endif()
