"""Peer formats through splat-transform: without Node.js or the tool the runner says why in one
line (never a traceback from deep inside subprocess); a failing tool's stderr reaches the error;
and, where scripts/setup_peers.sh has installed it, a small model round-trips through SPZ, SOG
and compressed PLY with every Gaussian back within the format's quantization step."""
import os
import stat

import numpy as np
import pytest

from ralhe_me.default_scene import make_default_scene
from ralhe_me.eval import peers
from ralhe_me.eval.peers import PEER_FORMATS, PeerError, PeerInputError, encode_peer, peers_available
from ralhe_me.gaussians import write_ply


@pytest.fixture
def nothing_installed(tmp_path, monkeypatch):
    """PATH holds only an empty folder, no env override, no .peers/."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(peers.SPLAT_TRANSFORM_ENV, raising=False)
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path / "no_peers_here")
    return tmp_path


def fake_tool(tmp_path, body: str) -> str:
    path = tmp_path / "fake-splat-transform"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def small_ply(tmp_path):
    model = make_default_scene(300, seed=3)
    # Saturated opacities: 8-bit alpha formats decode these to alpha 0 / 1, i.e. logits -inf / +inf.
    model.opacity_logits[:5] = 14.0
    model.opacity_logits[5:10] = -14.0
    path = tmp_path / "small.ply"
    write_ply(model, path)
    return model, path


def test_nothing_installed_gives_a_reason_and_a_named_error(nothing_installed, small_ply):
    reason = peers_available()
    assert isinstance(reason, str) and "\n" not in reason
    assert "splat-transform not found" in reason and "setup_peers.sh" in reason
    with pytest.raises(PeerError, match="splat-transform not found"):
        encode_peer("spz", small_ply[1], nothing_installed / "out")


def test_missing_node_is_named(nothing_installed, monkeypatch, small_ply):
    script = nothing_installed / "cli.mjs"
    script.write_text("#!/usr/bin/env node\nconsole.log('hi')\n")
    monkeypatch.setenv(peers.SPLAT_TRANSFORM_ENV, str(script))
    assert "Node.js not found" in peers_available()
    with pytest.raises(PeerError, match="Node.js not found"):
        encode_peer("sog", small_ply[1], nothing_installed / "out")


def test_env_var_pointing_nowhere(nothing_installed, monkeypatch):
    monkeypatch.setenv(peers.SPLAT_TRANSFORM_ENV, str(nothing_installed / "missing-tool"))
    assert peers.SPLAT_TRANSFORM_ENV in peers_available()


def test_failing_tool_reports_command_and_stderr(tmp_path, monkeypatch, small_ply):
    tool = fake_tool(tmp_path, 'echo "noise on stdout"; echo "boom: cannot parse splats" >&2; exit 3')
    monkeypatch.setenv(peers.SPLAT_TRANSFORM_ENV, tool)
    reason = peers_available()
    assert "exit 3" in reason and tool in reason
    with pytest.raises(PeerError) as err:
        encode_peer("cply", small_ply[1], tmp_path / "out")
    assert tool in str(err.value) and "boom: cannot parse splats" in str(err.value)


def test_tool_that_writes_nothing(tmp_path, monkeypatch, small_ply):
    monkeypatch.setenv(peers.SPLAT_TRANSFORM_ENV, fake_tool(tmp_path, "exit 0"))
    assert peers_available() is None
    with pytest.raises(PeerError, match="wrote nothing"):
        encode_peer("spz", small_ply[1], tmp_path / "out")


def test_sog_iterations_reach_the_sog_encode_only(tmp_path, monkeypatch, small_ply):
    """-i N goes to SOG's encode (its SH k-means), never to another format or to a decode."""
    log = tmp_path / "argv.log"
    # Records its arguments and "codes" by copying the input to the output path (the last argument).
    tool = fake_tool(tmp_path, f'echo "$@" >> {log}\n'
                               '[ "$1" = --version ] && { echo "splat-transform v0.0.0"; exit 0; }\n'
                               'n=$#; eval "src=\\${$((n - 1))}"; eval "dst=\\${$n}"; cp "$src" "$dst"')
    monkeypatch.setenv(peers.SPLAT_TRANSFORM_ENV, tool)
    encode_peer("sog", small_ply[1], tmp_path / "sog", decode_repeats=1, sog_iterations=3)
    encode_peer("spz", small_ply[1], tmp_path / "spz", decode_repeats=1, sog_iterations=3)
    calls = [line.split() for line in log.read_text().splitlines() if not line.startswith("--version")]
    sog_encode, sog_decode, spz_encode, spz_decode = calls
    assert sog_encode[sog_encode.index("-i") + 1] == "3" and sog_encode[-1].endswith(".sog")
    assert "-i" not in sog_decode and "-i" not in spz_encode and "-i" not in spz_decode
    with pytest.raises(PeerInputError, match="sog_iterations"):
        encode_peer("sog", small_ply[1], tmp_path / "x", sog_iterations=0)


def test_bad_input(tmp_path, small_ply):
    with pytest.raises(PeerInputError, match="unknown peer format 'draco'"):
        encode_peer("draco", small_ply[1], tmp_path)
    with pytest.raises(PeerInputError, match="no such"):
        encode_peer("spz", tmp_path / "absent.ply", tmp_path)
    with pytest.raises(PeerInputError, match="decode_repeats"):
        encode_peer("spz", small_ply[1], tmp_path, decode_repeats=0)


def test_shipped_bytes_counts_every_file_of_a_folder(tmp_path):
    (tmp_path / "bundle" / "sub").mkdir(parents=True)
    (tmp_path / "bundle" / "meta.json").write_bytes(b"x" * 10)
    (tmp_path / "bundle" / "sub" / "means.webp").write_bytes(b"y" * 32)
    assert peers.shipped_bytes(tmp_path / "bundle") == 42
    assert peers.shipped_bytes(tmp_path / "bundle" / "meta.json") == 10


# Largest per-axis position error each format's quantizer allows, as a fraction of the scene's
# largest extent (SPZ: 24-bit fixed point with 12 fractional bits, an absolute 2^-12 instead).
# SOG: 16 bits per axis on a log-mapped range; compressed PLY: 11/10/11 bits per 256-splat chunk.
POSITION_TOLERANCE = {"spz": ("absolute", 2.0 ** -12), "sog": ("relative", 2.0 ** -14),
                      "cply": ("relative", 2.0 ** -10)}


WHY_NOT = peers_available()
needs_peers = pytest.mark.skipif(WHY_NOT is not None, reason=f"peers skipped: {WHY_NOT}")


@needs_peers
def test_real_tool_error_reaches_the_message(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply\n")
    with pytest.raises(PeerError, match="failed to read file header") as err:
        encode_peer("spz", bad, tmp_path / "out")
    assert "-g cpu" in str(err.value) and str(bad) in str(err.value)


@needs_peers
@pytest.mark.parametrize("fmt", sorted(PEER_FORMATS))
def test_round_trip(fmt, tmp_path, small_ply):
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    model, path = small_ply
    res = encode_peer(fmt, path, tmp_path / "out", decode_repeats=2)
    assert res.path.endswith(PEER_FORMATS[fmt]) and res.size_bytes == os.path.getsize(res.path) > 0
    assert res.size_bytes < os.path.getsize(path)  # every peer format is smaller than float32 PLY
    assert len(res.decode_runs_s) == 2 and res.decode_s > 0 and res.encode_s > 0
    assert res.tool_version.startswith("splat-transform v")
    dec = res.model
    assert len(dec) == len(model) and dec.sh_degree == model.sh_degree
    dec.check_finite()  # saturated alphas came back as finite logits
    # SOG and compressed PLY reorder the Gaussians (Morton order): pair them up first.
    rows, cols = linear_sum_assignment(cdist(model.means, dec.means))
    err = np.abs(model.means[rows] - dec.means[cols]).max()
    kind, tol = POSITION_TOLERANCE[fmt]
    if kind == "relative":
        tol *= float((model.means.max(0) - model.means.min(0)).max())
    assert err <= tol, f"{fmt}: position error {err:.3g} > {tol:.3g}"
    alpha_err = np.abs(model.opacities[rows] - dec.opacities[cols]).max()
    assert alpha_err <= 2.0 / 255, f"{fmt}: opacity error {alpha_err:.3g} beyond 8-bit alpha"  # SOG reaches 1/255
