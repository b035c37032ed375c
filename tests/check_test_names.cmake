# Fails when a doctest case name holds a ';'. doctest_discover_tests makes a
# CTest test per case from the names the binary lists, and CMake splits a
# name at ';' into several tests whose filters match no case, so such a case
# would "pass" without ever running.
#
#   cmake -DTEST_BINARY=path -P check_test_names.cmake
execute_process(COMMAND "${TEST_BINARY}" --list-test-cases --no-version
                OUTPUT_VARIABLE listing RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "${TEST_BINARY} --list-test-cases failed (${status})")
endif()
string(REPLACE ";" "<SEMICOLON>" listing "${listing}")
string(REPLACE "\n" ";" lines "${listing}")
set(bad "")
foreach(line IN LISTS lines)
  if(line MATCHES "<SEMICOLON>")
    string(REPLACE "<SEMICOLON>" ";" line "${line}")
    string(APPEND bad "\n  ${line}")
  endif()
endforeach()
if(bad)
  message(FATAL_ERROR "test case names with ';' never run under CTest; rename them:${bad}")
endif()
