"""Tables and figures of a sweep, rebuilt from the rows on disk (so a resumed or distributed
sweep reports exactly what a serial one does): per scene ``results.csv`` / ``results.json``,
``table2.txt``, ``summary.json``, ``rd.png`` and ``latents.png``; for a sweep of several scenes
also one ``results.csv`` over all of them in the sweep's folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from .jobs import FIELDS
from .spec import PEERS, RALHE, SceneSettings, Sweep
from .store import (LATENTS_SUFFIX, PREVIEW_SUFFIX, REFERENCE_VIEW, ROWS, SCENE_SUMMARY, VOXELS, scene_rows,
                    write_json)

PEER_LABELS = {"spz": "SPZ", "sog": "SOG", "cply": "compressed PLY"}


def write_sweep_report(sweep: Sweep, log=print) -> dict:
    """Every scene's report, and the combined table when there are several scenes."""
    summaries = {}
    all_rows = []
    for settings in sweep.scenes:
        rows = scene_rows(settings)
        if rows:
            summaries[settings.name] = write_scene_report(settings, rows, log)
        all_rows += rows
    if len(sweep.scenes) > 1 and all_rows:
        out = Path(sweep.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "results.csv", all_rows, ["scene"] + FIELDS)
        write_json(out / "results.json", all_rows)
        write_json(out / "summary.json", summaries)
    return summaries


def write_scene_report(settings: SceneSettings, rows: List[dict], log=print) -> dict:
    out = Path(settings.out)
    _write_csv(out / "results.csv", rows, FIELDS)
    write_json(out / "results.json", rows)
    prep = _read_json(out / SCENE_SUMMARY) or {}
    current = {settings.preparation_key(t) for t in {settings.job_tier(j) for j in settings.jobs()}}
    tiers = [t for t in (_read_json(p) for p in sorted((out / ROWS).glob("scene_tier*.json")))
             if t and t.get("key") in current]  # not a tier a run with other settings left
    # the best the coded geometry allows: the finetuned model of the finest geometry tier
    references = [t["finetuned_psnr"] for t in tiers if t.get("finetuned_psnr") is not None]
    reference_psnr = max(references) if references else prep.get("finetuned_psnr")
    coded = [r for r in rows if r["codec"] not in PEERS]
    summary = _table2(out, coded, settings, log) if coded else {}
    summary.update({k: v for k, v in prep.items() if k != "key"})
    summary["reference_psnr"] = reference_psnr
    if len(tiers) > 1:
        summary["geometry_tiers"] = [{k: v for k, v in t.items() if k != "key"} for t in tiers]
    peers = peer_comparison(rows)
    if peers:
        add_geometry_floors(peers, tiers)
        summary["peers"] = peers
        lines = peer_table(settings.name, peers)
        (out / "peers.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            log(line)
    write_json(out / "summary.json", summary)
    plot_rd(out / "rd.png", rows, settings.name, reference_psnr)
    plot_views(out, rows, settings.name)
    ralhe = sorted((r for r in rows if r["codec"] == RALHE), key=lambda r: r["parameter"])
    planes = [(r, out / ROWS / (r["file"] + LATENTS_SUFFIX)) for r in ralhe]
    planes = [(r, p) for r, p in planes if p.is_file()]
    voxels = out / ROWS / VOXELS
    if planes and voxels.is_file():
        coords = np.load(voxels)["coords"]
        # the rates coded on the figure's voxels (higher geometry tiers have voxels of their own)
        loaded = [(r, a) for r, a in ((r, np.load(p)) for r, p in planes) if a.shape[-1] == len(coords)]
        picked = [loaded[0], loaded[-1]] if len(loaded) > 1 else loaded
        if picked:
            plot_latents(out / "latents.png", coords, [(r["parameter"], r["total_bytes"], a) for r, a in picked])
    return summary


def _write_csv(path: Path, rows: List[dict], fields: List[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _curve(rows, codec):
    pts = sorted((r["total_bytes"], r["psnr"], r["decode_seconds"]) for r in rows if r["codec"] == codec)
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _table2(out: Path, rows, settings: SceneSettings, log) -> dict:
    from ..eval.rd_summary import table2_line

    codecs = sorted({r["codec"] for r in rows}, key=lambda c: (c != RALHE, c))
    curves = {c: _curve(rows, c) for c in codecs}
    line, summary = table2_line(settings.name, curves, settings.target_kb)
    (out / "table2.txt").write_text(line + "\n")
    log(line)
    return summary


def _log_interp(x, xs, ys) -> Optional[float]:
    """ys at x, linear in (x, log ys) on the sorted points; None outside their range."""
    order = np.argsort(xs)
    xs, ys = np.asarray(xs, float)[order], np.asarray(ys, float)[order]
    if len(xs) < 2 or np.any(np.diff(xs) <= 0) or not xs[0] <= x <= xs[-1]:
        return None
    return float(np.exp(np.interp(x, xs, np.log(ys))))


def _pareto(sizes, psnrs, decode):
    """The points no smaller file beats in PSNR (a curve over several geometry tiers can hold a
    larger file that is no better): what RALHE offers at each size."""
    keep = [i for i in range(len(sizes)) if all(psnrs[j] < psnrs[i] for j in range(i))]
    return [sizes[i] for i in keep], [psnrs[i] for i in keep], [decode[i] for i in keep]


def peer_comparison(rows) -> dict:
    """Per peer: its size, PSNR and decode time; RALHE's size at the peer's PSNR (interpolated on
    RALHE's curve in log-size, its Pareto front) and the ratio; RALHE's PSNR at the peer's size.
    Beyond the curve's ends they are bounds, flagged: a peer below RALHE's smallest file's PSNR
    gets that file's size (at most), a peer larger than RALHE's largest file that one's PSNR (at
    least); elsewhere outside the curve, None."""
    sizes, psnrs, decode = _pareto(*_curve(rows, RALHE))
    out = {}
    for r in rows:
        if r["codec"] not in PEERS:
            continue
        at_psnr, at_psnr_bound = None, False
        if len(sizes) >= 2 and np.all(np.diff(psnrs) > 0):  # PSNR rises with size: invertible
            at_psnr = _log_interp(r["psnr"], psnrs, sizes)
        if at_psnr is None and sizes and r["psnr"] < psnrs[0]:
            # RALHE's smallest file is already better: its size bounds RALHE's at the peer's PSNR
            at_psnr, at_psnr_bound = float(sizes[0]), True
        psnr_at_size, psnr_at_size_bound = None, False
        if len(sizes) >= 2:
            lo, hi = min(sizes), max(sizes)
            if lo <= r["total_bytes"] <= hi:
                psnr_at_size = float(np.interp(np.log(r["total_bytes"]), np.log(sizes), psnrs))
        if psnr_at_size is None and sizes and r["total_bytes"] > sizes[-1]:
            # the peer's file is larger than RALHE's largest: RALHE reaches at least that one's PSNR
            psnr_at_size, psnr_at_size_bound = float(psnrs[-1]), True
        out[r["codec"]] = {
            "bytes": r["total_bytes"], "psnr": r["psnr"], "decode_seconds": r["decode_seconds"],
            "ralhe_bytes_at_psnr": at_psnr,
            "ralhe_bytes_at_psnr_is_upper_bound": at_psnr_bound,
            "ralhe_size_ratio": None if at_psnr is None else at_psnr / r["total_bytes"],
            "ralhe_psnr_at_size": psnr_at_size,
            "ralhe_psnr_at_size_is_lower_bound": psnr_at_size_bound,
            "ralhe_decode_seconds": float(np.mean(decode)) if decode else None,
        }
    return out


def add_geometry_floors(peers: dict, tiers: List[dict]) -> None:
    """Add to each peer of :func:`peer_comparison` its geometry floor: the positions and
    covariances (bytes) of the cheapest geometry tier run whose finetuned model renders at or above
    the peer's PSNR, and their ratio to the peer's file; None when no tier run gets there.
    Why: every rate of a tier codes that tier's geometry, and its files have rendered below
    its finetuned model (the latents code that model); a floor at or above half the peer's size
    says no lambda on the tiers run reaches 0.5x: the geometry's code, not the attributes', must
    shrink. ``tiers``: the sweep's ``scene_tier*.json`` records."""
    reached = sorted((t["positions_bytes"] + t["covariance_bytes"], t["finetuned_psnr"], t.get("geometry_tier"))
                     for t in tiers if t.get("finetuned_psnr") is not None
                     and t.get("positions_bytes") is not None and t.get("covariance_bytes") is not None)
    for peer in peers.values():
        floor = next((r for r in reached if r[1] >= peer["psnr"]), None)
        peer["geometry_floor_bytes"] = None if floor is None else int(floor[0])
        peer["geometry_floor_tier"] = None if floor is None else floor[2]
        peer["geometry_floor_ratio"] = None if floor is None else floor[0] / peer["bytes"]


def peer_table(scene: str, peers: dict) -> List[str]:
    lines = [f"{scene}: RALHE against the formats people ship (splat-transform)",
             f"{'format':16s} {'size':>10s} {'PSNR':>8s} {'decode':>8s}   {'RALHE at its PSNR':>18s} {'ratio':>9s}"
             f"   {'RALHE PSNR at its size':>22s}   {'geometry floor':>16s}"]
    for fmt, p in peers.items():
        upper = "<= " if p.get("ralhe_bytes_at_psnr_is_upper_bound") else ""
        lower = ">= " if p.get("ralhe_psnr_at_size_is_lower_bound") else ""
        at = "out of range" if p["ralhe_bytes_at_psnr"] is None else \
            f"{upper}{p['ralhe_bytes_at_psnr'] / 1024:.1f} KiB"
        ratio = "-" if p["ralhe_size_ratio"] is None else f"{upper}{p['ralhe_size_ratio']:.2f}x"
        at_size = "out of range" if p["ralhe_psnr_at_size"] is None else f"{lower}{p['ralhe_psnr_at_size']:.2f} dB"
        floor = "-" if p.get("geometry_floor_ratio") is None else \
            f"{p['geometry_floor_ratio']:.2f}x (tier {p['geometry_floor_tier']})"
        lines.append(f"{PEER_LABELS[fmt]:16s} {p['bytes'] / 1024:7.1f} KiB {p['psnr']:6.2f} dB "
                     f"{p['decode_seconds']:6.2f} s   {at:>18s} {ratio:>9s}   {at_size:>22s}   {floor:>16s}")
    return lines


def plot_rd(path: Path, rows, scene_name: str, reference_psnr: Optional[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for codec in sorted({r["codec"] for r in rows} - set(PEERS)):
        size, psnr, _ = _curve(rows, codec)
        ax.plot(np.array(size) / 1024, psnr, "o-", label=codec.upper() if codec != RALHE else "RALHE")
    for marker, r in zip("s^Dv", [r for r in rows if r["codec"] in PEERS]):
        ax.plot([r["total_bytes"] / 1024], [r["psnr"]], marker, ms=8, color="black", mfc="none",
                label=PEER_LABELS[r["codec"]])
        ax.annotate(PEER_LABELS[r["codec"]], (r["total_bytes"] / 1024, r["psnr"]), textcoords="offset points",
                    xytext=(6, -10), fontsize=8)
    if reference_psnr is not None:
        ax.axhline(reference_psnr, color="gray", ls="--", lw=1, label="uncoded attributes, coded shapes")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel("rendering PSNR (dB)")
    ax.set_title(f"Rate-distortion: {scene_name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latents(path: Path, coords: np.ndarray, results) -> None:
    """Figure 4: per octree level, what the DC color attribute's latents add to the points, at
    two rates; ``results`` holds (lambda, file bytes, planes [L, N]) per row of the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results[0][2].shape[0]
    fig, axes = plt.subplots(len(results), levels, figsize=(2.2 * levels, 2.4 * len(results)), squeeze=False)
    proj = coords @ np.array([[0.7071, -0.4082], [-0.7071, -0.4082], [0.0, 0.8165]])  # +x/+y diagonal, from above
    for row, (lmbda, nbytes, planes) in enumerate(results):
        for level in range(levels):
            up = planes[level]
            ax = axes[row][level]
            lim = max(1.0, float(np.abs(up).max()))
            ax.scatter(proj[:, 0], proj[:, 1], c=up, s=0.3, cmap="coolwarm", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if row == 0:
                ax.set_title(f"level {level}")
            if level == 0:
                ax.set_ylabel(f"lambda {lmbda:g}\n{nbytes / 1024:.0f} KiB")
    fig.suptitle("Latents of the DC color attribute (sh0), first channel: what each octree level adds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_views(out: Path, rows, scene_name: str) -> None:
    """views.png: the first evaluation view from the input, from RALHE at its lowest and highest
    rate and from each peer, each labelled with size and PSNR, with its error map beside it."""
    reference_path = out / ROWS / REFERENCE_VIEW
    if not reference_path.is_file():
        return
    reference = np.load(reference_path).astype(np.float32) / 255
    ralhe = sorted((r for r in rows if r["codec"] == RALHE), key=lambda r: r["total_bytes"])
    picked = ([ralhe[0], ralhe[-1]] if len(ralhe) > 1 else ralhe) + [r for r in rows if r["codec"] in PEERS]
    panels = []
    for r in picked:
        path = out / ROWS / (r["file"] + PREVIEW_SUFFIX)
        if path.is_file():
            name = "RALHE" if r["codec"] == RALHE else PEER_LABELS[r["codec"]]
            panels.append((f"{name}: {r['total_bytes'] / 1024:.0f} KiB, {r['psnr']:.2f} dB",
                           np.load(path).astype(np.float32) / 255))
    if not panels:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_n = len(panels) + 1
    fig, axes = plt.subplots(rows_n, 2, figsize=(6.0, 3.0 * rows_n), squeeze=False)
    axes[0][0].imshow(reference)
    axes[0][0].set_title(f"{scene_name}: input (uncoded)", fontsize=9)
    axes[0][1].axis("off")
    axes[0][1].text(0.0, 0.5, "error maps: |render - input|,\nmean over RGB, 0 (black) to 0.1 (white)",
                    fontsize=9, va="center")
    for i, (label, image) in enumerate(panels, start=1):
        error = np.abs(image - reference).mean(axis=2)
        axes[i][0].imshow(image)
        axes[i][0].set_title(label, fontsize=9)
        axes[i][1].imshow(error, cmap="gray", vmin=0, vmax=0.1)
        axes[i][1].set_title("error", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "views.png", dpi=100)
    plt.close(fig)
