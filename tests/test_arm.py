"""Contexts, the float ARM and the integer ARM: slow references, causality, batch-split invariance,
serialization."""
import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from ralhe_me.entropy.contexts import LayoutError, SegmentLayout, gather_contexts
from ralhe_me.entropy.integer_arm import (
    MU_LIMIT,
    ArmFormatError,
    ArmInputError,
    ArmQuantizationError,
    QuantizedArm,
)
from ralhe_me.entropy.laplace import LaplaceTableConfig, get_tables, laplace_rate_bits
from ralhe_me.nn.arm import CONTEXT_CLAMP, HIDDEN_CLAMP, ArmConfig, BatchedArm


# ------------------------------------------------------------------------------------------ contexts
def slow_contexts(values, k, s):
    a, n = values.shape
    out = np.zeros((a, n, k), dtype=values.dtype)
    for i in range(n):
        start = (i // s) * s
        for j in range(k):
            src = i - k + j
            if src >= start:
                out[:, i, j] = values[:, src]
    return out


@pytest.mark.parametrize("n,k,s", [(1, 16, 4), (50, 16, 7), (100, 4, 100), (64, 16, 16), (33, 3, 1), (40, 16, 1000)])
def test_gather_contexts_matches_slow_reference(n, k, s):
    vals = np.random.default_rng(n).integers(-50, 50, (3, n))
    got = gather_contexts(torch.from_numpy(vals), k, s).numpy()
    assert got.dtype == np.int64
    assert np.array_equal(got, slow_contexts(vals, k, s))


def test_gather_contexts_float_autograd():
    x = torch.randn(2, 30, requires_grad=True)
    c = gather_contexts(x, 16, 8)
    assert torch.allclose(c.detach(), torch.from_numpy(slow_contexts(x.detach().numpy(), 16, 8)))
    c.sum().backward()
    # each value appears in the contexts of the following positions of its segment (at most K)
    pos = torch.arange(30)
    expected = torch.minimum(7 - pos % 8, torch.tensor(16)).float()
    expected = torch.minimum(expected, (30 - 1 - pos).float())
    assert torch.equal(x.grad[0], expected)


def test_segment_layout():
    lay = SegmentLayout((10, 0, 3, 8), 4)
    assert lay.num_segments == (3, 0, 1, 2) and lay.total_segments == 6 and lay.total_size == 21
    assert lay.segment_lengths.tolist() == [4, 4, 2, 3, 4, 4]
    assert lay.segment_starts.tolist() == [0, 4, 8, 10, 13, 17]
    assert lay.segment_levels.tolist() == [0, 0, 0, 2, 3, 3]
    assert lay.num_steps == 4
    assert lay.coding_order.tolist() == [0, 1, 4, 5, 3, 2]
    assert lay.active_counts.tolist() == [6, 6, 5, 4]
    # the active segments at step t are a prefix of the coding order
    for t, na in enumerate(lay.active_counts):
        assert (lay.segment_lengths[lay.coding_order][:na] > t).all()
        assert (lay.segment_lengths[lay.coding_order][na:] <= t).all()
    with pytest.raises(LayoutError):
        SegmentLayout((3,), 0)
    with pytest.raises(LayoutError):
        SegmentLayout((-1,), 4)


# ------------------------------------------------------------------------------------------ float ARM
def test_batched_arm_matches_per_attribute_mlp():
    torch.manual_seed(0)
    arm = BatchedArm(5, ArmConfig(), LaplaceTableConfig())
    with torch.no_grad():
        for b in arm.biases:
            b.normal_()
    assert sum(p.numel() for p in arm.parameters()) == 5 * 578 == 5 * ArmConfig().num_parameters
    ctx = torch.randn(5, 40, 16) * 3
    mu, ls = arm(ctx)
    for a in range(5):
        h = ctx[a]
        for i, (w, b) in enumerate(zip(arm.weights, arm.biases)):
            h = F.linear(h, w[a].T, b[a])
            if i < 2:
                h = F.relu(h)
        assert torch.allclose(mu[a], h[:, 0], atol=1e-5)
        assert torch.allclose(ls[a], h[:, 1].clamp(-4.0, 5.0), atol=1e-5)


def test_float_arm_rate_is_differentiable():
    arm = BatchedArm(2)
    x = torch.randn(2, 100) * 3
    mu, ls = arm(gather_contexts(x, 16, 32))
    bits = arm.rate_bits(x + torch.rand_like(x) - 0.5, mu, ls)
    assert bits.shape == (2, 100) and (bits >= 0).all() and (bits <= 16).all()
    bits.sum().backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in arm.weights)


# ------------------------------------------------------------------------------------------ integer ARM
def _random_qarm(a=3, shifts=(3, 8, 12), frac=6, config=ArmConfig(), seed=0, mag=0.6):
    torch.manual_seed(seed)
    arm = BatchedArm(a, config)
    with torch.no_grad():
        for w in arm.weights:
            w.uniform_(-mag, mag)
        for b in arm.biases:
            b.uniform_(-2, 2)
    return QuantizedArm.from_float(arm, list(shifts)[:a], frac)


def _floor_shift(x, k):
    return x >> k if k >= 0 else x << -k


def _round_shift(x, k):
    return (x + (1 << (k - 1))) >> k if k > 0 else x << -k


def slow_integer_arm(q: QuantizedArm, ctx: np.ndarray, cfg: LaplaceTableConfig):
    """Pure Python ints, one symbol at a time."""
    a_n, n, k = ctx.shape
    f = q.activation_frac_bits
    m, d = cfg.mean_bins_log2, cfg.log_scale_step_log2
    mm = 1 << m
    mu_int = np.zeros((a_n, n), np.int64)
    tidx = np.zeros((a_n, n), np.int64)
    last = len(q.weights) - 1
    for a in range(a_n):
        s = q.weight_shifts[a]
        for i in range(n):
            h = [max(-CONTEXT_CLAMP, min(CONTEXT_CLAMP, int(v))) for v in ctx[a, i]]
            for layer, (w, b) in enumerate(zip(q.weights, q.biases)):
                inf = 0 if layer == 0 else f
                acc = [
                    sum(int(w[a, j, o]) * h[j] for j in range(len(h))) + (int(b[a, o]) << inf)
                    for o in range(w.shape[2])
                ]
                if layer < last:
                    h = [min(max(_floor_shift(v, s + inf - f), 0), HIDDEN_CLAMP << f) for v in acc]
            inf = 0 if last == 0 else f
            qm = max(-(MU_LIMIT << m), min(MU_LIMIT << m, _round_shift(acc[0], s + inf - m)))
            sb = max(0, min(cfg.num_scale_bins - 1, _round_shift(acc[1], s + inf - d) - cfg.log_scale_min_units))
            mi = (2 * qm + mm) // (2 * mm)
            mu_int[a, i] = mi
            tidx[a, i] = sb * mm + qm - mi * mm + mm // 2
    return mu_int, tidx


@pytest.mark.parametrize(
    "config,frac,table,ctx_mag",
    [
        (ArmConfig(), 6, LaplaceTableConfig(), 20),
        (ArmConfig(), 6, LaplaceTableConfig(), 40000),  # beyond the clamp, float64 path
        (ArmConfig(), 0, LaplaceTableConfig(mean_bins_log2=0), 300),
        (ArmConfig(8, 5, 1), 3, LaplaceTableConfig(-2.0, 1, 12, 2), 100),
        (ArmConfig(4, 7, 0), 6, LaplaceTableConfig(), 50),
    ],
)
def test_integer_arm_matches_python_int_reference(config, frac, table, ctx_mag):
    q = _random_qarm(config=config, frac=frac, mag=0.8)
    rng = np.random.default_rng(ctx_mag)
    ctx = rng.integers(-ctx_mag, ctx_mag + 1, (3, 120, config.context_size))
    ctx[:, :10] = 0
    pred = q.predict(torch.from_numpy(ctx), table)
    ref_mu, ref_idx = slow_integer_arm(q, ctx, table)
    assert np.array_equal(pred.mu_int.numpy(), ref_mu)
    assert np.array_equal(pred.table_index.numpy(), ref_idx)
    # the float view is exactly the table's mean and log-scale
    mb = ref_idx % table.num_mean_bins
    sb = ref_idx // table.num_mean_bins
    assert np.array_equal(pred.mu.numpy(), ref_mu + (mb - table.num_mean_bins // 2) / table.num_mean_bins)
    assert np.array_equal(pred.log_scale.numpy(), table.log_scale_min + sb * table.log_scale_step)


def test_both_exact_dtypes_agree_and_are_used():
    q = _random_qarm(mag=0.2)
    ctx = torch.randint(-30, 31, (3, 500, 16)).double()
    assert torch.float32 in q._layer_dtypes(30)
    assert q._layer_dtypes(CONTEXT_CLAMP) == (torch.float64,) * 3
    a = q.predict(ctx)
    b = q.predict(ctx, context_bound=CONTEXT_CLAMP)  # forces float64 everywhere
    assert torch.equal(a.mu_int, b.mu_int) and torch.equal(a.table_index, b.table_index)


def test_integer_arm_invariant_to_batch_split_and_threads():
    q = _random_qarm()
    ctx = torch.randint(-200, 201, (3, 3000, 16))
    ctx[:, 1000:1100] = 0
    full = q.predict(ctx)
    chunks = [q.predict(ctx[:, i : i + 97]) for i in range(0, 3000, 97)]
    assert torch.equal(full.table_index, torch.cat([c.table_index for c in chunks], 1))
    for a in range(3):
        single = q.select([a]).predict(ctx[a : a + 1].flip(1))
        assert torch.equal(single.table_index[0], full.table_index[a].flip(0))
        assert torch.equal(single.mu_int[0], full.mu_int[a].flip(0))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q.predict(ctx)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one.table_index, full.table_index) and torch.equal(one.mu_int, full.mu_int)


def test_integer_arm_tracks_float_arm():
    """Quantized with a fine step, the integer ARM predicts what the float ARM predicts (to the grid)."""
    torch.manual_seed(1)
    arm = BatchedArm(2)
    q = QuantizedArm.from_float(arm, 14, 10)
    ctx = torch.randint(-20, 21, (2, 400, 16)).float()
    mu, ls = arm(ctx)
    pred = q.predict(ctx)
    assert (pred.mu - mu.double()).abs().max() <= 1 / 16 + 1e-3
    assert (pred.log_scale - ls.double()).abs().max() <= 1 / 16 + 1e-3


def _level_predictions(q, arm, x, s, table):
    ctx = gather_contexts(x, 16, s)
    pred = q.predict(ctx, table)
    mu, ls = arm(ctx.float())
    return pred, mu, ls


def test_causality():
    """Changing latent i changes no prediction at j <= i nor in another segment."""
    torch.manual_seed(3)
    arm = BatchedArm(2)
    q = QuantizedArm.from_float(arm, 8)
    table = LaplaceTableConfig()
    s = 50
    x = torch.randint(-10, 11, (2, 230))
    base = _level_predictions(q, arm, x, s, table)
    for i in (0, 17, 49, 50, 120, 229):
        y = x.clone()
        y[:, i] += 37
        new = _level_predictions(q, arm, y, s, table)
        seg = i // s
        same = torch.ones(230, dtype=torch.bool)
        same[i + 1 : min((seg + 1) * s, i + 17)] = False  # only the next K positions of the same segment
        assert torch.equal(base[0].table_index[:, same], new[0].table_index[:, same])
        assert torch.equal(base[0].mu_int[:, same], new[0].mu_int[:, same])
        assert torch.equal(base[1][:, same], new[1][:, same]) and torch.equal(base[2][:, same], new[2][:, same])
        if (~same).any():  # and the model does look at its context
            assert not torch.equal(base[1][:, ~same], new[1][:, ~same])


def test_float_view_rate_matches_table_rate():
    """On data the ARM was fitted to, the float rate of the quantized view is the coded rate
    (differences: 16-bit tables, escapes beyond the support)."""
    torch.manual_seed(4)
    rng = np.random.default_rng(0)
    walk = scipy.signal.lfilter([1.0], [1.0, -0.8], rng.laplace(0, 2.0, (2, 6000)), axis=1)
    x = torch.from_numpy(np.round(walk).astype(np.int64))
    ctx = gather_contexts(x, 16, 256)
    arm = BatchedArm(2)
    opt = torch.optim.Adam(arm.parameters(), lr=1e-2)
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads only add synchronisation
    try:
        for _ in range(60):
            mu, ls = arm(ctx.float())
            loss = arm.rate_bits(x.float(), mu, ls).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(old)
    q = QuantizedArm.from_float(arm, 8)
    table = LaplaceTableConfig()
    pred = q.predict(ctx, table)
    float_bits = laplace_rate_bits(x.double(), pred.mu, pred.log_scale).sum().item()
    table_bits = get_tables(table).bits(pred.table_index.numpy(), (x - pred.mu_int).numpy()).sum()
    assert abs(float_bits - table_bits) < 0.01 * table_bits
    assert float_bits / x.numel() < 4.0  # and the fit is a real one (an order-0 code needs 4.26)


def test_integer_arm_rejects_bad_input():
    q = _random_qarm()
    with pytest.raises(ArmInputError):
        q.predict(torch.zeros(3, 5, 15))
    with pytest.raises(ArmInputError):
        q.predict(torch.full((3, 5, 16), 0.5))
    arm = BatchedArm(2)
    with torch.no_grad():
        arm.weights[0][0, 0, 0] = 1e6
    with pytest.raises(ArmQuantizationError):
        QuantizedArm.from_float(arm, 20)
    with pytest.raises(ArmQuantizationError):
        QuantizedArm.from_float(arm, 30)
    with pytest.raises(ArmQuantizationError):
        QuantizedArm.from_float(BatchedArm(2), [4, 4, 4])


# ------------------------------------------------------------------------------------------ bytes
@pytest.mark.parametrize("config,shifts,frac", [(ArmConfig(), (3, 8, 12), 6), (ArmConfig(8, 5, 1), (0, 20, 6), 0)])
def test_serialization_round_trip(config, shifts, frac):
    q = _random_qarm(config=config, shifts=shifts, frac=frac)
    data = q.to_bytes()
    r = QuantizedArm.from_bytes(data)
    assert r.config == q.config and r.weight_shifts == q.weight_shifts and r.activation_frac_bits == frac
    for a, b in zip(q.weights + q.biases, r.weights + r.biases):
        assert np.array_equal(a, b)
    ws, _ = r.dequantized()
    steps = torch.tensor([2.0**-s for s in shifts])[:, None, None]
    assert torch.equal(ws[0], torch.from_numpy(q.weights[0]).double() * steps)
    f = r.to_float_arm()
    assert torch.allclose(f.weights[1].double(), ws[1].float().double())


def test_serialization_is_compact():
    q = _random_qarm(a=17, shifts=(8,) * 17, mag=0.25)
    # 578 params per attribute at step 1/256: the integers are ~|64|, about 7 bits each
    nbytes = len(q.to_bytes())
    assert nbytes < 17 * 578 * 8.5 / 8, nbytes


def test_serialization_rejects_bad_bytes():
    data = _random_qarm().to_bytes()
    with pytest.raises(ArmFormatError):
        QuantizedArm.from_bytes(b"\x07" + data[1:])
    with pytest.raises(ArmFormatError):
        QuantizedArm.from_bytes(data[:10])
    with pytest.raises(ArmFormatError):
        QuantizedArm.from_bytes(data[:-3])
