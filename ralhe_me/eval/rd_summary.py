"""The paper's Table-2 line and BD figures from the RD curves of one experiment."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from .rd import RDCurveError, bd_psnr, bd_rate, psnr_at_rate

Curve = Tuple[List[float], List[float], List[float]]  # sizes (bytes), PSNRs (dB), decode seconds


def _safe(fn, *args):
    try:
        value = fn(*args)
    except RDCurveError:
        return None
    return None if value is None or not math.isfinite(value) else float(value)


def table2_line(scene: str, curves: Dict[str, Curve], target_kb: Optional[float] = None) -> Tuple[str, dict]:
    """``scene: PSNR at T KiB: ralhe X dB, raht Y dB, ...; decode s: ...; BD-PSNR ...``.

    The target size defaults to the geometric middle of the RALHE curve. PSNRs are interpolated
    in log-size (pchip); a codec whose curve does not reach the target shows ``n/a``.
    """
    anchor = curves.get("ralhe") or next(iter(curves.values()))
    if target_kb is None:
        target_kb = math.sqrt(min(anchor[0]) * max(anchor[0])) / 1024
    target = target_kb * 1024
    summary = {"target_kib": target_kb, "psnr_at_target": {}, "mean_decode_seconds": {}, "bd_vs_ralhe": {}}
    parts = []
    for codec, (sizes, psnrs, decode_s) in curves.items():
        p = _safe(psnr_at_rate, sizes, psnrs, target) if len(sizes) >= 2 else None
        summary["psnr_at_target"][codec] = p
        summary["mean_decode_seconds"][codec] = sum(decode_s) / len(decode_s) if decode_s else None
        parts.append(f"{codec} {'n/a' if p is None else f'{p:.2f} dB'}")
    dec = ", ".join(f"{c} {v:.2f} s" for c, v in summary["mean_decode_seconds"].items() if v is not None)
    line = f"{scene}: PSNR at {target_kb:.0f} KiB: " + ", ".join(parts) + f"; mean decode time: {dec}"
    if "ralhe" in curves:
        bds = []
        for codec, (sizes, psnrs, _) in curves.items():
            if codec == "ralhe":
                continue
            r = curves["ralhe"]
            d = _safe(bd_psnr, r[0], r[1], sizes, psnrs)
            rate = _safe(bd_rate, r[0], r[1], sizes, psnrs)
            summary["bd_vs_ralhe"][codec] = {"bd_psnr_db": d, "bd_rate_percent": rate}
            bds.append(f"vs {codec}: BD-PSNR {'n/a' if d is None else f'{d:+.2f} dB'}, "
                       f"BD-rate {'n/a' if rate is None else f'{rate:+.1f}%'}")
        if bds:
            line += "; RALHE " + "; ".join(bds)
    return line, summary
