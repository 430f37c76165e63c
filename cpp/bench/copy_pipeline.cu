// copy_pipeline OUTDIR: the SpMM kernels' weight stream alone, on sm_90 — how
// fast bulk copies (cp.async.bulk, global → shared) bring bytes from HBM, and
// what a ring of stages like the kernels' keeps of that rate.
//
//   stream: one thread a block issues copies of S bytes into a ring of
//           `stages` slots, waiting only for the copy a slot held before;
//           512 MiB in all, 1 or 2 blocks a SM. Rate by copy size and by the
//           bytes a SM keeps in flight.
//   ring:   per tile one bulk copy of W bytes (a tile of the format) and one
//           X tile by TMA (16 × 64 fp16, 128-byte swizzle, as the kernels'
//           x_tile_map); P producer warps take alternate tiles, C consumer
//           warps wait for each stage and only release it (no decode, no
//           MMA); 157 tiles a block (an OPT-66B FC1 of 41,472 tiles over
//           264 blocks), 2 blocks a SM.
//   ring_x: the same ring with the kernels' roles for split 2:4 tiles at 50 /
//           90% and X tiles of N = 16–128 rows: the weight rate left when
//           each tile also brings its X tile (N × 64) from L2.
//
// Times: CUDA events, median of 10 launches after 2, each after a read of
// 256 MiB that leaves L2 holding clean lines (as the SpMM benchmark's flush).
// Writes copy-pipeline-<gpu>.json and .md into OUTDIR.
#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/check.h"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/x_tensor_map.h"
#include "runtime/device_buffer.h"

namespace sparsellm {
namespace {

constexpr int kRingTiles = 157;
// Bytes of a 128 × 64 tile, header included: bitmap at 50 / 80 / 90%, Tiled-CSL at 80 / 90%.
constexpr int kFormatTileBytes[] = {9232, 6576, 4320, 3296, 2688};
// Split 2:4 tiles at 50 / 90% (docs/formats.md: 9248 bytes + 4 per residual entry, on average).
constexpr int kSplit24TileBytes[] = {12320, 9264};
constexpr int kXRows = 16;          // the ring experiment's X tile: 16 rows × 64 fp16
constexpr int kXMaxRows = 128;      // ring_x: up to 128
constexpr int kXColumns = 9216;     // X: [kXMaxRows, 9216] fp16, L2-resident

struct StreamParams {
  const char* src;
  size_t block_bytes;  // per block, a multiple of copy_bytes
  int copy_bytes, stages;
};

struct RingParams {
  CUtensorMap x_map;
  const char* w;
  int tile_bytes, x_bytes, stages, producers, consumers;
};

// A ring stage: the tile's bytes, padded to 1024 for the X tile's 128-byte swizzle, then the X tile.
__host__ __device__ constexpr int ring_stage_bytes(int tile_bytes, int x_bytes) {
  return stream_k::x_aligned(tile_bytes) + x_bytes;
}

// The rings timed for each tile size: warps, and the stage counts they run at.
struct RingRoles {
  int producers, consumers;
  bool only_8_stages;
};
constexpr RingRoles kRingRoles[] = {
    {1, 0, false},  // the copies alone: the producer waits for a slot's previous copy to land
    {2, 8, false},  // the kernels' roles: consumers release each stage
    {1, 8, true},   // one producer, for comparison
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// Stage s of a ring of `stage_bytes` slots; full barriers after the slots, then empty barriers.
__device__ __forceinline__ uint32_t full_bar(uint32_t bars, int s) { return bars + 8 * s; }
__device__ __forceinline__ uint32_t empty_bar(uint32_t bars, int stages, int s) { return bars + 8 * (stages + s); }
#endif

__global__ void stream_kernel(const StreamParams p) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t base = ptx::smem_addr(smem), bars = base + p.stages * p.copy_bytes;
  if (threadIdx.x != 0) return;
  for (int s = 0; s < p.stages; ++s) ptx::mbarrier_init(full_bar(bars, s), 1);
  ptx::fence_mbarrier_init();
  const char* src = p.src + blockIdx.x * p.block_bytes;
  const int copies = int(p.block_bytes / p.copy_bytes);
  int s = 0;
  uint32_t parity = 0;  // of the phase the slot's previous copy completes
  for (int i = 0; i < copies; ++i) {
    if (i >= p.stages) ptx::mbarrier_wait(full_bar(bars, s), parity);
    ptx::mbarrier_arrive_expect_tx(full_bar(bars, s), p.copy_bytes);
    ptx::bulk_copy_g2s(base + s * p.copy_bytes, src + size_t(i) * p.copy_bytes, p.copy_bytes, full_bar(bars, s));
    if (++s == p.stages) {
      s = 0;
      if (i >= p.stages) parity ^= 1;
    }
  }
  for (int s = 0; s < p.stages && s < copies; ++s)  // the last copy into each slot has landed
    ptx::mbarrier_wait(full_bar(bars, s), uint32_t((copies - 1 - s) / p.stages) & 1);
#endif
}

__global__ void ring_kernel(const __grid_constant__ RingParams p) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ __align__(1024) unsigned char smem[];
  const int x_offset = stream_k::x_aligned(p.tile_bytes), stage_bytes = ring_stage_bytes(p.tile_bytes, p.x_bytes);
  const uint32_t base = ptx::smem_addr(smem), bars = base + p.stages * stage_bytes;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < p.stages; ++s) {
      ptx::mbarrier_init(full_bar(bars, s), 1);
      ptx::mbarrier_init(empty_bar(bars, p.stages, s), max(p.consumers, 1));
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();
  if (warp < p.consumers) {
    for (int i = 0, s = 0, round = 0; i < kRingTiles; ++i) {
      ptx::mbarrier_wait(full_bar(bars, s), uint32_t(round & 1));
      __syncwarp();
      if (lane == 0) ptx::mbarrier_arrive(empty_bar(bars, p.stages, s));
      if (++s == p.stages) s = 0, ++round;
    }
    return;
  }
  const int producer = warp - p.consumers;
  if (lane != 0) return;
  const char* w = p.w + size_t(blockIdx.x) * kRingTiles * p.tile_bytes;
  int s = producer, round = 0;
  for (int i = producer; i < kRingTiles; i += p.producers) {
    if (i >= p.stages) {  // tile i − stages released (or, without consumers, landed)
      const uint32_t bar = p.consumers > 0 ? empty_bar(bars, p.stages, s) : full_bar(bars, s);
      ptx::mbarrier_wait(bar, uint32_t((round - 1) & 1));
    }
    const uint32_t full = full_bar(bars, s);
    ptx::mbarrier_arrive_expect_tx(full, p.tile_bytes + p.x_bytes);
    ptx::bulk_copy_g2s(base + s * stage_bytes, w + size_t(i) * p.tile_bytes, p.tile_bytes, full);
    const int kt = (blockIdx.x * kRingTiles + i) % (kXColumns / 64);
    ptx::tensor_copy_2d_g2s(base + s * stage_bytes + x_offset, &p.x_map, 64 * kt, 0, full);
    if ((s += p.producers) >= p.stages) s -= p.stages, ++round;
  }
  if (p.consumers == 0)  // one producer: the grid ends when its last copy into each slot has landed
    for (int t = 0; t < p.stages && t < kRingTiles; ++t)
      ptx::mbarrier_wait(full_bar(bars, t), uint32_t((kRingTiles - 1 - t) / p.stages) & 1);
#endif
}

__global__ void empty_kernel() {}

// Reads `words` int4 (an L2 flush that leaves no dirty lines); `sink` is never written in practice.
__global__ void read_kernel(const int4* src, size_t words, int* sink) {
  int acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words; i += size_t(gridDim.x) * blockDim.x) {
    const int4 v = __ldcs(src + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x7FFFFFFF) *sink = acc;
}

// Median time (µs) of `launch` over 10 runs after 2, each after L2 is flushed by reading `flush`.
template <typename Launch>
float median_us(Launch launch, const DeviceBuffer& flush) {
  struct Events {
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Events() {
      if (start) cudaEventDestroy(start);
      if (stop) cudaEventDestroy(stop);
    }
  } events;
  SPARSELLM_CHECK_CUDA(cudaEventCreate(&events.start));
  SPARSELLM_CHECK_CUDA(cudaEventCreate(&events.stop));
  const cudaEvent_t start = events.start, stop = events.stop;
  std::vector<float> times;
  for (int run = 0; run < 12; ++run) {
    read_kernel<<<1024, 512>>>(flush.as<const int4>(), flush.bytes() / 16, flush.as<int>());
    SPARSELLM_CHECK_CUDA(cudaEventRecord(start));
    launch();
    SPARSELLM_CHECK_CUDA(cudaGetLastError());
    SPARSELLM_CHECK_CUDA(cudaEventRecord(stop));
    SPARSELLM_CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    SPARSELLM_CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (run >= 2) times.push_back(ms * 1e3f);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::string fixed1(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", v);
  return text;
}

std::string gpu_slug(const char* name) {
  std::string s(name);
  if (s.rfind("NVIDIA ", 0) == 0) s = s.substr(7);
  for (char& c : s) c = c == ' ' ? '-' : char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

int run(const std::string& out_dir) {
  cudaDeviceProp prop;
  SPARSELLM_CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  if (prop.major < 9) throw DeviceError(detail::concat("copy_pipeline needs sm_90 (bulk copies, TMA); ", prop.name,
                                                       " is sm_", prop.major, prop.minor));
  const int sms = prop.multiProcessorCount;
  const size_t stream_bytes = size_t(512) << 20, flush_bytes = size_t(256) << 20;
  const int largest_tile = std::max(*std::max_element(std::begin(kFormatTileBytes), std::end(kFormatTileBytes)),
                                    *std::max_element(std::begin(kSplit24TileBytes), std::end(kSplit24TileBytes)));
  const size_t ring_max = size_t(2 * sms) * kRingTiles * largest_tile;
  DeviceBuffer src_buffer(std::max(stream_bytes, ring_max), "the streamed bytes"),
      x_buffer(size_t(kXMaxRows) * kXColumns * 2, "the X tensor"), flush_buffer(flush_bytes, "the L2 flush");
  for (const DeviceBuffer* b : {&src_buffer, &x_buffer, &flush_buffer})
    SPARSELLM_CHECK_CUDA(cudaMemset(b->data(), 0x3C, b->bytes()));
  char* src = src_buffer.as<char>();
  for (auto kernel : {reinterpret_cast<const void*>(stream_kernel), reinterpret_cast<const void*>(ring_kernel)})
    SPARSELLM_CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 113 * 1024));
  nlohmann::json records = nlohmann::json::array();

  const float copy_us = median_us(
      [&] {
        SPARSELLM_CHECK_CUDA(cudaMemcpyAsync(src + stream_bytes / 2, src, stream_bytes / 2, cudaMemcpyDeviceToDevice));
      },
      flush_buffer);
  const double copy_gbps = double(stream_bytes) / copy_us / 1e3;  // read + write
  std::string md = detail::concat(
      "# Weight-stream pipeline on ", prop.name, "\n\nCopy bandwidth (cudaMemcpy, read + write): ", int(copy_gbps),
      " GB/s. Source: `cpp/bench/copy_pipeline.cu` (what each part measures).\n\n",
      "## Bulk copies streamed by one thread a block\n\n",
      "| bytes a copy | blocks a SM | copies in flight a block | KiB in flight a SM | GB/s | % of copy |\n",
      "|---|---|---|---|---|---|\n");
  for (int blocks_per_sm : {1, 2})
    for (int copy_bytes : {1024, 2048, 3072, 4096, 6144, 8192, 16384})
      for (int kib_per_sm : {32, 64, 96}) {
        const int stages = kib_per_sm * 1024 / blocks_per_sm / copy_bytes;
        if (stages < 2 || stages > 96) continue;
        const int blocks = sms * blocks_per_sm;
        StreamParams p{src, stream_bytes / blocks / copy_bytes * copy_bytes, copy_bytes, stages};
        const int smem = stages * copy_bytes + 8 * stages;
        const float us = median_us([&] { stream_kernel<<<blocks, 32, smem>>>(p); }, flush_buffer);
        const double gbps = double(p.block_bytes) * blocks / us / 1e3;
        records.push_back({{"experiment", "stream"}, {"copy_bytes", copy_bytes}, {"blocks_per_sm", blocks_per_sm},
                           {"stages", stages}, {"kib_in_flight_per_sm", stages * copy_bytes * blocks_per_sm / 1024},
                           {"us", us}, {"gbps", gbps}});
        md += detail::concat("| ", copy_bytes, " | ", blocks_per_sm, " | ", stages, " | ",
                             stages * copy_bytes * blocks_per_sm / 1024, " | ", int(gbps), " | ",
                             int(100 * gbps / copy_gbps), "% |\n");
      }

  const int blocks = 2 * sms;
  const float empty_us = median_us([&] { empty_kernel<<<blocks, 32>>>(); }, flush_buffer);
  records.push_back({{"experiment", "empty"}, {"blocks", blocks}, {"us", empty_us}});

  // One ring run: its median, recorded under `experiment`, and its table row.
  auto time_ring = [&](const char* experiment, const RingParams& r, int x_rows) {
    const int stage_bytes = ring_stage_bytes(r.tile_bytes, r.x_bytes);
    const int smem = r.stages * stage_bytes + 16 * r.stages, threads = 32 * (r.consumers + r.producers);
    const float us = median_us([&] { ring_kernel<<<blocks, threads, smem>>>(r); }, flush_buffer);
    const double bytes = double(blocks) * kRingTiles * r.tile_bytes, gbps = bytes / us / 1e3;
    records.push_back({{"experiment", experiment}, {"tile_bytes", r.tile_bytes}, {"x_rows", x_rows},
                       {"stages", r.stages}, {"producers", r.producers}, {"consumers", r.consumers},
                       {"kib_in_flight_per_sm", 2 * r.stages * stage_bytes / 1024}, {"us", us}, {"gbps", gbps}});
    md += detail::concat("| ", r.tile_bytes, " | ", x_rows, " | ", r.stages, " | ", r.producers, " | ", r.consumers,
                         " | ", 2 * r.stages * stage_bytes / 1024, " | ", fixed1(us), " | ", int(gbps), " | ",
                         int(100 * gbps / copy_gbps), "% |\n");
  };
  const char* ring_header =
      "| weight bytes a tile | X rows | stages a block | producer warps | consumer warps | KiB in flight a SM | µs | "
      "GB/s (weights) | % of copy |\n|---|---|---|---|---|---|---|---|---|\n";

  RingParams r{};
  r.x_map = stream_k::x_tile_map(x_buffer.data(), kXMaxRows, kXColumns, DType::kFloat16, kXRows);
  r.x_bytes = kXRows * 128;
  r.w = src;
  md += detail::concat("\n## A ring of stages: per tile a weight copy and an X tile by TMA, ", kRingTiles,
                       " tiles a block, 2 blocks a SM\n\n",
                       "Tile bytes of the formats: bitmap 9232 / 4320 / 2688 at 50 / 80 / 90%, Tiled-CSL 6576 / 3296 at "
                       "80 / 90% (128 × 64 tiles, headers included).\n\n",
                       "An empty grid of ", blocks, " blocks times ", fixed1(empty_us), " µs from event to event.\n\n",
                       ring_header);
  for (int tile_bytes : kFormatTileBytes)
    for (int stages : {4, 8, 16})
      for (const RingRoles& roles : kRingRoles) {
        r.tile_bytes = tile_bytes;
        r.stages = stages;
        r.producers = roles.producers;
        r.consumers = roles.consumers;
        if (stages * ring_stage_bytes(tile_bytes, r.x_bytes) + 16 * stages > 113 * 1024 ||
            (roles.only_8_stages && stages != 8))
          continue;
        time_ring("ring", r, kXRows);
      }

  md += detail::concat("\n## The ring with X tiles of N rows: split 2:4 tiles at 50 / 90% (", kSplit24TileBytes[0],
                       " / ", kSplit24TileBytes[1], " bytes), the kernels' roles (2 producer, 8 consumer warps) and "
                       "stages (4, 3 from 64 rows)\n\n", ring_header);
  r.producers = 2;
  r.consumers = 8;
  for (int tile_bytes : kSplit24TileBytes)
    for (int x_rows : {16, 32, 64, 128}) {
      r.x_map = stream_k::x_tile_map(x_buffer.data(), kXMaxRows, kXColumns, DType::kFloat16, x_rows);
      r.x_bytes = x_rows * 128;
      r.tile_bytes = tile_bytes;
      r.stages = x_rows >= 64 ? 3 : 4;
      time_ring("ring_x", r, x_rows);
    }
  md += "\n% of copy: the weight bytes a second against the copy bandwidth above, as in the SpMM benchmark tables.\n";

  std::filesystem::create_directories(out_dir);
  const std::string stem = out_dir + "/copy-pipeline-" + gpu_slug(prop.name);
  const nlohmann::json doc = {{"gpu", prop.name}, {"sms", sms}, {"copy_gbps", copy_gbps}, {"records", records}};
  for (const auto& [path, text] : {std::pair{stem + ".json", doc.dump(1) + "\n"}, std::pair{stem + ".md", md}}) {
    std::ofstream file(path);
    file << text;
    if (!file.flush()) throw Error("copy_pipeline: cannot write " + path);
  }
  std::printf("%s", md.c_str());
  return 0;
}

}  // namespace
}  // namespace sparsellm

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: copy_pipeline OUTDIR\n");
    return 2;
  }
  try {
    return sparsellm::run(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "copy_pipeline: %s\n", e.what());
    return 1;
  }
}
