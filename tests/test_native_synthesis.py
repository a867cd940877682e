"""The native synthesis (decode/native/src/synthesis.h, attributes.h) through ralhe_me.decode._native:
(a) bit for bit the canonical order of float32 operations, written out slowly in numpy here;
(b) close to the torch path (the training reference) on a real encode; (c) the encoder's
reconstruction, the Python decoder (codec.reconstruct_attributes) and the native whole-file decoder
give the same bits; (d) bad inputs raise named errors."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import small_codec_config, voxel_blob
from ralhe_me.decode.bitstream import BitstreamError, CorruptDataError
from ralhe_me.config import ArchitectureConfig
from ralhe_me.geometry.occupancy import NEIGHBOUR_OFFSETS
from ralhe_me.nn.inverse_raht import InverseRaht
from ralhe_me.geometry.octree import OctreeLevels
from ralhe_me.decode.synthesis import AttributeSynthesis, native_module, plane_sizes

native = native_module()
pytestmark = pytest.mark.skipif(native is None, reason="ralhe_me.decode._native is not built")

SHIFT = 7


def same_bits(a, b) -> bool:
    a, b = np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def neighbour_rows(coords: np.ndarray) -> np.ndarray:
    """[N, 26] row of the voxel at coords + NEIGHBOUR_OFFSETS[j], -1 where empty (by dictionary)."""
    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    rows = np.full((len(coords), 26), -1, dtype=np.int32)
    for i, c in enumerate(coords.tolist()):
        for j, off in enumerate(NEIGHBOUR_OFFSETS.tolist()):
            rows[i, j] = index.get((c[0] + off[0], c[1] + off[1], c[2] + off[2]), -1)
    return rows


def arch_dict(arch: ArchitectureConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(arch).items()}


# ---------------------------------------------------------------- (a) the canonical order in numpy

def relu(v):
    return np.where(v < 0, np.float32(0), v).astype(np.float32)


def reference_decoder(x, w, table, skip):
    """One group: x [A, N, in] float32; w the 8 tensors [A, ...]; table [N, 27] kernel order
    (-1: empty); skip (weights [A, in, d], bias [A, 1, d]) or None -> [A, N, d].  Every step is
    one float32 numpy operation, in the order of synthesis.h."""
    l0w, l0b, l1w, l1b, c0k, c0b, c1k, c1b = w
    a, n, c_in = x.shape

    def pointwise(v, weight, bias):  # bias + v_0 w_0 + v_1 w_1 + ..., left to right
        acc = np.broadcast_to(bias, (a, n, bias.shape[2])).copy()
        for i in range(v.shape[2]):
            acc = acc + v[:, :, i:i + 1] * weight[:, i:i + 1, :]
        return acc

    def conv(v, kernel, bias):  # bias, then offsets k in order, input channels in order
        acc = np.broadcast_to(bias, (a, n, bias.shape[2])).copy()
        for k in range(27):
            rows = np.flatnonzero(table[:, k] >= 0)
            src = table[rows, k]
            for i in range(v.shape[2]):
                acc[:, rows] = acc[:, rows] + v[:, src, i:i + 1] * kernel[:, k, i][:, None, :]
        return acc

    h = relu(pointwise(x, l0w, l0b))
    h = relu(pointwise(h, l1w, l1b))
    h = relu(conv(h, c0k, c0b))
    out = conv(h, c1k, c1b)
    if skip is not None:
        out = out + pointwise(x, skip[0], skip[1])
    return out


def reference_synthesis(arch, num_sh, ints, levels, rows, planes):
    """Normalized SH [N, K, 3] and opacity [N] by the canonical order (inverse RAHT: the torch
    reference of nn/inverse_raht.py)."""
    w = [(v.astype(np.float64) * 2.0 ** -SHIFT).astype(np.float32) for v in ints]
    coords = levels.coords[0]
    n = len(coords)
    if arch.transform == "raht":
        x = InverseRaht.from_coords(coords, levels.depth).columns(
            [torch.as_tensor(p, dtype=torch.float32) for p in planes], native=False).numpy()
    else:
        L = arch.num_levels
        x = np.stack([p.astype(np.float32)[:, levels.point_to_voxel[i % L]] for i, p in enumerate(planes)], axis=-1)
    # kernel order k: offset (k % 3 - 1, k // 3 % 3 - 1, k // 9 - 1)
    column = {tuple(o): j for j, o in enumerate(NEIGHBOUR_OFFSETS.tolist())}
    table = np.empty((n, 27), dtype=np.int64)
    for k in range(27):
        off = (k % 3 - 1, k // 3 % 3 - 1, k // 9 - 1)
        table[:, k] = np.arange(n) if k == 13 else rows[:, column[off]]
    sh_skip = (w[16], w[17]) if arch.skip else None
    op_skip = (w[18], w[19]) if arch.skip else None
    sh = reference_decoder(x[:num_sh], w[0:8], table, sh_skip)
    op = reference_decoder(x[num_sh:], w[8:16], table, op_skip)
    return sh.transpose(1, 0, 2), op.reshape(-1)


def random_case(transform: str, skip: bool, sh_degree: int, seed: int):
    rng = np.random.default_rng(seed)
    depth = 5
    coords = voxel_blob(260, depth, seed)
    arch = ArchitectureConfig(transform=transform, num_levels=3, latent_channels=2, skip=skip)
    num_sh = (sh_degree + 1) ** 2
    levels = OctreeLevels.build(coords, arch.num_levels, depth)
    syn = AttributeSynthesis(num_sh, arch)
    ints = [rng.integers(-200, 201, tuple(p.shape)).astype(np.int64) for _, p in syn.decoder_parameters()]
    planes = [rng.integers(-30, 31, (num_sh + 1, n)).astype(np.int32) for n in plane_sizes(levels.sizes, arch)]
    return arch, num_sh, ints, levels, syn, planes


@pytest.mark.parametrize("transform", ["raht", "pyramid"])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_native_equals_the_canonical_order_bit_for_bit(transform, skip, sh_degree):
    arch, num_sh, ints, levels, syn, planes = random_case(transform, skip, sh_degree, seed=sh_degree + 2 * skip)
    coords = levels.coords[0]
    rows = neighbour_rows(coords)
    assert (rows >= 0).sum(1).mean() > 3  # the convolutions have work to do
    p2v = [] if transform == "raht" else [p.astype(np.int32) for p in levels.point_to_voxel]
    sh, op = native.synthesize(arch_dict(arch), num_sh, ints, SHIFT, coords.astype(np.int32), levels.depth,
                               rows, p2v, planes)
    ref_sh, ref_op = reference_synthesis(arch, num_sh, ints, levels, rows, planes)
    assert sh.shape == (len(coords), num_sh, 3) and op.shape == (len(coords),)
    assert same_bits(sh, ref_sh) and same_bits(op, ref_op)
    # AttributeSynthesis.decode takes the native path once it has the integer weights
    syn.bind(levels)
    from ralhe_me.decode.reconstruction import load_decoders

    load_decoders(syn, ints, SHIFT)
    with torch.no_grad():
        got_sh, got_op = syn.decode([torch.as_tensor(p, dtype=torch.float32) for p in planes])
    assert same_bits(got_sh.permute(1, 0, 2), ref_sh) and same_bits(got_op.reshape(-1), ref_op)
    # ... and the torch path after any change of the weights (they no longer are the integers)
    with torch.no_grad():
        syn.sh_decoder.linear0_bias.add_(0.0)
    assert syn.quantized_weights() is None



def zero_branches(ints, num_sh, attributes):
    """The integer weights with the branches (linear0 .. conv1, not the skip path) of
    ``attributes`` (SH 0..K-1, opacity K) set to zero, as branch pruning writes them."""
    out = [v.copy() for v in ints]
    for t in attributes:
        first, a = (0, t) if t < num_sh else (8, 0)
        for j in range(first, first + 8):
            out[j][a] = 0
    return out


@pytest.mark.parametrize("lanes", ["8", "4"])
@pytest.mark.parametrize("transform", ["raht", "pyramid"])
def test_zero_branches_run_the_skip_path_alone_with_the_same_bits(transform, lanes, monkeypatch):
    """A lane group whose branches are all zero (pruned) skips the branch passes; the bits are
    still the canonical order's and the full passes' (RALHE_SYNTHESIS_FULL=1)."""
    monkeypatch.setenv("RALHE_SYNTHESIS_LANES", lanes)
    arch, num_sh, ints, levels, _, planes = random_case(transform, True, 3, seed=11)
    coords = levels.coords[0]
    rows = neighbour_rows(coords)
    p2v = [] if transform == "raht" else [p.astype(np.int32) for p in levels.point_to_voxel]
    # attributes 0-7: whole lane groups; 12 shares its group with kept ones; opacity (16) alone
    ints = zero_branches(ints, num_sh, list(range(8)) + [12, 16])

    def run():
        return native.synthesize(arch_dict(arch), num_sh, ints, SHIFT, coords.astype(np.int32), levels.depth,
                                 rows, p2v, planes)

    sh, op = run()
    ref_sh, ref_op = reference_synthesis(arch, num_sh, ints, levels, rows, planes)
    assert same_bits(sh, ref_sh) and same_bits(op, ref_op)
    assert np.abs(ref_sh[:, :8]).max() > 0 and np.abs(ref_op).max() > 0  # the skip path still gives values
    monkeypatch.setenv("RALHE_SYNTHESIS_FULL", "1")
    full_sh, full_op = run()
    assert same_bits(sh, full_sh) and same_bits(op, full_op)


def test_all_branches_zero_with_overflowing_outputs_keep_the_full_passes_bits(monkeypatch):
    """Every branch zero (no hidden buffers are allocated), and skip weights so large that some
    outputs overflow to inf or NaN: still the bits of the full passes."""
    arch, num_sh, ints, levels, _, planes = random_case("raht", True, 3, seed=12)
    coords = levels.coords[0]
    rows = neighbour_rows(coords)
    ints = zero_branches(ints, num_sh, range(num_sh + 1))
    shift = -118  # weights up to 200 * 2**118 = 6.6e37: finite, their products with the latents not

    def run():
        return native.synthesize(arch_dict(arch), num_sh, ints, shift, coords.astype(np.int32), levels.depth,
                                 rows, [], planes)

    sh, op = run()
    assert not np.isfinite(sh).all() and np.isfinite(sh).any()
    monkeypatch.setenv("RALHE_SYNTHESIS_FULL", "1")
    full_sh, full_op = run()
    assert same_bits(sh, full_sh) and same_bits(op, full_op)


def test_denormalize_follows_attributes_py():
    from ralhe_me.attributes import OPACITY_EPS, denormalize_opacity_logits, denormalize_sh

    rng = np.random.default_rng(5)
    n, k = 300, 4
    sh_norm = rng.normal(0, 2, (n, k, 3)).astype(np.float32)
    op_norm = rng.normal(0, 3, n).astype(np.float32)
    op_norm[:3] = [-100, 100, 0]  # clipped at both ends
    mean = rng.normal(0, 1, (k + 1, 3)).astype(np.float32).astype(np.float64)
    mean[k, 0] = 0.5
    std = rng.uniform(0.1, 2, k + 1).astype(np.float32).astype(np.float64)
    std[k] = 0.2
    gain = rng.uniform(0.5, 2, n)
    for g in (None, gain):
        sh, logits = native.denormalize(sh_norm, op_norm, mean, std, g)
        assert same_bits(sh, denormalize_sh(sh_norm.transpose(1, 0, 2), mean, std, g))
        # det_log instead of numpy's log: equal within an ulp or two of float32
        np.testing.assert_allclose(logits, denormalize_opacity_logits(op_norm[None, :, None], mean, std),
                                   rtol=3e-7, atol=3e-7)
    limit = np.float32(np.log(OPACITY_EPS) - np.log1p(-OPACITY_EPS))
    assert logits[0] == pytest.approx(limit, rel=1e-6) and logits[1] == pytest.approx(-limit, rel=1e-6)


# ---------------------------------------------------------------- (b), (c) a real encode

@pytest.fixture(scope="module")
def encoded():
    from ralhe_me.default_scene import make_default_scene
    from ralhe_me.encode.encoder import encode_model

    config = small_codec_config()
    config.latent_coder = "arm"  # decode_stages reads the ARM section
    return encode_model(make_default_scene(600, seed=3), config)


def decode_stages(data: bytes):
    """The Python decoder's stages up to the synthesis (decoder.py _decode)."""
    from ralhe_me.decode import reconstruction as codec
    from ralhe_me.decode.bitstream import unpack
    from ralhe_me.entropy.integer_arm import QuantizedArm
    from ralhe_me.entropy.latent_coder import decode_latents
    from ralhe_me.geometry.occupancy import decode_positions
    from ralhe_me.nn.neighbors import NeighborMap
    from ralhe_me.decode.weights import decode_int_tensors

    container = unpack(data)
    header = container.header
    coords, rows = decode_positions(container.section(codec.SECTION_POSITIONS), int(header["depth"]),
                                    with_neighbours=True)
    levels = codec.levels_for(coords, header)
    arch = codec.architecture_from_header(header)
    num_sh = (int(header["sh_degree"]) + 1) ** 2
    syn = AttributeSynthesis(num_sh, arch, codec.table_config_from_header(header))
    ints = decode_int_tensors(container.section(codec.SECTION_DECODERS),
                              [tuple(p.shape) for _, p in syn.decoder_parameters()])
    codec.load_decoders(syn, ints, int(header["decoder_shift"]))
    arms = QuantizedArm.from_bytes(container.section(codec.SECTION_ARMS))
    latents = decode_latents(container.section(codec.SECTION_LATENTS), plane_sizes(levels.sizes, arch), num_sh + 1,
                             arms, arch.segment_length, syn.arm.table_config)
    syn.bind(levels, NeighborMap.from_neighbour_rows(rows, NEIGHBOUR_OFFSETS))
    return header, syn, latents, levels, rows, ints


def test_native_agrees_with_the_torch_path(encoded):
    """The torch path (training's reference; MKL sums in its own order) agrees to float32
    rounding: normalized outputs within 1e-5 (values of order 1-10)."""
    header, syn, latents, *_ = decode_stages(encoded.data)
    sh, op = syn.native_decode(latents)
    syn._quantized = None  # the weights without their integers: the torch path
    assert syn.native_decode(latents) is None
    with torch.no_grad():
        t_sh, t_op = syn.decode([torch.as_tensor(l, dtype=torch.float32) for l in latents])
    t_sh, t_op = t_sh.permute(1, 0, 2).numpy(), t_op.reshape(-1).numpy()
    scale = max(1.0, float(np.abs(t_sh).max()), float(np.abs(t_op).max()))
    assert np.abs(sh - t_sh).max() <= 1e-5 * scale and np.abs(op - t_op).max() <= 1e-5 * scale


def test_encoder_python_decoder_and_native_decoder_give_the_same_bits(encoded):
    from ralhe_me.decode import reconstruction as codec
    from ralhe_me.decode.decoder import decode_bytes

    header, syn, latents, levels, rows, ints = decode_stages(encoded.data)
    mean = np.asarray(header["signal_mean"], dtype=np.float64)
    std = np.asarray(header["signal_std"], dtype=np.float64)
    sh, logits = codec.reconstruct_attributes(syn, latents, mean, std)
    # the native functions chained by hand, as the native decoder chains them
    sh_norm, op_norm = native.synthesize(header["architecture"], syn.num_sh, ints, int(header["decoder_shift"]),
                                         levels.coords[0].astype(np.int32), levels.depth, rows.astype(np.int32), [],
                                         [l.astype(np.int32) for l in latents])
    by_hand = native.denormalize(sh_norm, op_norm, mean, std, None)
    assert same_bits(sh, by_hand[0]) and same_bits(logits, by_hand[1])
    rec = encoded.reconstruction  # the encoder's prediction (reconstruct_attributes on its integers)
    assert same_bits(rec.sh, sh) and same_bits(rec.opacity_logits, logits)
    python = decode_bytes(encoded.data, engine="python").model
    assert same_bits(python.sh, sh) and same_bits(python.opacity_logits, logits)
    if hasattr(native, "decode"):
        whole = native.decode(bytes(encoded.data))
        assert same_bits(whole["sh"], sh) and same_bits(whole["opacity_logits"], logits)


# ---------------------------------------------------------------- (d) bad inputs

def test_bad_inputs_raise_named_errors():
    arch, num_sh, ints, levels, _, planes = random_case("raht", True, 1, seed=9)
    coords = levels.coords[0].astype(np.int32)
    rows = neighbour_rows(levels.coords[0])
    args = dict(architecture=arch_dict(arch), num_sh=num_sh, weights=ints, shift=SHIFT, coords=coords,
                depth=levels.depth, neighbours=rows, point_to_voxel=[], planes=planes)
    native.synthesize(**args)  # valid

    def fails(match, **change):
        with pytest.raises(BitstreamError, match=match):
            native.synthesize(**{**args, **change})

    fails("weight arrays", weights=ints[:-1])
    fails(r"weights\[0\] has size", weights=[ints[0][:, :-1]] + ints[1:])
    fails(r"weights\[2\] must have dtype", weights=ints[:2] + [ints[2].astype(np.int32)] + ints[3:])
    fails("neighbours", neighbours=rows[:, :25])
    fails("neighbours must have dtype", neighbours=rows.astype(np.int64))
    bad_rows = rows.copy()
    bad_rows[5, 3] = len(rows)
    fails("neighbour row", neighbours=bad_rows)
    fails("coords", coords=coords[:-1])
    dup = coords.copy()
    dup[1] = dup[0]
    fails("unique", coords=dup)
    fails("latent planes|planes", planes=planes[:1])
    fails(r"planes\[0\] has size", planes=[planes[0][:, :-1]] + planes[1:])
    fails("unknown transform", architecture={**args["architecture"], "transform": "wavelet"})
    fails("lacks 'skip'", architecture={k: v for k, v in args["architecture"].items() if k != "skip"})
    fails("exceeds", architecture={**args["architecture"], "decoder_linear": [100, 4]})
    fails("decoder_shift", shift=-2000)
    p_arch, p_num_sh, p_ints, p_levels, _, p_planes = random_case("pyramid", False, 0, seed=10)
    p2v = [p.astype(np.int32) for p in p_levels.point_to_voxel]
    pyramid = dict(architecture=arch_dict(p_arch), num_sh=p_num_sh, weights=p_ints, shift=SHIFT, coords=None, depth=0,
                   neighbours=neighbour_rows(p_levels.coords[0]), point_to_voxel=p2v, planes=p_planes)
    native.synthesize(**pyramid)  # valid
    with pytest.raises(BitstreamError, match="point_to_voxel arrays"):
        native.synthesize(**{**pyramid, "point_to_voxel": p2v[:-1]})
    p2v[1] = p2v[1].copy()
    p2v[1][7] = p_levels.sizes[1]
    with pytest.raises(BitstreamError, match="point_to_voxel of level 1"):
        native.synthesize(**pyramid)
    sh_norm, op_norm = native.synthesize(**args)
    mean, std = np.zeros((num_sh + 1, 3)), np.ones(num_sh + 1)
    with pytest.raises(CorruptDataError, match="mean"):
        native.denormalize(sh_norm, op_norm, mean[:-1], std, None)
    with pytest.raises(CorruptDataError, match="gain"):
        native.denormalize(sh_norm, op_norm, mean, std, np.ones(3))
    with pytest.raises(CorruptDataError, match="sh_norm"):
        native.denormalize(sh_norm.astype(np.float64), op_norm, mean, std, None)
