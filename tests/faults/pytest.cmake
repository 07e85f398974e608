# tshm_add_pytest_files(PREFIX DIR FILE...): one CTest test per pytest file,
# named PREFIX_<file without test_>, run by the project's Python (.venv) with
# the built daemon, tensorshmctl and tshm_fault_peer in its environment.
# Figures the tests record go to <build>/reliability/figures.jsonl.
# Nothing is registered when that Python or its pytest is missing.
set(TSHM_FAULTS_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH "Python with pytest for the fault and security tests")
if(EXISTS "${TSHM_FAULTS_PYTHON}" AND NOT DEFINED TSHM_HAVE_PYTEST)
  execute_process(COMMAND ${TSHM_FAULTS_PYTHON} -c "import pytest" RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
  if(_rc EQUAL 0)
    set(TSHM_HAVE_PYTEST ON CACHE INTERNAL "")
  endif()
endif()

function(tshm_add_pytest_files prefix dir)
  if(NOT TSHM_HAVE_PYTEST)
    message(STATUS "tensorshm ${prefix} tests: no ${TSHM_FAULTS_PYTHON} with pytest, not registered")
    return()
  endif()
  foreach(file ${ARGN})
    get_filename_component(stem ${file} NAME_WE)
    string(REGEX REPLACE "^test_" "" stem ${stem})
    add_test(NAME ${prefix}_${stem}
      COMMAND ${TSHM_FAULTS_PYTHON} -m pytest -q -rs -p no:cacheprovider ${dir}/${file})
    set_tests_properties(${prefix}_${stem} PROPERTIES
      TIMEOUT 600
      SKIP_RETURN_CODE 77
      LABELS ${prefix}
      ENVIRONMENT "TENSORSHMD=$<TARGET_FILE:tensorshmd>;TENSORSHMCTL=$<TARGET_FILE:tensorshmctl>;TSHM_FAULT_PEER=$<TARGET_FILE:tshm_fault_peer>;TSHM_FIGURES=${CMAKE_BINARY_DIR}/reliability/figures.jsonl")
  endforeach()
endfunction()
