// sparsellm._C: the thin Python boundary of the library.
//
// Functions take device pointers, sizes and a CUDA stream as integers; the
// Python layer (sparsellm.ops) validates torch tensors and passes those, so
// this module never links libtorch. Long host work runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "conversions.h"
#include "format_bindings.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"
#include "sparsellm/gemm.h"
#include "sparsellm/spmm.h"
#include "sparsellm/tiled_csl.h"

namespace py = pybind11;
using namespace sparsellm;

void register_checkpoint(py::module_& m);  // checkpoint_bindings.cpp
void register_bitmap(py::module_& m);      // bitmap_bindings.cpp
void register_split24(py::module_& m);     // split24_bindings.cpp
void register_llm(py::module_& m);         // llm_bindings.cpp
void register_comm(py::module_& m);        // comm_bindings.cpp

namespace {

using bindings::ptr;
using bindings::stream_of;
using bindings::to_dtype;
using bindings::to_numpy;

// Python exception classes: each is a sparsellm._C.Error and, where it fits,
// also a built-in (InvalidArgument is a ValueError, OutOfMemory a MemoryError).
void register_errors(py::module_& m) {
  static PyObject* error = PyErr_NewException("sparsellm._C.Error", PyExc_RuntimeError, nullptr);
  auto derived = [&](const char* name, PyObject* builtin) {
    PyObject* bases = builtin ? PyTuple_Pack(2, error, builtin) : PyTuple_Pack(1, error);
    PyObject* cls = PyErr_NewException((std::string("sparsellm._C.") + name).c_str(), bases, nullptr);
    Py_DECREF(bases);
    m.attr(name) = py::handle(cls);
    return cls;
  };
  m.attr("Error") = py::handle(error);
  static PyObject* invalid = derived("InvalidArgument", PyExc_ValueError);
  static PyObject* format = derived("FormatError", PyExc_ValueError);
  static PyObject* device = derived("DeviceError", nullptr);
  static PyObject* oom = derived("OutOfMemory", PyExc_MemoryError);
  static PyObject* cuda = derived("CudaError", nullptr);
  static PyObject* cublas = derived("CublasError", nullptr);
  static PyObject* nccl = derived("NcclError", nullptr);
  static PyObject* mpi = derived("MpiError", nullptr);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(invalid, e.what());
    } catch (const FormatError& e) {
      PyErr_SetString(format, e.what());
    } catch (const DeviceError& e) {
      PyErr_SetString(device, e.what());
    } catch (const OutOfMemory& e) {
      PyErr_SetString(oom, e.what());
    } catch (const CudaError& e) {
      PyErr_SetString(cuda, e.what());
    } catch (const CublasError& e) {
      PyErr_SetString(cublas, e.what());
    } catch (const NcclError& e) {
      PyErr_SetString(nccl, e.what());
    } catch (const MpiError& e) {
      PyErr_SetString(mpi, e.what());
    } catch (const Error& e) {
      PyErr_SetString(error, e.what());
    }
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsellm native library (formats, kernels, runtime)";
  register_errors(m);
  register_checkpoint(m);
  register_bitmap(m);
  register_split24(m);
  register_llm(m);
  register_comm(m);

  m.def("device_count", &device_count, "Visible CUDA GPUs (0 without a driver or GPU).");
  m.def(
      "current_device",
      [] {
        const DeviceInfo& d = current_device();
        py::dict out;
        out["id"] = d.id;
        out["name"] = d.name;
        out["compute_capability"] = py::make_tuple(d.cc_major, d.cc_minor);
        out["sm_count"] = d.sm_count;
        out["max_smem_per_block"] = d.max_smem_per_block;
        out["global_mem_bytes"] = d.global_mem_bytes;
        out["l2_bytes"] = d.l2_bytes;
        return out;
      },
      "Properties of the current GPU; raises DeviceError when there is none.");

  m.attr("DENSE_GEMM_WORKSPACE_BYTES") = kDenseGemmWorkspaceBytes;
  m.def(
      "dense_gemm",
      [](uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, int64_t n, int64_t mm, int64_t k,
         const std::string& dtype, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        DenseGemmParams p;
        p.x = ptr<const void>(x);
        p.w = ptr<const void>(w);
        p.bias = ptr<const void>(bias);
        p.y = ptr<void>(y);
        p.n = n;
        p.m = mm;
        p.k = k;
        p.dtype = to_dtype(dtype);
        p.workspace = ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        dense_gemm(p, stream_of(stream));
      },
      py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("y"), py::arg("n"), py::arg("m"), py::arg("k"),
      py::arg("dtype"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));

  // Tiled-CSL format.
  m.attr("TILED_CSL_VERSION") = tiled_csl::kVersion;
  m.attr("TILED_CSL_TILE_M") = tiled_csl::kTileM;
  m.attr("TILED_CSL_TILE_K") = tiled_csl::kTileK;
  bindings::def_tiled_format(m, "tiled_csl", "Tiled-CSL", &TiledCslHost::words, "words", &encode_tiled_csl,
                             &validate_tiled_csl, bindings::kNoExtra);

  // SpMM.
  m.def("spmm_plan_blocks", &spmm_plan_blocks, "Thread blocks of a plan on the current GPU.");
  m.def(
      "spmm_plan",
      [](py::array_t<uint32_t, py::array::c_style> offsets, int64_t mm, int64_t k, int blocks) {
        const int64_t tiles = ((mm + tiled_csl::kTileM - 1) / tiled_csl::kTileM) *
                              ((k + tiled_csl::kTileK - 1) / tiled_csl::kTileK);
        if (offsets.ndim() != 1 || offsets.shape(0) != tiles + 1)
          throw InvalidArgument("spmm_plan: tile_offsets does not match the shape");
        std::vector<StreamKBlock> plan = spmm_plan(offsets.data(), mm, k, blocks);
        static_assert(sizeof(StreamKBlock) == 6 * sizeof(int32_t), "plan rows are six int32");
        py::array_t<int32_t> out({py::ssize_t(plan.size()), py::ssize_t(6)});
        std::memcpy(out.mutable_data(), plan.data(), plan.size() * sizeof(StreamKBlock));
        return out;
      },
      py::arg("tile_offsets"), py::arg("m"), py::arg("k"), py::arg("blocks"),
      "Stream-K plan: int32 [blocks, 6] rows (unit_begin, unit_end, first_row_lead, first_row_parts, "
      "last_row_lead, last_row_parts).");
  m.def("spmm_workspace_bytes", &spmm_workspace_bytes, py::arg("m"), py::arg("n"), py::arg("blocks"));
  m.def(
      "spmm",
      [](const std::string& format, uintptr_t x, uintptr_t bias, uintptr_t y, int64_t n, uintptr_t data,
         uintptr_t tile_offsets, int64_t mm, int64_t k, const std::string& dtype, uintptr_t plan, int plan_blocks,
         uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        SpmmParams p;
        p.x = ptr<const void>(x);
        p.bias = ptr<const void>(bias);
        p.y = ptr<void>(y);
        p.n = n;
        p.weight.words = ptr<const uint32_t>(data);
        p.weight.tile_offsets = ptr<const uint32_t>(tile_offsets);
        p.weight.m = mm;
        p.weight.k = k;
        p.weight.dtype = to_dtype(dtype);
        p.weight.format = bindings::to_format(format);
        p.plan = ptr<const StreamKBlock>(plan);
        p.plan_blocks = plan_blocks;
        p.workspace = ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        spmm(p, stream_of(stream));
      },
      py::arg("format"), py::arg("x"), py::arg("bias"), py::arg("y"), py::arg("n"), py::arg("data"),
      py::arg("tile_offsets"), py::arg("m"), py::arg("k"), py::arg("dtype"), py::arg("plan"), py::arg("plan_blocks"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      "Y = X · Wᵀ (+ bias) for W in any sparse format ('tiled_csl', 'bitmap', 'split24'), on `stream`.");
}
