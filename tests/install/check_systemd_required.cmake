# A build that installs the systemd units needs libsystemd (daemon/CMakeLists.txt):
# configuring one where it cannot be found (pkg-config disabled, as
# tests/gpu/prepare.sh does) must fail with a message that names what is
# missing and both fixes; the same configure without the units must succeed.
#   SOURCE_DIR, WORK_DIR, GENERATOR
file(REMOVE_RECURSE ${WORK_DIR})
set(common -S ${SOURCE_DIR} -G ${GENERATOR} -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON -DTENSORSHM_CUDA=OFF
    -DTENSORSHM_TESTS=OFF -DTENSORSHM_BENCH=OFF -DTENSORSHM_TORCH=OFF -DTENSORSHM_PYTHON=OFF -DTENSORSHM_DAEMON=ON)
execute_process(COMMAND ${CMAKE_COMMAND} ${common} -B ${WORK_DIR}/with-units
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
# CMake wraps long messages: compare with the whitespace folded.
string(REGEX REPLACE "[ \t\r\n]+" " " flat "${out}")
foreach(expected "tensorshmd needs libsystemd when the systemd units are installed"
                 "pkg-config was not found" "apt-get install libsystemd-dev" "-DTENSORSHM_INSTALL_SYSTEMD=OFF")
  string(FIND "${flat}" "${expected}" at)
  if(at LESS 0)
    message(FATAL_ERROR "configure without libsystemd: no '${expected}' in its output (exit ${rc}):\n${out}")
  endif()
endforeach()
if(rc EQUAL 0)
  message(FATAL_ERROR "configure without libsystemd but with the units succeeded:\n${out}")
endif()
if(EXISTS ${WORK_DIR}/with-units/CPackConfig.cmake)
  message(FATAL_ERROR "the failed configure still wrote CPackConfig.cmake: cpack could make a .deb from it")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} ${common} -B ${WORK_DIR}/without-units -DTENSORSHM_INSTALL_SYSTEMD=OFF
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configure without libsystemd and without the units failed (${rc}):\n${out}")
endif()
message(STATUS "without libsystemd: refused with the units, configured without them")
