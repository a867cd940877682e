"""The ARM in exact integer (fixed-point) arithmetic, as evaluated at coding time.

Encoder and decoder must choose the same table for every symbol on any machine, batch shape or
thread count, so the ARM is evaluated on integers only:

* weights and biases of attribute a are integers at step ``2**-s_a`` (``s_a = weight_shifts[a]``,
  chosen by the codec); contexts are integers clamped to +-CONTEXT_CLAMP;
* layer l: ``acc = x @ W + (b << in_frac)``; hidden layers then requantize to
  ``activation_frac_bits`` (F) fractional bits by a floor shift and clamp to
  ``[0, HIDDEN_CLAMP * 2**F]`` (the bounded ReLU of nn/arm.py);
* the output (mu, log-scale) at scale ``2**(s_a + F)`` is rounded (floor(x + 1/2)) to the table
  grid: mu to ``1/M`` (M mean bins), the log-scale to the table step; mu is split into its nearest
  integer ``mu_int`` and a mean bin, the log-scale becomes a scale bin clamped to the table range.

The integer arithmetic is carried out in float64 (or float32) tensors with BLAS matmuls: every
product and partial sum is an integer whose magnitude is bounded (interval bounds from the actual
weights and context bound, checked here) below 2**53 (2**24 for float32), so each operation is
exact and the result cannot depend on summation order, blocking or threads.  float32 is used for
a layer only where its bound allows (and only while PyTorch runs float32 matmuls in IEEE precision,
not TF32/bf16), which is decided from an upper bound, so both choices give identical integers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ralhe_me.entropy.laplace import LaplaceTableConfig, get_tables, load_rans, rans_encode
from ralhe_me.nn.arm import CONTEXT_CLAMP, HIDDEN_CLAMP, ArmConfig

DEFAULT_ACTIVATION_FRAC_BITS = 6
MAX_WEIGHT_SHIFT = 24
WEIGHT_INT_LIMIT = 1 << 24  # |integer weight| must stay below (laplace.SYMBOL_LIMIT for the rANS escape)
MU_LIMIT = 1 << 20  # |mu| is clamped to this (keeps x - mu_int below laplace.SYMBOL_LIMIT)
_EXACT_F64 = float(1 << 52)  # bounds kept below this (one bit of room for the rounding offsets)
_EXACT_F32 = float(1 << 24)
_EXACT_I32 = float(1 << 31)
_SAFETY = 1.0 + 1e-9  # bounds are computed in float64: inflate them so they stay upper bounds
_FORMAT_VERSION = 1

# Parameters are coded with a wide Laplace family (zero mean, one scale per layer's weights/biases).
PARAM_TABLE_CONFIG = LaplaceTableConfig(
    log_scale_min=-1.0, log_scale_step_log2=2, num_scale_bins=49, mean_bins_log2=0, tail_log2=12, max_half_width=4096
)


class ArmQuantizationError(ValueError):
    """Weights that cannot be represented in the fixed-point format (too large, bad shift)."""


class ArmFormatError(ValueError):
    """Serialized ARM bytes that cannot be parsed."""


class ArmInputError(ValueError):
    """Contexts given to the integer ARM that are not integer-valued or have the wrong shape."""


@dataclass(frozen=True, eq=False)
class ArmPrediction:
    """What the coder uses for each symbol, and its exact float view."""

    mu_int: Tensor  # int64 [A, n]: the residual coded is x - mu_int
    table_index: Tensor  # int64 [A, n]: scale_bin * num_mean_bins + mean_bin
    mu: Tensor  # float64 [A, n]: the quantized mean (mu_int + mean fraction)
    log_scale: Tensor  # float64 [A, n]: the table's log-scale


@dataclass(frozen=True, eq=False)
class QuantizedArm:
    """A attributes' ARMs in fixed point.  weights[l]: int64 [A, in, out], biases[l]: int64 [A, out],
    real value = integer * 2**-weight_shifts[a]."""

    config: ArmConfig
    weight_shifts: tuple
    activation_frac_bits: int
    weights: tuple
    biases: tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_shifts", tuple(int(s) for s in self.weight_shifts))
        object.__setattr__(self, "weights", tuple(np.asarray(w, dtype=np.int64) for w in self.weights))
        object.__setattr__(self, "biases", tuple(np.asarray(b, dtype=np.int64) for b in self.biases))
        a = len(self.weight_shifts)
        if a < 1 or a > 255:
            raise ArmQuantizationError(f"need 1..255 attributes, got {a}")
        if any(not 0 <= s <= MAX_WEIGHT_SHIFT for s in self.weight_shifts):
            raise ArmQuantizationError(f"weight shifts must be in [0, {MAX_WEIGHT_SHIFT}], got {self.weight_shifts}")
        if not 0 <= self.activation_frac_bits <= 15:
            raise ArmQuantizationError(f"activation_frac_bits must be in [0, 15], got {self.activation_frac_bits}")
        dims = self.config.layer_dims
        if len(self.weights) != len(dims) or len(self.biases) != len(dims):
            raise ArmQuantizationError(f"expected {len(dims)} layers, got {len(self.weights)} / {len(self.biases)}")
        for (i, o), w, b in zip(dims, self.weights, self.biases):
            if w.shape != (a, i, o) or b.shape != (a, o):
                raise ArmQuantizationError(f"layer shapes {w.shape}, {b.shape} != {(a, i, o)}, {(a, o)}")
            if np.abs(w).max(initial=0) >= WEIGHT_INT_LIMIT or np.abs(b).max(initial=0) >= WEIGHT_INT_LIMIT:
                raise ArmQuantizationError(f"an integer weight reaches {WEIGHT_INT_LIMIT}: lower the weight shift")
        worst = self._layer_bounds(CONTEXT_CLAMP)
        if max(worst) >= _EXACT_F64:
            raise ArmQuantizationError(
                f"worst-case accumulator {max(worst):.3g} is not exact in float64: weights too large for shifts "
                f"{self.weight_shifts}"
            )

    # ---------------------------------------------------------------------------------- basics
    @property
    def num_attributes(self) -> int:
        return len(self.weight_shifts)

    @property
    def context_size(self) -> int:
        return self.config.context_size

    def _in_frac(self, layer: int) -> int:
        return 0 if layer == 0 else self.activation_frac_bits

    @property
    def hidden_limit(self) -> int:
        """Largest integer hidden activation."""
        return HIDDEN_CLAMP << self.activation_frac_bits

    @classmethod
    def from_float(
        cls,
        arm,
        weight_shift,
        activation_frac_bits: int = DEFAULT_ACTIVATION_FRAC_BITS,
    ) -> "QuantizedArm":
        """Round a BatchedArm (anything with .config, .weights[l] [A, in, out], .biases[l] [A, out])
        to step 2**-weight_shift (an int, or one per attribute)."""
        weights = [w.detach().to(torch.float64).cpu() for w in arm.weights]
        biases = [b.detach().to(torch.float64).cpu() for b in arm.biases]
        a = weights[0].shape[0]
        shifts = [int(weight_shift)] * a if np.isscalar(weight_shift) else [int(s) for s in weight_shift]
        if len(shifts) != a:
            raise ArmQuantizationError(f"{len(shifts)} weight shifts for {a} attributes")
        if any(not 0 <= s <= MAX_WEIGHT_SHIFT for s in shifts):
            raise ArmQuantizationError(f"weight shifts must be in [0, {MAX_WEIGHT_SHIFT}], got {shifts}")
        scale = torch.tensor([2.0**s for s in shifts], dtype=torch.float64)
        wq, bq = [], []
        for w, b in zip(weights, biases):
            wi = torch.round(w * scale[:, None, None])
            bi = torch.round(b * scale[:, None])
            if not (torch.isfinite(wi).all() and torch.isfinite(bi).all()):
                raise ArmQuantizationError("non-finite ARM weights")
            if wi.abs().max() >= WEIGHT_INT_LIMIT or bi.abs().max() >= WEIGHT_INT_LIMIT:
                raise ArmQuantizationError(f"an integer weight reaches {WEIGHT_INT_LIMIT}: lower the weight shift")
            wq.append(wi.to(torch.int64).numpy())
            bq.append(bi.to(torch.int64).numpy())
        return cls(arm.config, tuple(shifts), activation_frac_bits, tuple(wq), tuple(bq))

    def dequantized(self) -> tuple:
        """(weights, biases): float64 tensors integer * 2**-s, the real values they stand for."""
        inv = torch.tensor([2.0**-s for s in self.weight_shifts], dtype=torch.float64)
        ws = tuple(torch.from_numpy(w).to(torch.float64) * inv[:, None, None] for w in self.weights)
        bs = tuple(torch.from_numpy(b).to(torch.float64) * inv[:, None] for b in self.biases)
        return ws, bs

    def to_float_arm(self, table_config: LaplaceTableConfig = LaplaceTableConfig()):
        """A BatchedArm holding the dequantized weights (approximates this ARM without the floor
        requantization; use ``predict`` for the exact model)."""
        from ralhe_me.nn.arm import BatchedArm

        arm = BatchedArm(self.num_attributes, self.config, table_config)
        ws, bs = self.dequantized()
        with torch.no_grad():
            for p, w in zip(arm.weights, ws):
                p.copy_(w)
            for p, b in zip(arm.biases, bs):
                p.copy_(b)
        return arm

    def select(self, attributes: Sequence[int]) -> "QuantizedArm":
        """The ARMs of a subset of attributes (e.g. a different batch split)."""
        idx = list(attributes)
        return QuantizedArm(
            self.config,
            tuple(self.weight_shifts[i] for i in idx),
            self.activation_frac_bits,
            tuple(w[idx] for w in self.weights),
            tuple(b[idx] for b in self.biases),
        )

    # ---------------------------------------------------------------------------------- bounds
    @cached_property
    def _abs_float(self) -> tuple:
        return (
            tuple(np.abs(w).astype(np.float64) for w in self.weights),
            tuple(np.abs(b).astype(np.float64) for b in self.biases),
        )

    def _layer_bounds(self, context_bound: int) -> list:
        """Upper bounds (floats) of |accumulator| per layer, given |context| <= context_bound."""
        abs_w, abs_b = self._abs_float
        shifts = np.asarray(self.weight_shifts, dtype=np.float64)
        f = self.activation_frac_bits
        u = np.full((self.num_attributes, self.context_size), float(min(context_bound, CONTEXT_CLAMP)))
        out = []
        for layer, (w, b) in enumerate(zip(abs_w, abs_b)):
            acc = (np.einsum("ai,aio->ao", u, w) + b * 2.0 ** self._in_frac(layer)) * _SAFETY
            out.append(float(acc.max(initial=0.0)))
            k = shifts + self._in_frac(layer) - f  # [A]
            u = np.minimum(np.floor(acc * (2.0 ** -k)[:, None]), float(self.hidden_limit))
        return out

    def _memo(self, key, make):
        """Per-instance memo (the instance is immutable)."""
        cache = self.__dict__.setdefault("_memo_cache", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def _layer_dtypes(self, context_bound: int) -> tuple:
        """Per layer the dtype in which it is exact for |context| <= context_bound."""
        key = ("dtypes", context_bound, _fp32_matmul_is_ieee())
        return self._memo(key, lambda: self._choose_dtypes(context_bound))

    def _choose_dtypes(self, context_bound: int) -> tuple:
        if not _fp32_matmul_is_ieee():
            return (torch.float64,) * len(self.weights)
        bounds = self._layer_bounds(context_bound)
        big_w = [max(np.abs(w).max(initial=0), np.abs(b).max(initial=0)) for w, b in zip(self.weights, self.biases)]
        return tuple(
            torch.float32 if (bd < _EXACT_F32 and bw < _EXACT_F32) else torch.float64
            for bd, bw in zip(bounds, big_w)
        )

    def float32_context_bound(self) -> int:
        """The largest context bound (<= CONTEXT_CLAMP) under which every layer, its weights and
        its biases are exact in float32 (all partial sums below 2**24); -1 if none is.  The native
        lockstep decoder evaluates in float32 up to this bound, in int32 up to
        :meth:`int32_context_bound` and in float64 beyond."""
        return self._memo(("f32_bound",), lambda: self._find_exact_bound(_EXACT_F32))

    def int32_context_bound(self) -> int:
        """The largest context bound (<= CONTEXT_CLAMP) under which every partial sum, weight and
        bias fits int32 (below 2**31), so int32 arithmetic cannot overflow in any order; -1 if none
        is, or if a hidden layer's output shift is negative (the int32 kernel only shifts right)."""
        shifts = np.asarray(self.weight_shifts)
        hidden_shifts = [shifts + self._in_frac(i) - self.activation_frac_bits for i in range(len(self.weights) - 1)]
        if any((k < 0).any() for k in hidden_shifts):
            return -1
        return self._memo(("i32_bound",), lambda: self._find_exact_bound(_EXACT_I32))

    def _find_exact_bound(self, limit: float) -> int:
        big = max(float(np.abs(w).max(initial=0)) for w in self.weights)
        big_b = max(float(np.abs(b).max(initial=0)) * 2.0 ** self._in_frac(i) for i, b in enumerate(self.biases))
        if max(big, big_b) >= limit:
            return -1

        def ok(bound: int) -> bool:
            return max(self._layer_bounds(bound)) < limit

        if not ok(0):
            return -1
        lo, hi = 0, CONTEXT_CLAMP  # ok(lo) holds; bounds grow with the context bound
        if ok(hi):
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    # ---------------------------------------------------------------------------------- evaluation
    def _torch_params(self, dtype: torch.dtype) -> tuple:
        """Per layer (W [A, in, out], bias << in_frac [A, 1, out], 2**-k [A, 1, 1]) in ``dtype``."""
        return self._memo(("params", dtype), lambda: self._make_torch_params(dtype))

    def _make_torch_params(self, dtype: torch.dtype) -> tuple:
        out = []
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            inf = self._in_frac(layer)
            k = [s + inf - self.activation_frac_bits for s in self.weight_shifts]
            out.append(
                (
                    torch.from_numpy(w).to(dtype),
                    (torch.from_numpy(b).to(torch.float64) * 2.0**inf).to(dtype)[:, None, :],
                    torch.tensor([2.0**-kk for kk in k], dtype=dtype)[:, None, None],
                )
            )
        return tuple(out)

    def _output_params(self, table_config: LaplaceTableConfig) -> tuple:
        """numpy (add [A,1,2], factor [A,1,2]) so floor((acc + add) * factor) rounds mu to 1/M and the
        log-scale to the table step."""
        return self._memo(("out", table_config), lambda: self._make_output_params(table_config))

    def _make_output_params(self, table_config: LaplaceTableConfig) -> tuple:
        inf = self._in_frac(len(self.weights) - 1)
        adds, facs = [], []
        for s in self.weight_shifts:
            row_a, row_f = [], []
            for target in (table_config.mean_bins_log2, table_config.log_scale_step_log2):
                k = s + inf - target
                row_a.append(2.0 ** (k - 1) if k > 0 else 0.0)
                row_f.append(2.0**-k)
            adds.append(row_a)
            facs.append(row_f)
        return np.asarray(adds)[:, None, :], np.asarray(facs)[:, None, :]

    def accumulate(self, contexts: Tensor, context_bound: int) -> Tensor:
        """contexts: float32/float64 [A, n, K] integer-valued with max |.| <= context_bound (before
        clamping; the bound must hold, it decides where float32 is exact) -> output accumulators
        float64 [A, n, 2] (integers at scale 2**(s_a + F))."""
        dtypes = self._layer_dtypes(int(min(context_bound, CONTEXT_CLAMP)))
        h = contexts if context_bound <= CONTEXT_CLAMP else contexts.clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP)
        last = len(self.weights) - 1
        hmax = float(self.hidden_limit)
        for layer, dt in enumerate(dtypes):
            w, b, fac = self._torch_params(dt)[layer]
            acc = torch.baddbmm(b, h if h.dtype == dt else h.to(dt), w)
            if layer == last:
                return acc.to(torch.float64)
            h = acc.mul_(fac).floor_().clamp_(0.0, hmax)
        raise AssertionError("unreachable")

    def table_indices(self, accumulators, table_config: LaplaceTableConfig) -> tuple:
        """accumulators float64 [A, n, 2] (tensor or array) -> numpy float64 (mu_q [A, n]: the mean
        in units of 1/M, integer-valued; scale_bin [A, n]).  Exact: floor of power-of-two scalings."""
        acc = accumulators.numpy() if isinstance(accumulators, Tensor) else np.asarray(accumulators)
        return self._table_indices_inplace(acc.astype(np.float64, copy=True), table_config)

    def _table_indices_inplace(self, acc: np.ndarray, table_config: LaplaceTableConfig) -> tuple:
        add, fac = self._output_params(table_config)
        np.add(acc, add, out=acc)
        np.multiply(acc, fac, out=acc)
        np.floor(acc, out=acc)
        m = float(table_config.num_mean_bins)
        mu_q, scale_bin = acc[..., 0], acc[..., 1]
        np.clip(mu_q, -MU_LIMIT * m, MU_LIMIT * m, out=mu_q)
        np.subtract(scale_bin, table_config.log_scale_min_units, out=scale_bin)
        np.clip(scale_bin, 0, table_config.num_scale_bins - 1, out=scale_bin)
        return mu_q, scale_bin

    def code_indices(self, contexts: Tensor, context_bound: int, table_config: LaplaceTableConfig) -> tuple:
        """The coder's fast path: contexts [A, n, K] -> (mu_int, table_index), int64 numpy [A, n]."""
        acc = self.accumulate(contexts, context_bound)  # a fresh tensor: finished in place
        mu_q, scale_bin = self._table_indices_inplace(acc.numpy(), table_config)
        return split_mean(mu_q, scale_bin, table_config)

    def predict(
        self, contexts: Tensor, table_config: LaplaceTableConfig = LaplaceTableConfig(), context_bound=None
    ) -> ArmPrediction:
        """contexts: [A, n, K] integer-valued (int or float) -> the coder's exact prediction."""
        if contexts.dim() != 3 or contexts.shape[0] != self.num_attributes or contexts.shape[2] != self.context_size:
            raise ArmInputError(
                f"contexts must be [A={self.num_attributes}, n, K={self.context_size}], got {tuple(contexts.shape)}"
            )
        contexts = contexts.detach().cpu()
        if contexts.is_floating_point():
            if not bool(torch.isfinite(contexts).all()) or bool((contexts != torch.round(contexts)).any()):
                raise ArmInputError("integer ARM contexts must be integer-valued")
        ctx = contexts.clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP).to(torch.float64)
        if context_bound is None:
            context_bound = int(ctx.abs().max()) if ctx.numel() else 0
        mu_q, scale_bin = self.table_indices(self.accumulate(ctx, context_bound), table_config)
        return make_prediction(mu_q, scale_bin, table_config)

    # ---------------------------------------------------------------------------------- bytes
    def _param_groups(self) -> list:
        """Integer parameters in serialization order: per attribute, per layer, weights then biases."""
        groups = []
        for a in range(self.num_attributes):
            for w, b in zip(self.weights, self.biases):
                groups.append(w[a].ravel())
                groups.append(b[a].ravel())
        return groups

    def to_bytes(self) -> bytes:
        """Header (version, A, K, hidden, layers, F, shifts, one Laplace scale bin per group) then
        the integers in one rANS stream under zero-mean Laplace tables."""
        tables = get_tables(PARAM_TABLE_CONFIG)
        groups = self._param_groups()
        bins = []
        for g in groups:
            cost = [float(tables.bits(np.full(g.size, s), g).sum()) for s in range(PARAM_TABLE_CONFIG.num_scale_bins)]
            bins.append(int(np.argmin(cost)))
        c = self.config
        head = bytes([_FORMAT_VERSION, self.num_attributes, c.context_size, c.hidden, c.num_hidden_layers])
        head += bytes([self.activation_frac_bits]) + bytes(self.weight_shifts) + bytes(bins)
        symbols = np.concatenate(groups)
        indexes = np.concatenate([np.full(g.size, s) for g, s in zip(groups, bins)])
        return head + rans_encode(symbols, indexes, tables)

    @classmethod
    def from_bytes(cls, data: bytes) -> "QuantizedArm":
        data = bytes(data)
        if len(data) < 6 or data[0] != _FORMAT_VERSION:
            raise ArmFormatError(f"not a version-{_FORMAT_VERSION} ARM record ({len(data)} bytes)")
        a, k, hidden, layers, frac = data[1], data[2], data[3], data[4], data[5]
        try:
            config = ArmConfig(k, hidden, layers)
        except ValueError as e:
            raise ArmFormatError(f"bad ARM header: {e}") from None
        dims = config.layer_dims
        n_groups = 2 * len(dims) * a
        pos = 6
        if len(data) < pos + a + n_groups:
            raise ArmFormatError("ARM record truncated in its header")
        shifts = tuple(data[pos : pos + a])
        bins = list(data[pos + a : pos + a + n_groups])
        pos += a + n_groups
        if any(s >= PARAM_TABLE_CONFIG.num_scale_bins for s in bins):
            raise ArmFormatError("bad parameter table index")
        sizes = [n for _ in range(a) for (i, o) in dims for n in (i * o, o)]
        indexes = np.concatenate([np.full(n, s) for n, s in zip(sizes, bins)])
        tables = get_tables(PARAM_TABLE_CONFIG)
        stream = data[pos:]
        if len(stream) < 8 or len(stream) % 4:
            raise ArmFormatError("ARM parameter stream truncated")
        dec = load_rans().RansDecoder()
        values = np.asarray(
            dec.decode_with_indexes(stream, indexes.tolist(), tables.cdfs, tables.cdf_lengths, tables.offsets),
            dtype=np.int64,
        )
        ws = [np.zeros((a, i, o), np.int64) for i, o in dims]
        bs = [np.zeros((a, o), np.int64) for _, o in dims]
        p = 0
        for ai in range(a):
            for layer, (i, o) in enumerate(dims):
                ws[layer][ai] = values[p : p + i * o].reshape(i, o)
                p += i * o
                bs[layer][ai] = values[p : p + o]
                p += o
        try:
            return cls(config, shifts, frac, tuple(ws), tuple(bs))
        except ArmQuantizationError as e:
            raise ArmFormatError(f"decoded ARM invalid: {e}") from None


def _fp32_matmul_is_ieee() -> bool:
    """float32 matmuls are exact IEEE only while no reduced-precision mode (TF32 / bf16) is enabled."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    for holder in (torch.backends, getattr(torch.backends.mkldnn, "matmul", None), torch.backends.mkldnn):
        mode = getattr(holder, "fp32_precision", "none") if holder is not None else "none"
        if mode not in ("none", "ieee"):
            return False
    return True


def split_mean(mu_q: np.ndarray, scale_bin: np.ndarray, table_config: LaplaceTableConfig) -> tuple:
    """mean in units of 1/M and scale bin (float64, integer-valued) -> (mu_int, table_index) int64:
    mu_int = floor(mu + 1/2), mean_bin = M * (mu - mu_int) + M // 2 in [0, M)."""
    m = table_config.num_mean_bins
    mu_int = np.floor((2.0 * mu_q + m) * (1.0 / (2 * m)))
    table_index = scale_bin * m + (mu_q - mu_int * m) + (m // 2)
    return mu_int.astype(np.int64), table_index.astype(np.int64)


def make_prediction(mu_q: np.ndarray, scale_bin: np.ndarray, table_config: LaplaceTableConfig) -> ArmPrediction:
    """ArmPrediction (tensors) from the mean in units of 1/M and the scale bin."""
    mu_int, table_index = split_mean(mu_q, scale_bin, table_config)
    log_scale = table_config.log_scale_min + scale_bin * table_config.log_scale_step
    return ArmPrediction(
        torch.from_numpy(mu_int),
        torch.from_numpy(table_index),
        torch.from_numpy(mu_q * (1.0 / table_config.num_mean_bins)),
        torch.from_numpy(np.asarray(log_scale, dtype=np.float64)),
    )
