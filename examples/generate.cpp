// Embedding sparsellm from C++: load a converted checkpoint and generate.
//
//   generate CHECKPOINT_DIR [token ids...]
//   mpirun -n N generate CHECKPOINT_DIR [token ids...]   (a checkpoint converted with --tp N)
//
// Without ids the prompt is the model's BOS token. Prints the generated ids,
// why generation stopped, decode tokens/s and the memory the model took.
// Under mpirun every rank checks the checkpoint against the world and the
// ranks exchange the results (the same error on every rank, exit 1), then
// rank 0's NCCL id is broadcast over MPI and each rank takes the GPU of its
// local rank; rank 0 prints (sparsellm/tensor_parallel.h).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <memory>

#include <sparsellm/error.h>
#include <sparsellm/llm.h>
#include <sparsellm/tensor_parallel.h>

namespace {
// Started by an MPI launcher with more than one process?
bool under_mpirun() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"})
    if (const char* v = std::getenv(name)) return std::atoi(v) > 1;
  return false;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [token ids...]\n", argv[0]);
    return 2;
  }
  std::unique_ptr<sparsellm::MpiSession> mpi;
  try {
    sparsellm::LLMOptions options;
    options.max_batch = 1;
    if (under_mpirun()) {  // tensor parallelism: one process per GPU
      mpi = std::make_unique<sparsellm::MpiSession>(&argc, &argv);
      const std::string errors =
          mpi->gather_errors(sparsellm::tensor_parallel_error(argv[1], mpi->rank(), mpi->world()));
      if (!errors.empty()) {
        std::fprintf(stderr, "error (rank %d of %d): the checkpoint does not fit this launch:\n%s\n", mpi->rank(),
                     mpi->world(), errors.c_str());
        return 1;  // every rank, after MPI_Finalize (~MpiSession)
      }
      options.tp = mpi->tensor_parallel();
    }
    sparsellm::LLM llm(argv[1], options);
    const bool print = options.tp.rank == 0;  // every rank has the same tokens
    const sparsellm::ModelInfo& info = llm.info();

    std::vector<int32_t> prompt;
    for (int i = 2; i < argc; ++i) prompt.push_back(int32_t(std::strtol(argv[i], nullptr, 10)));
    if (prompt.empty()) prompt.push_back(info.bos_token_id >= 0 ? info.bos_token_id : 0);

    sparsellm::GenerationConfig config;
    config.max_new_tokens = 32;
    sparsellm::GenerationOutput out = llm.generate({prompt}, config);

    const sparsellm::SequenceOutput& seq = out.sequences[0];
    if (!print) return 0;
    std::printf("%s, %s, %d layers, hidden %d\n", info.architecture.c_str(), info.dtype.c_str(), info.num_layers,
                info.hidden_size);
    std::printf("tokens:");
    for (int32_t t : seq.tokens) std::printf(" %d", t);
    std::printf("\nfinished: %s\n", seq.finish_reason == sparsellm::FinishReason::kEos ? "eos" : "length");
    std::printf("prefill %.2f ms, decode %.2f ms for %d steps (%.1f tokens/s)\n", out.prefill_ms, out.decode_ms,
                out.decode_steps, out.decode_steps > 0 ? 1e3 * out.decode_steps / out.decode_ms : 0.0);
    std::printf("weights %.1f MiB, allocated %.1f MiB, peak device use %.1f MiB\n",
                double(llm.weight_bytes()) / (1 << 20), double(llm.allocated_bytes()) / (1 << 20),
                double(llm.peak_device_bytes()) / (1 << 20));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (mpi && mpi->world() > 1) mpi->abort(1);  // this rank alone failed: do not leave the others waiting
    return 1;
  }
}
