# TLS over OpenSSL (include/muxio/tls.hpp, lib/tls/): a library of its own,
# muxio_tls (muxio::tls), so the core library never links OpenSSL. Sets
# MUXIO_HAS_TLS to 0 or 1 for the generated muxio/config.hpp.
#   MUXIO_TLS=AUTO  built when OpenSSL (>= 1.1.1) is found
#   MUXIO_TLS=ON    required: configure fails without OpenSSL
#   MUXIO_TLS=OFF   not built, OpenSSL not looked for
set(MUXIO_HAS_TLS 0)
if(NOT MUXIO_TLS STREQUAL "OFF")
  find_package(OpenSSL 1.1.1 QUIET COMPONENTS SSL Crypto)
  if(OpenSSL_FOUND)
    set(MUXIO_HAS_TLS 1)
  elseif(MUXIO_TLS STREQUAL "ON")
    message(FATAL_ERROR "MUXIO_TLS=ON but OpenSSL (>= 1.1.1, libssl and libcrypto with headers) was not found: "
                        "install libssl-dev (bash scripts/setup.sh), point OPENSSL_ROOT_DIR at it, "
                        "or configure with -DMUXIO_TLS=OFF")
  endif()
endif()
