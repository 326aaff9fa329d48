"""Figures a person looks at after a run: embeddings in 2-D, MAE-style reconstructions, loss curves,
and learning curves of the online monitor against wall-clock time and samples seen.

Every figure is a ``matplotlib.figure.Figure`` drawn on an Agg canvas and written as PNG; pyplot
is never imported, so the caller's backend, open figures and interactive state are untouched,
and nothing leaks when many figures are made. Sizes are fixed (inches x DPI) so a figure's pixel
size depends only on its content count, never on its labels.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

DPI = 100
EMBEDDING_INCHES = (8.0, 6.0)  # 800 x 600 px
PANEL_INCHES = 2.0  # reconstruction grid: 200 px per panel
CURVE_INCHES = (8.0, 3.0)  # loss curves: 800 px wide, 300 px per key
MAX_LEGEND = 20  # beyond this many classes a legend is unreadable: colours only


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": it would crop, and the pixel size would depend on the labels.
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def embed_2d(features: Any, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates by t-SNE (van der Maaten & Hinton, JMLR 2008) or PCA.

    Features wider than 50 are reduced to 50 principal components first, as van der Maaten
    recommends: it removes noise and makes t-SNE's neighbour search cheap. ``init="pca"`` and a
    fixed ``random_state`` make the layout deterministic and keep its global structure.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = _numpy(features).astype(np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"expected features (N, D) with N >= 3, got shape {x.shape}")
    if method not in ("tsne", "pca"):
        raise ValueError(f"unknown method {method!r}; known: tsne, pca")
    if method == "pca" or x.shape[1] > 50:
        x = PCA(n_components=min(2 if method == "pca" else 50, *x.shape), random_state=seed).fit_transform(x)
    if method == "pca":
        return np.pad(x, ((0, 0), (0, 2 - x.shape[1])))  # 1-D features get a zero second axis
    # perplexity must stay below N; 30 is sklearn's default for larger sets.
    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed).fit_transform(x)


def embedding_plot(
    features: Any,
    labels: Any,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    title: str = "",
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """Scatter of (N, D) ``features`` embedded in 2-D (see ``embed_2d``), coloured by ``labels`` (N,).

    At most ``max_points`` items, a fixed random subset (t-SNE is quadratic-ish in N). Label -1
    is drawn grey as "unlabelled". Writes an 800 x 600 PNG; returns ``path``.
    """
    x, y = _numpy(features), _numpy(labels).astype(np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected features (N, D) and labels (N,), got shapes {x.shape} and {y.shape}")
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:max_points])
        x, y = x[keep], y[keep]
    xy = embed_2d(x, method, seed)
    classes = sorted(set(y.tolist()))
    labelled = [c for c in classes if c >= 0]
    cmap = _class_colours(len(labelled))
    fig = _figure(EMBEDDING_INCHES)
    ax = fig.add_subplot()
    for c in classes:
        name = "unlabelled" if c < 0 else class_names[c] if class_names is not None and c < len(class_names) else str(c)
        colour = (0.6, 0.6, 0.6, 0.5) if c < 0 else cmap(labelled.index(c))
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=6, color=colour, label=name, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{method} of {len(x)} embeddings")
    if len(classes) <= MAX_LEGEND:
        fig.legend(loc="outside right upper", markerscale=3, fontsize="small", frameon=False)
    return _save(fig, path)


def _class_colours(n: int) -> Callable[[int], Any]:
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"]
    if n <= 20:
        return colormaps["tab20"]
    turbo = colormaps["turbo"]
    return lambda i: turbo(i / max(1, n - 1))


def _display(x: Any, denormalize: Callable | None) -> torch.Tensor:
    """(B, C, H, W) images / spectrograms or (B, C, T, H, W) video -> (B, C, H, W) float on the CPU."""
    x = torch.as_tensor(_numpy(x)).float()
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]  # the middle frame stands for the clip
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images (B, 3, H, W), spectrograms (B, 1, F, T) or video (B, C, T, H, W), got shape "
            f"{tuple(x.shape)}; unpatchify token outputs (B, N, P) first"
        )
    if denormalize is not None:
        x = torch.as_tensor(_numpy(denormalize(x))).float()
    return x


def reconstruction_grid(
    original: Any,
    masked: Any,
    reconstruction: Any,
    path: str | Path,
    denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_items: int = 8,
    title: str = "",
) -> Path:
    """One row per item, columns original / masked / reconstruction, as in MAE's figures (arXiv:2111.06377).

    All three share one shape: RGB (B, 3, H, W), clipped to [0, 1] for display; spectrograms
    (B, 1, F, T), drawn with low frequencies at the bottom on the original's colour range so the
    columns compare; or video (B, C, T, H, W), shown by its middle frame. ``denormalize`` is
    applied to the (B, C, H, W) tensors (after the middle frame is taken). Writes a
    600 x (200 * rows) PNG; returns ``path``.
    """
    shapes = [tuple(torch.as_tensor(_numpy(t)).shape) for t in (original, masked, reconstruction)]
    if len(set(shapes)) != 1:
        raise ValueError(f"original, masked and reconstruction must share one shape, got {', '.join(map(str, shapes))}")
    if not shapes[0] or shapes[0][0] == 0 or max_items < 1:
        raise ValueError(f"nothing to draw: shape {shapes[0]}, max_items {max_items}")
    columns = [_display(t, denormalize)[:max_items] for t in (original, masked, reconstruction)]
    rows, spectrogram = len(columns[0]), columns[0].shape[1] == 1
    fig = _figure((3 * PANEL_INCHES, rows * PANEL_INCHES))
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        ref = columns[0][r]
        finite = ref[torch.isfinite(ref)]
        vmin, vmax = (finite.min().item(), finite.max().item()) if finite.numel() else (0.0, 1.0)
        for c, (name, col) in enumerate(zip(("original", "masked", "reconstruction"), columns)):
            ax = axes[r, c]
            if spectrogram:
                ax.imshow(col[r, 0].numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax)
            else:
                ax.imshow(col[r].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_reconstructions(
    objective: Any,
    x: torch.Tensor,
    seed: int,
    path: str | Path,
    title: str = "",
    denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    panels: Callable[[torch.Tensor], torch.Tensor] = lambda v: v,
) -> Path:
    """``reconstruction_grid`` of a masked autoencoder's ``objective.reconstruct(x)`` (in eval mode,
    on the objective's device), its masks drawn from ``seed`` without moving the global random
    stream. ``panels`` maps each of original / masked / reconstruction to what is drawn, e.g.
    chosen frames of a video (B, C, T, H, W) -> (B * k, C, H, W)."""
    device = next(objective.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shown = objective.eval().reconstruct(x.to(device))
    return reconstruction_grid(*(panels(shown[k]).cpu() for k in ("original", "masked", "reconstruction")), path,
                               denormalize=denormalize, title=title)


def read_metrics(metrics_jsonl_path: str | Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl file, one per non-empty line.

    A malformed last line is dropped: a run killed mid-write leaves one, and its curve is the one
    most worth looking at. A malformed line elsewhere is an error.
    """
    lines = [(i + 1, s) for i, s in enumerate(Path(metrics_jsonl_path).read_text().splitlines()) if s.strip()]
    records = []
    for n, (lineno, text) in enumerate(lines):
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError as e:
            if n == len(lines) - 1:
                break
            raise ValueError(f"{metrics_jsonl_path}:{lineno}: not a JSON object ({e.msg})") from None
    return records


def loss_curve(metrics_jsonl_path: str | Path, path: str | Path, keys: Sequence[str] = ("loss",)) -> Path:
    """Each of ``keys`` against "step", one panel per key, from a metrics.jsonl file.

    A resumed run logs the steps after its checkpoint again; the later value of a step wins, so
    the curve shows the run that produced the final model. Writes an 800 x (300 * len(keys)) PNG.
    """
    if not keys:
        raise ValueError("no keys to plot")
    records = [r for r in read_metrics(metrics_jsonl_path) if isinstance(r, dict) and "step" in r]
    series: dict[str, dict[float, float]] = {k: {} for k in keys}
    for r in records:
        for k in keys:
            if isinstance(r.get(k), (int, float)):
                series[k][r["step"]] = float(r[k])
    missing = [k for k in keys if not series[k]]
    if missing:
        found = sorted({k for r in records for k in r if k != "step"})
        raise ValueError(f"{metrics_jsonl_path}: no values for {', '.join(missing)} (logged: {', '.join(found) or 'nothing'})")
    fig = _figure((CURVE_INCHES[0], CURVE_INCHES[1] * len(keys)))
    axes = fig.subplots(len(keys), 1, squeeze=False, sharex=True)[:, 0]
    for ax, k in zip(axes, keys):
        steps = sorted(series[k])
        values = [series[k][s] for s in steps]
        ax.plot(steps, values, linewidth=1)
        ax.set_ylabel(k)
        finite = [v for v in values if math.isfinite(v)]
        # Losses spanning decades read better on a log axis.
        if k.endswith("loss") and finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    return _save(fig, path)


LEARNING_INCHES = (8.0, 6.0)  # learning curve: 800 x 600 px, two panels
BASELINE_STYLES = ("--", ":", "-.")
# What a run's monitor read; a later evaluation on other data cannot draw that run's baselines.
MONITOR_DATA_FIELDS = ("dataset", "dataset_config", "split", "eval_split", "label_column")


def learning_curve(
    metrics_jsonl_path: str | Path,
    path: str | Path,
    key: str,
    baselines: dict[str, float] | None = None,
    title: str = "",
    ylabel: str | None = None,
    label: str | None = None,
) -> Path:
    """``key`` (an online-monitor figure such as "monitor/knn_top1") against wall seconds (top
    panel) and samples seen (bottom panel), from the rows of a metrics.jsonl that carry
    ``key``, ``wall_s`` and ``samples``; each of ``baselines`` (name -> value, measured once
    with the monitor's own protocol) is a horizontal line on both panels.

    Accuracies in [0, 1] are drawn in %. A resumed run logs the steps after its checkpoint
    again; the later row of a step wins. Writes an 800 x 600 PNG; returns ``path``.
    """
    rows: dict[float, dict] = {}
    records = [r for r in read_metrics(metrics_jsonl_path) if isinstance(r, dict)]
    for r in records:
        if all(isinstance(r.get(k), (int, float)) for k in (key, "wall_s", "samples")):
            rows[r.get("step", len(rows))] = r
    if not rows:
        found = sorted({k for r in records for k in r if k != "step"})
        raise ValueError(f"{metrics_jsonl_path}: no rows with {key}, wall_s and samples "
                         f"(logged: {', '.join(found) or 'nothing'})")
    ordered = [rows[s] for s in sorted(rows)]
    values = np.array([r[key] for r in ordered], dtype=float)
    baselines = dict(baselines or {})
    everything = [*values.tolist(), *baselines.values()]
    scale = 100.0 if all(0.0 <= v <= 1.0 for v in everything) else 1.0
    fig = _figure(LEARNING_INCHES)
    axes = fig.subplots(2, 1, sharey=True)
    for ax, x_key, x_label in ((axes[0], "wall_s", "wall-clock seconds"), (axes[1], "samples", "samples seen")):
        x = np.array([r[x_key] for r in ordered], dtype=float)
        ax.plot(x, scale * values, marker="o", markersize=3, linewidth=1.5, color="C0", label=label or key.split("/")[-1])
        for i, (name, value) in enumerate(baselines.items()):
            ax.axhline(scale * value, color=f"C{i + 1}", linestyle=BASELINE_STYLES[i % len(BASELINE_STYLES)],
                       linewidth=1.2, label=f"{name} {scale * value:.1f}" + ("%" if scale == 100 else ""))
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel or (f"{key} (%)" if scale == 100 else key))
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    if scale == 100:
        axes[0].set_ylim(0, 100)
    axes[0].legend(loc="best", fontsize="small")  # the spot that covers the fewest points
    final = f"last {scale * values[-1]:.1f}" + ("%" if scale == 100 else "")
    fig.suptitle(f"{title or key}: {final} at {ordered[-1]['wall_s']:.0f} s, {int(ordered[-1]['samples'])} samples")
    return _save(fig, path)


def run_learning_curve(
    cfg: Any, out_dir: str | Path, key: str, baselines: Callable[[], dict[str, float]], title: str = "",
    ylabel: str | None = None, label: str | None = None,
) -> dict[str, Any] | None:
    """``out_dir/plots/learning_curve.png`` for a run directory whose metrics.jsonl logged ``key``.

    ``baselines`` is called only when the curve is drawn. Nothing is drawn (returns None) when
    the run logged no ``key`` (its monitor was off) or when ``cfg`` reads other data than the
    run's saved config.yaml (a probe of the run on another dataset), whose baselines would not
    compare. Returns {"path": str, "key": key, "baselines": {name: value}}.
    """
    out_dir = Path(out_dir)
    metrics = out_dir / "metrics.jsonl"
    if not metrics.is_file() or not any(key in r for r in read_metrics(metrics) if isinstance(r, dict)):
        return None
    saved = out_dir / "config.yaml"
    if saved.is_file():
        import yaml

        run = yaml.safe_load(saved.read_text()) or {}
        if any(run.get(f) != getattr(cfg, f, None) for f in MONITOR_DATA_FIELDS):
            return None
    values = baselines()
    path = learning_curve(metrics, out_dir / "plots" / "learning_curve.png", key, values, title, ylabel, label)
    return {"path": str(path), "key": key, "baselines": values}
