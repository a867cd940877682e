"""Sweeps: the serial and Ray runners give the same bytes and rows, resume skips finished jobs,
a failing job is reported while the others finish, and bad sweep files are refused by name."""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ralhe_me.sweep import ray_runner
from ralhe_me.sweep.runner import pending_jobs, run_sweep
from ralhe_me.config import load_preset
from ralhe_me.sweep.spec import SceneSettings, Sweep, SweepSpecError, load_sweep
from ralhe_me.sweep.store import row_path

TIMING = {"encode_seconds", "decode_seconds"}


def tiny_sweep(out: Path, **overrides) -> Sweep:
    """2 generated scenes x 2 RALHE rates (+ one baseline rate on the first scene)."""
    common = dict(preset="fast", views=2, resolution=40, steps=3, finetune_iters=1, codebook=64, threads=1, peers=[])
    common.update(overrides)
    scenes = [SceneSettings(name="a", num_gaussians=300, seed=1, out=str(out / "a"),
                            codecs={"ralhe": [2e-3, 8e-3], "scalar": [0.2]}, **common),
              SceneSettings(name="b", num_gaussians=260, seed=2, out=str(out / "b"),
                            codecs={"ralhe": [2e-3, 8e-3]}, **common)]
    return Sweep(scenes, str(out))


def rows_without_timing(sweep: Sweep):
    rows = {}
    for s in sweep.scenes:
        for job in s.jobs():
            row = json.loads(row_path(s, job).read_text())
            rows[job.id] = {k: v for k, v in row.items() if k not in TIMING}
    return rows


def coded_files(out: Path):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.ralhe"))}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    sweep = tiny_sweep(out)
    return out, sweep, run_sweep(sweep, progress=False)


def test_serial_sweep_writes_every_job(serial):
    out, sweep, result = serial
    assert result.ok and len(result.done) == 5 and not result.skipped
    assert len(coded_files(out)) == 5
    for name in ("results.csv", "results.json", "summary.json"):
        assert (out / name).is_file()  # the sweep's combined tables
    for s in sweep.scenes:
        assert (Path(s.out) / "rd.png").is_file() and (Path(s.out) / "table2.txt").is_file()


def test_ray_gives_the_serial_bytes_and_rows(serial, tmp_path):
    pytest.importorskip("ray")
    out, sweep, _ = serial
    ray_out = tmp_path / "ray"
    ray_sweep = tiny_sweep(ray_out)
    result = run_sweep(ray_sweep, ray=True, workers=2, progress=False)
    assert result.ok and len(result.done) == 5
    assert coded_files(ray_out) == coded_files(out)
    assert rows_without_timing(ray_sweep) == rows_without_timing(sweep)


def test_resume_skips_finished_jobs(serial, tmp_path):
    out, sweep, _ = serial
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    resumed = tiny_sweep(copy)
    assert pending_jobs(resumed) == {}
    row_path(resumed.scenes[1], resumed.scenes[1].jobs()[0]).unlink()  # as if killed before its row
    (copy / "a" / "ralhe_lambda0.008.ralhe").write_bytes(b"truncated")  # a damaged file is redone too
    result = run_sweep(resumed, progress=False)
    assert sorted(j.id for j in result.done) == ["a/ralhe_lambda0.008.ralhe", "b/ralhe_lambda0.002.ralhe"]
    assert len(result.skipped) == 3
    assert coded_files(copy) == coded_files(out)
    # a changed setting redoes exactly the jobs it affects: RALHE's steps leave the baseline alone
    changed = tiny_sweep(copy, steps=4)
    assert sorted(j.id for js in pending_jobs(changed).values() for j in js) == \
        sorted(j.id for j in changed.jobs() if j.codec == "ralhe")


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path, monkeypatch, capsys):
    import ralhe_me.encode.baseline_codec as baseline_codec

    def broken(*args, **kwargs):
        raise RuntimeError("baseline exploded")

    monkeypatch.setattr(baseline_codec, "encode_baseline", broken)
    sweep = tiny_sweep(tmp_path)
    sweep.scenes = sweep.scenes[:1]
    sweep.scenes[0].codecs = {"ralhe": [2e-3], "scalar": [0.2, 0.4]}
    result = run_sweep(sweep, progress=False)
    assert not result.ok
    assert [f.job.id for f in result.failures] == ["a/scalar_step0.2.ralhe", "a/scalar_step0.4.ralhe"]
    assert "baseline exploded" in result.failures[0].error
    assert [j.id for j in result.done] == ["a/ralhe_lambda0.002.ralhe"]
    assert (tmp_path / "a" / "results.csv").is_file()  # the tables hold what finished
    failure = json.loads((tmp_path / "a" / "rows" / "scalar_step0.2.ralhe.failed.json").read_text())
    assert "RuntimeError: baseline exploded" in failure["error"] and "Traceback" in failure["traceback"]
    assert "FAILED: RuntimeError: baseline exploded" in capsys.readouterr().out
    # the next run retries the failed jobs only
    monkeypatch.undo()
    again = run_sweep(sweep, progress=False)
    assert again.ok and [j.id for j in again.done] == ["a/scalar_step0.2.ralhe", "a/scalar_step0.4.ralhe"]
    assert not (tmp_path / "a" / "rows" / "scalar_step0.2.ralhe.failed.json").exists()


def test_a_failing_scene_on_ray_fails_its_jobs_only(tmp_path):
    pytest.importorskip("ray")
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n")
    sweep = tiny_sweep(tmp_path / "out")
    sweep.scenes[1] = SceneSettings(name="broken", scene=str(bad), out=str(tmp_path / "out" / "broken"),
                                    codecs={"ralhe": [2e-3]}, views=2, resolution=40, steps=3, threads=1,
                                    peers=[])
    sweep.scenes[0].codecs = {"scalar": [0.2, 0.4]}
    result = run_sweep(sweep, ray=True, workers=2, progress=False)
    assert sorted(j.id for j in result.done) == ["a/scalar_step0.2.ralhe", "a/scalar_step0.4.ralhe"]
    assert [f.job.id for f in result.failures] == ["broken/ralhe_lambda0.002.ralhe"]
    assert "preparing broken failed" in result.failures[0].error


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ray_runner.RayUnavailableError, match="pip install"):
        ray_runner.import_ray()


def test_sweep_file_is_read_and_checked(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text("out: results\ndefaults: {views: 3}\ncodecs: {ralhe: [0.001, 0.004], raht: [0.2]}\n"
                    "scenes:\n  - {name: small, num_gaussians: 500, peers: spz}\n  - {scene: models/x.ply, views: 5}\n"
                    "  - {name: y, peers: [sog, spz], sog_iterations: 2}\n")
    sweep = load_sweep(str(good))
    assert sweep.out == str(tmp_path / "results")
    small, x, y = sweep.scenes
    assert (small.views, x.views, x.name, x.scene) == (3, 5, "x", str(tmp_path / "models" / "x.ply"))
    assert [j.id for j in small.jobs()] == ["small/ralhe_lambda0.001.ralhe", "small/ralhe_lambda0.004.ralhe",
                                            "small/raht_step0.2.ralhe", "small/peer_spz.spz"]
    # SOG is opt-in (its CPU encoder is slow); the default peers are SPZ and compressed PLY
    assert [j.file_name for j in x.jobs()][-2:] == ["peer_spz.spz", "peer_cply.compressed.ply"]
    assert [j.file_name for j in y.jobs()][-2:] == ["peer_spz.spz", "peer_sog.sog"]
    sog = next(j for j in y.jobs() if j.codec == "sog")
    assert y.job_key(sog) != dataclasses.replace(y, sog_iterations=3).job_key(sog)
    first = x.jobs()[0]  # keeping the undrawn Gaussians prepares other voxels: every job is redone
    assert x.job_key(first) != dataclasses.replace(x, keep_undrawn=True).job_key(first)
    assert x.job_key(first) != dataclasses.replace(x, shape_sensitivity_views=8).job_key(first)
    assert [j.codec for j in sweep.without_peers().jobs()] == ["ralhe", "ralhe", "raht"] * 3
    assert small.out == str(tmp_path / "results" / "small")
    for text, message in [
        ("scenes: []\n", "non-empty list"),
        ("scenes:\n  - {name: a, colour: red}\n", "unknown key.*colour"),
        ("scenes:\n  - {name: a}\n  - {name: a}\n", "repeated: a"),
        ("codecs: {jpeg: [1]}\nscenes:\n  - {name: a}\n", "unknown codec 'jpeg'"),
        ("codecs: {ralhe: [-1]}\nscenes:\n  - {name: a}\n", "positive numbers"),
        ("scenes:\n  - {name: a, views: 0}\n", "views must be >= 1"),
        ("scenes:\n  - {name: a, peers: [zip]}\n", "unknown peer format.*'zip'"),
        ("scenes:\n  - {name: a, sog_iterations: 0}\n", "sog_iterations must be a whole number"),
        ("scenes:\n  - {name: a, keep_undrawn: 'yes'}\n", "keep_undrawn must be true or false"),
        ("scenes:\n  - {name: a, shape_sensitivity_views: -4}\n", "shape_sensitivity_views must be a whole number"),
        ("scenes:\n  - {name: a, finetune_iters: -1}\n", "finetune_iters must be a whole number"),
        ("scenes:\n  - {name: a, finetune_iters: 2.5}\n", "finetune_iters must be a whole number"),
        ("speed: 3\nscenes:\n  - {name: a}\n", "unknown key.*speed"),
        ("scenes: [\n", "not valid YAML"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(SweepSpecError, match=message):
            load_sweep(str(bad))
    with pytest.raises(SweepSpecError, match="no sweep file"):
        load_sweep(str(tmp_path / "missing.yaml"))


def test_peer_comparison_interpolates_on_ralhe_curve():
    from ralhe_me.sweep.report import peer_comparison

    def row(codec, size, psnr):
        return {"codec": codec, "total_bytes": size, "psnr": psnr, "decode_seconds": 0.1}

    rows = [row("ralhe", 400, 40.0), row("ralhe", 100, 30.0), row("raht", 300, 33.0),
            row("spz", 1000, 35.0), row("sog", 250, 45.0)]
    peers = peer_comparison(rows)
    spz, sog = peers["spz"], peers["sog"]
    assert spz["ralhe_bytes_at_psnr"] == pytest.approx(200.0)  # halfway in PSNR: the geometric mean size
    assert spz["ralhe_size_ratio"] == pytest.approx(0.2)
    assert not spz["ralhe_bytes_at_psnr_is_upper_bound"]
    # 1000 B is beyond RALHE's curve: its largest file's PSNR is a lower bound
    assert spz["ralhe_psnr_at_size"] == 40.0 and spz["ralhe_psnr_at_size_is_lower_bound"]
    assert sog["ralhe_bytes_at_psnr"] is None  # 45 dB is above it
    expected = 30.0 + 10.0 * (float(np.log(250) - np.log(100)) / float(np.log(400) - np.log(100)))
    assert sog["ralhe_psnr_at_size"] == pytest.approx(expected)


def test_peer_comparison_uses_the_pareto_front_of_a_curve_over_tiers():
    """A larger RALHE file that is no better (the first point of a finer geometry tier) is left out
    instead of making the whole curve 'out of range'."""
    from ralhe_me.sweep.report import peer_comparison

    def row(codec, size, psnr):
        return {"codec": codec, "total_bytes": size, "psnr": psnr, "decode_seconds": 0.1}

    rows = [row("ralhe", 100, 30.0), row("ralhe", 300, 36.0), row("ralhe", 400, 35.5), row("ralhe", 900, 40.0),
            row("spz", 1000, 38.0)]
    spz = peer_comparison(rows)["spz"]
    expected = float(np.exp(np.interp(38.0, [30.0, 36.0, 40.0], np.log([100, 300, 900]))))
    assert spz["ralhe_bytes_at_psnr"] == pytest.approx(expected)
    assert spz["ralhe_psnr_at_size"] == 40.0 and spz["ralhe_psnr_at_size_is_lower_bound"]


def test_peer_below_ralhe_smallest_file_gets_a_bound():
    """RALHE's smallest file already beats the peer: its size is an upper bound of RALHE's size at
    the peer's PSNR, and the table says so."""
    from ralhe_me.sweep.report import peer_comparison, peer_table

    def row(codec, size, psnr):
        return {"codec": codec, "total_bytes": size, "psnr": psnr, "decode_seconds": 0.1}

    rows = [row("ralhe", 57_520, 40.95), row("ralhe", 75_826, 44.62), row("spz", 186_562, 40.28),
            row("sog", 60_000, 44.0)]
    peers = peer_comparison(rows)
    spz, sog = peers["spz"], peers["sog"]
    assert spz["ralhe_bytes_at_psnr"] == 57_520 and spz["ralhe_bytes_at_psnr_is_upper_bound"]
    assert spz["ralhe_size_ratio"] == pytest.approx(57_520 / 186_562)
    assert not sog["ralhe_bytes_at_psnr_is_upper_bound"] and not sog["ralhe_psnr_at_size_is_lower_bound"]
    line = next(l for l in peer_table("kacytran", peers) if l.startswith("SPZ"))
    assert "<= 56.2 KiB" in line and "<= 0.31x" in line and ">= 44.62 dB" in line


def test_scene_finetune_steps_default_to_the_presets():
    from ralhe_me.sweep.scene import scene_config

    assert scene_config(SceneSettings(preset="quality")).finetune.iters == load_preset("quality").finetune.iters
    assert scene_config(SceneSettings(preset="fast")).finetune.iters == 60
    assert scene_config(SceneSettings(preset="quality", finetune_iters=0)).finetune.iters == 0
    a, b = SceneSettings(preset="quality"), SceneSettings(preset="quality", finetune_iters=5)
    assert a.preparation_key() != b.preparation_key()


def test_geometry_floor_is_the_cheapest_tier_reaching_the_peer():
    """Each peer gets the positions and covariances of the cheapest geometry tier whose finetuned
    model reaches its PSNR, over its size; none when no tier run gets there; the table shows it."""
    from ralhe_me.sweep.report import add_geometry_floors, peer_comparison, peer_table

    def row(codec, size, psnr):
        return {"codec": codec, "total_bytes": size, "psnr": psnr, "decode_seconds": 0.1}

    def tier(index, positions, covariance, finetuned):
        return {"geometry_tier": index, "positions_bytes": positions, "covariance_bytes": covariance,
                "finetuned_psnr": finetuned}

    rows = [row("ralhe", 300, 40.0), row("ralhe", 600, 50.0), row("spz", 1000, 45.0), row("sog", 2000, 58.0),
            row("cply", 800, 30.0)]
    tiers = [tier(3, 300, 500, 55.0), tier(0, 100, 100, 42.0), tier(1, 150, 250, 47.0)]
    peers = peer_comparison(rows)
    add_geometry_floors(peers, tiers)
    spz, sog, cply = peers["spz"], peers["sog"], peers["cply"]
    assert (spz["geometry_floor_bytes"], spz["geometry_floor_tier"]) == (400, 1)  # tier 0 stops at 42 dB
    assert spz["geometry_floor_ratio"] == pytest.approx(0.4)
    assert (cply["geometry_floor_bytes"], cply["geometry_floor_tier"]) == (200, 0)
    assert sog["geometry_floor_bytes"] is None and sog["geometry_floor_ratio"] is None  # 58 dB: no tier
    table = peer_table("scene", peers)
    assert next(l for l in table if l.startswith("SPZ")).endswith("0.40x (tier 1)")
    assert next(l for l in table if l.startswith("SOG")).endswith(" -")
    # a record without its finetuned PSNR (no finetuning) is no evidence of reaching anything
    add_geometry_floors(peers, [dict(tier(0, 100, 100, None))])
    assert spz["geometry_floor_bytes"] is None
