"""Figures comparing real and generated spiking data, written as PNG files.

Figures are built on :class:`matplotlib.figure.Figure` and rendered by the Agg backend on save, so
nothing touches pyplot's global state or needs a display. Counts are ``[n, T, N]`` with optional
``lengths [n]``; statistics come from :func:`ldns_fast.metrics.summarize`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ldns_fast.metrics import SetStatistics, pearson_r, shared_bins, spike_times, summarize, upper_triangle

REAL_COLOR = "tab:blue"
GENERATED_COLOR = "tab:orange"


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _pick_trials(n: int, n_pick: int, seed: int) -> np.ndarray:
    """Sorted seeded choice of ``min(n, n_pick)`` trial indices."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, n_pick), replace=False))


def plot_rasters(
    real: np.ndarray,
    generated: np.ndarray,
    path: str | os.PathLike,
    *,
    bin_width: float,
    real_lengths: np.ndarray | None = None,
    generated_lengths: np.ndarray | None = None,
    n_trials: int = 3,
    seed: int = 0,
) -> Path:
    """Spike rasters of ``n_trials`` random trials per set (rows: real, generated)."""
    figure = Figure(figsize=(4 * n_trials, 6), layout="constrained")
    axes = figure.subplots(2, n_trials, squeeze=False, sharey=True)
    sets = [("real", real, real_lengths, REAL_COLOR),
            ("generated", generated, generated_lengths, GENERATED_COLOR)]
    for row, (name, counts, lengths, color) in enumerate(sets):
        chosen = _pick_trials(counts.shape[0], n_trials, seed)
        chosen_lengths = None if lengths is None else np.asarray(lengths)[chosen]
        trial, neuron, time = spike_times(counts[chosen], chosen_lengths, bin_width)
        for column in range(n_trials):
            ax = axes[row, column]
            if column < chosen.size:
                mine = trial == column
                ax.scatter(time[mine], neuron[mine], s=2, marker="|", color=color, linewidths=0.8)
                ax.set_title(f"{name} trial {chosen[column]}", fontsize=9)
            ax.set_xlabel("time (s)")
        axes[row, 0].set_ylabel("neuron")
    return _save(figure, path)


def _scatter(ax, real: np.ndarray, generated: np.ndarray, title: str) -> None:
    """Generated vs real values with the identity line; Pearson r in the title."""
    keep = np.isfinite(real) & np.isfinite(generated)
    ax.scatter(real[keep], generated[keep], s=6, alpha=0.6, color=GENERATED_COLOR)
    if keep.any():
        low = min(real[keep].min(), generated[keep].min())
        high = max(real[keep].max(), generated[keep].max())
        ax.plot([low, high], [low, high], color="k", linewidth=0.8)
    ax.set_title(f"{title}\nr = {pearson_r(real, generated):.3f}", fontsize=9)
    ax.set_xlabel("real")
    ax.set_ylabel("generated")


def plot_statistics(
    real: SetStatistics, generated: SetStatistics, path: str | os.PathLike, *, min_isis: int = 5
) -> Path:
    """Per-neuron statistics (rate, Fano factor, ISI mean, std, CV) and correlations, generated vs real.

    ISI panels show neurons with at least ``min_isis`` ISIs in both sets.
    """
    isi_ok = (real.isi_count >= min_isis) & (generated.isi_count >= min_isis)
    panels = [
        ("mean rate (Hz)", real.mean_rate, generated.mean_rate),
        ("Fano factor", real.fano_factor, generated.fano_factor),
        ("mean ISI (s)", real.isi_mean[isi_ok], generated.isi_mean[isi_ok]),
        ("std ISI (s)", real.isi_std[isi_ok], generated.isi_std[isi_ok]),
        ("CV of ISI", real.isi_cv[isi_ok], generated.isi_cv[isi_ok]),
        ("pairwise correlation", upper_triangle(real.correlation), upper_triangle(generated.correlation)),
    ]
    figure = Figure(figsize=(12, 7.5), layout="constrained")
    for ax, (title, a, b) in zip(figure.subplots(2, 3).ravel(), panels):
        _scatter(ax, a, b, title)
    return _save(figure, path)


def plot_population_counts(real: SetStatistics, generated: SetStatistics, path: str | os.PathLike) -> Path:
    """Densities of the population spike count per bin (linear and log scale)."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    r = pearson_r(*shared_bins(real.population_density, generated.population_density))
    for ax, scale in zip(figure.subplots(1, 2), ("linear", "log")):
        for name, density, color in [("real", real.population_density, REAL_COLOR),
                                     ("generated", generated.population_density, GENERATED_COLOR)]:
            ax.step(np.arange(density.size), density, where="mid", color=color, label=name)
        ax.set_yscale(scale)
        ax.set_xlabel("population spike count per bin")
        ax.set_ylabel("density")
        ax.set_title(f"population count ({scale}), r = {r:.4f}", fontsize=9)
        ax.legend(fontsize=8)
    return _save(figure, path)


def plot_correlations(real: SetStatistics, generated: SetStatistics, path: str | os.PathLike) -> Path:
    """Correlation matrices side by side on one symmetric colour scale (diagonal blanked)."""
    matrices = [real.correlation.copy(), generated.correlation.copy()]
    for matrix in matrices:
        np.fill_diagonal(matrix, np.nan)
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices])
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, matrix, name in zip(axes, matrices, ("real", "generated")):
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{name} correlation", fontsize=9)
        ax.set_xlabel("neuron")
        ax.set_ylabel("neuron")
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    return _save(figure, path)


def plot_latents(
    latents: dict[str, tuple[np.ndarray, np.ndarray | None]],
    path: str | os.PathLike,
    *,
    bin_width: float,
    n_trials: int = 3,
    n_dims: int = 3,
    seed: int = 0,
) -> Path:
    """First ``n_dims`` latent dimensions over time for ``n_trials`` random trials of each set.

    ``latents`` maps a set name to (latents ``[n, T, D]``, lengths ``[n]`` or None); one row per set,
    one column per dimension; bins past a trial's length are not drawn.
    """
    n_columns = min(n_dims, min(z.shape[2] for z, _ in latents.values()))
    figure = Figure(figsize=(4 * n_columns, 3 * len(latents)), layout="constrained")
    axes = figure.subplots(len(latents), n_columns, squeeze=False)
    for row, (name, (z, lengths)) in enumerate(latents.items()):
        lengths = np.full(z.shape[0], z.shape[1]) if lengths is None else np.asarray(lengths)
        for trial in _pick_trials(z.shape[0], n_trials, seed):
            time = np.arange(lengths[trial]) * bin_width
            for dim in range(n_columns):
                axes[row, dim].plot(time, z[trial, : lengths[trial], dim], linewidth=1)
        for dim in range(n_columns):
            axes[row, dim].set_title(f"{name} latent {dim}", fontsize=9)
            axes[row, dim].set_xlabel("time (s)")
    return _save(figure, path)


def plot_training_curves(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    """Train and validation loss against the optimisation step, one panel per stage, log scale.

    ``rows`` are the epochs of a run's ``metrics.csv`` (``ldns_fast.run.read_metrics``). A panel
    whose losses are not all positive (a Poisson NLL can be negative) keeps a linear scale.
    """
    stages = list(dict.fromkeys(str(row["stage"]) for row in rows))
    figure = Figure(figsize=(5 * max(len(stages), 1), 3.8), layout="constrained")
    for ax, stage in zip(figure.subplots(1, max(len(stages), 1), squeeze=False)[0], stages):
        mine = [row for row in rows if row["stage"] == stage]
        values = []
        for key, color in (("train_loss", REAL_COLOR), ("val_loss", GENERATED_COLOR)):
            points = [(row["step"], row[key]) for row in mine if key in row]
            if points:
                steps, losses = zip(*points)
                ax.plot(steps, losses, color=color, marker="." if len(points) < 50 else None,
                        label=key.replace("_", " "))
                values += losses
        positive = bool(values) and min(values) > 0
        ax.set_yscale("log" if positive else "linear")
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("loss" + ("" if positive else " (linear: not all > 0)"))
        ax.set_title(f"{stage} ({len(mine)} epochs)", fontsize=9)
        ax.legend(fontsize=8)
    return _save(figure, path)


def plot_all(
    real: np.ndarray,
    generated: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    bin_width: float,
    real_lengths: np.ndarray | None = None,
    generated_lengths: np.ndarray | None = None,
    real_latents: np.ndarray | None = None,
    generated_latents: np.ndarray | None = None,
    n_raster_trials: int = 3,
    min_isis: int = 5,
    seed: int = 0,
) -> list[Path]:
    """Write every figure for counts ``[n, T, N]`` of both sets into ``out_dir``; returns the PNG paths.

    Latent trajectories (``[n, T, D]``, sharing the sets' lengths) are drawn when either set has them.
    """
    out_dir = Path(out_dir)
    real_stats = summarize(real, real_lengths, bin_width)
    generated_stats = summarize(generated, generated_lengths, bin_width)
    paths = [
        plot_rasters(real, generated, out_dir / "rasters.png", bin_width=bin_width, real_lengths=real_lengths,
                     generated_lengths=generated_lengths, n_trials=n_raster_trials, seed=seed),
        plot_statistics(real_stats, generated_stats, out_dir / "statistics.png", min_isis=min_isis),
        plot_population_counts(real_stats, generated_stats, out_dir / "population_counts.png"),
        plot_correlations(real_stats, generated_stats, out_dir / "correlations.png"),
    ]
    given = [("real", real_latents, real_lengths), ("generated", generated_latents, generated_lengths)]
    latents = {name: (z, lengths) for name, z, lengths in given if z is not None}
    if latents:
        paths.append(plot_latents(latents, out_dir / "latents.png", bin_width=bin_width,
                                  n_trials=n_raster_trials, seed=seed))
    return paths
