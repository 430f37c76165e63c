# Warning and code-generation flags shared by every target of the project.
add_library(sparsellm_compile_options INTERFACE)
target_compile_options(sparsellm_compile_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo --expt-relaxed-constexpr
      -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter -Xptxas=-warn-spills>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${SPARSELLM_PTXAS_VERBOSE}>>:-Xptxas=-v>)
