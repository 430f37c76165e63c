# Finds what sparsellm links against, from a CUDA installation or from the
# NVIDIA Python wheels (nvidia-cublas, nvidia-nccl-cu13) of the interpreter
# that drives the build. Creates the targets
#   sparsellm::cublas   cuBLAS + cuBLASLt
#   sparsellm::nccl     NCCL
# nlohmann_json::nlohmann_json, and MPI::MPI_CXX when MPI is found.
find_package(CUDAToolkit 12.0 REQUIRED)
find_package(Python 3.9 COMPONENTS Interpreter Development.Module REQUIRED)

# Site-packages folders of the interpreter: where pip puts the NVIDIA wheels.
execute_process(
  COMMAND ${Python_EXECUTABLE} -c "import site, sys; print(';'.join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))"
  OUTPUT_VARIABLE _sparsellm_site_dirs OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
set(_wheel_include_hints "")
set(_wheel_lib_hints "")
foreach(dir IN LISTS _sparsellm_site_dirs)
  if(dir AND IS_DIRECTORY "${dir}/nvidia")
    list(APPEND _wheel_include_hints "${dir}/nvidia/cu13/include" "${dir}/nvidia/nccl/include")
    list(APPEND _wheel_lib_hints "${dir}/nvidia/cu13/lib" "${dir}/nvidia/nccl/lib")
  endif()
endforeach()

# A dependency found by header and versioned shared object. Wheels ship only
# `libX.so.N`, so both names are searched.
function(sparsellm_find_shared target header)
  cmake_parse_arguments(ARG "" "" "NAMES" ${ARGN})
  string(TOUPPER ${target} _up)
  find_path(SPARSELLM_${_up}_INCLUDE_DIR ${header}
    HINTS ${_wheel_include_hints} ${CUDAToolkit_INCLUDE_DIRS} /usr/include /usr/local/include)
  find_library(SPARSELLM_${_up}_LIBRARY NAMES ${ARG_NAMES}
    HINTS ${_wheel_lib_hints} ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu /usr/lib64)
  if(NOT SPARSELLM_${_up}_INCLUDE_DIR OR NOT SPARSELLM_${_up}_LIBRARY)
    message(FATAL_ERROR "sparsellm: ${target} not found (header ${header}, libraries ${ARG_NAMES}). "
      "Install the CUDA toolkit's library or the matching NVIDIA wheel into ${Python_EXECUTABLE}'s environment.")
  endif()
  message(STATUS "sparsellm: ${target}: ${SPARSELLM_${_up}_LIBRARY}")
  set(SPARSELLM_${_up}_LIBRARY ${SPARSELLM_${_up}_LIBRARY} PARENT_SCOPE)
endfunction()

add_library(sparsellm::cublas INTERFACE IMPORTED)
if(TARGET CUDA::cublas AND TARGET CUDA::cublasLt)
  message(STATUS "sparsellm: cuBLAS from the CUDA toolkit")
  target_link_libraries(sparsellm::cublas INTERFACE CUDA::cublas CUDA::cublasLt)
else()
  sparsellm_find_shared(cublas cublas_v2.h NAMES cublas libcublas.so.13 libcublas.so.12)
  sparsellm_find_shared(cublaslt cublasLt.h NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12)
  target_include_directories(sparsellm::cublas INTERFACE ${SPARSELLM_CUBLAS_INCLUDE_DIR})
  target_link_libraries(sparsellm::cublas INTERFACE ${SPARSELLM_CUBLAS_LIBRARY} ${SPARSELLM_CUBLASLT_LIBRARY})
endif()

sparsellm_find_shared(nccl nccl.h NAMES nccl libnccl.so.2)
add_library(sparsellm::nccl INTERFACE IMPORTED)
target_include_directories(sparsellm::nccl INTERFACE ${SPARSELLM_NCCL_INCLUDE_DIR})
target_link_libraries(sparsellm::nccl INTERFACE ${SPARSELLM_NCCL_LIBRARY})

# JSON for checkpoint configs and safetensors headers (Debian: nlohmann-json3-dev).
find_package(nlohmann_json 3.10 REQUIRED)

if(SPARSELLM_WITH_MPI)
  find_package(MPI COMPONENTS CXX)
  if(NOT MPI_CXX_FOUND)
    message(WARNING "sparsellm: MPI not found; the C++ MPI bootstrap is left out "
      "(Python launches still bootstrap through mpi4py).")
  endif()
endif()

# Directories of the shared libraries above, for the run-time search path of
# installed targets (the wheels' folders are not on the loader's default path).
set(SPARSELLM_RUNTIME_DIRS "")
foreach(lib IN ITEMS ${SPARSELLM_CUBLAS_LIBRARY} ${SPARSELLM_CUBLASLT_LIBRARY} ${SPARSELLM_NCCL_LIBRARY})
  get_filename_component(_dir ${lib} DIRECTORY)
  list(APPEND SPARSELLM_RUNTIME_DIRS ${_dir})
endforeach()
list(REMOVE_DUPLICATES SPARSELLM_RUNTIME_DIRS)
