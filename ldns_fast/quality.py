"""Autoencoder quality report: did the autoencoder learn more than mean rates and trial-averaged PSTHs?

Measured on held-out trials (the ``val`` split by default) against baselines estimated on the training
split, all in the file layout ``[trials, T, neurons]`` with rates in counts per bin:

- **bits per spike** (the Neural Latents Benchmark convention):
  ``(LL(rates) - LL(baseline)) / (n_spikes ln 2)`` with the Poisson log-likelihood
  ``LL = sum (s log r - r)`` over valid bins (the ``log s!`` terms cancel), against (a) each neuron's
  mean rate and (b) its trial-averaged PSTH per time bin and condition group, smoothed over time with
  the Gaussian width (0 to 16 bins) that predicts best across two halves of the training trials (an
  unsmoothed PSTH of a few sparse trials is full of zeros and a far too easy baseline). Every rate is
  clamped to :data:`RATE_FLOOR` so a zero rate under a spike costs a finite penalty. The autoencoder
  sees the spikes it is scored on (as in any reconstruction), so its figures are an upper bound of
  what its latents explain.
- **condition groups**: rows of ``conditions [n, C]`` with at most :data:`MAX_CONDITION_VALUES` distinct
  values are grouped by value; otherwise by a seeded k-means (:data:`N_CLUSTERS` clusters) of the
  training split's z-scored conditions, held-out trials joining their nearest centroid; one group
  without conditions.
- **PSTH correlation**: per group and neuron, the Pearson r over time of the trial-averaged rates and
  the trial-averaged real counts of the held-out trials (both smoothed like the PSTH baseline),
  averaged; beside it the same statistic between two random halves of the real held-out trials.
- **condition decoding**: a ridge decoder (:mod:`ldns_fast.decoding`) fitted on the real training
  trials decodes the held-out trials and Poisson draws from their reconstructed rates: mean angular
  error in degrees for unit-norm 2-d conditions (directions as ``[cos, sin]``), R^2 otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ldns_fast.data import SPLIT_CODES, SpikeData
from ldns_fast.decoding import DirectionDecoder, RidgeDecoder, circular_error_degrees, r2_score
from ldns_fast.metrics import pearson_r
from ldns_fast.models import Autoencoder
from ldns_fast.run import encode_all, spike_batches

RATE_FLOOR = 1e-4
"""Smallest rate (counts per bin) in the log-likelihoods."""
MAX_CONDITION_VALUES = 16
N_CLUSTERS = 8
DECODING_RATIO_WARNING = 2.0
"""Warn when reconstructions decode the conditions with more than this times the real trials' error ..."""
DECODING_GAP_WARNING = 0.1
"""... and the difference exceeds this share of the distance from the real error to chance."""
_CHANCE_PERMUTATIONS = 20
PSTH_SMOOTHING_BINS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Gaussian widths (bins) of the PSTH baseline, chosen by cross-validation on the training split."""


# ------------------------------------------------------------------------------------ log-likelihood


def valid_bins(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Float ``[n, n_bins]``: 1 on the bins before each trial's length, 0 on padding."""
    return (np.arange(n_bins)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


def poisson_log_likelihood(rates: np.ndarray, counts: np.ndarray, valid: np.ndarray,
                           floor: float = RATE_FLOOR) -> float:
    """``sum (s log r - r)`` over the valid bins (``valid [n, T]``) of ``counts`` and ``rates [n, T, N]``
    (clamped to ``floor``), without the ``log s!`` terms."""
    r = np.maximum(rates, floor)
    return float(np.sum(valid[..., None] * (counts * np.log(r) - r)))


def bits_per_spike(rates: np.ndarray, baseline: np.ndarray, counts: np.ndarray, valid: np.ndarray,
                   floor: float = RATE_FLOOR) -> float:
    """Poisson log-likelihood gain of ``rates`` over ``baseline`` (both broadcastable to ``counts [n, T, N]``)
    in bits per spike of ``counts`` on the valid bins ``valid [n, T]`` (NaN without spikes)."""
    n_spikes = float(np.sum(valid[..., None] * counts))
    if n_spikes == 0:
        return float("nan")
    gain = (poisson_log_likelihood(np.broadcast_to(rates, counts.shape), counts, valid, floor)
            - poisson_log_likelihood(np.broadcast_to(baseline, counts.shape), counts, valid, floor))
    return gain / (n_spikes * math.log(2))


# ------------------------------------------------------------------------------------ condition groups


@dataclass(frozen=True)
class ConditionGroups:
    """Group labels of the training ``[n_train]`` and held-out ``[n_held]`` trials; ``method`` is
    ``"none"``, ``"values"`` or ``"kmeans"``."""

    train: np.ndarray
    held_out: np.ndarray
    n_groups: int
    method: str


def nearest_centroid(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index ``[n]`` of the nearest of ``centroids [k, C]`` to each of ``points [n, C]`` (Euclidean)."""
    return np.square(points[:, None, :] - centroids[None]).sum(-1).argmin(1)


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Centroids ``[min(k, distinct points), C]`` of ``points [n, C]``: k-means++ seeding from
    ``default_rng(seed)``, then Lloyd iterations until the assignment is stable."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty [n, C] array, got shape {points.shape}")
    k = min(k, len(np.unique(points, axis=0)))
    rng = np.random.default_rng(seed)
    centroids = points[[rng.integers(len(points))]]
    while len(centroids) < k:
        d2 = np.square(points[:, None, :] - centroids[None]).sum(-1).min(1)
        centroids = np.vstack([centroids, points[rng.choice(len(points), p=d2 / d2.sum())]])
    labels = nearest_centroid(points, centroids)
    for _ in range(iterations):
        centroids = np.stack([points[labels == j].mean(0) if (labels == j).any() else centroids[j]
                              for j in range(k)])
        updated = nearest_centroid(points, centroids)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return centroids


def condition_groups(train: SpikeData, held_out: SpikeData, seed: int = 0) -> ConditionGroups:
    """Group the trials of ``train`` and ``held_out`` by their conditions (module docstring)."""
    if train.conditions is None or held_out.conditions is None:
        return ConditionGroups(np.zeros(train.n_trials, np.int64), np.zeros(held_out.n_trials, np.int64), 1, "none")
    fit, other = train.conditions, held_out.conditions
    values, inverse = np.unique(np.concatenate([fit, other]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(values) <= MAX_CONDITION_VALUES:
        return ConditionGroups(inverse[: len(fit)], inverse[len(fit):], len(values), "values")
    mean, std = fit.mean(0), fit.std(0)
    std = np.where(std > 0, std, 1.0)
    centroids = kmeans((fit - mean) / std, N_CLUSTERS, seed)
    return ConditionGroups(nearest_centroid((fit - mean) / std, centroids),
                           nearest_centroid((other - mean) / std, centroids), len(centroids), "kmeans")


# ------------------------------------------------------------------------------------ PSTHs


def group_sums(x: np.ndarray, lengths: np.ndarray, labels: np.ndarray, n_groups: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums over trials of ``x [n, T, N]`` on valid bins ``[G, T, N]`` and the number of trials
    valid at each bin ``[G, T]`` (float64; one group at a time, so integer counts are never copied whole)."""
    valid = valid_bins(lengths, x.shape[1])
    sums = np.stack([np.einsum("ntk,nt->tk", x[labels == g], valid[labels == g]) for g in range(n_groups)])
    support = np.stack([valid[labels == g].sum(0) for g in range(n_groups)])
    return sums, support


def gaussian_smoother(n_bins: int, sigma: float) -> np.ndarray:
    """``[T, T]`` Gaussian weights of width ``sigma`` bins (the identity for ``sigma = 0``)."""
    if sigma == 0:
        return np.eye(n_bins)
    offsets = np.arange(n_bins)[:, None] - np.arange(n_bins)[None, :]
    return np.exp(-0.5 * np.square(offsets / sigma))


def smoothed_average(sums: np.ndarray, support: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Trial averages ``[G, T, N]`` from :func:`group_sums`, smoothed over time with a Gaussian kernel of
    ``sigma`` bins: kernel-weighted sums over kernel-weighted trial counts (so trials of any length weigh
    in right), and those weights ``[G, T]`` (0 where no trial is within reach)."""
    kernel = gaussian_smoother(sums.shape[1], sigma)
    weight = support @ kernel.T
    return np.einsum("ts,gsk->gtk", kernel, sums) / np.maximum(weight, 1e-300)[..., None], weight


def _mean_rate(sums: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Each neuron's mean count per valid bin ``[N]`` over all groups of :func:`group_sums`."""
    return sums.sum((0, 1)) / max(support.sum(), 1.0)


def trial_average(x: np.ndarray, lengths: np.ndarray, labels: np.ndarray, n_groups: int, sigma: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-group :func:`smoothed_average` of ``x [n, T, N]``: ``[G, T, N]`` (0 on bins where no trial of
    the group is valid) and the number of trials valid at each bin ``[G, T]``."""
    sums, support = group_sums(x, lengths, labels, n_groups)
    return np.where(support[..., None] > 0, smoothed_average(sums, support, sigma)[0], 0.0), support


def psth_table(sums: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """PSTH rates ``[G, T, N]``: the :func:`smoothed_average` of :func:`group_sums`. Where a group has no
    trial within reach of a bin, the PSTH of all groups stands in, and where no trial is, the neuron's
    mean rate."""
    smoothed, weight = smoothed_average(sums, support, sigma)
    pooled, pooled_weight = smoothed_average(sums.sum(0, keepdims=True), support.sum(0, keepdims=True), sigma)
    fallback = np.where(pooled_weight[..., None] > 0, pooled, _mean_rate(sums, support))
    return np.where(weight[..., None] > 0, smoothed, fallback)


def grouped_log_likelihood(table: np.ndarray, sums: np.ndarray, support: np.ndarray,
                           floor: float = RATE_FLOOR) -> float:
    """:func:`poisson_log_likelihood` of trials whose rates are their group's row of ``table [G, T, N]``,
    from the trials' :func:`group_sums` alone: ``sum (S log r - n_valid r)``."""
    r = np.maximum(table, floor)
    return float(np.sum(sums * np.log(r)) - np.sum(support[..., None] * r))


def select_psth_smoothing(train: SpikeData, labels: np.ndarray, n_groups: int, rng: np.random.Generator,
                          candidates: tuple[float, ...] = PSTH_SMOOTHING_BINS) -> float:
    """The Gaussian width (bins) of the PSTH that predicts best across two random halves of the training
    trials (summed held-out Poisson log-likelihood of both directions; the smallest width on ties)."""
    if train.n_trials < 2:
        return candidates[0]
    fold = rng.permutation(train.n_trials) % 2
    halves = [group_sums(train.spikes[fold == f], train.lengths[fold == f], labels[fold == f], n_groups)
              for f in (0, 1)]
    scores = [sum(grouped_log_likelihood(psth_table(*halves[f], sigma), *halves[1 - f]) for f in (0, 1))
              for sigma in candidates]
    return candidates[int(np.argmax(scores))]


def mean_rates(data: SpikeData) -> np.ndarray:
    """Each neuron's mean count per valid bin ``[N]``."""
    return _mean_rate(*group_sums(data.spikes, data.lengths, np.zeros(data.n_trials, np.int64), 1))


def _varies(x: np.ndarray) -> bool:
    """Whether ``x`` has at least 2 entries and is not constant up to rounding."""
    return x.size >= 2 and float(np.ptp(x)) > 1e-9 * float(np.abs(x).max())


def _mean_psth_correlation(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean over groups and neurons of the Pearson r over time of two ``trial_average`` results, on the
    bins both support (constant series skipped; NaN when none is left)."""
    (mean_a, support_a), (mean_b, support_b) = a, b
    values = []
    for g in range(len(mean_a)):
        bins = (support_a[g] > 0) & (support_b[g] > 0)
        values += [pearson_r(mean_a[g, bins, i], mean_b[g, bins, i]) for i in range(mean_a.shape[-1])
                   if _varies(mean_a[g, bins, i]) and _varies(mean_b[g, bins, i])]
    return float(np.mean(values)) if values else float("nan")


def psth_correlation(rates: np.ndarray, counts: np.ndarray, lengths: np.ndarray, labels: np.ndarray,
                     n_groups: int, sigma: float = 0.0) -> float:
    """Mean PSTH correlation of ``rates`` and ``counts`` (``[n, T, N]``) per group and neuron, both
    trial averages smoothed with ``sigma`` bins."""
    return _mean_psth_correlation(trial_average(rates, lengths, labels, n_groups, sigma),
                                  trial_average(counts, lengths, labels, n_groups, sigma))


def split_half_psth_correlation(counts: np.ndarray, lengths: np.ndarray, labels: np.ndarray, n_groups: int,
                                rng: np.random.Generator, sigma: float = 0.0) -> float:
    """Mean PSTH correlation between two random halves of each group's trials (``counts [n, T, N]``)."""
    half = np.zeros(len(counts), dtype=bool)
    for g in range(n_groups):
        members = rng.permutation(np.flatnonzero(labels == g))
        half[members[: len(members) // 2]] = True
    return _mean_psth_correlation(trial_average(counts[half], lengths[half], labels[half], n_groups, sigma),
                                  trial_average(counts[~half], lengths[~half], labels[~half], n_groups, sigma))


# ------------------------------------------------------------------------------------ decoding


def is_direction(conditions: np.ndarray) -> bool:
    """Whether ``conditions [n, C]`` are 2-d unit vectors (directions as ``[cos, sin]``)."""
    return conditions.shape[1] == 2 and bool(np.allclose(np.linalg.norm(conditions, axis=1), 1.0, atol=1e-4))


def _angles(conditions: np.ndarray) -> np.ndarray:
    """Directions (radians) ``[n]`` of ``[cos, sin]`` conditions ``[n, 2]``."""
    return np.arctan2(conditions[:, 1], conditions[:, 0])


def _mean_angular_error(predicted: np.ndarray, target: np.ndarray) -> float:
    return float(circular_error_degrees(predicted, target).mean())


def condition_decoding(train: SpikeData, held_out: SpikeData, reconstructed: np.ndarray,
                       rng: np.random.Generator) -> dict[str, object] | None:
    """Decode the conditions of the real held-out trials and of ``reconstructed`` counts ``[n_held, T, N]``
    with a ridge decoder fitted on the real training trials.

    Returns ``{"metric", "lower_is_better", "real", "reconstructed", "chance"}`` (chance: the real
    trials' predictions scored against permuted conditions, averaged), or None without conditions.
    """
    if train.conditions is None or held_out.conditions is None or train.n_trials < 2:
        return None
    if is_direction(np.concatenate([train.conditions, held_out.conditions])):
        decoder = DirectionDecoder().fit(train.spikes, _angles(train.conditions))
        target, score, metric, lower_is_better = (_angles(held_out.conditions), _mean_angular_error,
                                                  "mean angular error (deg)", True)
    else:
        decoder = RidgeDecoder().fit(train.spikes, train.conditions)
        target, score, metric, lower_is_better = held_out.conditions, r2_score, "R^2", False
    real = decoder.predict(held_out.spikes)
    chance = np.mean([score(real, target[rng.permutation(len(target))]) for _ in range(_CHANCE_PERMUTATIONS)])
    return {"metric": metric, "lower_is_better": lower_is_better, "real": score(real, target),
            "reconstructed": score(decoder.predict(reconstructed), target), "chance": float(chance)}


def _decoding_error(decoding: dict[str, object], key: str) -> float:
    """An error where lower is better: the angular error, or the unexplained variance ``1 - R^2``."""
    value = float(decoding[key])
    return value if decoding["lower_is_better"] else 1.0 - value


# ------------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class Baselines:
    """Baseline rates of the held-out trials from the training split: ``mean [N]``, ``psth [n_held, T, N]``
    (Gaussian width ``sigma`` bins), with the trials' condition ``groups``."""

    mean: np.ndarray
    psth: np.ndarray
    groups: ConditionGroups
    sigma: float


def _splits(data: SpikeData, split: str) -> tuple[SpikeData, SpikeData]:
    """The training trials and the ``split`` trials; ValueError when either is empty."""
    train, held = data.split("train"), data.split(split)
    if train.n_trials == 0:
        raise ValueError("the dataset has no training trials (split code 0) to estimate the baselines on")
    if held.n_trials == 0:
        raise ValueError(f"the {split!r} split holds no trials")
    return train, held


def baselines(data: SpikeData, split: str = "val", seed: int = 0) -> Baselines:
    """Mean-rate and PSTH baselines (module docstring) of the ``split`` trials, estimated on the training
    split; ``seed`` drives the k-means and the halves that choose the PSTH smoothing."""
    train, held = _splits(data, split)
    groups = condition_groups(train, held, seed)
    sigma = select_psth_smoothing(train, groups.train, groups.n_groups, np.random.default_rng([seed, 0]))
    table = psth_table(*group_sums(train.spikes, train.lengths, groups.train, groups.n_groups), sigma)
    return Baselines(mean_rates(train), table[groups.held_out], groups, sigma)


def rates_report(data: SpikeData, rates: np.ndarray, split: str = "val", seed: int = 0) -> dict[str, object]:
    """The quality report of per-bin ``rates [n_held, T, N]`` for the trials of ``data.split(split)``,
    against :func:`baselines` (keys: see :func:`autoencoder_report`).

    Raises:
        ValueError: no training trials, no trials in ``split``, or rates of the wrong shape, negative
            or not finite.
    """
    train, held = _splits(data, split)
    rates = np.asarray(rates, dtype=np.float64)
    if rates.shape != held.spikes.shape:
        raise ValueError(f"rates must have shape [n, T, N] = {held.spikes.shape} (the {split!r} trials), "
                         f"got {rates.shape}")
    if not np.isfinite(rates).all() or (rates < 0).any():
        raise ValueError("rates must be finite and non-negative")
    draws, halves, permutations = (np.random.default_rng([seed, stream]) for stream in (1, 2, 3))
    valid = valid_bins(held.lengths, held.n_bins)
    counts = held.spikes.astype(np.float64) * valid[..., None]
    rates = rates * valid[..., None]
    base = baselines(data, split, seed)
    labels, n_groups = base.groups.held_out, base.groups.n_groups
    report: dict[str, object] = {
        "split": split, "n_trials": held.n_trials, "n_spikes": int(counts.sum()),
        "bits_per_spike_vs_mean": bits_per_spike(rates, base.mean, counts, valid),
        "bits_per_spike_vs_psth": bits_per_spike(rates, base.psth, counts, valid),
        "bits_per_spike_psth_vs_mean": bits_per_spike(base.psth, base.mean, counts, valid),
        "condition_groups": n_groups, "grouping": base.groups.method, "psth_smoothing_bins": base.sigma,
        "psth_r": psth_correlation(rates, counts, held.lengths, labels, n_groups, base.sigma),
        "psth_r_split_half": split_half_psth_correlation(counts, held.lengths, labels, n_groups, halves,
                                                         base.sigma),
        "decoding": condition_decoding(train, held, draws.poisson(rates), permutations),
    }
    report["warnings"] = report_warnings(report)
    return report


def report_warnings(report: dict[str, object]) -> list[str]:
    """What a user must hear about a report: no spikes, no gain over the PSTH, condition information lost."""
    warnings = []
    if report["n_spikes"] == 0:
        warnings.append(f"the {report['split']!r} trials hold no spikes: bits per spike are undefined")
    if report["bits_per_spike_vs_psth"] <= 0:
        warnings.append(
            f"the autoencoder is no better than the trial-averaged PSTH (bits/spike vs PSTH = "
            f"{report['bits_per_spike_vs_psth']:.3f} <= 0): it learned little beyond mean rates; train longer "
            "(more optimisation steps), or check the model size and the coordinated-dropout and latent penalties")
    decoding = report["decoding"]
    if decoding is not None:
        real, recon = _decoding_error(decoding, "real"), _decoding_error(decoding, "reconstructed")
        chance = _decoding_error(decoding, "chance")
        # Both a ratio and a share of the real-to-chance range: a few degrees' difference between two small
        # errors is no loss of condition information.
        if real < chance and recon > DECODING_RATIO_WARNING * real and recon - real > DECODING_GAP_WARNING * (chance - real):
            warnings.append(
                f"reconstructions decode the conditions much worse than the real trials ({decoding['metric']}: "
                f"{decoding['reconstructed']:.3g} vs {decoding['real']:.3g}, chance {decoding['chance']:.3g}): "
                "the autoencoder loses condition information")
    return warnings


def _report_split(data: SpikeData, split: str) -> str:
    """``split`` if it holds trials, else the first non-empty of val, test, train."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    for name in dict.fromkeys([split, "val", "test", "train"]):
        if (data.split_codes == SPLIT_CODES[name]).any():
            return name
    raise ValueError("the dataset holds no trials")


def reconstructed_rates(model: Autoencoder, data: SpikeData, split: str, device: torch.device | str,
                        batch_size: int = 256) -> np.ndarray:
    """Autoencoder rates (counts per bin) of the ``split`` trials, file layout ``[n, T, N]``, zero on padding."""
    if data.n_neurons != model.config.n_neurons:
        raise ValueError(f"the data have {data.n_neurons} neurons, the autoencoder expects {model.config.n_neurons}")
    batch = spike_batches(data, split)
    if batch is None:
        raise ValueError(f"the {split!r} split holds no trials")
    device = torch.device(device)
    latents = encode_all(model, batch, batch_size, device)
    with torch.no_grad():
        rates = torch.cat([model.decode(z.to(device)).cpu() for z in latents.split(batch_size)])
    return (rates * batch["mask"][:, None, :]).transpose(1, 2).double().numpy()


def autoencoder_report(model: Autoencoder, data: SpikeData, device: torch.device | str = "cpu",
                       split: str = "val", batch_size: int = 256, seed: int = 0) -> dict[str, object]:
    """Quality report of ``model`` on the held-out ``split`` of ``data`` (falling back to test, then train,
    when it is empty); baselines from the training split.

    Keys: ``split``, ``n_trials``, ``n_spikes``, ``bits_per_spike_vs_mean``, ``bits_per_spike_vs_psth``,
    ``bits_per_spike_psth_vs_mean`` (how much the PSTH baseline itself explains), ``condition_groups``,
    ``grouping``, ``psth_smoothing_bins``, ``psth_r``, ``psth_r_split_half``, ``decoding`` (None without
    conditions) and ``warnings`` (list of str).
    """
    used = _report_split(data, split)
    report = rates_report(data, reconstructed_rates(model, data, used, device, batch_size), used, seed)
    notes = [] if used == split else [f"the {split!r} split holds no trials; the report uses the {used!r} split"]
    if used == "train":
        notes.append("no held-out trials: the figures are measured on the trials the autoencoder and the "
                     "baselines were fitted on")
    report["warnings"] = notes + report["warnings"]
    return report


def _number(value: object, digits: int) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` for None and NaN (a report read back from JSON)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_report(report: dict[str, object]) -> str:
    """A short table of an :func:`autoencoder_report` for the terminal, warnings last."""
    groups = {"none": "no conditions", "values": "condition groups by value", "kmeans": "k-means condition groups"}
    rows = [
        ("bits/spike vs mean rates", _number(report["bits_per_spike_vs_mean"], 4), ""),
        (f"bits/spike vs PSTH ({_number(report['psth_smoothing_bins'], 0)}-bin smoothing)",
         _number(report["bits_per_spike_vs_psth"], 4), "> 0 expected"),
        ("PSTH baseline vs mean rates", _number(report["bits_per_spike_psth_vs_mean"], 4), ""),
        ("PSTH r, reconstructed vs real", _number(report["psth_r"], 3),
         f"real split-half {_number(report['psth_r_split_half'], 3)}"),
    ]
    decoding = report["decoding"]
    if decoding is not None:
        digits = 1 if decoding["lower_is_better"] else 3  # degrees or R^2
        rows.append((f"decoding, {decoding['metric']}", _number(decoding["reconstructed"], digits),
                     f"real {_number(decoding['real'], digits)}, chance {_number(decoding['chance'], digits)}"))
    width = max(len(row[0]) for row in rows)
    lines = [f"autoencoder quality: {report['split']} split, {report['n_trials']} trials, {report['n_spikes']} "
             f"spikes, {report['condition_groups']} {groups[report['grouping']]}"]
    lines += [f"  {name:<{width}}  {value:>8}  {reference}".rstrip() for name, value, reference in rows]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)
