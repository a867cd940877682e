"""Lockstep rANS coding of the latents of all attributes and levels.

Every level is cut into segments (SegmentLayout); contexts restart at each segment.  Decoding
advances all attributes and all segments of all levels together, one symbol per segment per step,
so step t is one batched integer-ARM evaluation over [A, active segments, K] contexts and the
rANS reads of its A * active symbols.  The stream order is therefore step-major: for t, for attribute a, for
segment g with length > t, in ``SegmentLayout.coding_order`` (decreasing length, ties in level
then position order, so the active segments are always a prefix): latent a at position t of g.

The stream is written by CompressAI's ``RansEncoder``.  The decoder's loop runs in C++ when the
``_lockstep_cpu`` extension is built (entropy/csrc/lockstep.cpp: the same integer ARM, exact in
float32/int32/float64 SIMD, reading the symbols with a native reader of CompressAI's format, or
with CompressAI's ``decode_stream`` when asked); ``_decode_steps`` below, which calls
``decode_stream`` once per step, is the numpy/torch reference it is tested against, and the
fallback without the extension.

Residuals ``x - mu_int`` outside a table's support are coded by CompressAI's escape (bypass) mode,
so every latent with |x| <= LATENT_LIMIT round-trips; larger ones raise LatentRangeError at encode
time.  Only the rANS payload is returned; level sizes, A, the segment length and the table config
travel in the caller's header.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ralhe_me.entropy.categorical import RANS_READERS
from ralhe_me.entropy.contexts import SegmentLayout
from ralhe_me.entropy.integer_arm import MU_LIMIT, ArmPrediction, QuantizedArm, make_prediction
from ralhe_me.entropy.laplace import LaplaceTableConfig, LaplaceTables, get_tables, load_rans, rans_encode
from ralhe_me.native import load_native, native_choice
from ralhe_me.nn.arm import CONTEXT_CLAMP
from ralhe_me.threads import intra_op_threads

LATENT_LIMIT = (1 << 24) - 1
_CHUNK_ELEMENTS = 1 << 22  # contexts per batched ARM call in the encoder (A * G * T * K)
# The lockstep loop runs many small tensor ops; with more intra-op threads they only synchronise,
# and on a busy machine a 2-thread decode measured 20x slower than a 1-thread one.  Results never
# depend on the thread count (exact arithmetic); this is speed only.
DEFAULT_CODING_THREADS = 1


class LatentRangeError(ValueError):
    """A latent whose magnitude exceeds LATENT_LIMIT (cannot be coded)."""


class LatentShapeError(ValueError):
    """Latents whose shapes disagree with the attributes / ARM / levels given."""


class LatentStreamError(ValueError):
    """A latent stream that is empty or truncated where symbols are expected."""


def _as_levels(latents: Sequence, num_attributes: int) -> list:
    out = []
    for l, x in enumerate(latents):
        x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if x.ndim != 2 or x.shape[0] != num_attributes:
            raise LatentShapeError(f"level {l}: latents must be [A={num_attributes}, n_l], got {x.shape}")
        if x.dtype.kind == "f":
            if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                raise LatentShapeError(f"level {l}: latents must be integers")
        elif x.dtype.kind not in "iu":
            raise LatentShapeError(f"level {l}: latents must be integers, got dtype {x.dtype}")
        if x.size and np.abs(x).max() > LATENT_LIMIT:
            raise LatentRangeError(
                f"level {l}: latent magnitude {np.abs(x).max()} exceeds {LATENT_LIMIT}; clamp latents in training"
            )
        out.append(x.astype(np.int64))
    return out


def _check_arm(arms: QuantizedArm, num_attributes: int) -> None:
    if arms.num_attributes != num_attributes:
        raise LatentShapeError(f"ARM batch has {arms.num_attributes} attributes, latents have {num_attributes}")


def _fill_buffer(levels: list, layout: SegmentLayout, context_size: int) -> Tensor:
    """float32 [A, G, K + S], segments in coding order: K zeros then the segment's latents
    (zero-padded to S).  float32 holds every |latent| <= LATENT_LIMIT exactly."""
    a = levels[0].shape[0] if levels else 0
    s, k = layout.segment_length, context_size
    rows = []
    for x, g in zip(levels, layout.num_segments):
        if g:
            padded = np.zeros((a, g * s), np.float32)
            padded[:, : x.shape[1]] = x
            rows.append(padded.reshape(a, g, s))
    natural = np.concatenate(rows, axis=1)[:, layout.coding_order]
    buf = np.zeros((a, layout.total_segments, k + s), np.float32)
    buf[:, :, k:] = natural
    return torch.from_numpy(buf)


def _unfill_buffer(buf: Tensor, layout: SegmentLayout, context_size: int) -> list:
    """Inverse of _fill_buffer -> per level int64 [A, n_l]."""
    a, s = buf.shape[0], layout.segment_length
    vals = np.empty((a, layout.total_segments, s), np.int64)
    vals[:, layout.coding_order] = buf[:, :, context_size:].numpy()
    out, g0 = [], 0
    for n, g in zip(layout.level_sizes, layout.num_segments):
        out.append(np.ascontiguousarray(vals[:, g0 : g0 + g].reshape(a, g * s)[:, :n]))
        g0 += g
    return out


def _predict_all(
    levels: list, layout: SegmentLayout, arms: QuantizedArm, table_config: LaplaceTableConfig
) -> tuple:
    """Every latent's coding parameters, computed all at once (in chunks of steps) by the encoder.
    Returns int64 [A, G, T] arrays (segments in coding order, T = number of steps) x, mu_int,
    table_index, and the valid mask [G, T]."""
    k = arms.context_size
    steps = layout.num_steps
    buf = _fill_buffer(levels, layout, k)
    a, g = buf.shape[0], buf.shape[1]
    bound = max((int(np.abs(x).max(initial=0)) for x in levels), default=0)
    windows = buf.unfold(2, k, 1)  # [A, G, S + 1, K]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, a * g * k))
    mu = np.empty((a, g, steps), np.int64)
    idx = np.empty((a, g, steps), np.int64)
    singles = [arms.select([i]) for i in range(a)]
    zero_mu, zero_idx = arms.code_indices(torch.zeros((a, 1, k), dtype=buf.dtype), 0, table_config)  # [A, 1]
    for t0 in range(0, steps, chunk):
        t1 = min(steps, t0 + chunk)
        ctx = windows[:, :, t0:t1].reshape(a, g * (t1 - t0), k)
        # Each attribute's ARM only where its context is not all zeros (segment starts, flat
        # regions: most latents at low rates); the rest take the all-zero context's result, as the
        # native decoder does. The ARM is exact integer arithmetic, so the results are the same.
        live = ctx.ne(0).any(dim=2)  # [A, M]
        m = np.empty(live.shape, np.int64)
        i = np.empty(live.shape, np.int64)
        for att in range(a):
            rows = torch.nonzero(live[att]).squeeze(1)
            m[att], i[att] = zero_mu[att, 0], zero_idx[att, 0]
            if len(rows):
                rows_np = rows.numpy()
                m_a, i_a = singles[att].code_indices(ctx[att, rows].unsqueeze(0), bound, table_config)
                m[att, rows_np], i[att, rows_np] = m_a[0], i_a[0]
        mu[:, :, t0:t1] = m.reshape(a, g, t1 - t0)
        idx[:, :, t0:t1] = i.reshape(a, g, t1 - t0)
    x = buf[:, :, k : k + steps].numpy().astype(np.int64)
    valid = np.arange(steps)[None, :] < layout.segment_lengths[layout.coding_order][:, None]  # [G, T]
    return x, mu, idx, valid


def _stream_order(arr: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[A, G, T] (coding order) -> 1-D in stream order (t, a, g), valid entries only."""
    t = arr.shape[2]
    return arr.transpose(2, 0, 1)[np.broadcast_to(valid.T[:, None, :], (t, arr.shape[0], arr.shape[1]))]


def predict_latents(latents: Sequence, arms: QuantizedArm, segment_length: int,
                    table_config: LaplaceTableConfig = LaplaceTableConfig(),
                    num_threads=DEFAULT_CODING_THREADS) -> Optional[tuple]:
    """The integer ARM's coding parameters of every latent (x, mu, table index [A, G, T], valid
    [G, T], as :func:`_predict_all` gives them), or None without latents: what
    :func:`prediction_bits` counts and :func:`encode_prediction` codes, so that a caller that
    needs both predicts once."""
    levels = _as_levels(latents, arms.num_attributes)
    layout = SegmentLayout(tuple(x.shape[1] for x in levels), segment_length)
    if layout.total_size == 0:
        return None
    with intra_op_threads(num_threads):
        return _predict_all(levels, layout, arms, table_config)


def encode_prediction(predicted: Optional[tuple], table_config: LaplaceTableConfig = LaplaceTableConfig()) -> bytes:
    """The rANS bytes of :func:`predict_latents`' latents (b"" when there is nothing)."""
    if predicted is None:
        return b""
    x, mu, idx, valid = predicted
    return rans_encode(_stream_order(x - mu, valid), _stream_order(idx, valid), get_tables(table_config))


def prediction_bits(predicted: Optional[tuple], num_attributes: int,
                    table_config: LaplaceTableConfig = LaplaceTableConfig(), per_attribute: bool = False):
    """Exact model cost (bits) of :func:`encode_prediction`'s symbols: float, or float64 [A]."""
    if predicted is None:
        return np.zeros(num_attributes) if per_attribute else 0.0
    x, mu, idx, valid = predicted
    mask = np.broadcast_to(valid[None], x.shape)
    bits = get_tables(table_config).bits(idx[mask], (x - mu)[mask]).reshape(num_attributes, -1).sum(axis=1)
    return bits if per_attribute else float(bits.sum())


def encode_latents(
    latents: Sequence,
    arms: QuantizedArm,
    segment_length: int,
    table_config: LaplaceTableConfig = LaplaceTableConfig(),
    num_threads=DEFAULT_CODING_THREADS,
) -> bytes:
    """latents: per level int [A, n_l] (numpy or tensor) -> rANS bytes (b"" when there is nothing)."""
    return encode_prediction(predict_latents(latents, arms, segment_length, table_config, num_threads), table_config)


def estimate_bits(
    latents: Sequence,
    arms: QuantizedArm,
    segment_length: int,
    table_config: LaplaceTableConfig = LaplaceTableConfig(),
    per_attribute: bool = False,
    num_threads=DEFAULT_CODING_THREADS,
):
    """Exact model cost (bits) of encode_latents' symbols: same integer ARM, same tables, escapes
    included; the real stream adds only rANS overhead (about 64 bits) and padding of tiny streams.
    Returns a float, or float64 [A] per attribute."""
    predicted = predict_latents(latents, arms, segment_length, table_config, num_threads)
    return prediction_bits(predicted, arms.num_attributes, table_config, per_attribute)


def predict_levels(
    latents: Sequence, arms: QuantizedArm, segment_length: int, table_config: LaplaceTableConfig = LaplaceTableConfig()
) -> list:
    """Per level the coder's ArmPrediction ([A, n_l] fields) of integer latents: the exact model
    the coder uses, for a float rate view (laplace_rate_bits(x, pred.mu, pred.log_scale))."""
    levels = _as_levels(latents, arms.num_attributes)
    layout = SegmentLayout(tuple(x.shape[1] for x in levels), segment_length)
    a, k = arms.num_attributes, arms.context_size
    if layout.total_size == 0:
        return [make_prediction(np.zeros((a, 0)), np.zeros((a, 0)), table_config) for _ in levels]
    _, mu, idx, _ = _predict_all(levels, layout, arms, table_config)
    pad = np.zeros((a, layout.total_segments, k + layout.segment_length - mu.shape[2]), np.int64)
    mus = _unfill_buffer(torch.from_numpy(np.concatenate([pad, mu], 2)), layout, k)
    idxs = _unfill_buffer(torch.from_numpy(np.concatenate([pad, idx], 2)), layout, k)
    m = table_config.num_mean_bins
    out = []
    for mu_int, t_idx in zip(mus, idxs):
        scale_bin, mean_bin = np.divmod(t_idx, m)
        mu_f = mu_int + table_config.table_mean_fraction(mean_bin.astype(np.float64))
        ls = table_config.table_log_scale(scale_bin.astype(np.float64))
        out.append(ArmPrediction(*(torch.from_numpy(np.asarray(v)) for v in (mu_int, t_idx, mu_f, ls))))
    return out


class _TableSubsets:
    """Per decode step, only the tables that step uses are handed to CompressAI (it converts every
    table it is given from Python lists on each call), with indexes remapped to that subset."""

    def __init__(self, tables: LaplaceTables, use_subsets: bool) -> None:
        self.tables = tables
        self.use_subsets = use_subsets
        self.remap = np.zeros(len(tables.cdfs), dtype=np.int64)
        self.present = np.zeros(len(tables.cdfs), dtype=bool)

    def __call__(self, flat_index: np.ndarray) -> tuple:
        t = self.tables
        if not self.use_subsets:
            return flat_index.tolist(), t.cdfs, t.cdf_lengths, t.offsets
        self.present[:] = False
        self.present[flat_index] = True
        used = np.flatnonzero(self.present)
        self.remap[used] = np.arange(used.size)
        ul = used.tolist()
        return (
            self.remap[flat_index].tolist(),
            [t.cdfs[u] for u in ul],
            [t.cdf_lengths[u] for u in ul],
            [t.offsets[u] for u in ul],
        )


def native_available() -> bool:
    """Whether the native lockstep loop (the ``_lockstep_cpu`` extension) is built."""
    return _native_module() is not None


NATIVE_API_VERSION = 2  # the interface of _lockstep_cpu these sources call (its API_VERSION)


def _native_module():
    return load_native("ralhe_me.entropy._lockstep_cpu", NATIVE_API_VERSION)


def decode_latents(
    data: bytes,
    level_sizes: Sequence[int],
    num_attributes: int,
    arms: QuantizedArm,
    segment_length: int,
    table_config: LaplaceTableConfig = LaplaceTableConfig(),
    table_subsets: bool = True,
    num_threads=DEFAULT_CODING_THREADS,
    native: Optional[bool] = None,
    rans: str = "native",
) -> list:
    """Inverse of encode_latents -> per level int64 numpy [A, n_l].  ``table_subsets``: hand
    CompressAI only the tables each step uses (faster; same result).  ``native``: run the loop in
    the C++ extension (None: when it is built; True: require it; False: the numpy/torch reference).
    ``rans`` (native loop only): "native" reads the symbols with the extension's reader of
    CompressAI's format, "compressai" calls CompressAI's decode_stream from the loop.
    All give the same latents (exact integer ARM); the native loop always uses table subsets."""
    if rans not in RANS_READERS:
        raise ValueError(f"rans must be one of {RANS_READERS}, got {rans!r}")
    _check_arm(arms, num_attributes)
    layout = SegmentLayout(tuple(level_sizes), segment_length)
    a = num_attributes
    if layout.total_size == 0:
        return [np.zeros((a, n), np.int64) for n in layout.level_sizes]
    data = bytes(data)
    if len(data) < 8 or len(data) % 4:
        raise LatentStreamError(f"latent stream of {len(data)} bytes cannot hold {layout.total_size * a} symbols")
    module = native_choice(native, _native_module, "the native lockstep decoder (ralhe_me.entropy._lockstep_cpu)")
    if module is not None:
        return _decode_native(module, data, layout, arms, table_config, rans)
    with intra_op_threads(num_threads):
        return _decode_steps(data, layout, arms, table_config, table_subsets)


def _decode_native(module, data: bytes, layout: SegmentLayout, arms: QuantizedArm, table_config, rans: str) -> list:
    """The lockstep loop in C++: same steps as _decode_steps; the symbols are read by the native
    rANS reader (``rans="native"``) or by CompressAI's decode_stream called from the loop."""
    tables = get_tables(table_config)
    core = module.Lockstep(
        layout.total_segments, layout.segment_length, list(arms.weights), list(arms.biases),
        list(arms.weight_shifts), arms.activation_frac_bits, arms.hidden_limit, CONTEXT_CLAMP,
        table_config.mean_bins_log2, table_config.log_scale_step_log2, table_config.log_scale_min_units,
        table_config.num_scale_bins, MU_LIMIT, arms.float32_context_bound(), arms.int32_context_bound(),
        tables.cdfs, tables.cdf_lengths, tables.offsets,
    )
    if rans == "compressai":
        dec = load_rans().RansDecoder()
        dec.set_stream(data)
        core.run(dec.decode_stream, layout.active_counts)
    elif not core.run_native(data, layout.active_counts, *tables.flat):
        raise LatentStreamError("latent stream is corrupt: it ends before its last symbol or holds an impossible escape")
    position = np.empty(layout.total_segments, np.int64)
    position[layout.coding_order] = np.arange(layout.total_segments)
    return list(core.levels(list(layout.level_sizes), position))


def _decode_steps(data: bytes, layout: SegmentLayout, arms: QuantizedArm, table_config, table_subsets: bool) -> list:
    """The lockstep loop: step t decodes position t of every active segment of every attribute."""
    a, k, s = arms.num_attributes, arms.context_size, layout.segment_length
    buf = torch.zeros(a, layout.total_segments, k + s, dtype=torch.float32)
    subsets = _TableSubsets(get_tables(table_config), table_subsets)
    dec = load_rans().RansDecoder()
    dec.set_stream(data)
    bound = 0
    for t, na in enumerate(layout.active_counts.tolist()):
        mu_int, table_index = arms.code_indices(buf[:, :na, t : t + k], bound, table_config)
        idx_list, cdfs, lens, offs = subsets(table_index.ravel())
        res = dec.decode_stream(idx_list, cdfs, lens, offs)
        x = np.fromiter(res, np.int64, len(res)).reshape(a, na) + mu_int
        buf[:, :na, k + t] = torch.from_numpy(x)
        bound = max(bound, int(np.abs(x).max(initial=0)))
    return _unfill_buffer(buf, layout, k)
