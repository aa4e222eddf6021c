"""Tests for flowmatch.plotting: each function writes a real PNG without pyplot."""
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from flowmatch import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=1000):
    data = path.read_bytes()
    assert len(data) >= min_bytes and data[:8] == PNG_MAGIC
    return matplotlib.image.imread(path)


def test_plot_2d(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(5000, 2))
    samples[:3] = [np.nan, 0.0]  # non-finite and outside-the-box points must not break the plot
    samples[3] = 50.0
    box = (np.full(2, -4.0), np.full(2, 4.0))
    plotting.plot_2d(samples, tmp_path / "a.png", reference=rng.normal(size=(20000, 2)), box=box, title="gauss")
    _assert_png(tmp_path / "a.png")
    plotting.plot_2d(samples[3:], tmp_path / "sub" / "b.png")  # no reference, box from the data
    _assert_png(tmp_path / "sub" / "b.png")
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        plotting.plot_2d(np.zeros((4, 3)), tmp_path / "c.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid(tmp_path, channels):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1.5, 1.5, size=(10, 8, 8, channels))  # out of range: clipped
    plotting.image_grid(images, tmp_path / "grid.png", nrow=4, pad=1)
    img = _assert_png(tmp_path / "grid.png")
    # 8x8 upscaled x8 to 64 px, 4 per row and 3 rows, 1-px gaps: exact pixel size.
    assert img.shape[:2] == (3 * 65 + 1, 4 * 65 + 1)
    plotting.image_grid(images, tmp_path / "titled.png", title="digits")
    _assert_png(tmp_path / "titled.png")


def test_image_grid_nearest_upscaling_is_exact(tmp_path):
    images = -np.ones((1, 2, 2, 1))
    images[0, 0, 1, 0] = 1.0  # one white pixel top right
    plotting.image_grid(images, tmp_path / "g.png", pad=0, min_size=4)
    img = _assert_png(tmp_path / "g.png", min_bytes=60)[..., 0]
    expected = np.kron(np.array([[0.0, 1.0], [0.0, 0.0]]), np.ones((2, 2)))
    np.testing.assert_allclose(img, expected, atol=1 / 255)


def test_image_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="c in"):
        plotting.image_grid(np.zeros((2, 8, 8, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="nrow"):
        plotting.image_grid(np.zeros((2, 8, 8, 1)), tmp_path / "x.png", nrow=0)


def test_plot_curves(tmp_path):
    rows = [
        {"integrator": name, "nfe": nfe, "tv": 1.0 / nfe ** order}
        for name, order in [("euler", 1), ("heun", 2)]
        for nfe in [32, 4, 8, 16]
    ]
    plotting.plot_curves(rows, tmp_path / "c.png", "nfe", "tv", "integrator", logy=True, title="TV vs NFE")
    _assert_png(tmp_path / "c.png")
    with pytest.raises(ValueError, match="lacks key"):
        plotting.plot_curves(rows + [{"nfe": 2}], tmp_path / "d.png", "nfe", "tv", "integrator")
    with pytest.raises(ValueError, match="logx"):
        plotting.plot_curves([{"g": 0, "x": 0, "y": 1}], tmp_path / "e.png", "x", "y", "g")


def test_does_not_touch_pyplot(tmp_path):
    # Headless-safe: the module never imports pyplot, so it cannot switch the global backend.
    code = (
        "import sys, numpy as np\n"
        "from flowmatch import plotting\n"
        f"plotting.image_grid(np.zeros((2, 4, 4, 3)), {str(tmp_path / 'g.png')!r})\n"
        f"plotting.plot_2d(np.zeros((10, 2)), {str(tmp_path / 'p.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": ""})


def test_prefetch_imports_matplotlib_in_the_background(tmp_path):
    code = (
        "import sys, threading\n"
        "from flowmatch import plotting\n"
        "assert 'matplotlib' not in sys.modules\n"
        "plotting.prefetch()\n"
        "[t.join() for t in threading.enumerate() if t.name == 'flowmatch-matplotlib-import']\n"
        "assert 'matplotlib.figure' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
        "plotting.prefetch()\n"  # already imported: no second thread
        "assert not any(t.name == 'flowmatch-matplotlib-import' for t in threading.enumerate())\n"
        "import numpy as np\n"
        f"plotting.plot_2d(np.zeros((10, 2)), {str(tmp_path / 'p.png')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": ""})
    assert (tmp_path / "p.png").stat().st_size > 0


def test_image_grid_with_labels_has_one_row_per_class(tmp_path):
    values = np.array([0.6, -0.2, 0.2, 0.5, -0.6, 0.4])  # image k is filled with values[k]
    labels = np.array([2, 0, 1, 2, 0, 2])
    images = np.broadcast_to(values[:, None, None, None], (6, 8, 8, 1)).copy()
    plotting.image_grid(images, tmp_path / "g.png", labels=labels, pad=1, min_size=16)
    img = _assert_png(tmp_path / "g.png", min_bytes=200)[..., 0]
    band = 8 + 7 * 1  # the class-name band: one-character names
    # Rows: class 0 (images 1, 4), class 1 (image 2), class 2 (images 0, 3, 5); 16-px tiles.
    assert img.shape == (3 * 17 + 1, band + 3 * 17 + 1)
    rows = {0: [1, 4], 1: [2], 2: [0, 3, 5]}
    for r, members in rows.items():
        for q in range(3):
            tile = img[1 + r * 17:1 + r * 17 + 16, band + 1 + q * 17:band + 1 + q * 17 + 16]
            want = (values[members[q]] + 1) / 2 if q < len(members) else 1.0  # empty: white
            np.testing.assert_allclose(tile, want, atol=1 / 255)
    assert img[:, :band].min() < 0.5  # the class names are written in the band
    plotting.image_grid(images, tmp_path / "named.png", labels=labels, nrow=2,
                        class_names=["zero", "one", "two"], title="by class")
    _assert_png(tmp_path / "named.png")
    with pytest.raises(ValueError, match="labels must be integer classes"):
        plotting.image_grid(images, tmp_path / "x.png", labels=labels[:3])
    with pytest.raises(ValueError, match="class_names has 2 names"):
        plotting.image_grid(images, tmp_path / "x.png", labels=labels, class_names=["a", "b"])


def _tick_labels_overlap(fig, ax) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()
                    if t.get_text()), key=lambda b: b.x0)
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


def test_nfe_ticks_never_run_into_each_other():
    """NFE values such as an adaptive solver's 15, 16, 31, 38, 45 printed "1516" and "313845"
    as overlapping labels; now a value too close to the last label goes unlabelled."""
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    values = [2, 4, 8, 10, 15, 16, 31, 32, 38, 45, 64, 128]
    fig = Figure(figsize=(4.2, 3.8), dpi=120)
    ax = fig.add_subplot()
    ax.plot(values, np.ones(len(values)))
    ax.set_xticks(values, [str(v) for v in values])
    assert _tick_labels_overlap(fig, ax)   # what every value labelled looks like
    plotting.nfe_axis(ax, values)
    labels = [float(t.get_text()) for t in ax.get_xticklabels() if t.get_text()]
    assert labels[0] == 2 and all(b / a >= 1.4 for a, b in zip(labels, labels[1:]))
    assert not _tick_labels_overlap(fig, ax)


def test_figure_legend_is_one_legend_below_the_panels(tmp_path):
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    fig = Figure(figsize=(8, 3))
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for ax in axes:
        for name in ("euler", "heun"):
            ax.plot([1, 2], [1, 2], label=name)
        ax.legend()
    plotting.figure_legend(fig, axes)
    assert all(ax.get_legend() is None for ax in axes)
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["euler", "heun"]


def test_curves_plot_in_vector_format(tmp_path):
    rows = [dict(sampler=s, nfe=n, tv=1.0 / n) for s in ("a", "b") for n in (4, 8, 10, 16)]
    for fmt, magic in (("pdf", b"%PDF"), ("svg", b"<?xml")):
        path = tmp_path / f"curves.{fmt}"
        plotting.plot_curves(rows, path, x="nfe", y="tv", group="sampler")
        assert path.read_bytes().startswith(magic)
