# CTest helpers for tests that must run on real Debian kernels with kTLS, each in
# a QEMU VM (see README.md beside this file).
#
#   include(tests/vm/vm.cmake)
#   meshtls_add_vm_fixture()
#   meshtls_add_vm_test(NAME ktls_basic
#                       COMMAND $<TARGET_FILE:ktls_test> --gtest_brief=1
#                       [KERNELS 6.1 6.12 newest]   # default: all three
#                       [TIMEOUT 600])              # seconds the command may run in the guest
#
# gives the tests vm.6.1.ktls_basic, vm.6.12.ktls_basic and vm.newest.ktls_basic,
# plus vm.fetch_kernels, which the others require as a fixture (ctest -R picks it
# up on its own). All carry the labels "vm" and "privileged": `ctest -L vm` runs
# only them, `ctest -LE vm` everything else.
#
# COMMAND runs inside the guest exactly as given; generator expressions work.
# The guest sees the host's / read-only, so the build tree's binaries run there
# unchanged (see run-in-vm.sh for what is writable and what is passed through).

include_guard(GLOBAL)

if(CMAKE_VERSION VERSION_LESS 3.17)
  # CMAKE_CURRENT_FUNCTION_LIST_DIR below needs 3.17
  message(FATAL_ERROR "tests/vm/vm.cmake needs CMake 3.17 or newer")
endif()

function(meshtls_add_vm_fixture)
  get_property(done GLOBAL PROPERTY _MESHTLS_VM_FIXTURE_ADDED)
  if(done)
    return()
  endif()
  set_property(GLOBAL PROPERTY _MESHTLS_VM_FIXTURE_ADDED TRUE)
  add_test(NAME vm.fetch_kernels
           COMMAND ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/fetch-kernels.sh)
  # The first run downloads about 300 MB of kernel packages; later runs take milliseconds.
  set_tests_properties(vm.fetch_kernels PROPERTIES
    FIXTURES_SETUP vm_kernels
    LABELS "vm;privileged"
    TIMEOUT 1800)
endfunction()

function(meshtls_add_vm_test)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "NAME;TIMEOUT" "COMMAND;KERNELS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "meshtls_add_vm_test: unexpected arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(arg_KEYWORDS_MISSING_VALUES)
    message(FATAL_ERROR "meshtls_add_vm_test: no value for ${arg_KEYWORDS_MISSING_VALUES}")
  endif()
  if(NOT arg_NAME)
    message(FATAL_ERROR "meshtls_add_vm_test: NAME is required")
  endif()
  if(NOT arg_COMMAND)
    message(FATAL_ERROR "meshtls_add_vm_test(${arg_NAME}): COMMAND is required")
  endif()
  if(NOT DEFINED arg_KERNELS)
    set(arg_KERNELS 6.1 6.12 newest)
  endif()
  if(NOT DEFINED arg_TIMEOUT)
    set(arg_TIMEOUT 600)
  endif()
  if(NOT arg_TIMEOUT MATCHES "^[1-9][0-9]*$")
    message(FATAL_ERROR "meshtls_add_vm_test(${arg_NAME}): TIMEOUT must be a whole number of seconds")
  endif()
  # TIMEOUT is run-in-vm.sh's --timeout, the time the command may run in the
  # guest. CTest's own TIMEOUT must be longer, so that run-in-vm.sh reports a
  # hang itself (exit 124, with a message) instead of being killed by CTest:
  # beyond the command's time it may spend two boot attempts
  # (MESHTLS_VM_BOOT_TIMEOUT, 180 s each at most), a 20 s power-off grace and a
  # little on setup.
  math(EXPR ctest_timeout "${arg_TIMEOUT} + 420")

  foreach(label IN LISTS arg_KERNELS)
    if(NOT label MATCHES "^(6\\.1|6\\.12|newest)$")
      message(FATAL_ERROR "meshtls_add_vm_test(${arg_NAME}): unknown kernel '${label}' (use 6.1, 6.12 or newest)")
    endif()
    set(test vm.${label}.${arg_NAME})
    add_test(NAME ${test}
             COMMAND ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/run-in-vm.sh
                     --kernel ${label} --timeout ${arg_TIMEOUT} -- ${arg_COMMAND})
    set_tests_properties(${test} PROPERTIES
      LABELS "vm;privileged"
      # TCG is CPU-heavy: one VM at a time (CI machines have 2 cores)
      RESOURCE_LOCK vm
      FIXTURES_REQUIRED vm_kernels
      TIMEOUT ${ctest_timeout})
  endforeach()
endfunction()
