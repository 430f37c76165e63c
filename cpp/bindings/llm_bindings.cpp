// sparsellm._C: the generation runtime (sparsellm/llm.h), wrapped by
// sparsellm.llm.LLM.
//
//   Runtime(dir, max_batch=8, max_seq_len=0, use_cuda_graphs=True, max_prefill_tokens=0,
//           tp_rank=0, tp_world=1, nccl_id=b"", device=-1, comm_timeout_s=0)   (sparsellm/tensor_parallel.h)
//     .generate(prompts: list[list[int]], max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
//         -> {"tokens": list[list[int]], "finish_reasons": list[str] ("eos" | "length"),
//             "prefill_ms", "decode_ms", "decode_steps", "graph_steps", "graph_error" (None or why
//             decode steps could not be captured and ran eagerly)}
//     .prompt_logits(prompts) -> float32 ndarray [len(prompts), vocab]
//     .info -> dict; .weight_bytes, .allocated_bytes, .peak_device_bytes
//     .close()  frees the GPU memory; any later call raises InvalidArgument
//   nccl_unique_id() -> bytes; tensor_parallel_error(dir, rank, world) -> str ("" when fine)
//
// Loading and generation run without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparsellm/error.h"
#include "sparsellm/llm.h"
#include "sparsellm/tensor_parallel.h"

namespace py = pybind11;

namespace sparsellm {
namespace {

class Runtime {
 public:
  Runtime(const std::string& dir, int max_batch, int max_seq_len, bool use_cuda_graphs, int max_prefill_tokens,
          int tp_rank, int tp_world, const py::bytes& nccl_id, int device, double comm_timeout_s) {
    LLMOptions options;
    options.tp.rank = tp_rank;
    options.tp.world = tp_world;
    options.tp.nccl_id = std::string(nccl_id);
    options.tp.device = device;
    options.tp.timeout_s = comm_timeout_s;
    options.max_batch = max_batch;
    options.max_seq_len = max_seq_len;
    options.use_cuda_graphs = use_cuda_graphs;
    options.max_prefill_tokens = max_prefill_tokens;
    py::gil_scoped_release release;
    llm_ = std::make_unique<LLM>(dir, options);
  }

  LLM& llm() {
    if (!llm_) throw InvalidArgument("this LLM has been closed");
    return *llm_;
  }

  void close() {
    py::gil_scoped_release release;
    llm_.reset();
  }

  py::dict generate(const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens, float temperature,
                    int top_k, float top_p, uint64_t seed, bool stop_at_eos) {
    GenerationConfig config;
    config.max_new_tokens = max_new_tokens;
    config.temperature = temperature;
    config.top_k = top_k;
    config.top_p = top_p;
    config.seed = seed;
    config.stop_at_eos = stop_at_eos;
    LLM& model = llm();
    GenerationOutput out;
    {
      py::gil_scoped_release release;
      out = model.generate(prompts, config);
    }
    py::list tokens, reasons;
    for (const SequenceOutput& s : out.sequences) {
      tokens.append(py::cast(s.tokens));
      reasons.append(s.finish_reason == FinishReason::kEos ? "eos" : "length");
    }
    py::dict d;
    d["tokens"] = tokens;
    d["finish_reasons"] = reasons;
    d["prefill_ms"] = out.prefill_ms;
    d["decode_ms"] = out.decode_ms;
    d["decode_steps"] = out.decode_steps;
    d["graph_steps"] = out.graph_steps;
    d["graph_error"] = out.graph_error.empty() ? py::object(py::none()) : py::object(py::str(out.graph_error));
    return d;
  }

  py::array_t<float> prompt_logits(const std::vector<std::vector<int32_t>>& prompts) {
    LLM& model = llm();
    std::vector<float> logits;
    {
      py::gil_scoped_release release;
      logits = model.prompt_logits(prompts);
    }
    const py::ssize_t rows = py::ssize_t(prompts.size()), vocab = py::ssize_t(model.info().vocab_size);
    py::array_t<float> out({rows, vocab});
    std::copy(logits.begin(), logits.end(), out.mutable_data());
    return out;
  }

  py::dict info() {
    const ModelInfo& i = llm().info();
    py::dict d;
    d["architecture"] = i.architecture;
    d["dtype"] = i.dtype;
    d["vocab_size"] = i.vocab_size;
    d["hidden_size"] = i.hidden_size;
    d["num_layers"] = i.num_layers;
    d["num_heads"] = i.num_heads;
    d["max_position_embeddings"] = i.max_position_embeddings;
    d["eos_token_id"] = i.eos_token_id;
    d["bos_token_id"] = i.bos_token_id;
    d["max_batch"] = i.max_batch;
    d["max_seq_len"] = i.max_seq_len;
    d["tp_rank"] = i.tp_rank;
    d["tp_world"] = i.tp_world;
    d["folds_norms"] = i.folds_norms;
    return d;
  }

 private:
  std::unique_ptr<LLM> llm_;
};

}  // namespace
}  // namespace sparsellm

void register_llm(py::module_& m) {
  using sparsellm::Runtime;
  py::class_<Runtime>(m, "Runtime", "An OPT model loaded from a sparsellm checkpoint, ready to generate.")
      .def(py::init<const std::string&, int, int, bool, int, int, int, const py::bytes&, int, double>(),
           py::arg("path"), py::arg("max_batch") = 8, py::arg("max_seq_len") = 0, py::arg("use_cuda_graphs") = true,
           py::arg("max_prefill_tokens") = 0, py::arg("tp_rank") = 0, py::arg("tp_world") = 1,
           py::arg("nccl_id") = py::bytes(), py::arg("device") = -1, py::arg("comm_timeout_s") = 0.0)
      .def("generate", &Runtime::generate, py::arg("prompts"), py::arg("max_new_tokens"), py::arg("temperature"),
           py::arg("top_k"), py::arg("top_p"), py::arg("seed"), py::arg("stop_at_eos"))
      .def("prompt_logits", &Runtime::prompt_logits, py::arg("prompts"))
      .def_property_readonly("info", &Runtime::info)
      .def_property_readonly("weight_bytes", [](Runtime& r) { return r.llm().weight_bytes(); })
      .def_property_readonly("allocated_bytes", [](Runtime& r) { return r.llm().allocated_bytes(); })
      .def_property_readonly("peak_device_bytes", [](Runtime& r) { return r.llm().peak_device_bytes(); })
      .def("close", &Runtime::close);
  m.def("nccl_unique_id", []() { return py::bytes(sparsellm::nccl_unique_id()); },
        "A fresh NCCL unique id (128 bytes) for rank 0 to send to every tensor-parallel rank.");
  m.def("tensor_parallel_error", &sparsellm::tensor_parallel_error, py::arg("path"), py::arg("rank"),
        py::arg("world"),
        "Checks before any GPU work that the checkpoint fits `world` ranks and rank `rank` finds its file; "
        "returns the error message, or '' when the checks pass.");
}
