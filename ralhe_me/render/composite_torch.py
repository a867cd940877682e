"""Binning and front-to-back alpha compositing in pure PyTorch, with a hand-written backward.

Semantics are the 16x16-tile ones of the INRIA rasterizer (a Gaussian is only evaluated in the
tiles of its 3-sigma rectangle), but the work is organized in 8x8 pixel cells: a Gaussian is
listed in a cell only if the cell's tile is in its rectangle *and* the cell meets the box of
the ellipse outside which its alpha is below 1/255. Pixels left out that way would have
skipped the Gaussian anyway, so the image is the same, with far fewer evaluations.

Cells are processed in chunks of similar list length (padded) so that every step is a batched
tensor op over [cells, list slots, 64 pixels], a block of list slots at a time; a chunk stops
once all its pixels are saturated. Memory stays bounded: the forward keeps only the sorted
(cell, Gaussian) list and the backward recomputes alphas block by block.

Per pixel, with Gaussians in depth order and alpha_k = min(0.99, o_k exp(power_k)):
entries with power > 0 or alpha < 1/255 are skipped (alpha := 0); the running transmittance
T_k = prod_{j<=k} (1 - alpha_j) is monotone, so the INRIA early stop ("stop before the first
Gaussian that would bring T below 1e-4") keeps exactly the entries with T_k >= 1e-4.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Tuple

import torch

from .projection import TILE

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
CELL = 8  # cell side in pixels; divides TILE
CELL_PIXELS = CELL * CELL
BLOCK = 64  # list slots evaluated at once
CHUNK_ELEMENTS = 1 << 17  # cells x slots x pixels per step: small enough to stay in cache
# The loops issue thousands of small tensor ops; intra-op threading costs more than it gains
# there (2 threads on a loaded 2-core machine measured 18x slower than 1), so they run on one.
LOOP_THREADS = 1


@contextlib.contextmanager
def _loop_threads():
    old = torch.get_num_threads()
    if LOOP_THREADS and LOOP_THREADS != old:
        torch.set_num_threads(LOOP_THREADS)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def ellipse_extents(conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:  # -> [M, 2]
    """Half-widths (x, y) of the box outside which o exp(power) < 1/255, with a safety margin;
    negative where the Gaussian can never reach alpha 1/255."""
    log_thr = torch.log(ALPHA_MIN / opacities.clamp_min(1e-30)) - 0.01
    q = -2.0 * log_thr  # d^T conic d <= q inside
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    ok = (q > 0) & (det > 0)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    safe_q = torch.where(ok, q, torch.zeros_like(q))
    ext = torch.stack([torch.sqrt(safe_q * c / safe_det), torch.sqrt(safe_q * a / safe_det)], -1) + 1e-3
    return torch.where(ok[:, None], ext, torch.full_like(ext, -1.0))


def bin_gaussians(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, depths: torch.Tensor,
                  rects: torch.Tensor, cells_x: int, cells_y: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(point_list [P] int64, cell_ranges [cells + 1] int64): per cell, Gaussian ids in depth order.

    Ties in depth are broken by Gaussian index, as in the C++ backend.
    """
    device = means2d.device
    with torch.no_grad():
        per = TILE // CELL
        ext = ellipse_extents(conics.detach(), opacities.detach())
        m2 = means2d.detach()
        r = rects.to(torch.int64)

        def cell_range(lo_tile, hi_tile, center, extent, limit):
            lo = torch.floor((center - extent) / CELL).clamp(-1, limit).to(torch.int64)
            hi = torch.floor((center + extent) / CELL).clamp(-1, limit).to(torch.int64) + 1
            return torch.maximum(lo, lo_tile * per), torch.minimum(hi, hi_tile * per)

        x0, x1 = cell_range(r[:, 0], r[:, 2], m2[:, 0], ext[:, 0], cells_x)
        y0, y1 = cell_range(r[:, 1], r[:, 3], m2[:, 1], ext[:, 1], cells_y)
        w, h = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
        counts = torch.where(ext[:, 0] >= 0, w * h, torch.zeros_like(w))
        total = int(counts.sum())
        gid = torch.repeat_interleave(torch.arange(len(r), device=device), counts)
        starts = torch.cumsum(counts, 0) - counts
        off = torch.arange(total, device=device) - starts[gid]
        cell = (y0[gid] + off // w[gid]) * cells_x + x0[gid] + off % w[gid]
        rank = torch.empty(len(r), dtype=torch.int64, device=device)
        rank[torch.sort(depths, stable=True).indices] = torch.arange(len(r), device=device)
        order = torch.sort(cell * max(len(r), 1) + rank[gid]).indices
        point_list = gid[order]
        ranges = torch.zeros(cells_x * cells_y + 1, dtype=torch.int64, device=device)
        ranges[1:] = torch.cumsum(torch.bincount(cell, minlength=cells_x * cells_y), 0)
    return point_list, ranges


def _chunks(ranges: torch.Tensor) -> Iterator[Tuple[torch.Tensor, int]]:
    """Groups of non-empty cells (sorted by list length) and the padded length of each group."""
    counts = ranges[1:] - ranges[:-1]
    cells = torch.nonzero(counts > 0).squeeze(1)
    if len(cells) == 0:
        return
    cells = cells[torch.sort(counts[cells], stable=True).indices]
    sorted_counts = counts[cells].tolist()
    begin = 0
    for end in range(1, len(cells) + 1):
        if end == len(cells) or (end + 1 - begin) * min(BLOCK, sorted_counts[end]) * CELL_PIXELS > CHUNK_ELEMENTS:
            yield cells[begin:end], max(1, sorted_counts[end - 1])
            begin = end


class _Chunk:
    """A group of B cells: Gaussian ids [B, n] (padded with ``pad_index``) and pixel coordinates [B, 64]."""

    def __init__(self, cells, n, point_list, ranges, cells_x, pad_index, width, height):
        device = point_list.device
        slot = torch.arange(n, device=device)
        start = ranges[cells]
        count = ranges[cells + 1] - start
        valid = slot[None, :] < count[:, None]  # [B, n]
        pos = (start[:, None] + slot[None, :]).clamp_max(max(len(point_list) - 1, 0))
        self.gid = torch.where(valid, point_list[pos], torch.full_like(pos, pad_index))  # [B, n]
        lin = torch.arange(CELL_PIXELS, device=device)
        self.px = ((cells % cells_x) * CELL)[:, None] + (lin % CELL)[None, :]  # [B, 64]
        self.py = ((cells // cells_x) * CELL)[:, None] + (lin // CELL)[None, :]
        self.inside = (self.px < width) & (self.py < height)
        self.n = n


class _Block:
    """Alphas of list slots [s, s + BLOCK) of a chunk: tensors [B, S, 64] (pixels last).

    ``t_run`` [B, 64] is the running product of (1 - alpha) before the block, early-stopped
    entries included; it is monotone, so ``keep`` (T after the entry >= 1e-4) is the early stop.
    """

    def __init__(self, chunk, s, means2d, conics, opacities, t_run):
        gid = chunk.gid[:, s:s + BLOCK]
        self.gid = gid
        dtype = means2d.dtype
        mean, con = means2d[gid], conics[gid]  # [B, S, 2], [B, S, 3]
        self.dx = mean[..., 0:1] - chunk.px[:, None, :].to(dtype)
        self.dy = mean[..., 1:2] - chunk.py[:, None, :].to(dtype)
        self.con = con
        power = (-0.5 * (con[..., 0:1] * self.dx * self.dx + con[..., 2:3] * self.dy * self.dy)
                 - con[..., 1:2] * self.dx * self.dy)
        self.gauss = torch.exp(power)
        self.opac = opacities[gid][..., None]  # [B, S, 1]
        raw = self.opac * self.gauss
        self.unclamped = raw < ALPHA_MAX
        alpha = torch.clamp_max(raw, ALPHA_MAX)
        used = (power <= 0) & (alpha >= ALPHA_MIN)
        alpha = alpha * used
        self.t_incl = t_run[:, None, :] * torch.cumprod(1.0 - alpha, dim=1)
        keep = self.t_incl >= T_MIN
        self.used = used & keep
        self.alpha = alpha * keep
        self.t_excl = torch.cat([t_run[:, None, :], self.t_incl[:, :-1]], dim=1)
        self.weight = self.alpha * self.t_excl
        self.t_kept = torch.where(keep, self.t_incl, torch.ones_like(self.t_incl)).amin(dim=1)  # [B, 64]
        self.t_run = self.t_incl[:, -1]


def _blocks(chunk, means2d, conics, opacities):
    """The blocks of a chunk in list order, stopping once every pixel of the chunk is done."""
    t_run = chunk.inside.to(means2d.dtype)  # outside the image: T = 0, so nothing is kept there
    for s in range(0, chunk.n, BLOCK):
        block = _Block(chunk, s, means2d, conics, opacities, t_run)
        yield block
        t_run = block.t_run
        if not bool((t_run >= T_MIN).any()):
            break


def _cells_to_image(values: torch.Tensor, cx: int, cy: int, height: int, width: int) -> torch.Tensor:
    """[cx*cy, 64, C] -> [height, width, C]."""
    c = values.shape[-1]
    img = values.reshape(cy, cx, CELL, CELL, c).permute(0, 2, 1, 3, 4).reshape(cy * CELL, cx * CELL, c)
    return img[:height, :width]


def _image_to_cells(img: torch.Tensor, cx: int, cy: int) -> torch.Tensor:
    """[height, width, C] -> [cx*cy, 64, C] (zero padded)."""
    h, w, c = img.shape
    pad = img.new_zeros(cy * CELL, cx * CELL, c)
    pad[:h, :w] = img
    return pad.reshape(cy, CELL, cx, CELL, c).permute(0, 2, 1, 3, 4).reshape(cx * cy, CELL_PIXELS, c)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """Append one zero row: index M is the padding slot (opacity 0 -> always skipped)."""
    return torch.cat([x, x.new_zeros((1,) + tuple(x.shape[1:]))], dim=0)


def _grid(width: int, height: int) -> Tuple[int, int]:
    per = TILE // CELL
    return math.ceil(width / TILE) * per, math.ceil(height / TILE) * per


def composite_forward(means2d, conics, colors, opacities, depths, rects, width: int, height: int):
    """Returns color [H, W, 3] (background not added), final transmittance [H, W], point_list [P],
    cell_ranges [cells + 1]."""
    cx, cy = _grid(width, height)
    point_list, ranges = bin_gaussians(means2d, conics, opacities, depths, rects, cx, cy)
    m = len(means2d)
    pm, pc, pcol, po = _padded(means2d), _padded(conics), _padded(colors), _padded(opacities)
    out = colors.new_zeros(cx * cy, CELL_PIXELS, 3)
    t_final = colors.new_ones(cx * cy, CELL_PIXELS, 1)
    with _loop_threads():
        for cells, n in _chunks(ranges):
            chunk = _Chunk(cells, n, point_list, ranges, cx, m, width, height)
            color = colors.new_zeros(len(cells), CELL_PIXELS, 3)
            t_fin = colors.new_ones(len(cells), CELL_PIXELS)
            for b in _blocks(chunk, pm, pc, po):
                color += torch.einsum("bsp,bsc->bpc", b.weight, pcol[b.gid])
                t_fin = torch.minimum(t_fin, b.t_kept)
            out[cells] = color
            t_final[cells] = t_fin[..., None]
    return (_cells_to_image(out, cx, cy, height, width), _cells_to_image(t_final, cx, cy, height, width)[..., 0],
            point_list, ranges)


def composite_backward(means2d, conics, colors, opacities, point_list, ranges, color_img, t_final_img,
                       grad_color, grad_t_final, width: int, height: int):
    """Gradients (means2d [M, 2], conics [M, 3], colors [M, 3], opacities [M]) of the compositing.

    Front to back: the sum over later contributors of w_j (c_j . dL/dC) is the pixel total
    C . dL/dC minus the running prefix, so one pass in list order suffices.
    """
    cx, cy = _grid(width, height)
    m = len(means2d)
    pm, pc, pcol, po = _padded(means2d), _padded(conics), _padded(colors), _padded(opacities)
    g_img = _image_to_cells(grad_color, cx, cy)  # [cells, 64, 3]
    total_img = (_image_to_cells(color_img, cx, cy) * g_img).sum(-1)  # [cells, 64]
    tail_img = _image_to_cells((grad_t_final * t_final_img)[..., None], cx, cy)[..., 0]  # [cells, 64]
    g_mean, g_con = pm.new_zeros(m + 1, 2), pc.new_zeros(m + 1, 3)
    g_col, g_op = pcol.new_zeros(m + 1, 3), po.new_zeros(m + 1)
    with _loop_threads():
        for cells, n in _chunks(ranges):
            chunk = _Chunk(cells, n, point_list, ranges, cx, m, width, height)
            g = g_img[cells]  # [B, 64, 3]
            total, tail = total_img[cells][:, None, :], tail_img[cells][:, None, :]
            prefix = total.new_zeros(total.shape)
            for b in _blocks(chunk, pm, pc, po):
                cg = torch.einsum("bsc,bpc->bsp", pcol[b.gid], g)  # c_k . dL/dC_p
                incl = prefix + torch.cumsum(b.weight * cg, dim=1)
                prefix = incl[:, -1:]
                after = total - incl  # sum over j > k
                d_alpha = (b.t_excl * cg - (after + tail) / (1.0 - b.alpha)) * b.used
                d_raw = d_alpha * b.unclamped
                d_power = d_raw * b.opac * b.gauss
                con = b.con
                gid = b.gid.reshape(-1)
                g_col.index_add_(0, gid, torch.einsum("bsp,bpc->bsc", b.weight, g).reshape(-1, 3))
                g_op.index_add_(0, gid, (d_raw * b.gauss).sum(-1).reshape(-1))
                dxp, dyp = b.dx * d_power, b.dy * d_power
                g_con.index_add_(0, gid, torch.stack([-0.5 * (b.dx * dxp).sum(-1), -(b.dx * dyp).sum(-1),
                                                      -0.5 * (b.dy * dyp).sum(-1)], -1).reshape(-1, 3))
                sx, sy = dxp.sum(-1), dyp.sum(-1)  # [B, S]
                gmx = -(con[..., 0] * sx + con[..., 1] * sy)
                gmy = -(con[..., 2] * sy + con[..., 1] * sx)
                g_mean.index_add_(0, gid, torch.stack([gmx, gmy], -1).reshape(-1, 2))
    return g_mean[:m], g_con[:m], g_col[:m], g_op[:m]
