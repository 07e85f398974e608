# Installs the build tree into a scratch prefix, builds a consumer project
# against it and runs it against a freshly started daemon.
#   CONSUMER_SRC, CONSUMER (its executable), WORK_DIR, BUILD_DIR, TENSORSHMD, GENERATOR
#   EXTRA_FILES: more files the installed tree must hold (relative to the prefix)
#   WITHOUT_TORCH: afterwards, remove the torch component from the prefix (as a
#     package built without -DTENSORSHM_TORCH=ON lacks it) and expect
#     find_package(tensorshm COMPONENTS torch) to fail saying so, while
#     find_package(tensorshm) alone still succeeds.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
foreach(f bin/tensorshmd bin/tensorshmctl include/tensorshm/client.hpp include/tensorshm/segment_layout.h
          lib/libtensorshm.a lib/cmake/tensorshm/tensorshmConfig.cmake ${EXTRA_FILES})
  string(REPLACE "lib/" "lib*/" pattern "${f}")
  file(GLOB hit ${WORK_DIR}/prefix/${f} ${WORK_DIR}/prefix/${pattern})
  if(NOT hit)
    message(FATAL_ERROR "installed tree lacks ${f}")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${CONSUMER_SRC} -B ${WORK_DIR}/build -G ${GENERATOR}
                        -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the consumer with find_package(tensorshm) failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer failed")
endif()
string(RANDOM LENGTH 8 ALPHABET abcdefghijklmnopqrstuvwxyz tag)
set(sock ${WORK_DIR}/s.sock)
execute_process(COMMAND bash -c "
  '${TENSORSHMD}' --socket '${sock}' --instance install${tag} --pool-size 16M --log-level warning &
  d=$!
  for i in $(seq 100); do [ -S '${sock}' ] && break; sleep 0.05; done
  '${WORK_DIR}/build/${CONSUMER}' '${sock}'; rc=$?
  kill -TERM $d; wait $d || rc=1
  exit $rc"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer failed against a live daemon")
endif()

if(WITHOUT_TORCH)
  file(GLOB_RECURSE torch_files ${WORK_DIR}/prefix/*tensorshmTorchTargets*.cmake ${WORK_DIR}/prefix/*libtensorshm_torch.a)
  if(NOT torch_files)
    message(FATAL_ERROR "found no torch component files to remove in ${WORK_DIR}/prefix")
  endif()
  file(REMOVE ${torch_files})
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${CONSUMER_SRC} -B ${WORK_DIR}/build-without-torch -G ${GENERATOR}
                          -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  string(REGEX REPLACE "[ \t\r\n]+" " " flat "${out}")  # CMake wraps long messages
  string(FIND "${flat}" "was built without its torch component (tensorshm::torch): rebuild and reinstall it with -DTENSORSHM_TORCH=ON" at)
  if(rc EQUAL 0 OR at LESS 0)
    message(FATAL_ERROR "find_package(tensorshm COMPONENTS torch) on a package without torch: expected a failure "
                        "saying the package was built without its torch component, got (${rc}):\n${out}")
  endif()
  file(WRITE ${WORK_DIR}/plain/CMakeLists.txt "cmake_minimum_required(VERSION 3.25)\nproject(plain CXX)\n"
             "find_package(tensorshm REQUIRED)\nif(NOT TARGET tensorshm::tensorshm OR TARGET tensorshm::torch)\n"
             "  message(FATAL_ERROR \"wrong targets\")\nendif()\n")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${WORK_DIR}/plain -B ${WORK_DIR}/plain/build -G ${GENERATOR}
                          -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "find_package(tensorshm) without components failed on a package without torch:\n${out}")
  endif()
endif()
