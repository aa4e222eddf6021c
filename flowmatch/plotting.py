"""PNG figures for samples and results: 2-D scatter over the target, image grids, line plots.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, never through
pyplot, so this works headless, in threads, and leaves the global backend alone.
"""
from __future__ import annotations

import functools
import math
import os
import types
from typing import Any, Sequence

import numpy as np

from flowmatch import fileio


@functools.cache
def _mpl() -> types.SimpleNamespace:
    """matplotlib's pieces, imported on the first figure, not at every run's start-up (a
    training run draws its first figure at its first evaluation)."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
    from matplotlib.colors import LogNorm  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    from matplotlib.ticker import NullLocator  # pylint: disable=g-import-not-at-top
    return types.SimpleNamespace(colormaps=matplotlib.colormaps, LogNorm=LogNorm, Figure=Figure,
                                 FigureCanvasAgg=backend_agg.FigureCanvasAgg,
                                 NullLocator=NullLocator)


def prefetch() -> None:
    """Starts importing matplotlib in a background thread (about 0.8 s on 2 CPU cores), so that
    a training run's first figure does not wait for it: the run's main thread spends its time
    in compiled steps, which release the GIL.  Harmless to call more than once."""
    import threading  # pylint: disable=g-import-not-at-top
    if _mpl.cache_info().currsize == 0:
        threading.Thread(target=_mpl, name="flowmatch-matplotlib-import", daemon=True).start()


__all__ = ["prefetch", "plot_2d", "image_grid", "plot_curves", "nfe_axis", "figure_legend"]


def _save(fig: Figure, path: str | os.PathLike, **kwargs) -> None:
    """The figure as a PNG at `path` (its folder made if needed), written atomically."""
    _mpl().FigureCanvasAgg(fig)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    fileio.save_figure(fig, path, **kwargs)


def nfe_axis(ax, values, *, base: float = 2, min_ratio: float = 1.4) -> None:
    """A log x axis labelled at the measured values (e.g. NFE 4, 8, 16) in plain numbers, with
    a value left unlabelled when it sits closer than `min_ratio` to the previous label (8 and
    10, 15 and 16, 31 38 45), so tick labels never run into each other."""
    ax.set_xscale("log", base=base)
    ticks = []
    for v in sorted({float(v) for v in values if v is not None and v > 0}):
        if not ticks or v / ticks[-1] >= min_ratio:
            ticks.append(v)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_locator(_mpl().NullLocator())


def figure_legend(fig, axes, *, title: str | None = None) -> None:
    """One legend for the whole figure, below the panels: every label of `axes` once (the
    panels' own legends removed), so no legend sits over a curve."""
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if labels:
        ncol = min(len(labels), 6)
        fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=ncol,
                   fontsize=7, title=title, title_fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        rows = -(-len(labels) // ncol)
        fig.tight_layout(rect=(0, 0.04 + 0.045 * rows, 1, 1))


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return x[np.all(np.isfinite(x), axis=1)]


def plot_2d(samples, path, *, reference=None, box=None, title: str | None = None) -> None:
    """Scatter generated 2-D points over the target density and save a PNG.

    samples: [n, 2]; reference: optional [m, 2] target samples, drawn as a 2-D histogram in a
    light colormap behind the points; box: optional (lo [2], hi [2]) used as axis limits (and
    histogram range), else a robust range of the finite points.  Marker size and alpha shrink
    with n so that 2,000 to 100,000 points all read well.  Points that are NaN / inf or outside
    the box are counted in a note on the figure.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"samples must have shape [n, 2]; got {samples.shape}.")
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2 or reference.shape[1] != 2:
            raise ValueError(f"reference must have shape [m, 2]; got {reference.shape}.")
    finite = _finite_rows(samples)
    n_nonfinite = samples.shape[0] - finite.shape[0]

    if box is None:
        pts = [finite] + ([_finite_rows(reference)] if reference is not None else [])
        pts = np.concatenate(pts)
        if pts.shape[0] == 0:
            lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
        else:
            # Percentiles, so a few stray points do not shrink the picture to a dot.
            lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
            pad = 0.05 * np.maximum(hi - lo, 1e-6)
            lo, hi = lo - pad, hi + pad
    else:
        lo, hi = (np.asarray(v, dtype=np.float64) for v in box)
        if lo.shape != (2,) or hi.shape != (2,) or not np.all(hi > lo):
            raise ValueError(f"box must be (lo, hi) with shapes [2] and lo < hi; got {box!r}.")

    aspect = float(np.clip((hi[1] - lo[1]) / (hi[0] - lo[0]), 0.25, 4.0))
    fig = _mpl().Figure(figsize=(5.0, 5.0 * aspect + 0.4) if aspect <= 1 else (5.0 / aspect, 5.4),
                        dpi=150)
    ax = fig.add_subplot()
    if reference is not None:
        ref = _finite_rows(reference)
        counts, xe, ye = np.histogram2d(ref[:, 0], ref[:, 1], bins=128, range=[[lo[0], hi[0]], [lo[1], hi[1]]])
        if counts.max() > 0:
            ax.pcolormesh(
                xe, ye, np.ma.masked_equal(counts.T, 0), cmap="Greys",
                norm=_mpl().LogNorm(vmin=1, vmax=counts.max()), alpha=0.45, rasterized=True,
                zorder=0,
            )
    n = max(finite.shape[0], 1)
    size = float(np.clip(4000.0 / n, 0.2, 4.0))  # marker area, points^2
    alpha = float(np.clip(5000.0 / n, 0.1, 0.8))
    ax.scatter(finite[:, 0], finite[:, 1], s=size, c="tab:red", alpha=alpha, linewidths=0, rasterized=True, zorder=1)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)

    outside = np.count_nonzero(np.any((finite < lo) | (finite > hi), axis=1))
    notes = [f"n = {samples.shape[0]:,}"]
    if outside:
        notes.append(f"{outside:,} outside {'box' if box is not None else 'view'}")
    if n_nonfinite:
        notes.append(f"{n_nonfinite:,} NaN/inf")
    ax.text(0.01, 0.99, ", ".join(notes), transform=ax.transAxes, va="top", ha="left", fontsize=7,
            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.7))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def image_grid(images, path, *, nrow: int | None = None, title: str | None = None,
               min_size: int = 64, pad: int = 2, labels=None,
               class_names: Sequence[str] | None = None) -> None:
    """Tile images into one grid PNG.

    images: [n, h, w, c] in [-1, 1] with c = 1 (shown in grayscale) or 3 (RGB); values are
    clipped to [-1, 1] and NaN / inf are shown as 0 (mid grey).  nrow: images per row
    (default ceil(sqrt(n))).  Each image is upscaled by an integer factor with nearest-neighbour
    repetition until it is at least min_size pixels tall, so 8x8 digits stay crisp; pad is the
    white gap between tiles in output pixels.  The PNG has exactly one pixel per grid pixel
    (plus a title band when title is given).

    labels: optional int [n], the class of each image (a class-conditional run's samples): then
    the grid has one row per class present, in sorted order, holding that class's images in
    their order (at most nrow of them when nrow is given, else all), and a band on the left
    names each row's class (class_names[k], or the index k).
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape [n, h, w, c] with c in (1, 3); got {x.shape}.")
    n, h, w, c = x.shape
    if n == 0:
        raise ValueError("images is empty; nothing to plot.")
    if nrow is not None and (isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer))
                             or nrow < 1):
        raise ValueError(f"nrow (images per row) must be a positive int; got {nrow!r}.")
    cells, row_names = _grid_cells(n, nrow, labels, class_names)
    nrows_imgs = max(r for r, _ in cells.values()) + 1
    ncol_imgs = max(q for _, q in cells.values()) + 1

    x = (np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0) + 1.0) / 2.0
    scale = max(1, math.ceil(min_size / h))
    x = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)  # [n, h*s, w*s, c]
    th, tw = h * scale, w * scale
    label_px = 0 if labels is None else 8 + 7 * max(len(name) for name in row_names)
    grid = np.ones((nrows_imgs * (th + pad) + pad, label_px + ncol_imgs * (tw + pad) + pad, c))
    for k, (r, q) in cells.items():
        y0, x0 = pad + r * (th + pad), label_px + pad + q * (tw + pad)
        grid[y0:y0 + th, x0:x0 + tw] = x[k]

    dpi = 100
    gh, gw = grid.shape[:2]
    title_px = 24 if title else 0
    fig = _mpl().Figure(figsize=(gw / dpi, (gh + title_px) / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, gh / (gh + title_px)))
    ax.set_axis_off()
    if c == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    for r, name in enumerate(row_names):  # data coordinates: pixel columns and rows of the grid
        ax.text(label_px / 2, pad + r * (th + pad) + th / 2, name, ha="center", va="center",
                fontsize=8)
    if title:
        fig.text(0.5, 1.0 - 0.5 * title_px / (gh + title_px), title, ha="center", va="center", fontsize=9)
    _save(fig, path, dpi=dpi)


def _grid_cells(n: int, nrow, labels, class_names):
    """({image index: (row, column)} of the images shown, row names) of an image grid: row-major
    tiles of nrow columns, or one row per sorted class of `labels` (at most nrow a row)."""
    if labels is None:
        cols = min(int(nrow) if nrow is not None else math.ceil(math.sqrt(n)), n)
        return {k: divmod(k, cols) for k in range(n)}, []
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer classes of shape [n]=({n},); got shape "
                         f"{labels.shape} and dtype {labels.dtype}.")
    classes = np.unique(labels)
    if class_names is not None and (classes.min() < 0 or classes.max() >= len(class_names)):
        raise ValueError(f"class_names has {len(class_names)} names but labels run from "
                         f"{classes.min()} to {classes.max()}.")
    cells = {}
    for r, k in enumerate(classes):
        members = np.flatnonzero(labels == k)
        for q, index in enumerate(members[:nrow] if nrow is not None else members):
            cells[int(index)] = (r, q)
    names = [str(class_names[k]) if class_names is not None else str(int(k)) for k in classes]
    return cells, names


def plot_curves(rows: Sequence[dict[str, Any]], path, x: str, y: str, group: str, *,
                logx: bool = True, logy: bool = False, title: str | None = None,
                ylabel: str | None = None, dashed=None,
                hlines: dict[str, float] | None = None) -> None:
    """One line per value of rows[i][group], y against x, saved as a PNG.

    rows: records such as {"integrator": "heun", "nfe": 16, "tv": 0.05}; x, y, group: keys
    present in every row.  Groups keep their first-appearance order; points within a group are
    sorted by x.  Non-finite y values leave a gap.  Used for quality-vs-NFE plots.
    ylabel: the y axis label (default y); dashed: optional predicate on a group name, True draws
    that group's line dashed (e.g. to tell two models apart when their samplers share colours);
    hlines: {label: y} drawn as grey dotted horizontal lines (e.g. real-data floors).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty; nothing to plot.")
    for i, row in enumerate(rows):
        missing = [k for k in (x, y, group) if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks key(s) {missing}; it has {sorted(row)}.")
    groups: dict[Any, list[tuple[float, float]]] = {}
    for row in rows:
        groups.setdefault(row[group], []).append((float(row[x]), float(row[y])))
    if logx and any(px <= 0 for pts in groups.values() for px, _ in pts):
        raise ValueError(f"logx=True needs {x!r} > 0 in every row; pass logx=False.")

    fig = _mpl().Figure(figsize=(5.5, 4.0), dpi=150)
    ax = fig.add_subplot()
    # Beyond ten lines the default colour cycle repeats: take distinct colours from tab20.
    colors = _mpl().colormaps["tab10" if len(groups) <= 10 else "tab20"].colors
    for i, (name, pts) in enumerate(groups.items()):
        pts.sort(key=lambda p: p[0])
        xs, ys = np.array(pts).T
        style = "--" if dashed is not None and dashed(name) else "-"
        ax.plot(xs, ys, style, marker="o", markersize=3, linewidth=1.2, label=str(name),
                color=colors[i % len(colors)])
    for label, value in (hlines or {}).items():
        ax.axhline(value, color="0.4", linestyle=":", linewidth=1.0)
        ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=6,
                    color="0.3", va="bottom")
    if logx:  # labelled at the measured x values (e.g. NFE 4, 8, 16) instead of 10^k
        nfe_axis(ax, [px for pts in groups.values() for px, _ in pts], base=10)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    figure_legend(fig, [ax], title=group)
    _save(fig, path)
