# Regenerates the FlatBuffers header from the schema into OUT_DIR and fails
# unless it equals the committed one (protocol/include/tensorshm).
# Run by CTest: cmake -DFLATC=... -DSCHEMA=... -DCOMMITTED=... -DOUT_DIR=... -P this file.
foreach(var FLATC SCHEMA COMMITTED OUT_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_generated_header.cmake: ${var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${OUT_DIR}")
file(MAKE_DIRECTORY "${OUT_DIR}")
execute_process(
  COMMAND "${FLATC}" --cpp --gen-object-api --scoped-enums --cpp-std c++17 -o "${OUT_DIR}" "${SCHEMA}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "flatc failed (${rc}) on ${SCHEMA}")
endif()

get_filename_component(name "${COMMITTED}" NAME)
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${OUT_DIR}/${name}" "${COMMITTED}"
  RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  message(FATAL_ERROR "${COMMITTED} is stale: it differs from what flatc makes of ${SCHEMA}. "
                      "Regenerate it: cmake --build <build-dir> --target protocol-regen")
endif()
message(STATUS "${name} is current")
