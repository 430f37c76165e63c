// The Python face of a tiled sparse format (Tiled-CSL, bitmap, split 2:4),
// the same for each:
//   encode_<name>(dense, dtype, threads=0) -> dict(m, k, nnz, dtype,
//       tile_offsets, <data key>, and what `extra` adds): dense is a C-contiguous
//       uint16 [m, k] array of float16/bfloat16 bits; the encoder runs without
//       the GIL.
//   validate_<name>(tile_offsets, data, m, k) -> the nonzeros stored; raises
//       FormatError naming the first violation.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "conversions.h"
#include "sparsellm/error.h"
#include "sparsellm/spmm.h"

namespace sparsellm::bindings {

template <typename Host, typename Encode, typename Validate, typename Extra>
void def_tiled_format(pybind11::module_& m, const std::string& name, const std::string& title,
                      std::vector<uint32_t> Host::*data, const char* data_key, Encode encode, Validate validate,
                      Extra extra) {
  namespace py = pybind11;
  const std::string encoder = "encode_" + name;
  m.def(
      encoder.c_str(),
      [=](py::array_t<uint16_t, py::array::c_style> dense, const std::string& dtype, int threads) {
        if (dense.ndim() != 2) throw InvalidArgument(encoder + ": expected a 2-D array of 16-bit floats");
        const int64_t rows = dense.shape(0), cols = dense.shape(1);
        const DType t = to_dtype(dtype);
        Host enc;
        {
          py::gil_scoped_release release;
          enc = encode(dense.data(), rows, cols, t, threads);
        }
        py::dict out;
        out["m"] = enc.m;
        out["k"] = enc.k;
        out["nnz"] = enc.nnz;
        out["dtype"] = dtype;
        extra(out, enc);
        out["tile_offsets"] = to_numpy(std::move(enc.tile_offsets));
        out[data_key] = to_numpy(std::move(enc.*data));
        return out;
      },
      py::arg("dense"), py::arg("dtype"), py::arg("threads") = 0,
      ("Encode a dense [m, k] matrix given as uint16 bits of float16/bfloat16 in the " + title + " format.").c_str());
  m.def(
      ("validate_" + name).c_str(),
      [=](py::array_t<uint32_t, py::array::c_style> offsets, py::array_t<uint32_t, py::array::c_style> words,
          int64_t mm, int64_t k) {
        if (mm <= 0 || k <= 0 || offsets.ndim() != 1 || offsets.shape(0) != spmm_tile_count(mm, k) + 1)
          throw FormatError(title + ": tile_offsets must hold tiles + 1 entries for the shape");
        if (words.ndim() != 1) throw FormatError(title + ": " + data_key + " must be 1-D");
        py::gil_scoped_release release;
        return validate(offsets.data(), words.data(), words.shape(0), mm, k);
      },
      py::arg("tile_offsets"), py::arg(data_key), py::arg("m"), py::arg("k"),
      "Check an encoded matrix; returns the nonzeros it stores. Raises FormatError naming the first violation.");
}

// No fields beyond the common ones.
inline constexpr auto kNoExtra = [](pybind11::dict&, const auto&) {};

}  // namespace sparsellm::bindings
