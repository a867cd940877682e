"""The main job end to end on a tiny scene: every file it writes decodes to what it scored."""
import csv
import json

import numpy as np
import pytest

from ralhe_me.decoder import decode_bytes
from ralhe_me.experiment import ExperimentSettings, run_experiment


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    settings = ExperimentSettings(preset="fast", lambdas=[2e-3, 8e-3], out=str(out), num_gaussians=600, views=2,
                                  resolution=48, steps=4, finetune_iters=2, baselines=["raht"],
                                  baseline_steps=[0.4, 0.1], codebook=64, threads=1)
    return out, settings, run_experiment(settings)


def test_tables_hold_one_row_per_file(run):
    out, settings, _ = run
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["codec"], float(r["parameter"])) for r in rows] == \
        [("ralhe", 2e-3), ("ralhe", 8e-3), ("raht", 0.4), ("raht", 0.1)]
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
    out, _, summary = run
    for name in ("rd.png", "latents.png", "table2.txt", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert "finetuned_psnr" in summary and summary["finetuned_psnr"] > 0
