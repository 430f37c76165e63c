"""Per-weight storage format choice (dense, Tiled-CSL or bitmap) by a calibrated speed model.

A weight W[M, K] at sparsity s is multiplied by X[N, K] (N = batch size at decode). The
time of one product in format f is modelled as

    t_f(M, K, N, s) = fixed_f + max(bytes_f · per_byte_f,
                                    T · (per_tile_f + max(N, 8) · per_tile_column_f) + nnz · per_nonzero_f)

    T        = ⌈M/128⌉ · ⌈K/64⌉, the 128 × 64 tiles of both sparse formats (for dense a
               count of the work in the same unit)
    bytes_f  = the weight's stored bytes in format f (from M, K and the nonzero count,
               docs/formats.md "Size") + the activations 2 (N K + N M)
    fixed_f  µs per launch; per_byte_f µs per byte (1 / effective bandwidth); per_tile_f and
             per_tile_column_f µs per tile and per tile and column of X (decoding a tile and
             its tensor-core work; the smallest column block is 8); per_nonzero_f µs per
             stored nonzero (nnz = (1 − s) M K; expanding it into shared memory)

memory traffic and tile work overlap (the kernels pipeline loads under compute), hence the
max: on H100 the bitmap kernel is tile-bound at decode sizes (its time barely moves from
50 % to 90 % sparsity), Tiled-CSL's time is a per-tile cost plus one per nonzero, dense is
bandwidth-bound.

The constants of each format are fitted to benchmark records of one GPU (``sparsellm.bench
spmm`` output) by ``fit_model``: least squares on relative error (each equation divided by
its measured time), non-negative, alternating between assigning each record to the memory or
the tile term and solving the linear problem that assignment gives, from several starting
splits; the launch cost ``fixed_us`` is shared by the formats. A model is a JSON document
(``SpeedModel.to_json``) cached per GPU; ``load_model`` finds it in this order: an explicit
file, ``$XDG_CACHE_HOME/sparsellm/format-model-<gpu>.json`` (``~/.cache``; written by
``python -m sparsellm.bench calibrate``), the models shipped in ``sparsellm/data/`` (fitted
from docs/benchmarks/ by ``fit_benchmark_file``), and last the H100 model.

The choice for a weight (``FormatPolicy.choose``): the format of lowest predicted time at
the decode batch N (default 16) among the sparse formats measured at that sparsity or lower;
dense unless it is predicted at least 1.05x faster. The reason is kept in words
(``"bitmap predicted 1.52x over dense at N=16"``). Prefill, at large N, runs through the same
weight: the sparse formats are slower than dense there (0.4-0.7x at N = 128 on H100), which
the choice accepts because decode dominates generation time.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from sparsellm.errors import FormatError, InvalidArgument

logger = logging.getLogger("sparsellm.format_choice")

MODEL_KIND = "sparsellm-format-model"
MODEL_VERSION = 1
FORMATS = ("dense", "tiled_csl", "bitmap", "split24")
COEFFICIENTS = ("fixed_us", "us_per_byte", "us_per_tile", "us_per_tile_column", "us_per_nonzero")
DEFAULT_DECODE_BATCH = 16
DEFAULT_GPU = "NVIDIA H100 80GB HBM3"
# Benchmark impl names -> storage format names.
IMPL_FORMAT = {"cublas": "dense", "tiled_csl": "tiled_csl", "bitmap": "bitmap", "split24": "split24"}
DATA_DIR = Path(__file__).resolve().parent / "data"

TILE_ROWS, TILE_COLS = 128, 64
MIN_COLUMN_BLOCK = 8


def gpu_tag(name: str) -> str:
    """File-name tag of a GPU name, as the benchmarks write it: 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    return name.strip().replace("NVIDIA ", "").replace(" ", "-").lower()


def weight_bytes(fmt: str, m: int, k: int, sparsity: float) -> float:
    """Stored bytes of W[m, k] at ``sparsity`` in ``fmt`` (docs/formats.md "Size"; padding averaged)."""
    tiles = math.ceil(m / TILE_ROWS) * math.ceil(k / TILE_COLS)
    nnz = (1.0 - sparsity) * m * k
    if fmt == "dense":
        return 2.0 * m * k
    if fmt == "tiled_csl":  # 4 B per nonzero; per tile a 16 B header, ~48 B padding, 4 B offset
        return 4.0 * nnz + 68.0 * tiles + 4.0
    if fmt == "bitmap":  # 2 B per nonzero; per tile 1040 B of masks and row starts, ~8 B padding, 4 B offset
        return 2.0 * nnz + 1052.0 * tiles + 4.0
    if fmt == "split24":  # per tile 9248 B of header, indices and slots, 4 B per residual nonzero (or a dense tile)
        return min(9260.0 + 4.0 * TILE_ROWS * TILE_COLS * split24_residual(sparsity), 16516.0) * tiles + 4.0
    raise InvalidArgument(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def split24_residual(sparsity: float) -> float:
    """Expected fraction of a matrix's elements past the first two nonzeros of their group of four,
    for nonzeros placed independently at density 1 − sparsity (split 2:4's residual)."""
    d = 1.0 - sparsity
    return (4 * d ** 3 * (1 - d) + 2 * d ** 4) / 4


def features(fmt: str, m: int, k: int, n: int, sparsity: float) -> tuple[float, float, float, float]:
    """(bytes moved, tiles, tile-columns, nonzeros) of one product; see the module docstring."""
    if m <= 0 or k <= 0 or n <= 0:
        raise InvalidArgument(f"bad product shape M={m} K={k} N={n}")
    if not 0.0 <= sparsity <= 1.0:
        raise InvalidArgument(f"sparsity {sparsity} outside [0, 1]")
    tiles = float(math.ceil(m / TILE_ROWS) * math.ceil(k / TILE_COLS))
    moved = weight_bytes(fmt, m, k, sparsity) + 2.0 * (n * k + n * m)
    return moved, tiles, tiles * max(n, MIN_COLUMN_BLOCK), (1.0 - sparsity) * m * k


def predict_us(c: Mapping[str, float], x: tuple[float, float, float, float]) -> float:
    """The model's time of one product from its ``features`` and a format's coefficients."""
    moved, tiles, tile_columns, nonzeros = x
    return c["fixed_us"] + max(moved * c["us_per_byte"], tiles * c["us_per_tile"]
                               + tile_columns * c["us_per_tile_column"] + nonzeros * c["us_per_nonzero"])


@dataclass(frozen=True)
class SpeedModel:
    """Fitted constants per format (``COEFFICIENTS``) of one GPU."""

    gpu: str
    coefficients: Mapping[str, Mapping[str, float]]  # format -> {fixed_us, us_per_byte, us_per_tile_column}
    source: str = ""
    fit: Mapping[str, Any] = field(default_factory=dict)  # records, relative rms error per format

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f for f in FORMATS if f in self.coefficients)

    def time_us(self, fmt: str, m: int, k: int, n: int, sparsity: float) -> float:
        """Predicted µs of Y[n, m] = X[n, k] · W[m, k]ᵀ with W stored in ``fmt``."""
        if fmt not in self.coefficients:
            raise InvalidArgument(f"the speed model of {self.gpu} has no format {fmt!r}")
        return predict_us(self.coefficients[fmt], features(fmt, m, k, n, 0.0 if fmt == "dense" else sparsity))

    def speedup(self, fmt: str, m: int, k: int, n: int, sparsity: float) -> float:
        """Predicted time of dense over that of ``fmt`` (> 1: ``fmt`` is faster)."""
        return self.time_us("dense", m, k, n, sparsity) / self.time_us(fmt, m, k, n, sparsity)

    def to_json(self) -> dict[str, Any]:
        return {"kind": MODEL_KIND, "version": MODEL_VERSION, "gpu": self.gpu, "source": self.source,
                "fit": dict(self.fit), "formats": {f: dict(self.coefficients[f]) for f in self.formats}}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "SpeedModel":
        """Validated model from a parsed JSON document; FormatError names ``where`` and the problem."""
        def bad(problem: str) -> FormatError:
            return FormatError(f"{where}: not a sparsellm format model: {problem}")

        if not isinstance(doc, dict) or doc.get("kind") != MODEL_KIND:
            raise bad(f'expected an object with "kind": "{MODEL_KIND}"')
        if doc.get("version") != MODEL_VERSION:
            raise bad(f"unsupported version {doc.get('version')!r} (this sparsellm reads {MODEL_VERSION})")
        if not isinstance(doc.get("gpu"), str) or not doc["gpu"]:
            raise bad('missing "gpu" name')
        formats = doc.get("formats")
        if not isinstance(formats, dict) or "dense" not in formats or len(formats) < 2:
            raise bad('"formats" must hold "dense" and at least one sparse format')
        coefficients = {}
        for fmt, values in formats.items():
            if fmt not in FORMATS:
                raise bad(f"unknown format {fmt!r}")
            if not isinstance(values, dict) or set(values) != set(COEFFICIENTS):
                raise bad(f"format {fmt!r} must have exactly the coefficients {', '.join(COEFFICIENTS)}")
            for name, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not math.isfinite(value) or value < 0:
                    raise bad(f"{fmt}.{name} = {value!r} is not a finite number >= 0")
            if all(values[name] == 0 for name in COEFFICIENTS[1:]):
                raise bad(f"format {fmt!r} predicts a time independent of the product's size")
            coefficients[fmt] = {name: float(values[name]) for name in COEFFICIENTS}
        return cls(doc["gpu"], coefficients, str(doc.get("source", "")), dict(doc.get("fit") or {}))


def _solve_nonnegative(a: Any, b: Any) -> Any:
    """argmin ‖A c − b‖² over c ≥ 0, exactly, by least squares on every subset of A's (4) columns."""
    import numpy as np

    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    a = a / scale  # conditioning: the columns differ by ~10 orders of magnitude
    best_err, best = math.inf, np.zeros(a.shape[1])
    for size in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), size):
            sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(sol < 0):
                continue
            coef = np.zeros(a.shape[1])
            coef[list(cols)] = sol
            err = float(np.sum((a @ coef - b) ** 2))
            if err < best_err * (1 - 1e-12):
                best_err, best = err, coef
    return best / scale


def _fit_format(x: Any, us: Any, fixed_us: float) -> tuple[dict[str, float], float]:
    """Coefficients of one format given the launch cost, from features x [records, 4] and times us
    [records]; and the rms relative error.

    For a fixed assignment of records to the memory term or the tile term the model is
    linear; alternate assignment and non-negative solve from a range of initial splits
    (the ratio of tile to memory cost) and keep the best fit.
    """
    import numpy as np

    moved, tiles, tile_columns, nonzeros = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
    target = 1.0 - fixed_us / us
    best_rms, best = math.inf, None
    for split in np.geomspace(1e-4, 1e2, 25):  # µs per tile per µs per byte, initial guess
        tile_bound = tiles * split > moved * 1e-3
        for _ in range(50):
            a = np.stack([moved * ~tile_bound, tiles * tile_bound, tile_columns * tile_bound,
                          nonzeros * tile_bound], axis=1)
            coef = _solve_nonnegative(a / us[:, None], target)
            new = tiles * coef[1] + tile_columns * coef[2] + nonzeros * coef[3] > moved * coef[0]
            if np.array_equal(new, tile_bound):
                break
            tile_bound = new
        c = dict(zip(COEFFICIENTS, [fixed_us, *map(float, coef)]))
        predicted = np.array([predict_us(c, tuple(row)) for row in x])
        rms = float(np.sqrt(np.mean((predicted / us - 1.0) ** 2)))
        if rms < best_rms * (1 - 1e-9):
            best_rms, best = rms, c
    return best, best_rms


def fit_model(records: Iterable[Mapping[str, Any]], gpu: str, source: str = "") -> SpeedModel:
    """Fit the constants to benchmark records (keys impl, M, K, N, sparsity, us).

    Records of impls other than cublas / tiled_csl / bitmap are ignored. The fit minimizes
    the relative error, so small and large products weigh alike. The launch cost
    ``fixed_us`` is one for all formats (the same launch and tail; fitted per format it
    would only absorb noise and make small weights look faster in one format), found by a
    search over a grid below the shortest measured time.
    """
    import numpy as np

    by_format: dict[str, tuple[list, list, list]] = {}
    for r in records:
        fmt = IMPL_FORMAT.get(r.get("impl"))
        if fmt is None:
            continue
        us, sparsity = float(r["us"]), float(r["sparsity"])
        if not us > 0:
            raise InvalidArgument(f"benchmark record with time {us} µs: {dict(r)}")
        x = features(fmt, int(r["M"]), int(r["K"]), int(r["N"]), 0.0 if fmt == "dense" else sparsity)
        rows, times, sparsities = by_format.setdefault(fmt, ([], [], []))
        rows.append(x)
        times.append(us)
        sparsities.append(sparsity)
    if "dense" not in by_format or len(by_format) < 2:
        raise InvalidArgument(f"fitting a format model needs records of cublas and at least one sparse format; "
                              f"got {sorted(by_format) or 'none'}")
    for fmt, (rows, _, _) in by_format.items():
        if len(rows) < len(COEFFICIENTS):
            raise InvalidArgument(f"{len(rows)} {fmt} records; at least {len(COEFFICIENTS)} are needed")
    data = {f: (np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64))
            for f, (x, t, _) in by_format.items()}
    def fit_all(fixed_us: float) -> tuple[float, dict]:
        fits = {f: _fit_format(x, t, fixed_us) for f, (x, t) in data.items()}
        return sum(rms**2 * len(data[f][1]) for f, (_, rms) in fits.items()), fits

    # grid below the shortest measured time, then golden-section search next to the best point
    grid = np.linspace(0.0, 0.99 * min(float(t.min()) for _, t in data.values()), 19)
    errors = [fit_all(float(v))[0] for v in grid]
    i = int(np.argmin(errors))
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(20):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if fit_all(a)[0] <= fit_all(b)[0]:
            hi = b
        else:
            lo = a
    best_err, best = fit_all(0.5 * (lo + hi))
    if errors[i] < best_err:
        best_err, best = fit_all(float(grid[i]))
    fit = {"records": {f: len(data[f][1]) for f in FORMATS if f in data},
           "rms_relative_error": {f: round(best[f][1], 4) for f in FORMATS if f in data},
           "sparsity_range": {f: [min(by_format[f][2]), max(by_format[f][2])] for f in FORMATS[1:] if f in data}}
    return SpeedModel(gpu, {f: best[f][0] for f in FORMATS if f in data}, source, fit)


def fit_benchmark_file(path: str | os.PathLike) -> SpeedModel:
    """The model fitted from one ``spmm-<gpu>.json`` written by ``python -m sparsellm.bench spmm``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        records, gpu = doc["records"], doc["gpu"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: not a sparsellm SpMM benchmark file: {exc}") from exc
    source = f"{path.name} (commit {doc.get('commit', '?')}, {doc.get('date', '?')})"
    return fit_model(records, gpu, source)


def read_model(path: str | os.PathLike) -> SpeedModel:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the format model: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{path}: not a sparsellm format model: invalid JSON ({exc})") from exc
    return SpeedModel.from_json(doc, str(path))


def write_model(model: SpeedModel, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    os.replace(temp, path)  # a reader never sees half a file
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsellm"


def model_file_name(gpu: str) -> str:
    return f"format-model-{gpu_tag(gpu)}.json"


def current_gpu_name() -> str | None:
    """The current CUDA device's name when torch sees one (torch is optional here)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def load_model(gpu: str | None = None, calibration: str | os.PathLike | None = None) -> SpeedModel:
    """The speed model to choose formats by (lookup order in the module docstring).

    ``calibration``: a model file, used as is. ``gpu``: a GPU name or tag
    ('NVIDIA H100 80GB HBM3' or 'h100-80gb-hbm3'; default: the current GPU, else H100);
    a named GPU without a cached or shipped model is an error, the current GPU falls back
    to the H100 model with a warning.
    """
    if calibration is not None:
        return read_model(calibration)
    explicit = gpu is not None
    name = gpu if explicit else (current_gpu_name() or DEFAULT_GPU)
    for candidate in (cache_dir() / model_file_name(name), DATA_DIR / model_file_name(name)):
        if candidate.is_file():
            return read_model(candidate)
    shipped = sorted(p.name for p in DATA_DIR.glob("format-model-*.json"))
    if explicit:
        raise InvalidArgument(
            f"no format model for GPU {gpu!r} (looked for {model_file_name(name)} in {cache_dir()} and the "
            f"package; shipped: {', '.join(shipped) or 'none'}); run `python -m sparsellm.bench calibrate` on "
            f"that GPU or pass a model file")
    logger.warning("no format model for %s; using the %s model (python -m sparsellm.bench calibrate "
                   "measures this GPU)", name, DEFAULT_GPU)
    return read_model(DATA_DIR / model_file_name(DEFAULT_GPU))


@dataclass(frozen=True)
class Choice:
    format: str
    reason: str
    speedups: Mapping[str, float]  # sparse format -> predicted speedup over dense at the decode batch


@dataclass(frozen=True)
class FormatPolicy:
    """How ``--format auto`` stores a pruned weight: the format fastest at ``decode_batch``.

    A sparse format is a candidate only at a sparsity not below the lowest it was measured
    at (the model's ``sparsity_range``; no extrapolation downwards) and must be predicted at
    least ``min_speedup`` times faster than dense: a smaller gain is within the model's error
    (rms 5-10 % on H100) and dense is then the safer choice (it is also the faster one for
    prefill).
    """

    model: SpeedModel
    decode_batch: int = DEFAULT_DECODE_BATCH
    min_speedup: float = 1.05

    def __post_init__(self) -> None:
        if isinstance(self.decode_batch, bool) or not isinstance(self.decode_batch, int) or self.decode_batch < 1:
            raise InvalidArgument(f"decode batch must be a positive integer, got {self.decode_batch!r}")

    @classmethod
    def load(cls, gpu: str | None = None, calibration: str | os.PathLike | None = None,
             decode_batch: int = DEFAULT_DECODE_BATCH) -> "FormatPolicy":
        return cls(load_model(gpu, calibration), decode_batch)

    def candidates(self, sparsity: float) -> list[str]:
        """The sparse formats the model may choose at ``sparsity``."""
        ranges = self.model.fit.get("sparsity_range", {})
        return [f for f in self.model.formats if f != "dense" and sparsity >= ranges.get(f, (0.0,))[0] - 1e-9]

    def choose(self, shape: tuple[int, int], sparsity: float) -> Choice:
        """The format of a weight of ``shape`` [M, K] (the shard a rank multiplies) at ``sparsity``."""
        m, k = shape
        n = self.decode_batch
        speedups = {f: self.model.speedup(f, m, k, n, sparsity) for f in self.candidates(sparsity)}
        if not speedups:
            low = min(self.model.fit["sparsity_range"][f][0] for f in self.model.formats if f != "dense")
            return Choice("dense", f"sparsity {sparsity:.2f} below the measured range of the sparse formats "
                                   f"(from {low:.2f})", speedups)
        best = max(speedups, key=lambda f: speedups[f])
        if speedups[best] >= self.min_speedup:
            return Choice(best, f"{best} predicted {speedups[best]:.2f}x over dense at N={n}", speedups)
        return Choice("dense", f"no sparse format predicted {self.min_speedup:.2f}x over dense at N={n} "
                               f"(best: {best} {speedups[best]:.2f}x)", speedups)
