# tests/consumer/consumer_test.cmake: cmake --install into a fresh prefix, then build and run
# tests/consumer against it (find_package), and again with add_subdirectory. Run by CTest with -P.
# Inputs: SOURCE_DIR, BUILD_DIR (the cgrpo build tree), WORK_DIR, CXX_COMPILER, BUILD_TYPE, CUDA (ON/OFF),
# TORCH (ON/OFF: LibTorch was found) and Torch_DIR.
foreach(v SOURCE_DIR BUILD_DIR WORK_DIR CXX_COMPILER BUILD_TYPE)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "consumer_test: -D${v}=... is required")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "consumer_test: `${cmd}` failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

# Configure must FAIL (a consumer that asks for what is not there is told so at configure time).
function(expect_configure_failure name)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/${name} ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "consumer_test: configuring ${name} should have failed:\n${out}\n${err}")
  endif()
  message(STATUS "consumer_test: ${name} refused as it should be")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
set(common -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=${BUILD_TYPE})

# 1. Install the headers and the package config.
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f include/cgrpo/cgrpo.hpp include/cgrpo/parallel/vocab_parallel.hpp include/cgrpo/cuda/cgrpo_cuda.cuh
          include/cgrpo/torch/policy_loss.hpp include/cgrpo/torch/tensor_checks.hpp
          lib/cmake/cgrpo/cgrpoConfig.cmake lib/cmake/cgrpo/cgrpoConfigVersion.cmake
          lib/cmake/cgrpo/cgrpoTorchTargets.cmake)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "consumer_test: ${f} was not installed")
  endif()
endforeach()

# 2. find_package(cgrpo CONFIG REQUIRED COMPONENTS cpu), with CUDA and LibTorch made unfindable: still configures.
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/package ${common}
    -DCMAKE_PREFIX_PATH=${prefix} -DCGRPO_CONSUMER_COMPONENTS=cpu -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=TRUE
    -DCMAKE_DISABLE_FIND_PACKAGE_Torch=TRUE)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/package)
run(${WORK_DIR}/package/consumer)
message(STATUS "package (cpu): ${last_output}")

# 3. The same program through add_subdirectory of the source tree (with LibTorch: the wrapper's
#    program too, the consumer finding Torch before add_subdirectory as docs/embedding.md says).
set(torch_args)
if(TORCH)
  set(torch_args -DCGRPO_CONSUMER_TORCH=ON -DTorch_DIR=${Torch_DIR})
endif()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/subdirectory ${common}
    -DCGRPO_CONSUMER_MODE=subdirectory -DCGRPO_SOURCE_DIR=${SOURCE_DIR} -DCGRPO_ENABLE_CUDA=OFF ${torch_args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/subdirectory)
run(${WORK_DIR}/subdirectory/consumer)
message(STATUS "add_subdirectory: ${last_output}")
if(TORCH)
  run(${WORK_DIR}/subdirectory/consumer_torch)
  message(STATUS "add_subdirectory (torch): ${last_output}")
endif()

# 4. What must be refused: an unknown component; the cuda component without a CUDA toolkit; the
#    torch component without LibTorch.
expect_configure_failure(unknown_component ${common} -DCMAKE_PREFIX_PATH=${prefix}
                         -DCGRPO_CONSUMER_COMPONENTS=cpu,eigen_blas)
expect_configure_failure(cuda_without_toolkit ${common} -DCMAKE_PREFIX_PATH=${prefix}
                         -DCGRPO_CONSUMER_COMPONENTS=cpu,cuda -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=TRUE)
expect_configure_failure(torch_without_libtorch ${common} -DCMAKE_PREFIX_PATH=${prefix}
                         -DCGRPO_CONSUMER_COMPONENTS=cpu,torch -DCMAKE_DISABLE_FIND_PACKAGE_Torch=TRUE)

# 5. With LibTorch: find_package(cgrpo CONFIG REQUIRED COMPONENTS cpu torch) against the installed
#    tree builds and runs the wrapper's program.
if(TORCH)
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/package_torch ${common}
      -DCMAKE_PREFIX_PATH=${prefix} -DCGRPO_CONSUMER_COMPONENTS=cpu,torch -DCGRPO_CONSUMER_TORCH=ON
      -DTorch_DIR=${Torch_DIR})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/package_torch)
  run(${WORK_DIR}/package_torch/consumer_torch)
  message(STATUS "package (torch): ${last_output}")
else()
  message(STATUS "consumer_test: LibTorch not found; the torch component's consumer is skipped (apt-get install libtorch-dev)")
endif()

# 6. With nvcc: the cuda component is found and a .cu file compiles against the installed kernels.
if(CUDA)
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/package_cuda ${common}
      -DCMAKE_PREFIX_PATH=${prefix} -DCGRPO_CONSUMER_COMPONENTS=cpu,cuda -DCGRPO_CONSUMER_CUDA=ON
      -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/package_cuda)
  run(${WORK_DIR}/package_cuda/consumer_cuda)
  message(STATUS "package (cuda): ${last_output}")
endif()
message(STATUS "consumer_test: passed")
