"""The main job end to end on a tiny scene: every file it writes decodes to what it scored."""
import csv
import json

import numpy as np
import pytest

from ralhe_me.decode.decoder import decode_bytes
from ralhe_me.sweep.runner import run_sweep
from ralhe_me.eval.peers import peers_available
from ralhe_me.sweep.spec import PEERS, SceneSettings, single_scene


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    settings = SceneSettings(preset="fast", codecs={"ralhe": [2e-3, 8e-3], "raht": [0.4, 0.1]}, out=str(out),
                             num_gaussians=600, views=2, resolution=48, steps=4, finetune_iters=2, codebook=64,
                             threads=1, peers=list(PEERS), sog_iterations=1)
    result = run_sweep(single_scene(settings), progress=False)
    return out, settings, result


def test_tables_hold_one_row_per_file(run):
    out, settings, result = run
    assert result.ok and len([j for j in result.done if j.codec not in PEERS]) == 4
    with open(out / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["codec"] not in PEERS]
    assert [(r["codec"], float(r["parameter"])) for r in rows] == \
        [("ralhe", 2e-3), ("ralhe", 8e-3), ("raht", 0.1), ("raht", 0.4)]
    assert json.loads((out / "results.json").read_text()) is not None
    for r in rows:
        name = f"ralhe_lambda{float(r['parameter']):g}" if r["codec"] == "ralhe" else \
            f"raht_step{float(r['parameter']):g}"
        data = (out / f"{name}.ralhe").read_bytes()
        assert len(data) == int(r["total_bytes"])
        # the attribute column is the rest of the file (its sections, the header and the framing)
        assert int(r["positions_bytes"]) + int(r["covariance_bytes"]) + int(r["attribute_bytes"]) == len(data)
        assert 0 < int(r["attribute_bytes"]) < len(data)
        assert float(r["decode_seconds"]) > 0 and np.isfinite(float(r["psnr"]))


def test_written_files_decode_to_the_same_geometry(run):
    out, _, _ = run
    a = decode_bytes((out / "ralhe_lambda0.002.ralhe").read_bytes()).model
    b = decode_bytes((out / "raht_step0.1.ralhe").read_bytes()).model
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.quats, b.quats)
    np.testing.assert_array_equal(a.log_scales, b.log_scales)


def test_summary_and_figures_are_written(run):
    out, _, result = run
    for name in ("rd.png", "latents.png", "views.png", "table2.txt", "summary.json", "scene.ply", "scene.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finetuned_psnr"] > 0 and summary == result.summaries[summary["scene"]]


def test_peers_are_coded_decoded_and_compared(run):
    """SPZ, SOG and compressed PLY of the same input, scored on the same views, on the RD plot's
    table with RALHE's size at their PSNR (skipped where splat-transform cannot run)."""
    why = peers_available()
    if why:
        pytest.skip(f"peers skipped: {why}")
    out, _, result = run
    with open(out / "results.csv") as fh:
        peers = {r["codec"]: r for r in csv.DictReader(fh) if r["codec"] in PEERS}
    assert sorted(peers) == sorted(PEERS)
    for fmt, r in peers.items():
        assert (out / f"peer_{fmt}{PEERS[fmt]}").stat().st_size == int(r["total_bytes"]) > 0
        assert float(r["psnr"]) > 20 and float(r["decode_seconds"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["peers"]) == sorted(PEERS)
    table = (out / "peers.txt").read_text()
    assert "SPZ" in table and "SOG" in table and "compressed PLY" in table
