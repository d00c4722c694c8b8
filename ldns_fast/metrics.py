"""Statistics of binned spike counts and comparisons of real and generated sets (LDNS evaluation).

Inputs are counts ``[n, T, N]`` in the file layout (trials, bins, neurons), optional ``lengths [n]``
(bins at or past a trial's length are padding and ignored everywhere) and the bin width in seconds.

Spike times inside a bin (the convention for all ISI statistics and rasters): a bin ``t`` (counted from
the trial start) holding ``k`` spikes places them at ``(t + (j + 0.5) / k) * bin_width`` for
``j = 0, ..., k - 1``. Spikes of one bin are therefore ``bin_width / k`` apart, and the gap between
the last spike of bin ``t1`` (``k1`` spikes) and the first of a later bin ``t2`` (``k2`` spikes) is
``(t2 - t1 - 1 + 0.5 / k1 + 0.5 / k2) * bin_width``. ISIs never cross trial boundaries.

Every per-set statistic is a function of trial-weighted sums of per-trial sufficient statistics, so
the bootstrap of :func:`compare` reweights trials (multiplicity of each trial in a resample) instead of
recomputing from the counts. Matrix products (per-trial Gram matrices) run in torch, which is much
faster than numpy's BLAS for these shapes.

Main entry points: :func:`summarize` (one set) and :func:`compare` (real vs generated, bootstrapped).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldns_fast.validation import check_bin_width

MAX_COUNT = int(np.iinfo(np.uint16).max)
_CHUNK_ELEMENTS = 1 << 22

METRIC_LABELS: dict[str, str] = {
    "kl_population_count": "KL pop. count (model || data)",
    "rmse_correlation": "RMSE pairwise correlation",
    "rmse_mean_isi": "RMSE mean ISI (s)",
    "rmse_std_isi": "RMSE std ISI (s)",
    "rmse_mean_rate": "RMSE mean rate (Hz)",
    "mmd2_trial_rates": "MMD^2 trial rates",
    "pearson_mean_isi": "Pearson r mean ISI",
    "pearson_std_isi": "Pearson r std ISI",
    "pearson_correlation": "Pearson r correlations",
    "pearson_population_density": "Pearson r pop. count density",
    "isi_neurons_excluded": "neurons excluded from ISI metrics",
}
"""Metric names returned by :func:`compare_statistics` and :func:`compare`, with table labels."""


@dataclass(frozen=True)
class SetStatistics:
    """Statistics of one set of trials (``N`` neurons, population counts ``0 .. C-1``).

    Attributes:
        bin_width: seconds per bin.
        n_bins: number of valid bins (weighted by trial multiplicity in a bootstrap resample).
        mean_rate: ``[N]`` spikes per second over all valid bins.
        fano_factor: ``[N]`` variance / mean of per-trial spike counts (ddof 0; NaN for silent
            neurons); trials of unequal lengths inflate it.
        isi_mean, isi_std: ``[N]`` mean and standard deviation (ddof 0) in seconds of all ISIs of the
            neuron pooled over trials; NaN without ISIs.
        isi_cv: ``[N]`` ``isi_std / isi_mean``.
        isi_count: ``[N]`` number of ISIs.
        correlation: ``[N, N]`` Pearson correlation of binned counts pooled over all valid bins (NaN
            rows and columns for neurons without variance).
        population_density: ``[C]`` fraction of valid bins whose population count (sum over neurons)
            equals each integer.
    """

    bin_width: float
    n_bins: float
    mean_rate: np.ndarray
    fano_factor: np.ndarray
    isi_mean: np.ndarray
    isi_std: np.ndarray
    isi_cv: np.ndarray
    isi_count: np.ndarray
    correlation: np.ndarray
    population_density: np.ndarray


@dataclass(frozen=True)
class _TrialSums:
    """Per-trial sufficient statistics of a set of ``n`` trials.

    lengths ``[n]``; spike_counts ``[n, N]`` (float); isi ``[3, n, N]``: number, sum and sum of squares
    of ISIs in bins; population_hist ``[n, C]``: valid bins of each trial per population count.
    """

    lengths: np.ndarray
    spike_counts: np.ndarray
    isi: np.ndarray
    population_hist: np.ndarray


# ------------------------------------------------------------------------------------------- inputs


def _check_block(block: np.ndarray) -> None:
    if block.dtype.kind == "f" and not (np.isfinite(block).all() and (block == np.round(block)).all()):
        raise ValueError("counts must be whole numbers (found a fraction, NaN or inf in a valid bin)")
    if block.size and block.min() < 0:
        raise ValueError("counts must be non-negative")
    if block.size and block.max() > MAX_COUNT:
        raise ValueError(f"counts above {MAX_COUNT} spikes per bin are not supported")


def _check_lengths(lengths: np.ndarray | None, n: int, t: int) -> np.ndarray:
    if lengths is None:
        return np.full(n, t, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or lengths.dtype.kind not in "iuf" or (lengths != np.round(lengths)).any():
        raise ValueError(f"lengths must be {n} whole numbers, got shape {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > t:
        raise ValueError(f"lengths must lie in [1, {t}], got range [{lengths.min()}, {lengths.max()}]")
    return lengths.astype(np.int64)


def prepare_counts(counts: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validated neuron-major counts ``[n, N, T]`` (uint16, zero past each trial's length), lengths ``[n]``.

    ``counts`` is ``[n, T, N]`` of any integer dtype or floats holding whole numbers; ``lengths``
    defaults to ``T`` for every trial. Padding is not validated (it is ignored).

    Raises:
        ValueError: wrong shapes, lengths outside ``[1, T]``, or negative, fractional or huge counts in
            valid bins.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or min(counts.shape) == 0 or counts.dtype.kind not in "iuf":
        raise ValueError(f"counts must be a non-empty numeric [trials, time, neurons] array, got "
                         f"shape {counts.shape} and dtype {counts.dtype}")
    n, t, n_neurons = counts.shape
    lengths = _check_lengths(lengths, n, t)
    valid = np.arange(t)[None, None, :] < lengths[:, None, None]
    out = np.empty((n, n_neurons, t), dtype=np.uint16)
    step = max(1, _CHUNK_ELEMENTS // (t * n_neurons))
    for start in range(0, n, step):
        block = np.where(valid[start : start + step], counts[start : start + step].transpose(0, 2, 1), 0)
        _check_block(block)
        out[start : start + step] = block
    return out, lengths


# --------------------------------------------------------------------------------- per-trial sums


def _occupied_bins(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty bins of neuron-major counts ``[n, N, T]``, ordered by (trial, neuron, time).

    Returns (group ``trial * N + neuron``, bin index in the trial, spike count), each ``[occupied]``.
    """
    flat = x.reshape(-1)
    where = np.flatnonzero(flat)
    group, time = np.divmod(where, x.shape[2])
    return group, time, flat[where]


def _trial_isi_sums(x: np.ndarray) -> np.ndarray:
    """Number, sum and sum of squares of ISIs (in bins) per trial and neuron, ``[3, n, N]``."""
    n, n_neurons, _ = x.shape
    group, time, count = _occupied_bins(x)
    inverse = 1.0 / count
    number = count - 1.0  # gaps of 1/k bins between the k spikes of one bin
    total = number * inverse
    squares = total * inverse
    # gap from the last spike of the previous occupied bin (same trial and neuron) to this bin's first
    follows = group[1:] == group[:-1]
    gap = np.where(follows, time[1:] - time[:-1] - 1 + 0.5 * (inverse[:-1] + inverse[1:]), 0.0)
    number[1:] += follows
    total[1:] += gap
    squares[1:] += gap * gap
    sums = [np.bincount(group, weights=v, minlength=n * n_neurons) for v in (number, total, squares)]
    return np.stack(sums).reshape(3, n, n_neurons)


def _population_hist(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Valid bins of each trial per population count, ``[n, C]`` with ``C`` = max count + 1."""
    n, _, t = x.shape
    population = x.sum(axis=1, dtype=np.int64)
    valid = np.arange(t)[None, :] < lengths[:, None]
    n_values = int(population.max()) + 1
    trial = np.broadcast_to(np.arange(n)[:, None], population.shape)[valid]
    flat = np.bincount(trial * n_values + population[valid], minlength=n * n_values)
    return flat.reshape(n, n_values)


def _trial_sums(x: np.ndarray, lengths: np.ndarray) -> _TrialSums:
    return _TrialSums(
        lengths=lengths.astype(np.float64),
        spike_counts=x.sum(axis=2, dtype=np.int64).astype(np.float64),
        isi=_trial_isi_sums(x),
        population_hist=_population_hist(x, lengths).astype(np.float64),
    )


def _weighted_grams(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[B, N, N]``: sum over trials of ``weights[b, i] * x[i] @ x[i].T`` for counts ``x [n, N, T]``.

    Exact for integer weights: a chunk of trials uses float32 when every partial sum is an integer
    below 2**24 (per-trial Gram entries are at most ``T * max count**2``), float64 otherwise; chunks are
    summed in float64.
    """
    n, n_neurons, t = x.shape
    out = torch.zeros(weights.shape[0], n_neurons * n_neurons, dtype=torch.float64)
    step = max(1, (2 * _CHUNK_ELEMENTS) // (n_neurons * max(n_neurons, t)))
    for start in range(0, n, step):
        counts = x[start : start + step]
        w = weights[:, start : start + step]
        gram_bound = t * float(counts.max()) ** 2
        dtype = np.float32 if gram_bound * w.sum(axis=1).max() < 2**24 else np.float64
        block = torch.from_numpy(counts.astype(dtype))
        grams = torch.bmm(block, block.transpose(1, 2)).reshape(block.shape[0], -1)
        out += torch.from_numpy(w.astype(dtype)) @ grams
    return out.reshape(-1, n_neurons, n_neurons).numpy()


# ------------------------------------------------------------------------------ weighted statistics


def _correlation(gram: np.ndarray, total: np.ndarray, n_bins: float) -> np.ndarray:
    """Pearson correlation ``[N, N]`` from the Gram matrix, per-neuron totals and the number of bins."""
    mean = total / n_bins
    cov = gram / n_bins - np.outer(mean, mean)
    variance = np.diag(cov).copy()
    silent = variance <= 1e-10 * np.diag(gram) / n_bins  # zero up to rounding (true minimum ~1/n_bins)
    sd = np.sqrt(np.where(silent, np.nan, variance))
    corr = np.clip(cov / np.outer(sd, sd), -1.0, 1.0)
    np.fill_diagonal(corr, np.where(silent, np.nan, 1.0))
    return corr


def _summarize(sums: _TrialSums, w: np.ndarray, gram: np.ndarray, bin_width: float) -> SetStatistics:
    """Statistics of the set with trial ``i`` counted ``w[i]`` times (``gram``: its weighted Gram)."""
    n_bins = float(w @ sums.lengths)
    n_trials = float(w.sum())
    total = w @ sums.spike_counts
    mean_count = total / n_trials
    var_count = np.maximum(w @ sums.spike_counts**2 / n_trials - mean_count**2, 0.0)
    isi_count, isi_sum, isi_squares = np.einsum("i,kij->kj", w, sums.isi)
    with np.errstate(divide="ignore", invalid="ignore"):
        fano = np.where(mean_count > 0, var_count / mean_count, np.nan)
        isi_mean = isi_sum / isi_count
        isi_std = np.sqrt(np.maximum(isi_squares / isi_count - isi_mean**2, 0.0))
        isi_cv = isi_std / isi_mean
    return SetStatistics(
        bin_width=bin_width,
        n_bins=n_bins,
        mean_rate=total / (n_bins * bin_width),
        fano_factor=fano,
        isi_mean=isi_mean * bin_width,
        isi_std=isi_std * bin_width,
        isi_cv=isi_cv,
        isi_count=isi_count,
        correlation=_correlation(gram, total, n_bins),
        population_density=(w @ sums.population_hist) / n_bins,
    )


def summarize(counts: np.ndarray, lengths: np.ndarray | None = None, bin_width: float = 1.0) -> SetStatistics:
    """All statistics of one set: counts ``[n, T, N]``, lengths ``[n]`` (default ``T``), bin width (s)."""
    x, lengths = prepare_counts(counts, lengths)
    w = np.ones(x.shape[0])
    return _summarize(_trial_sums(x, lengths), w, _weighted_grams(x, w[None])[0], check_bin_width(bin_width))


def spike_times(
    counts: np.ndarray, lengths: np.ndarray | None = None, bin_width: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spike times (s, from each trial's start) under the module's in-bin convention.

    Returns (trial, neuron, time), each ``[spikes]``, ordered by trial, neuron and time.
    """
    x, _ = prepare_counts(counts, lengths)
    n_neurons = x.shape[1]
    group, time, count = _occupied_bins(x)
    count = count.astype(np.int64)
    first = np.cumsum(count) - count
    rank = np.arange(int(count.sum())) - np.repeat(first, count)
    spike_time = (np.repeat(time, count) + (rank + 0.5) / np.repeat(count, count)) * bin_width
    spike_group = np.repeat(group, count)
    return spike_group // n_neurons, spike_group % n_neurons, spike_time


# -------------------------------------------------------------------------------------- comparisons


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """Entries ``i < j`` of a square matrix ``[N, N]``, as ``[N (N - 1) / 2]``."""
    return matrix[np.triu(np.ones(matrix.shape, dtype=bool), k=1)]


def _both_finite(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean squared difference over entries finite in both (NaN if there are none)."""
    a, b = _both_finite(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over entries finite in both (NaN for fewer than 2 or constant entries)."""
    a, b = _both_finite(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def shared_bins(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad two densities over integers ``0, 1, ...`` to the same length."""
    size = max(p.size, q.size)
    return np.pad(p, (0, size - p.size)), np.pad(q, (0, size - q.size))


def kl_divergence(p_model: np.ndarray, p_data: np.ndarray, eps: float = 1e-8) -> float:
    """``KL(model || data) = sum p_model log(p_model / p_data)`` of two densities over integers.

    Both are zero-padded to shared integer bins, ``eps`` is added to every bin and each is
    renormalised to sum to 1.
    """
    p, q = shared_bins(np.asarray(p_model, dtype=np.float64), np.asarray(p_data, dtype=np.float64))
    p, q = p + eps, q + eps
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def compare_statistics(
    real: SetStatistics, generated: SetStatistics, min_isis: int = 5, eps: float = 1e-8
) -> dict[str, float]:
    """Compare two sets' statistics (everything in :data:`METRIC_LABELS` except the MMD).

    Correlation metrics use the off-diagonal upper triangle (``i < j``) finite in both sets; ISI metrics
    use neurons with at least ``min_isis`` ISIs in both sets (the others are counted in
    ``isi_neurons_excluded``); ``eps`` as in :func:`kl_divergence`.
    """
    isi_ok = (real.isi_count >= min_isis) & (generated.isi_count >= min_isis)
    corr_real, corr_generated = upper_triangle(real.correlation), upper_triangle(generated.correlation)
    density_real, density_generated = shared_bins(real.population_density, generated.population_density)
    return {
        "kl_population_count": kl_divergence(generated.population_density, real.population_density, eps),
        "rmse_correlation": rmse(corr_generated, corr_real),
        "rmse_mean_isi": rmse(generated.isi_mean[isi_ok], real.isi_mean[isi_ok]),
        "rmse_std_isi": rmse(generated.isi_std[isi_ok], real.isi_std[isi_ok]),
        "rmse_mean_rate": rmse(generated.mean_rate, real.mean_rate),
        "pearson_mean_isi": pearson_r(generated.isi_mean[isi_ok], real.isi_mean[isi_ok]),
        "pearson_std_isi": pearson_r(generated.isi_std[isi_ok], real.isi_std[isi_ok]),
        "pearson_correlation": pearson_r(corr_generated, corr_real),
        "pearson_population_density": pearson_r(density_generated, density_real),
        "isi_neurons_excluded": float(np.sum(~isi_ok)),
    }


# --------------------------------------------------------------------------------------------- MMD


def _trial_features(sums: _TrialSums, bin_width: float) -> np.ndarray:
    """Per-trial firing rates (Hz) of each neuron and of the population (their sum), ``[n, N + 1]``."""
    rates = sums.spike_counts / (sums.lengths[:, None] * bin_width)
    return np.concatenate([rates, rates.sum(axis=1, keepdims=True)], axis=1)


@dataclass(frozen=True)
class _MmdKernel:
    """Gaussian kernel matrices of (a subset of) the real and generated trials' feature vectors."""

    real_index: np.ndarray
    generated_index: np.ndarray
    real: np.ndarray
    generated: np.ndarray
    cross: np.ndarray

    def mmd2(self, w_real: np.ndarray, w_generated: np.ndarray) -> float:
        """Biased (V-statistic) squared MMD with trial weights ``[n_real]``, ``[n_generated]``."""
        a, b = w_real[self.real_index], w_generated[self.generated_index]
        a, b = a / a.sum(), b / b.sum()
        return max(float(a @ self.real @ a + b @ self.generated @ b - 2 * a @ self.cross @ b), 0.0)


def _mmd_kernel(
    features_real: np.ndarray, features_generated: np.ndarray, max_trials: int, rng: np.random.Generator
) -> _MmdKernel:
    """Kernel ``exp(-|x - y|^2 / (2 s^2))`` of features z-scored over both sets, ``s`` = median distance.

    Sets with more than ``max_trials`` trials use a seeded random subset of that many (memory is
    quadratic); the bandwidth ``s`` is the median Euclidean distance over all distinct pairs of the
    pooled (sub)sets, fixed for every bootstrap resample.
    """
    index = [np.sort(rng.choice(len(f), max_trials, replace=False)) if len(f) > max_trials
             else np.arange(len(f)) for f in (features_real, features_generated)]
    pooled = np.concatenate([features_real[index[0]], features_generated[index[1]]])
    scale = pooled.std(axis=0)
    pooled = (pooled - pooled.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    z = torch.from_numpy(pooled)
    norms = z.square().sum(dim=1)
    squared = (norms[:, None] + norms[None, :] - 2 * z @ z.T).clamp_min(0.0)
    bandwidth = float(np.sqrt(np.median(upper_triangle(squared.numpy()))))
    kernel = squared.mul(-0.5 / bandwidth**2).exp().numpy() if bandwidth > 0 else np.ones(squared.shape)
    n_real = len(index[0])
    return _MmdKernel(
        real_index=index[0], generated_index=index[1], real=kernel[:n_real, :n_real],
        generated=kernel[n_real:, n_real:], cross=kernel[:n_real, n_real:],
    )


# ----------------------------------------------------------------------------------------- compare


def _bootstrap_weights(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_bootstrap + 1, n]`` trial multiplicities: row 0 all ones, then resamples with replacement."""
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    resampled = [np.bincount(row, minlength=n) for row in draws]
    return np.stack([np.ones(n, dtype=np.int64), *resampled]).astype(np.float64)


def _aggregate(rows: list[dict[str, float]]) -> dict[str, dict[str, object]]:
    """Per metric: full-data value, bootstrap values, their mean and std (ddof 0; NaN without resamples)."""
    result: dict[str, dict[str, object]] = {}
    for name in rows[0]:
        values = np.array([row[name] for row in rows[1:]])
        result[name] = {
            "mean": float(values.mean()) if values.size else rows[0][name],
            "std": float(values.std()) if values.size else float("nan"),
            "point": rows[0][name],
            "bootstrap": values.tolist(),
        }
    return result


def compare(
    real: np.ndarray,
    generated: np.ndarray,
    bin_width: float,
    n_bootstrap: int = 5,
    seed: int = 0,
    *,
    real_lengths: np.ndarray | None = None,
    generated_lengths: np.ndarray | None = None,
    min_isis: int = 5,
    eps: float = 1e-8,
    mmd_max_trials: int = 2000,
) -> dict[str, dict[str, object]]:
    """Bootstrapped comparison of real and generated counts (``[n_real, T, N]``, ``[n_gen, T', N]``).

    Each of ``n_bootstrap`` resamples draws the trials of both sets with replacement
    (``numpy.random.default_rng(seed)``). Metrics (:data:`METRIC_LABELS`) are those of
    :func:`compare_statistics` (with ``min_isis`` and ``eps``) plus ``mmd2_trial_rates``: the biased
    (V-statistic) squared MMD between per-trial vectors of each neuron's and the population's firing
    rate (Hz), every feature z-scored over both sets, with the Gaussian kernel
    ``exp(-|x - y|^2 / (2 s^2))`` whose bandwidth ``s`` is the median Euclidean distance over all
    distinct pairs of the pooled full sets (fixed across resamples). A set with more than
    ``mmd_max_trials`` trials enters the MMD through a seeded random subset of that size.

    Returns:
        ``{metric: {"mean", "std", "point", "bootstrap"}}``: bootstrap mean and std (ddof 0), the value
        on the full sets and the per-resample values (with ``n_bootstrap=0``, mean is the full-set
        value and std NaN).

    Raises:
        ValueError: invalid counts, lengths or bin width, different neuron counts, ``n_bootstrap < 0``.
    """
    bin_width = check_bin_width(bin_width)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    x_real, lengths_real = prepare_counts(real, real_lengths)
    x_generated, lengths_generated = prepare_counts(generated, generated_lengths)
    if x_real.shape[1] != x_generated.shape[1]:
        raise ValueError(f"real data has {x_real.shape[1]} neurons, generated data {x_generated.shape[1]}")
    rng = np.random.default_rng(seed)
    weights = [_bootstrap_weights(x.shape[0], n_bootstrap, rng) for x in (x_real, x_generated)]
    sums = [_trial_sums(x_real, lengths_real), _trial_sums(x_generated, lengths_generated)]
    grams = [_weighted_grams(x, w) for x, w in zip((x_real, x_generated), weights)]
    kernel = _mmd_kernel(*(_trial_features(s, bin_width) for s in sums), mmd_max_trials, rng)
    rows = []
    for b in range(n_bootstrap + 1):
        stats = [_summarize(s, w[b], g[b], bin_width) for s, w, g in zip(sums, weights, grams)]
        row = compare_statistics(*stats, min_isis=min_isis, eps=eps)
        row["mmd2_trial_rates"] = kernel.mmd2(weights[0][b], weights[1][b])
        rows.append(row)
    return _aggregate(rows)
