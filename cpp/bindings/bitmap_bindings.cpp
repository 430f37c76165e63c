// sparsellm._C: the bitmap format (encoder, validator) and its SpMM.
//
// Same conventions as module.cpp: device pointers, sizes and streams are
// integers; the encoder runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "conversions.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/error.h"
#include "sparsellm/spmm.h"

namespace py = pybind11;
using namespace sparsellm;

void register_bitmap(py::module_& m) {
  m.attr("BITMAP_VERSION") = bitmap::kVersion;
  m.attr("BITMAP_TILE_M") = bitmap::kTileM;
  m.attr("BITMAP_TILE_K") = bitmap::kTileK;
  m.def(
      "encode_bitmap",
      [](py::array_t<uint16_t, py::array::c_style> dense, const std::string& dtype, int threads) {
        if (dense.ndim() != 2) throw InvalidArgument("encode_bitmap: expected a 2-D array of 16-bit floats");
        const int64_t rows = dense.shape(0), cols = dense.shape(1);
        const DType t = bindings::to_dtype(dtype);
        BitmapHost enc;
        {
          py::gil_scoped_release release;
          enc = encode_bitmap(dense.data(), rows, cols, t, threads);
        }
        py::dict out;
        out["m"] = enc.m;
        out["k"] = enc.k;
        out["nnz"] = enc.nnz;
        out["dtype"] = dtype;
        out["tile_offsets"] = bindings::to_numpy(std::move(enc.tile_offsets));
        out["data"] = bindings::to_numpy(std::move(enc.data));
        return out;
      },
      py::arg("dense"), py::arg("dtype"), py::arg("threads") = 0,
      "Encode a dense [m, k] matrix given as uint16 bits of float16/bfloat16 in the bitmap format.");
  m.def(
      "validate_bitmap",
      [](py::array_t<uint32_t, py::array::c_style> offsets, py::array_t<uint32_t, py::array::c_style> data,
         int64_t mm, int64_t k) {
        if (mm <= 0 || k <= 0 || offsets.ndim() != 1 || offsets.shape(0) != spmm_tile_count(mm, k) + 1)
          throw FormatError("bitmap: tile_offsets must hold tiles + 1 entries for the shape");
        if (data.ndim() != 1) throw FormatError("bitmap: data must be 1-D");
        py::gil_scoped_release release;
        return validate_bitmap(offsets.data(), data.data(), data.shape(0), mm, k);
      },
      py::arg("tile_offsets"), py::arg("data"), py::arg("m"), py::arg("k"),
      "Check an encoded matrix; returns the nonzeros it stores. Raises FormatError naming the first violation.");
  m.def(
      "spmm_bitmap",
      [](uintptr_t x, uintptr_t bias, uintptr_t y, int64_t n, uintptr_t data, uintptr_t tile_offsets, int64_t mm,
         int64_t k, const std::string& dtype, uintptr_t plan, int plan_blocks, uintptr_t workspace,
         size_t workspace_bytes, uintptr_t stream) {
        SpmmParams p;
        p.x = reinterpret_cast<const void*>(x);
        p.bias = reinterpret_cast<const void*>(bias);
        p.y = reinterpret_cast<void*>(y);
        p.n = n;
        p.weight.words = reinterpret_cast<const uint32_t*>(data);
        p.weight.tile_offsets = reinterpret_cast<const uint32_t*>(tile_offsets);
        p.weight.m = mm;
        p.weight.k = k;
        p.weight.dtype = bindings::to_dtype(dtype);
        p.weight.format = SparseFormat::kBitmap;
        p.plan = reinterpret_cast<const StreamKBlock*>(plan);
        p.plan_blocks = plan_blocks;
        p.workspace = reinterpret_cast<void*>(workspace);
        p.workspace_bytes = workspace_bytes;
        spmm_bitmap(p, bindings::stream_of(stream));
      },
      py::arg("x"), py::arg("bias"), py::arg("y"), py::arg("n"), py::arg("data"), py::arg("tile_offsets"),
      py::arg("m"), py::arg("k"), py::arg("dtype"), py::arg("plan"), py::arg("plan_blocks"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("stream"));
}
