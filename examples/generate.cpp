// Embedding sparsellm from C++: load a converted checkpoint and generate.
//
//   generate CHECKPOINT_DIR [token ids...]
//
// Without ids the prompt is the model's BOS token. Prints the generated ids,
// why generation stopped, decode tokens/s and the memory the model took.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <sparsellm/error.h>
#include <sparsellm/llm.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [token ids...]\n", argv[0]);
    return 2;
  }
  try {
    sparsellm::LLMOptions options;
    options.max_batch = 1;
    sparsellm::LLM llm(argv[1], options);
    const sparsellm::ModelInfo& info = llm.info();

    std::vector<int32_t> prompt;
    for (int i = 2; i < argc; ++i) prompt.push_back(int32_t(std::strtol(argv[i], nullptr, 10)));
    if (prompt.empty()) prompt.push_back(info.bos_token_id >= 0 ? info.bos_token_id : 0);

    sparsellm::GenerationConfig config;
    config.max_new_tokens = 32;
    sparsellm::GenerationOutput out = llm.generate({prompt}, config);

    const sparsellm::SequenceOutput& seq = out.sequences[0];
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
  } catch (const sparsellm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
