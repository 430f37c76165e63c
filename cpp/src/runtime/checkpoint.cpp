// Checkpoint reader (layout: docs/checkpoint.md). open() runs, in order:
//
//   1. config.json: parsed and checked field by field, as the Python reader
//      does (sparsellm/convert/checkpoint.py): format_version 2, a known
//      architecture and dtype, tp ≥ 1 and 0 ≤ rank < tp, the `files` table, and
//      every tensor entry: format, shape, split, the ranks that hold shards, and
//      the components each shard lists against the format table below.
//   2. rank{r}-of-{tp}.safetensors: size against config.json (and with
//      verify_sha256 its SHA-256), then memory-mapped read-only for the
//      Checkpoint's lifetime.
//   3. the safetensors header (8-byte little-endian length N, then N bytes of
//      JSON): every entry's dtype, shape and data_offsets; each byte range
//      inside the data region, of size product(shape) · itemsize, and no two
//      ranges overlapping. The header holds exactly the components config.json
//      lists for this rank, each with the listed dtype and shape.
//   4. per format, the structure of the stored arrays (every tiled format:
//      tile offsets start at 0, never decrease, end at the number of words;
//      the format's validator accepts the data; stored nonzeros = nnz).
//      These scans run on all hardware threads, one tensor per task.
//
// A generated checkpoint (source.kind "generated": config.json alone, its
// shards listing no components) stops after step 1.
//
// Every error is a FormatError whose message starts with the path of the file
// at fault and, where there is one, names the tensor.
#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/check.h"
#include "formats/tile_grid.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/error.h"
#include "sparsellm/split24.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

using nlohmann::json;
using detail::concat;

constexpr int kFormatVersion = 2;

template <typename... Parts>
[[noreturn]] void format_error(const Parts&... parts) {
  throw FormatError(concat(parts...));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// --- SHA-256 (FIPS 180-4), for verify_sha256 --------------------------------

class Sha256 {
 public:
  void update(const uint8_t* data, size_t bytes) {
    total_ += bytes;
    if (fill_ > 0) {
      const size_t take = std::min(bytes, sizeof(buffer_) - fill_);
      std::memcpy(buffer_ + fill_, data, take);
      fill_ += take;
      data += take;
      bytes -= take;
      if (fill_ < sizeof(buffer_)) return;
      block(buffer_);
      fill_ = 0;
    }
    for (; bytes >= 64; data += 64, bytes -= 64) block(data);
    std::memcpy(buffer_, data, bytes);
    fill_ = bytes;
  }

  std::string hex_digest() {
    const uint64_t bits = total_ * 8;
    const uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (fill_ != 56) update(&zero, 1);
    uint8_t length[8];
    for (int i = 0; i < 8; ++i) length[i] = uint8_t(bits >> (56 - 8 * i));
    update(length, 8);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (uint32_t v : h_)
      for (int shift = 28; shift >= 0; shift -= 4) out += hex[(v >> shift) & 0xF];
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void block(const uint8_t* p) {
    static constexpr uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += b;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }

  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buffer_[64];
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

// --- the format table ----------------------------------------------------------
//
// A format is: the rank of its logical shape, its components (key suffix,
// dtype, shape rule) and, for a tiled format, the validator of its stored
// arrays. A new format is one more row here.

enum class ShapeRule {
  kLogical,      // the shard's logical shape
  kTileOffsets,  // [ceil(rows / 128) · ceil(cols / 64) + 1] (every tiled format cuts 128 × 64)
  kAnyLength,    // 1-D, any length
};

struct ComponentSpec {
  const char* suffix;  // appended to the tensor name
  const char* dtype;   // nullptr: the checkpoint's dtype
  ShapeRule shape;
};

// A tiled format's validator: checks (tile offsets, data, words, m, k) and
// returns the nonzeros stored; throws FormatError naming the first violation.
using TiledValidator = int64_t (*)(const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t);

struct FormatSpec {
  const char* name;
  size_t min_rank, max_rank;  // of the logical shape
  std::vector<ComponentSpec> components;
  const char* kind = nullptr;          // a tiled format's name in messages
  TiledValidator validate = nullptr;   // nullptr: nothing beyond dtypes and shapes
};

// A tiled format: [rows, cols] stored as tile offsets and the data component `data_suffix`.
FormatSpec tiled_format(const char* name, const char* data_suffix, const char* kind, TiledValidator validate) {
  return {name, 2, 2,
          {{".tile_offsets", "uint32", ShapeRule::kTileOffsets}, {data_suffix, "uint32", ShapeRule::kAnyLength}},
          kind, validate};
}

// uint32 array of a component, read through memcpy (the mapping gives no
// alignment guarantee for arrays written after an odd-sized 16-bit array).
std::vector<uint32_t> copy_u32(const ComponentView& c) {
  std::vector<uint32_t> out(c.bytes / sizeof(uint32_t));
  if (!out.empty()) std::memcpy(out.data(), c.data, out.size() * sizeof(uint32_t));
  return out;
}

// The two arrays of a tiled sparse format (Tiled-CSL, bitmap, split 2:4): the tile offsets
// checked to start at 0, never decrease and end at the number of data words
// (the format validators index the data by them), and the data readable in place.
struct TiledArrays {
  std::vector<uint32_t> offsets;  // [tiles + 1]
  std::vector<uint32_t> copy;     // the data, when the mapping leaves it unaligned
  const uint32_t* mapped = nullptr;
  int64_t num_words = 0;
  const uint32_t* data() const { return copy.empty() ? mapped : copy.data(); }
};

TiledArrays tiled_arrays(const std::string& where, const TensorEntry& entry, const char* data_suffix) {
  const int64_t rows = entry.shape[0], cols = entry.shape[1];
  if (rows <= 0 || cols <= 0)
    format_error(where, "format ", entry.format, " needs a non-empty shape, got ", shape_str(entry.shape));
  TiledArrays a;
  a.offsets = copy_u32(entry.component(".tile_offsets"));
  const ComponentView& data = entry.component(data_suffix);
  a.num_words = int64_t(data.bytes / sizeof(uint32_t));
  const std::vector<uint32_t>& offsets = a.offsets;
  if (offsets.front() != 0) format_error(where, "tile_offsets[0] is ", offsets.front(), ", expected 0");
  for (size_t t = 0; t + 1 < offsets.size(); ++t)
    if (offsets[t + 1] < offsets[t])
      format_error(where, "tile_offsets not monotone: tile_offsets[", t + 1, "] = ", offsets[t + 1],
                   " < tile_offsets[", t, "] = ", offsets[t]);
  if (int64_t(offsets.back()) != a.num_words)
    format_error(where, "the last tile offset is ", offsets.back(), " but there are ", a.num_words, " words");
  a.mapped = reinterpret_cast<const uint32_t*>(data.data);
  if (reinterpret_cast<uintptr_t>(a.mapped) % alignof(uint32_t) != 0) a.copy = copy_u32(data);
  return a;
}

// A tiled format's arrays (components[1] holds the data): its validator
// accepts them and counts `nnz` nonzeros. `where` is "<rank file>: tensor <name>: ".
void check_tiled(const std::string& where, const TensorEntry& entry, const FormatSpec& format) {
  const TiledArrays a = tiled_arrays(where, entry, format.components[1].suffix);
  int64_t stored = 0;
  try {
    stored = format.validate(a.offsets.data(), a.data(), a.num_words, entry.shape[0], entry.shape[1]);
  } catch (const FormatError& e) {
    format_error(where, "invalid ", format.kind, " data: ", e.what());
  }
  if (stored != entry.nnz) format_error(where, "stores ", stored, " nonzeros, config.json says ", entry.nnz);
}

const std::vector<FormatSpec>& format_table() {
  static const std::vector<FormatSpec> table = {
      {"dense", 1, 2, {{"", nullptr, ShapeRule::kLogical}}},
      tiled_format("tiled_csl", ".words", "Tiled-CSL", validate_tiled_csl),
      tiled_format("bitmap", ".tiles", "bitmap", validate_bitmap),
      tiled_format("split24", ".tiles", "split 2:4", validate_split24),
  };
  return table;
}

const FormatSpec* find_format(const std::string& name) {
  for (const FormatSpec& f : format_table())
    if (name == f.name) return &f;
  return nullptr;
}

static_assert(bitmap::kTileM == tiled_csl::kTileM && bitmap::kTileK == tiled_csl::kTileK &&
                  split24::kTileM == tiled_csl::kTileM && split24::kTileK == tiled_csl::kTileK,
              "kTileOffsets assumes one tile grid for every tiled format");

// Expected component shape; -1 is any extent.
std::vector<int64_t> expected_shape(ShapeRule rule, const std::vector<int64_t>& logical) {
  switch (rule) {
    case ShapeRule::kLogical:
      return logical;
    case ShapeRule::kTileOffsets: {
      const int64_t tm = (logical[0] + tiled_csl::kTileM - 1) / tiled_csl::kTileM;
      const int64_t tk = (logical[1] + tiled_csl::kTileK - 1) / tiled_csl::kTileK;
      return {tm * tk + 1};
    }
    case ShapeRule::kAnyLength:
      return {-1};
  }
  return {};
}

bool shape_matches(const std::vector<int64_t>& expected, const std::vector<int64_t>& actual) {
  if (expected.size() != actual.size()) return false;
  for (size_t i = 0; i < expected.size(); ++i)
    if (expected[i] >= 0 && expected[i] != actual[i]) return false;
  return true;
}

std::string expected_str(const std::vector<int64_t>& expected) {
  return expected.size() == 1 && expected[0] < 0 ? std::string("a 1-D shape") : "shape " + shape_str(expected);
}

// --- config.json ----------------------------------------------------------------

// `what` prefixes the error, e.g. "<file>: tensor <key>: shape".
std::vector<int64_t> parse_shape(const json& j, const std::string& what) {
  if (!j.is_array()) format_error(what, " is not a list");
  std::vector<int64_t> shape;
  for (const json& d : j) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(INT64_MAX))
      format_error(what, " ", j.dump(), " holds something other than a non-negative integer");
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

std::string rank_file_name(int rank, int tp) { return concat("rank", rank, "-of-", tp, ".safetensors"); }

bool is_split(const std::string& s) { return s == "rows" || s == "columns" || s == "rank0" || s == "replicated"; }

// The components one shard lists must be those of the format, with its dtypes and shapes.
void check_listed_components(const std::string& name, const FormatSpec& fmt, const std::vector<int64_t>& logical,
                             const std::string& dtype, const std::string& rank, const json& components) {
  if (!components.is_object()) format_error("rank ", rank, ": components is not an object");
  if (components.size() != fmt.components.size())
    format_error("rank ", rank, ": ", components.size(), " components listed, format ", fmt.name, " has ",
                 fmt.components.size());
  for (const ComponentSpec& spec : fmt.components) {
    const std::string key = name + spec.suffix;
    if (!components.contains(key)) format_error("rank ", rank, ": component ", key, " not listed");
    const json& c = components.at(key);
    const std::string want_dtype = spec.dtype ? spec.dtype : dtype;
    const std::vector<int64_t> want_shape = expected_shape(spec.shape, logical);
    const std::vector<int64_t> shape = parse_shape(c.at("shape"), "shape");
    if (c.at("dtype").get<std::string>() != want_dtype || !shape_matches(want_shape, shape))
      format_error("rank ", rank, ": component ", key, " is ", c.dump(), ", expected dtype ", want_dtype, " and ",
                   expected_str(want_shape));
  }
}

// A generated checkpoint's shards list no components (nothing is stored).
void check_entry(const std::string& name, const json& entry, const std::string& dtype, int tp, bool generated) {
  const std::string format = entry.at("format").get<std::string>();
  const FormatSpec* fmt = find_format(format);
  if (!fmt) format_error("unknown format '", format, "'");
  const std::vector<int64_t> shape = parse_shape(entry.at("shape"), "shape");
  if (shape.size() < fmt->min_rank || shape.size() > fmt->max_rank)
    format_error("bad shape ", shape_str(shape), " for format ", format);
  const std::string split = entry.at("split").get<std::string>();
  if (!is_split(split)) format_error("unknown split '", split, "'");
  const json& shards = entry.at("shards");
  if (!shards.is_object()) format_error("shards is not an object");
  const int holders = split == "rank0" ? 1 : tp;
  bool ranks_ok = int(shards.size()) == holders;
  for (int r = 0; r < holders && ranks_ok; ++r) ranks_ok = shards.contains(std::to_string(r));
  if (!ranks_ok) {
    std::string listed;
    for (const auto& item : shards.items()) listed += (listed.empty() ? "" : ", ") + item.key();
    format_error("shards for ranks [", listed, "], expected ranks 0..", holders - 1);
  }
  for (const auto& item : shards.items()) {
    const json& shard = item.value();
    if (!shard.at("nnz").is_number_integer()) format_error("rank ", item.key(), ": nnz is not an integer");
    if (!generated) {
      check_listed_components(name, *fmt, shape, dtype, item.key(), shard.at("components"));
    } else if (!shard.at("components").is_object() || !shard.at("components").empty()) {
      format_error("rank ", item.key(), ": a generated checkpoint stores no components");
    }
  }
}

void check_config(const std::string& path, const json& config) {
  if (!config.is_object()) format_error(path, ": expected a JSON object");
  if (!config.contains("format_version") || !config["format_version"].is_number_integer() ||
      config["format_version"].get<int64_t>() != kFormatVersion)
    format_error(path, ": unsupported format_version ",
                 config.contains("format_version") ? config["format_version"].dump() : std::string("(missing)"),
                 " (this sparsellm reads ", kFormatVersion, ")");
  const std::pair<const char*, json::value_t> fields[] = {
      {"architecture", json::value_t::string}, {"model_config", json::value_t::object},
      {"dtype", json::value_t::string},        {"tp", json::value_t::number_unsigned},
      {"tensors", json::value_t::object},      {"files", json::value_t::object},
      {"pruning", json::value_t::object}};
  for (const auto& [field, kind] : fields) {
    const bool ok = config.contains(field) && (config[field].type() == kind ||
                                               (kind == json::value_t::number_unsigned &&
                                                config[field].type() == json::value_t::number_integer));
    if (!ok) format_error(path, ": field '", field, "' missing or of the wrong type");
  }
  const std::string arch = config["architecture"].get<std::string>();
  if (arch != "opt" && arch != "llama") format_error(path, ": unknown architecture '", arch, "' (known: opt, llama)");
  const std::string dtype = config["dtype"].get<std::string>();
  if (dtype != "float16" && dtype != "bfloat16")
    format_error(path, ": unknown dtype '", dtype, "' (stored values are float16 or bfloat16)");
  const int64_t tp = config["tp"].get<int64_t>();
  if (tp < 1 || tp > 4096) format_error(path, ": bad tp ", tp);
  const json& files = config["files"];
  const bool generated = is_generated_checkpoint(config);
  if (generated) {
    const json& source = config["source"];
    if (!files.empty()) format_error(path, ": a generated checkpoint lists rank files");
    if (!source.contains("seed") || !source["seed"].is_number_unsigned())
      format_error(path, ": source.seed of a generated checkpoint must be a non-negative integer");
    if (!source.contains("std") || !source["std"].is_number() || !(source["std"].get<double>() > 0.0) ||
        !std::isfinite(source["std"].get<double>()))
      format_error(path, ": source.std of a generated checkpoint must be a positive number");
  } else {
    bool files_ok = int64_t(files.size()) == tp;
    for (int r = 0; r < tp && files_ok; ++r) files_ok = files.contains(rank_file_name(r, int(tp)));
    if (!files_ok) format_error(path, ": 'files' lists ", files.size(), " files, expected rank0-of-", tp, " ... rank",
                                tp - 1, "-of-", tp, ".safetensors");
  }
  for (const auto& item : config["tensors"].items()) {
    try {
      check_entry(item.key(), item.value(), dtype, int(tp), generated);
    } catch (const FormatError& e) {
      format_error(path, ": tensor ", item.key(), ": ", e.what());
    } catch (const json::exception& e) {
      format_error(path, ": tensor ", item.key(), ": malformed entry (", e.what(), ")");
    }
  }
}

// --- the rank file ----------------------------------------------------------------

struct HeaderEntry {
  std::string dtype;  // our names: "float16", "bfloat16", "uint32", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // within the data region
};

bool safetensors_dtype(const std::string& code, std::string& name, size_t& itemsize) {
  static const std::pair<const char*, std::pair<const char*, size_t>> table[] = {
      {"F16", {"float16", 2}}, {"BF16", {"bfloat16", 2}}, {"U32", {"uint32", 4}}, {"U16", {"uint16", 2}},
      {"F32", {"float32", 4}}, {"I32", {"int32", 4}},     {"I64", {"int64", 8}},  {"U8", {"uint8", 1}}};
  for (const auto& [c, v] : table)
    if (code == c) {
      name = v.first;
      itemsize = v.second;
      return true;
    }
  return false;
}

// Parses and checks the header of a mapped rank file of `size` bytes; returns
// its entries and sets data_begin to the offset of the data region.
std::map<std::string, HeaderEntry> read_header(const std::string& path, const uint8_t* base, uint64_t size, int rank,
                                               int tp, uint64_t& data_begin) {
  if (size < 8) format_error(path, ": ", size, " bytes, too short for a safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > size - 8)
    format_error(path, ": header length ", n, " reaches beyond the end of the file (", size, " bytes)");
  data_begin = 8 + n;
  const uint64_t data_size = size - data_begin;
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(base) + 8, reinterpret_cast<const char*>(base) + 8 + n);
  } catch (const json::exception& e) {
    format_error(path, ": header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) format_error(path, ": header is not a JSON object");

  std::map<std::string, HeaderEntry> entries;
  for (const auto& item : header.items()) {
    const std::string& key = item.key();
    const json& v = item.value();
    if (key == "__metadata__") {
      // Written by sparsellm; absent from files rewritten by other tools.
      if (!v.is_object()) format_error(path, ": __metadata__ is not an object");
      const std::pair<const char*, int> ids[] = {{"rank", rank}, {"tp", tp}};
      for (const auto& [field, want] : ids)
        if (v.contains(field) && (!v[field].is_string() || v[field].get<std::string>() != std::to_string(want)))
          format_error(path, ": header metadata says ", field, " ", v[field].dump(), ", expected ", want);
      continue;
    }
    try {
      HeaderEntry e;
      size_t itemsize = 0;
      const std::string code = v.at("dtype").get<std::string>();
      if (!safetensors_dtype(code, e.dtype, itemsize))
        format_error(path, ": tensor ", key, ": unsupported dtype '", code, "'");
      e.shape = parse_shape(v.at("shape"), concat(path, ": tensor ", key, ": shape"));
      const json& offsets = v.at("data_offsets");
      if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
          !offsets[1].is_number_unsigned())
        format_error(path, ": tensor ", key, ": data_offsets ", offsets.dump(), " is not a pair of offsets");
      e.begin = offsets[0].get<uint64_t>();
      e.end = offsets[1].get<uint64_t>();
      if (e.begin > e.end || e.end > data_size)
        format_error(path, ": tensor ", key, ": data_offsets [", e.begin, ", ", e.end,
                     "] out of range of the data region of ", data_size, " bytes");
      uint64_t bytes = itemsize;
      for (int64_t d : e.shape)
        if (__builtin_mul_overflow(bytes, uint64_t(d), &bytes))
          format_error(path, ": tensor ", key, ": shape ", shape_str(e.shape), " overflows");
      if (bytes != e.end - e.begin)
        format_error(path, ": tensor ", key, ": shape ", shape_str(e.shape), " of ", code, " needs ", bytes,
                     " bytes, data_offsets give ", e.end - e.begin);
      entries.emplace(key, std::move(e));
    } catch (const json::exception& ex) {
      format_error(path, ": tensor ", key, ": malformed header entry (", ex.what(), ")");
    }
  }
  // No two arrays may share bytes.
  std::vector<std::pair<const std::string*, const HeaderEntry*>> ranges;
  for (const auto& [key, e] : entries)
    if (e.end > e.begin) ranges.push_back({&key, &e});
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].second->begin < ranges[i - 1].second->end)
      format_error(path, ": tensors ", *ranges[i - 1].first, " and ", *ranges[i].first,
                   " overlap (data_offsets [", ranges[i - 1].second->begin, ", ", ranges[i - 1].second->end,
                   "] and [", ranges[i].second->begin, ", ", ranges[i].second->end, "])");
  return entries;
}

// A tensor's entry for rank `rank_key` (components are added by the caller).
TensorEntry describe_entry(const std::string& name, const json& entry, const std::string& rank_key) {
  const json& shard = entry["shards"][rank_key];
  TensorEntry t;
  t.name = name;
  t.format = entry["format"].get<std::string>();
  t.shape = parse_shape(entry["shape"], "shape");
  t.split = entry["split"].get<std::string>();
  t.pruned = entry.contains("pruned") && entry["pruned"].is_boolean() && entry["pruned"].get<bool>();
  t.nnz = shard["nnz"].get<int64_t>();
  t.sparsity = shard.contains("sparsity") && shard["sparsity"].is_number() ? shard["sparsity"].get<double>() : 0.0;
  return t;
}

std::string read_text(const std::string& path, bool& found) {
  std::ifstream in(path, std::ios::binary);
  found = bool(in);
  std::ostringstream text;
  if (found) text << in.rdbuf();
  return text.str();
}

}  // namespace

bool is_generated_checkpoint(const json& config) {
  const auto source = config.find("source");
  return source != config.end() && source->is_object() && source->contains("kind") &&
         (*source)["kind"] == "generated";
}

const ComponentView& TensorEntry::component(const std::string& suffix) const {
  auto it = components.find(name + suffix);
  if (it == components.end())
    throw FormatError(concat("tensor ", name, " (format ", format, ") has no component ", name, suffix));
  return it->second;
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir, int rank, bool verify_sha256) {
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  ck->rank_ = rank;
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    format_error("checkpoint directory not found: ", dir);

  // 1. config.json
  const std::string config_path = dir + "/config.json";
  bool found = false;
  const std::string text = read_text(config_path, found);
  if (!found) format_error(config_path, " not found: ", dir, " is not a complete sparsellm checkpoint");
  try {
    ck->config_ = json::parse(text);
  } catch (const json::exception& e) {
    format_error(config_path, ": not valid JSON: ", e.what());
  }
  const json& config = ck->config_;
  check_config(config_path, config);
  ck->architecture_ = config["architecture"].get<std::string>();
  const std::string dtype = config["dtype"].get<std::string>();
  ck->dtype_ = dtype == "float16" ? DType::kFloat16 : DType::kBFloat16;
  ck->tp_ = int(config["tp"].get<int64_t>());
  if (rank < 0 || rank >= ck->tp_)
    format_error(config_path, ": rank ", rank, " requested, but the checkpoint has tp = ", ck->tp_, " (ranks 0..",
                 ck->tp_ - 1, ")");

  const std::string rank_key = std::to_string(rank);
  if (is_generated_checkpoint(config)) {  // no rank file: every tensor this rank holds, without components
    ck->rank_file_ = concat(config_path, " (generated, rank ", rank, ")");
    ck->generated_ = true;
    ck->seed_ = config["source"]["seed"].get<uint64_t>();
    ck->weight_std_ = config["source"]["std"].get<float>();
    for (const auto& item : config["tensors"].items())
      if (item.value()["shards"].contains(rank_key)) {
        ck->names_.push_back(item.key());
        ck->tensors_.emplace(item.key(), describe_entry(item.key(), item.value(), rank_key));
      }
    return ck;
  }

  // 2. the rank file: size, hash, mapping
  const std::string file_name = rank_file_name(rank, ck->tp_);
  const std::string path = dir + "/" + file_name;
  ck->rank_file_ = path;
  const json& record = config["files"][file_name];
  if (!record.is_object() || !record.contains("bytes") || !record["bytes"].is_number_unsigned())
    format_error(config_path, ": files entry of ", file_name, " has no size in bytes");
  const uint64_t recorded = record["bytes"].get<uint64_t>();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) format_error("checkpoint file missing: ", path);
    format_error(path, ": cannot open: ", std::strerror(errno));
  }
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    format_error(path, ": cannot stat: ", std::strerror(err));
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size != recorded) {
    ::close(fd);
    format_error(path, ": ", size, " bytes, but config.json records ", recorded, " (truncated or altered)");
  }
  if (size > 0) {
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (map == MAP_FAILED) format_error(path, ": cannot map ", size, " bytes: ", std::strerror(err));
    ck->mapping_ = map;
    ck->mapping_bytes_ = size;
  } else {
    ::close(fd);
  }
  const uint8_t* base = static_cast<const uint8_t*>(ck->mapping_);
  if (verify_sha256) {
    if (!record.contains("sha256") || !record["sha256"].is_string())
      format_error(config_path, ": files entry of ", file_name, " has no sha256");
    Sha256 hash;
    if (size > 0) hash.update(base, size);
    if (hash.hex_digest() != record["sha256"].get<std::string>())
      format_error(path, ": sha256 differs from config.json (corrupt file)");
  }

  // 3. the header against config.json
  uint64_t data_begin = 0;
  const std::map<std::string, HeaderEntry> header = read_header(path, base, size, rank, ck->tp_, data_begin);
  size_t listed = 0;
  std::vector<std::pair<uint64_t, std::string>> order;  // (first byte, name): storage order
  for (const auto& item : config["tensors"].items()) {
    const json& entry = item.value();
    const json& shards = entry["shards"];
    if (!shards.contains(rank_key)) continue;
    TensorEntry t = describe_entry(item.key(), entry, rank_key);
    uint64_t first = UINT64_MAX;
    for (const auto& c : shards[rank_key]["components"].items()) {
      const std::string& key = c.key();
      auto h = header.find(key);
      if (h == header.end())
        format_error(path, ": tensor ", t.name, ": component ", key, " listed in config.json is missing from the file");
      const std::string want_dtype = c.value()["dtype"].get<std::string>();
      const std::vector<int64_t> want_shape = parse_shape(c.value()["shape"], "shape");
      if (h->second.dtype != want_dtype || h->second.shape != want_shape)
        format_error(path, ": tensor ", t.name, ": component ", key, " is ", h->second.dtype, " ",
                     shape_str(h->second.shape), ", config.json says ", want_dtype, " ", shape_str(want_shape));
      ComponentView view;
      view.key = key;
      view.dtype = h->second.dtype;
      view.shape = h->second.shape;
      view.bytes = size_t(h->second.end - h->second.begin);
      view.data = base + data_begin + h->second.begin;
      t.components.emplace(key, std::move(view));
      first = std::min(first, h->second.begin);
      ++listed;
    }
    order.push_back({first, t.name});
    ck->tensors_.emplace(t.name, std::move(t));
  }
  if (listed != header.size()) {
    std::string extra;
    for (const auto& [key, e] : header) {
      bool known = false;
      for (const auto& [name, t] : ck->tensors_) known = known || t.components.count(key);
      if (!known) extra += (extra.empty() ? "" : ", ") + key;
    }
    format_error(path, ": holds tensors config.json does not list for rank ", rank, ": ", extra);
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [first, name] : order) ck->names_.push_back(name);

  // 4. per-format structure, one tensor per task
  std::vector<std::pair<const FormatSpec*, const TensorEntry*>> checks;
  for (const std::string& name : ck->names_) {
    const TensorEntry& t = ck->tensors_.at(name);
    if (const FormatSpec* format = find_format(t.format); format->validate) checks.push_back({format, &t});
  }
  detail::parallel_ranges(int64_t(checks.size()), 0, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      check_tiled(concat(path, ": tensor ", checks[i].second->name, ": "), *checks[i].second, *checks[i].first);
  });
  return ck;
}

Checkpoint::~Checkpoint() {
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

const TensorEntry& Checkpoint::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw FormatError(concat(rank_file_, ": rank ", rank_, " holds no tensor ", name,
                             config_.contains("tensors") && config_["tensors"].contains(name)
                                 ? " (it is stored on other ranks only)"
                                 : " (config.json does not list it)"));
  return it->second;
}

}  // namespace sparsellm
