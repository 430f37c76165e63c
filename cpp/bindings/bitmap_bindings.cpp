// sparsellm._C: the bitmap format (encoder, validator; format_bindings.h).
#include <pybind11/pybind11.h>

#include "format_bindings.h"
#include "sparsellm/bitmap.h"

namespace py = pybind11;
using namespace sparsellm;

void register_bitmap(py::module_& m) {
  m.attr("BITMAP_VERSION") = bitmap::kVersion;
  m.attr("BITMAP_TILE_M") = bitmap::kTileM;
  m.attr("BITMAP_TILE_K") = bitmap::kTileK;
  bindings::def_tiled_format(m, "bitmap", "bitmap", &BitmapHost::data, "data", &encode_bitmap, &validate_bitmap,
                             bindings::kNoExtra);
}
