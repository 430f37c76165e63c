// sparsellm._C: the split 2:4 format (encoder, validator; format_bindings.h).
// Its encoder's dict also holds `residual`: the nonzeros in residual entries.
#include <pybind11/pybind11.h>

#include "format_bindings.h"
#include "sparsellm/split24.h"

namespace py = pybind11;
using namespace sparsellm;

void register_split24(py::module_& m) {
  m.attr("SPLIT24_VERSION") = split24::kVersion;
  m.attr("SPLIT24_TILE_M") = split24::kTileM;
  m.attr("SPLIT24_TILE_K") = split24::kTileK;
  bindings::def_tiled_format(m, "split24", "split24", &Split24Host::data, "data", &encode_split24, &validate_split24,
                             [](py::dict& out, const Split24Host& enc) { out["residual"] = enc.residual; });
}
