# Installs the build tree into a scratch prefix, builds the consumer project
# against it and runs it against a freshly started daemon.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
foreach(f bin/tensorshmd bin/tensorshmctl include/tensorshm/client.hpp include/tensorshm/segment_layout.h
          lib/libtensorshm.a lib/cmake/tensorshm/tensorshmConfig.cmake)
  file(GLOB hit ${WORK_DIR}/prefix/${f} ${WORK_DIR}/prefix/lib*/*/${f})
  string(REPLACE "lib/" "lib*/" pattern "${f}")
  file(GLOB hit2 ${WORK_DIR}/prefix/${pattern})
  if(NOT hit AND NOT hit2)
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
  '${WORK_DIR}/build/consumer' '${sock}'; rc=$?
  kill -TERM $d; wait $d || rc=1
  exit $rc"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer failed against a live daemon")
endif()
