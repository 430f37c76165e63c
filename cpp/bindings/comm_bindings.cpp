// sparsellm._C: the tensor-parallel communicator alone, for the all-reduce benchmark
// (sparsellm/bench/allreduce.py). One rank per process, on the current CUDA device.
//
//   Communicator(rank, world, nccl_id: bytes, timeout_s=0)   collective: every rank constructs it
//     .all_reduce_sum(ptr, count, dtype, stream)   in place, enqueued on the stream (capturable)
//     .synchronize(stream)                         a timed wait (NcclError when a peer is gone)
//     .uses_peer_all_reduce -> bool                small messages take the peer-to-peer kernel
//     .takes_peer_path(count) -> bool              this message does
//     .close()                                     collective teardown; later calls raise InvalidArgument
//   PEER_ALL_REDUCE_MAX_BYTES                      the largest message the peer kernel takes
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "conversions.h"
#include "comm/peer_all_reduce.h"
#include "sparsellm/error.h"
#include "sparsellm/tensor_parallel.h"

namespace py = pybind11;

namespace sparsellm {
namespace {

class PyCommunicator {
 public:
  PyCommunicator(int rank, int world, const py::bytes& nccl_id, double timeout_s) {
    TensorParallelOptions o;
    o.rank = rank;
    o.world = world;
    o.nccl_id = std::string(nccl_id);
    o.timeout_s = timeout_s;
    py::gil_scoped_release release;
    comm_ = std::make_unique<Communicator>(o);
  }

  const Communicator& comm() const {
    if (!comm_) throw InvalidArgument("this Communicator has been closed");
    return *comm_;
  }

  void all_reduce_sum(uintptr_t data, size_t count, const std::string& dtype, uintptr_t stream) const {
    comm().all_reduce_sum(bindings::ptr<void>(data), count, bindings::to_dtype(dtype), bindings::stream_of(stream));
  }

  void synchronize(uintptr_t stream) const {
    const Communicator& c = comm();
    py::gil_scoped_release release;
    c.synchronize(bindings::stream_of(stream), "Communicator.synchronize");
  }

  void close() {
    py::gil_scoped_release release;
    comm_.reset();
  }

 private:
  std::unique_ptr<Communicator> comm_;
};

}  // namespace
}  // namespace sparsellm

void register_comm(py::module_& m) {
  using sparsellm::PyCommunicator;
  py::class_<PyCommunicator>(m, "Communicator")
      .def(py::init<int, int, const py::bytes&, double>(), py::arg("rank"), py::arg("world"), py::arg("nccl_id"),
           py::arg("timeout_s") = 0.0)
      .def("all_reduce_sum", &PyCommunicator::all_reduce_sum, py::arg("data"), py::arg("count"), py::arg("dtype"),
           py::arg("stream"))
      .def("synchronize", &PyCommunicator::synchronize, py::arg("stream"))
      .def_property_readonly("uses_peer_all_reduce",
                             [](const PyCommunicator& c) { return c.comm().uses_peer_all_reduce(); })
      .def(
          "takes_peer_path", [](const PyCommunicator& c, size_t count) { return c.comm().takes_peer_path(count); },
          py::arg("count"))
      .def("close", &PyCommunicator::close);
  m.attr("PEER_ALL_REDUCE_MAX_BYTES") = sparsellm::PeerAllReduce::kMaxBytes;
}
