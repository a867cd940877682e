"""The WebAssembly build of the native decoder (ralhe_me/decode/native/wasm) against the native
decoder: the same .ply bytes for whole files, and the same error names for damaged ones.

Runs the build's Node.js driver (wasm/test_node.mjs) on small files encoded here. Skipped where
Node.js or the WebAssembly build is missing (bash ralhe_me/decode/native/wasm/build.sh builds it;
scripts/setup_wasm.sh installs emscripten first). The native reference is the ralhe-decode command
(make -C ralhe_me/decode/native) or, without it, the extension behind decode_bytes(engine="native").
"""
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import small_codec_config

NATIVE = Path(__file__).resolve().parents[1] / "ralhe_me" / "decode" / "native"
WASM = NATIVE / "build" / "wasm"
DRIVER = NATIVE / "wasm" / "test_node.mjs"
NATIVE_CLI = NATIVE / "build" / "ralhe-decode"
REBUILD = "bash ralhe_me/decode/native/wasm/build.sh"


def _stale_hint(build: Path) -> str:
    """A hint when ``build`` is older than a library source (a likely cause of a mismatch)."""
    newer = [p.name for p in sorted((NATIVE / "src").glob("*.*")) if p.stat().st_mtime > build.stat().st_mtime]
    return f" ({build.name} is older than {', '.join(newer[:5])}: rebuild)" if newer else ""


@pytest.fixture(scope="module")
def node():
    exe = shutil.which("node") or shutil.which("nodejs")
    if exe is None:
        pytest.skip("Node.js is not installed (scripts/setup_wasm.sh)")
    if not (WASM / "ralhe_decode.wasm").exists() or not (WASM / "ralhe_decode.mjs").exists():
        how = REBUILD if shutil.which("em++") else "apt-get install emscripten, then " + REBUILD
        pytest.skip(f"the WebAssembly build is missing: {how}")
    return exe


def _run_wasm(node, pairs):
    """Decode each (input, output) with the WebAssembly build: {input: record} (test_node.mjs)."""
    args = [node, str(DRIVER), "--check-arrays"]
    for src, dst in pairs:
        args += [str(src), str(dst)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"test_node.mjs failed:\n{proc.stderr[-3000:]}"
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["input"]: r for r in records if "input" in r}


def _native(src: Path, dst: Path):
    """Decode with the native decoder: None on success (``dst`` written), else the error name."""
    if NATIVE_CLI.exists():
        proc = subprocess.run([str(NATIVE_CLI), str(src), str(dst)], capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            return None
        # "ralhe-decode: error: CorruptDataError: ..."
        line = proc.stderr.strip().splitlines()[-1]
        assert "error: " in line, proc.stderr
        return line.split("error: ", 1)[1].split(":", 1)[0]
    from ralhe_me.decode.bitstream import BitstreamError
    from ralhe_me.decode.decoder import decode_bytes, native_decoder
    from ralhe_me.gaussians import write_ply

    if native_decoder() is None:
        pytest.skip("no native decoder to compare with: make -C ralhe_me/decode/native, "
                    "or build the extension (python setup.py build_ext --inplace)")
    try:
        result = decode_bytes(src.read_bytes(), engine="native")
    except BitstreamError as exc:
        return type(exc).__name__
    write_ply(result.model, str(dst))
    return None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small .ralhe files: the fast preset (RAHT, SH degree 3), and the paper preset (pyramid)
    on an SH degree 1 scene with a far field (a few points 10^4 times further out) and covariance
    steps per Gaussian (the section's own step exponents)."""
    from ralhe_me.config import load_preset
    from ralhe_me.default_scene import make_default_scene
    from ralhe_me.encode.encoder import encode_model

    out = tmp_path_factory.mktemp("wasm")
    model = make_default_scene(400, seed=3)
    fast = small_codec_config()
    fast.training.steps = 5  # the decoder does the same work however well the networks are trained
    paths = {}
    paths["raht"] = out / "raht.ralhe"
    paths["raht"].write_bytes(encode_model(model, fast).data)

    means = model.means.copy()
    means[np.random.default_rng(0).choice(len(means), 6, replace=False)] *= 1e4
    far_sh1 = dataclasses.replace(model, means=means, sh=model.sh[:, :4].copy())
    paper = load_preset("paper")
    paper.training.steps = 5
    paper.covariance_codebook = fast.covariance_codebook
    paper.lmbda = fast.lmbda
    paper.covariance_step, paper.shape_sensitivity_views, paper.shape_sensitivity_resolution = 0.2, 2, 32
    paths["pyramid_far_sh1"] = out / "pyramid_far_sh1.ralhe"
    paths["pyramid_far_sh1"].write_bytes(encode_model(far_sh1, paper).data)
    from ralhe_me.decode.bitstream import unpack

    assert unpack(paths["pyramid_far_sh1"].read_bytes()).section("covariance")[1] == 2
    return paths


def test_ply_bytes_equal_native(node, files, tmp_path):
    pairs = [(src, tmp_path / f"{name}.wasm.ply") for name, src in files.items()]
    records = _run_wasm(node, pairs)
    for src, wasm_ply in pairs:
        record = records[str(src)]
        assert record["status"] == "OK", record
        native_ply = tmp_path / f"{src.stem}.native.ply"
        assert _native(src, native_ply) is None
        a, b = native_ply.read_bytes(), wasm_ply.read_bytes()
        where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert a == b, (f"{src.name}: the WebAssembly .ply differs from the native one at byte {where} "
                        f"({len(b)} vs {len(a)} bytes){_stale_hint(WASM / 'ralhe_decode.wasm')}")
        assert record["numPoints"] > 0 and record["plyBytes"] == len(a)


def _damaged(data: bytes):
    """(name, bytes) of damaged copies of a valid file, one per kind of damage."""
    from ralhe_me.decode.bitstream import _PREFIX, FORMAT_VERSION, MAGIC, pack, unpack

    container = unpack(data)
    count = len(container.sections) + 1
    more_points = dataclasses.replace(container, header={**container.header,
                                                         "num_points": container.header["num_points"] + 1})
    first = next(iter(container.sections))
    short_section = dataclasses.replace(container, sections={**container.sections,
                                                             first: container.sections[first][: len(container.sections[first]) // 2]})
    return [
        ("bad_magic", b"XALHE" + data[5:]),
        ("empty", b""),
        ("version", _PREFIX.pack(MAGIC, FORMAT_VERSION + 1, count) + data[_PREFIX.size:]),
        ("truncated", data[: len(data) // 2]),
        ("checksum", data[:-1] + bytes([data[-1] ^ 0x55])),
        ("trailing_bytes", data + b"\x00"),
        ("header_count", pack(more_points)),  # valid checksums, inconsistent content
        ("short_section", pack(short_section)),
    ]


def test_damaged_files_give_the_native_error_names(node, files, tmp_path):
    cases = []
    for name, payload in _damaged(files["raht"].read_bytes()):
        path = tmp_path / f"{name}.ralhe"
        path.write_bytes(payload)
        cases.append((name, path))
    records = _run_wasm(node, [(path, "-") for _, path in cases])
    for name, path in cases:
        expected = _native(path, tmp_path / f"{name}.native.ply")
        assert expected is not None, f"{name}: the native decoder accepted the damaged file"
        record = records[str(path)]
        assert record["status"] == expected, f"{name}: WebAssembly {record['status']} ({record['message']}), native {expected}"
        assert record["message"], f"{name}: no error message"


WARMUP_FILE = NATIVE / "wasm" / "warmup.ralhe"


def test_warm_up_file_is_a_current_file_every_decoder_reads(tmp_path):
    """createDecoder({ warmUp: true }) decodes the committed warmup.ralhe: it must stay a file
    this package's decoders read (scripts/make_wasm_warmup.py writes it again after a format
    change), with the stages it is there to warm up."""
    from ralhe_me.decode.decoder import decode_bytes, native_decoder

    data = WARMUP_FILE.read_bytes()
    python = decode_bytes(data, engine="python").model
    assert len(python) > 500 and python.sh.shape[1] == 16  # SH degree 3
    assert _native(WARMUP_FILE, tmp_path / "native.ply") is None
    if native_decoder() is not None:
        native = decode_bytes(data, engine="native").model
        for field in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            assert np.array_equal(getattr(native, field), getattr(python, field)), field


def test_warmed_decoder_gives_the_same_bytes(node, files, tmp_path):
    """A decoder made with createDecoder({ warmUp: true }) (it decodes warmup.ralhe first)
    decodes every file to the native decoder's bytes: the warm-up leaves no state behind."""
    if not (WASM / "warmup.mjs").exists():
        pytest.fail(f"the WebAssembly build has no warmup.mjs: {REBUILD}")
    args = [node, str(DRIVER), "--warm-up"]
    pairs = [(src, tmp_path / f"{name}.wasm.ply") for name, src in files.items()]
    for src, dst in pairs:
        args += [str(src), str(dst)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"test_node.mjs --warm-up failed:\n{proc.stderr[-3000:]}"
    records = {r["input"]: r for r in map(json.loads, proc.stdout.splitlines()) if "input" in r}
    for src, wasm_ply in pairs:
        assert records[str(src)]["status"] == "OK", records[str(src)]
        native_ply = tmp_path / f"{src.stem}.native.ply"
        assert _native(src, native_ply) is None
        assert wasm_ply.read_bytes() == native_ply.read_bytes(), src.name
