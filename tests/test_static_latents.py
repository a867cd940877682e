"""Latents coded with static per-level histograms (entropy/static_latents.py; header latent_coder
"static"): exact round trips in Python and in the native decoder, the same verdicts on corrupt
sections, and the encoder's choice between them and the ARM."""
import dataclasses

import numpy as np
import pytest

from conftest import small_codec_config, voxel_blob
from ralhe_me.decode.bitstream import Container, CorruptDataError, pack, unpack
from ralhe_me.decode.decoder import decode_bytes
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.encoder import EncodeError, encode_model
from ralhe_me.entropy.static_latents import (StaticLatentsError, coefficient_levels, decode_static_latents,
                                             encode_static_latents)
from ralhe_me.decode.synthesis import native_module

native = native_module()
needs_native = pytest.mark.skipif(native is None, reason="ralhe_me.decode._native is not built")


def latent_planes(levels: np.ndarray, num_planes: int, num_attributes: int, seed: int):
    """Laplace latents whose spread grows with the level (as trained RAHT latents), plus the
    extremes of int32 (escape symbols with 38 raw bits)."""
    rng = np.random.default_rng(seed)
    planes = []
    for _ in range(num_planes):
        scale = 0.3 * 1.6 ** levels.astype(np.float64)
        plane = np.round(rng.laplace(0.0, scale, (num_attributes, len(levels)))).astype(np.int64)
        planes.append(plane)
    planes[0][0, :3] = [-(1 << 31), (1 << 31) - 1, 1 << 20]
    return planes


@pytest.fixture(scope="module")
def case():
    depth = 7
    coords = voxel_blob(1500, depth, seed=1, spread=10)
    levels = coefficient_levels(coords, depth)
    planes = latent_planes(levels, 3, 4, seed=2)
    return coords, depth, levels, planes, encode_static_latents(planes, levels)


def test_round_trip_is_exact(case):
    _, _, levels, planes, data = case
    got = decode_static_latents(data, 3, 4, levels)
    assert all(g.dtype == np.int32 and np.array_equal(g, p) for g, p in zip(got, planes))
    assert levels[0] == 7 and set(np.unique(levels)) <= set(range(8))


@needs_native
def test_native_levels_and_latents_equal_pythons(case):
    coords, depth, levels, planes, data = case
    assert np.array_equal(native.coefficient_levels(coords.astype(np.int32), depth), levels)
    got = native.decode_static_latents(data, 3, 4, levels.astype(np.int32).tolist())
    assert all(np.array_equal(g, p) for g, p in zip(got, planes))


def test_latents_outside_int32_are_not_coded_static(case):
    _, _, levels, planes, _ = case
    wide = [p.copy() for p in planes]
    wide[1][2, 5] = 1 << 31
    assert encode_static_latents(wide, levels) is None


def refused_alike(mutations, levels) -> int:
    """How many of the sections (3 planes of 4 attributes) both decoders refuse: Python raises
    StaticLatentsError exactly where the native decoder raises CorruptDataError, and both decode
    the same latents otherwise."""
    refused = 0
    for section in mutations:
        try:
            ref = decode_static_latents(section, 3, 4, levels)
        except StaticLatentsError:
            ref = None
        try:
            ours = native.decode_static_latents(section, 3, 4, levels.astype(np.int32).tolist())
        except CorruptDataError:
            ours = None
        assert (ours is None) == (ref is None)
        if ref is not None:
            assert all(np.array_equal(o, r) for o, r in zip(ours, ref))
        refused += ref is None
    return refused


@needs_native
def test_corrupt_sections_are_refused_alike(case):
    """Truncations, bit flips and appended bytes: Python raises StaticLatentsError exactly where
    the native decoder raises CorruptDataError, and both decode the same latents otherwise."""
    _, _, levels, _, data = case
    rng = np.random.default_rng(7)
    mutations = [data + b"\0", data[:-1], data[:len(data) // 2], b""]
    for i in range(150):
        if i % 3 == 0:
            mutations.append(data[:int(rng.integers(0, len(data)))])
        else:
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 3))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
            mutations.append(bytes(b))
    assert refused_alike(mutations, levels) >= 60  # a flipped bit inside a rANS segment often still decodes (the CRC-32 guards files)


@needs_native
def test_corrupt_tables_are_refused_alike(case):
    """The histogram tables (exp-Golomb codes, which the native decoder reads a byte at a time and
    the reference bit by bit): flipped bits, zeroed runs (codes longer than the 62-bit limit) and
    set bytes inside the first stream's tables get the same verdict, and the same latents where
    both decode."""
    from ralhe_me.entropy.categorical import read_varint
    _, _, levels, _, data = case
    _, start = read_varint(data, 0)  # the first stream's length ...
    _, start = read_varint(data, start)  # ... its table precision ...
    length, start = read_varint(data, start)  # ... and its tables' length
    assert length > 8
    rng = np.random.default_rng(3)
    mutations = []
    for i in range(120):
        b = bytearray(data)
        at = start + int(rng.integers(0, length))
        if i % 3 == 0:
            b[at] ^= 1 << int(rng.integers(0, 8))
        elif i % 3 == 1:
            run = int(rng.integers(1, 12))
            b[at:at + run] = bytes(len(b[at:at + run]))
        else:
            b[at] = int(rng.integers(1, 256))
        mutations.append(bytes(b))
    assert 20 <= refused_alike(mutations, levels) <= 110  # both verdicts occur


@pytest.fixture(scope="module")
def coded():
    """One small scene encoded with each coder (training is deterministic: same latents)."""
    model = make_default_scene(1000, seed=4)
    out = {}
    for coder in ("arm", "static"):
        config = small_codec_config()
        config.latent_coder = coder
        out[coder] = encode_model(model, config)
    return model, out


def test_both_coders_code_the_same_latents_and_decode_to_the_reconstruction(coded):
    _, out = coded
    arm, static = out["arm"], out["static"]
    assert "latent_coder" not in arm.header and static.header["latent_coder"] == "static"
    assert len(unpack(static.data).section("arms")) == 0 and len(unpack(arm.data).section("arms")) > 0
    searched = lambda r: [h["shift"] for h in r.training.history if h.get("step") == "arm_shift"]
    assert len(searched(arm)) == 1 and searched(static) == []  # a forced static coder searches no ARM step
    assert all(np.array_equal(a, b) for a, b in zip(arm.training.latents, static.training.latents))
    # a small scene: the ARM's own weights cost more than it saves
    arm_bytes = len(unpack(arm.data).section("arms")) + len(unpack(arm.data).section("latents"))
    assert len(unpack(static.data).section("latents")) < arm_bytes
    engines = ("python", "native") if native is not None else ("python",)
    for engine in engines:
        decoded = decode_bytes(static.data, engine=engine).model
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            np.testing.assert_array_equal(getattr(decoded, name), getattr(static.reconstruction, name),
                                          err_msg=f"{engine} {name}")
    np.testing.assert_array_equal(static.reconstruction.sh, arm.reconstruction.sh)


def steps(result, name):
    return [h for h in result.training.history if h.get("step") == name]


def test_auto_keeps_the_shorter_coding(coded):
    model, out = coded
    config = small_codec_config()
    assert config.latent_coder == "auto"
    auto = encode_model(model, config)
    sizes = {k: len(v.data) for k, v in out.items()}
    assert len(auto.data) == min(sizes.values()) and auto.header.get("latent_coder") == "static"
    # too few segments to price the ARM on a sample: the exact search ran
    assert steps(auto, "arm_estimate") == [] and len(steps(auto, "arm_shift")) == 1


def test_auto_skips_the_arm_search_when_a_sample_prices_it_clearly_dearer(coded, monkeypatch):
    """With the sample's minimum lowered to this small scene, the ARM priced on a share of its
    segments loses to the static coder by more than the margin: no exact search, the static
    file; with an infinite margin the exact search runs and gives the same file."""
    import math

    from ralhe_me.encode import arm_step

    model, out = coded
    monkeypatch.setattr(arm_step, "ARM_SAMPLE_MIN_SEGMENTS", 1)
    monkeypatch.setattr(arm_step, "ARM_HEAD_FRACTION", 0.0)  # its one or two segments a plane: none exact
    skipped = encode_model(model, small_codec_config())
    (estimate,) = steps(skipped, "arm_estimate")
    assert estimate["skipped_search"] and steps(skipped, "arm_shift") == []
    assert estimate["bits"] > estimate["static_bits"] * (1 + arm_step.ARM_SAMPLE_MARGIN)
    assert skipped.data == out["static"].data
    monkeypatch.setattr(arm_step, "ARM_SAMPLE_MARGIN", math.inf)
    searched = encode_model(model, small_codec_config())
    (estimate,) = steps(searched, "arm_estimate")
    assert not estimate["skipped_search"] and len(steps(searched, "arm_shift")) == 1
    assert searched.data == out["static"].data


def test_bad_coder_settings_are_refused(coded):
    model, _ = coded
    config = small_codec_config()
    config.latent_coder = "huffman"
    with pytest.raises(EncodeError, match="latent_coder must be one of auto, arm, static"):
        encode_model(model, config)
    config = small_codec_config()
    config.latent_coder = "static"
    config.architecture = dataclasses.replace(config.architecture, transform="pyramid")
    with pytest.raises(EncodeError, match="needs the raht transform"):
        encode_model(model, config)


@pytest.mark.parametrize("engine", ["python", "native"])
def test_headers_that_do_not_match_the_sections_are_corrupt(coded, engine):
    if engine == "native" and native is None:
        pytest.skip("ralhe_me.decode._native is not built")
    _, out = coded
    c = unpack(out["static"].data)
    unknown = Container(header=dict(c.header, latent_coder="huffman"), sections=c.sections)
    with pytest.raises(CorruptDataError, match="unknown latent coder"):
        decode_bytes(pack(unknown), engine=engine)
    with_arms = Container(header=c.header, sections=dict(c.sections, arms=unpack(out["arm"].data).section("arms")))
    with pytest.raises(CorruptDataError, match="non-empty arms section"):
        decode_bytes(pack(with_arms), engine=engine)
    arm_file = unpack(out["arm"].data)
    as_static = Container(header=dict(arm_file.header, latent_coder="static"),
                          sections=dict(arm_file.sections, arms=b""))
    with pytest.raises(CorruptDataError, match="static latents"):
        decode_bytes(pack(as_static), engine=engine)


@needs_native
def test_a_symbol_its_table_gives_no_frequency_is_refused_alike():
    """A context holding one symbol gives its neighbour one unit of the CDF (CompressAI needs two
    symbols); a stream that codes that neighbour decodes, and both decoders refuse the symbol."""
    from ralhe_me.baselines.scalar import ALPHABET, _choose_table, pack_bits, to_symbols
    from ralhe_me.entropy.categorical import RansStreamWriter, dense_unique, write_varint

    levels = np.repeat(np.array([0, 1], dtype=np.int64), 50)
    values = np.zeros(100, dtype=np.int64)
    values[50:] = np.arange(50) % 5 - 2  # level 1 varied, level 0 all zero: a one-symbol table
    sym, nb, raw = to_symbols(values)
    _, index = dense_unique(levels)
    counts = np.zeros((2, ALPHABET), dtype=np.int64)
    np.add.at(counts, (index, sym), 1)
    table_bits, freqs, table = _choose_table(counts)
    coded = sym.copy()
    coded[3] = 1  # zigzag 1 (-1) under level 0, whose table has symbol 0 alone
    assert freqs[0, 0] == 1 << 16  # level 0's table: symbol 0 alone; the CDF both decoders build
    cdf_rows = freqs.copy()  # from it gives symbol 1 the last unit: the writer needs that explicitly
    cdf_rows[0, :2] = [(1 << 16) - 1, 1]
    writer = RansStreamWriter(ALPHABET)
    writer.add(coded, index, cdf_rows)
    stream = writer.finish()
    body = (write_varint(table_bits) + write_varint(len(table)) + table + write_varint(len(stream)) + stream
            + pack_bits(nb, raw))
    section = write_varint(len(body)) + body
    with pytest.raises(StaticLatentsError, match="outside its table"):
        decode_static_latents(section, 1, 1, levels)
    with pytest.raises(CorruptDataError, match="outside its table"):
        native.decode_static_latents(section, 1, 1, levels.astype(np.int32).tolist())


def test_info_lists_the_coder_and_each_attributes_bytes(coded, tmp_path):
    import subprocess
    import sys

    from ralhe_me.entropy.categorical import read_varint

    _, out = coded
    src = tmp_path / "s.ralhe"
    src.write_bytes(out["static"].data)
    r = subprocess.run([sys.executable, "-m", "ralhe_me.cli", "info", "--per-attribute", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "latents coded with static per-level histograms" in r.stdout
    listed = {line.split()[0]: int(line.split()[1]) for line in r.stdout.splitlines()
              if line.split() and line.split()[0] in out["static"].header["attributes"]}
    section, pos, want = unpack(out["static"].data).section("latents"), 0, {}
    for _ in range(3):
        for name in out["static"].header["attributes"]:
            length, pos = read_varint(section, pos)
            want[name] = want.get(name, 0) + length
            pos += length
    assert listed == want and pos == len(section)
