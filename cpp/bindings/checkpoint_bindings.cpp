// sparsellm._C: the checkpoint reader and the linear layer.
//
//   inspect_checkpoint(dir, rank, verify_sha256=False) -> dict
//       Opens (and so validates) one rank of a checkpoint with the C++ reader
//       and describes it: architecture, dtype, tp, rank, rank_file and, per
//       tensor in storage order, format, shape, split, nnz, sparsity and
//       components {key: (dtype, shape, bytes)}. Raises FormatError.
//   LinearLayer(dir, rank, weight_name, bias_name="", max_n=256)
//       One Linear loaded from a checkpoint with its own workspace for inputs
//       of up to max_n rows; forward(x_ptr, y_ptr, n, stream) enqueues
//       y[n, out] = x[n, in] · Wᵀ (+ b) on the stream (device pointers and
//       stream as integers, as the rest of this module takes them).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "conversions.h"
#include "common/check.h"
#include "layers/linear.h"
#include "runtime/checkpoint.h"
#include "runtime/device_buffer.h"
#include "sparsellm/error.h"
#include "sparsellm/gemm.h"

namespace py = pybind11;

namespace sparsellm {
namespace {

py::tuple shape_tuple(const std::vector<int64_t>& shape) {
  py::tuple out(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) out[i] = shape[i];
  return out;
}

py::dict inspect_checkpoint(const std::string& dir, int rank, bool verify_sha256) {
  std::unique_ptr<Checkpoint> ck;
  {
    py::gil_scoped_release release;
    ck = Checkpoint::open(dir, rank, verify_sha256);
  }
  py::dict out;
  out["architecture"] = ck->architecture();
  out["dtype"] = dtype_name(ck->dtype());
  out["tp"] = ck->tp();
  out["rank"] = ck->rank();
  out["rank_file"] = ck->rank_file();
  py::dict tensors;
  for (const std::string& name : ck->tensor_names()) {
    const TensorEntry& t = ck->tensor(name);
    py::dict components;
    for (const auto& [key, c] : t.components) components[py::str(key)] = py::make_tuple(c.dtype, shape_tuple(c.shape), c.bytes);
    py::dict entry;
    entry["format"] = t.format;
    entry["shape"] = shape_tuple(t.shape);
    entry["split"] = t.split;
    entry["nnz"] = t.nnz;
    entry["sparsity"] = t.sparsity;
    entry["components"] = components;
    tensors[py::str(name)] = entry;
  }
  out["tensors"] = tensors;
  return out;
}

// A Linear with the workspace to run it on any stream, for tests and tools.
class LinearLayer {
 public:
  LinearLayer(const std::string& dir, int rank, const std::string& weight_name, const std::string& bias_name,
              int64_t max_n)
      : max_n_(max_n) {
    SPARSELLM_CHECK_ARG(max_n > 0, "LinearLayer: max_n must be positive, got ", max_n);
    std::unique_ptr<Checkpoint> ck = Checkpoint::open(dir, rank, false);
    cudaStream_t load = nullptr;  // the legacy default stream, synchronized below
    linear_ = std::make_unique<Linear>(*ck, weight_name, bias_name, load);
    spmm_ = DeviceBuffer(linear_->spmm_workspace_bytes(max_n), "SpMM workspace");
    spmm_.zero(load);
    if (linear_->format() == "dense" || linear_->expands_to_dense(max_n))
      gemm_ = DeviceBuffer(kDenseGemmWorkspaceBytes, "GEMM workspace");
    SPARSELLM_CHECK_CUDA(cudaStreamSynchronize(load));  // before the mapping goes
  }

  void forward(uintptr_t x, uintptr_t y, int64_t n, uintptr_t stream) const {
    SPARSELLM_CHECK_ARG(n <= max_n_, "LinearLayer: n = ", n, " exceeds max_n = ", max_n_);
    LinearWorkspace ws;
    ws.spmm = spmm_.data();
    ws.spmm_bytes = spmm_.bytes();
    ws.gemm = gemm_.data();
    ws.gemm_bytes = gemm_.bytes();
    linear_->forward(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(y), n, ws, bindings::stream_of(stream));
  }

  const Linear& linear() const { return *linear_; }
  int64_t max_n() const { return max_n_; }

 private:
  int64_t max_n_;
  std::unique_ptr<Linear> linear_;
  DeviceBuffer spmm_, gemm_;
};

}  // namespace
}  // namespace sparsellm

void register_checkpoint(py::module_& m) {
  using namespace sparsellm;
  m.def("inspect_checkpoint", &inspect_checkpoint, py::arg("dir"), py::arg("rank") = 0,
        py::arg("verify_sha256") = false,
        "Open one rank of a checkpoint with the C++ reader (validating everything) and describe it.");
  py::class_<LinearLayer>(m, "LinearLayer")
      .def(py::init<const std::string&, int, const std::string&, const std::string&, int64_t>(), py::arg("dir"),
           py::arg("rank"), py::arg("weight_name"), py::arg("bias_name") = "", py::arg("max_n") = 256,
           "Load one linear layer (weight and optional bias) of a checkpoint onto the current GPU.")
      .def("forward", &LinearLayer::forward, py::arg("x"), py::arg("y"), py::arg("n"), py::arg("stream"),
           "Enqueue y[n, out] = x[n, in] · Wᵀ (+ b) on `stream` (device pointers and stream as integers).")
      .def_property_readonly("in_features", [](const LinearLayer& l) { return l.linear().in_features(); })
      .def_property_readonly("out_features", [](const LinearLayer& l) { return l.linear().out_features(); })
      .def_property_readonly("format", [](const LinearLayer& l) { return l.linear().format(); })
      .def_property_readonly("device_bytes", [](const LinearLayer& l) { return l.linear().device_bytes(); })
      .def_property_readonly("max_n", &LinearLayer::max_n);
}
