// The public C++ API (sparsellm/llm.h) over the generator.
#include "sparsellm/llm.h"

#include "runtime/generator.h"

namespace sparsellm {

struct LLM::Impl {
  Impl(const std::string& dir, const LLMOptions& options) : generator(dir, options) {}
  Generator generator;
};

LLM::LLM(const std::string& checkpoint_dir, const LLMOptions& options)
    : impl_(std::make_unique<Impl>(checkpoint_dir, options)) {}
LLM::~LLM() = default;
LLM::LLM(LLM&&) noexcept = default;
LLM& LLM::operator=(LLM&&) noexcept = default;

GenerationOutput LLM::generate(const std::vector<std::vector<int32_t>>& prompts, const GenerationConfig& config) {
  return impl_->generator.generate(prompts, config);
}
std::vector<float> LLM::prompt_logits(const std::vector<std::vector<int32_t>>& prompts) {
  return impl_->generator.prompt_logits(prompts);
}
const ModelInfo& LLM::info() const { return impl_->generator.info(); }
size_t LLM::weight_bytes() const { return impl_->generator.weight_bytes(); }
size_t LLM::allocated_bytes() const { return impl_->generator.allocated_bytes(); }
size_t LLM::peak_device_bytes() const { return impl_->generator.peak_device_bytes(); }

}  // namespace sparsellm
