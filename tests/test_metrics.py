"""Tests of ldns_fast.metrics, plots and the evaluate CLI against independent computations."""
from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

from ldns_fast import metrics
from ldns_fast.data import write_dataset
from ldns_fast.evaluate import main

BIN = 0.01


def _poisson(n: int, t: int, n_neurons: int, rate: float | np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(rate, size=(n, t, n_neurons)).astype(np.int64)


def _loop_spike_times(counts: np.ndarray, lengths: np.ndarray, bin_width: float) -> list[list[np.ndarray]]:
    """Spike times ``[trial][neuron]`` by explicit loops: k spikes in bin t at (t + (j + 0.5) / k) * width."""
    n, _, n_neurons = counts.shape
    trains = [[[] for _ in range(n_neurons)] for _ in range(n)]
    for i in range(n):
        for t in range(lengths[i]):
            for j in range(n_neurons):
                k = int(counts[i, t, j])
                trains[i][j].extend((t + (m + 0.5) / k) * bin_width for m in range(k))
    return [[np.array(times) for times in trial] for trial in trains]


def _with_garbage(counts: np.ndarray, lengths: np.ndarray, seed: int) -> np.ndarray:
    """Float copy with random junk (large counts, negatives, NaN) in the padding."""
    junk = np.random.default_rng(seed).integers(-5, 50, size=counts.shape).astype(np.float64)
    junk[..., 0] = np.nan
    padding = np.arange(counts.shape[1])[None, :, None] >= lengths[:, None, None]
    return np.where(padding, junk, counts)


# ----------------------------------------------------------------------------------------- statistics


def test_hand_built_isis_and_spike_times():
    counts = np.zeros((3, 10, 2), dtype=np.int64)
    counts[0, [1, 4, 5], 0] = [1, 2, 1]  # times 1.5 | 4.25 4.75 | 5.5 bins
    counts[0, 9, 0] = 1  # 9.5; the next trial's first spike must not form an ISI with it
    counts[1, 0, 0] = 3  # times 1/6, 1/2, 5/6 bins
    counts[2, 2, 0] = 1  # a lone spike: no ISI
    lengths = np.array([10, 10, 3])
    expected_bins = np.array([2.75, 0.5, 0.75, 4.0, 1 / 3, 1 / 3])
    stats = metrics.summarize(counts, lengths, BIN)
    assert stats.isi_count.tolist() == [6, 0]
    np.testing.assert_allclose(stats.isi_mean[0], expected_bins.mean() * BIN, rtol=1e-12)
    np.testing.assert_allclose(stats.isi_std[0], expected_bins.std() * BIN, rtol=1e-12)
    np.testing.assert_allclose(stats.isi_cv[0], expected_bins.std() / expected_bins.mean(), rtol=1e-12)
    assert np.isnan(stats.isi_mean[1]) and np.isnan(stats.fano_factor[1])

    trial, neuron, times = metrics.spike_times(counts, lengths, BIN)
    assert trial.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2] and not neuron.any()
    np.testing.assert_allclose(times / BIN, [1.5, 4.25, 4.75, 5.5, 9.5, 1 / 6, 0.5, 5 / 6, 2.5], rtol=1e-12)


def test_rates_fano_correlation_population_match_direct_formulas():
    counts = _poisson(30, 25, 6, np.linspace(0.1, 1.5, 6), seed=1)
    lengths = np.random.default_rng(2).integers(5, 26, size=30)
    counts[np.arange(25)[None, :] >= lengths[:, None]] = 0
    valid = np.concatenate([counts[i, : lengths[i]] for i in range(30)])  # [valid bins, N]
    stats = metrics.summarize(counts, lengths, BIN)

    np.testing.assert_allclose(stats.mean_rate, valid.sum(0) / (lengths.sum() * BIN), rtol=1e-12)
    per_trial = counts.sum(axis=1)
    np.testing.assert_allclose(stats.fano_factor, per_trial.var(0) / per_trial.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.correlation, np.corrcoef(valid.T), atol=1e-12)
    population = valid.sum(axis=1)
    density = np.bincount(population) / population.size
    np.testing.assert_allclose(stats.population_density, density, atol=1e-15)
    assert stats.n_bins == lengths.sum()


def test_large_counts_use_exact_float64_gram():
    counts = _poisson(12, 40, 4, 2000.0, seed=3)  # per-trial Gram entries ~ 1.6e8 > 2**24
    stats = metrics.summarize(counts, None, BIN)
    np.testing.assert_allclose(stats.correlation, np.corrcoef(counts.reshape(-1, 4).T), atol=1e-10)


def test_padding_is_ignored():
    counts = _poisson(20, 30, 5, 0.4, seed=4)
    lengths = np.random.default_rng(5).integers(1, 31, size=20)
    clean = np.where(np.arange(30)[None, :, None] < lengths[:, None, None], counts, 0)
    dirty = _with_garbage(clean, lengths, seed=6)
    a, b = metrics.summarize(clean, lengths, BIN), metrics.summarize(dirty, lengths, BIN)
    for field in ("mean_rate", "fano_factor", "isi_mean", "isi_std", "isi_count", "correlation",
                  "population_density"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    compared = metrics.compare(dirty, clean, BIN, n_bootstrap=0, real_lengths=lengths,
                               generated_lengths=lengths)
    assert compared["kl_population_count"]["point"] == 0.0
    assert compared["rmse_correlation"]["point"] == 0.0


def test_invalid_inputs_raise():
    counts = _poisson(4, 10, 3, 0.5, seed=7)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.summarize(-counts - 1)
    with pytest.raises(ValueError, match="whole numbers"):
        metrics.summarize(counts + 0.5)
    with pytest.raises(ValueError, match="lengths"):
        metrics.summarize(counts, np.array([1, 2, 3, 11]))
    with pytest.raises(ValueError, match="neurons"):
        metrics.compare(counts, counts[..., :2], BIN)
    with pytest.raises(ValueError, match="bin_width"):
        metrics.compare(counts, counts, 0.0)


# ---------------------------------------------------------------------------------------- comparisons


def test_identical_sets_score_zero_and_different_sets_do_not():
    real = _poisson(60, 30, 8, np.linspace(0.05, 0.6, 8), seed=8)
    same = metrics.compare(real, real.copy(), BIN, n_bootstrap=0)
    exactly_zero = ("kl_population_count", "rmse_correlation", "rmse_mean_isi", "rmse_std_isi", "rmse_mean_rate")
    for name in exactly_zero:
        assert same[name]["point"] == 0.0, name
    assert same["mmd2_trial_rates"]["point"] < 1e-12
    assert same["pearson_correlation"]["point"] == pytest.approx(1.0)
    assert same["pearson_population_density"]["point"] == pytest.approx(1.0)
    subsampled = metrics.compare(real, real.copy(), BIN, n_bootstrap=1, mmd_max_trials=20)
    assert 0 < subsampled["mmd2_trial_rates"]["point"] < 1  # different random 20-trial subsets

    shifted = metrics.compare(real, _poisson(60, 30, 8, np.linspace(0.05, 0.6, 8) * 1.5, seed=9), BIN,
                              n_bootstrap=0)
    twin = metrics.compare(real, _poisson(60, 30, 8, np.linspace(0.05, 0.6, 8), seed=10), BIN, n_bootstrap=0)
    assert shifted["kl_population_count"]["point"] > 5 * twin["kl_population_count"]["point"] > 0
    assert shifted["mmd2_trial_rates"]["point"] > 3 * twin["mmd2_trial_rates"]["point"] > 0
    assert shifted["rmse_mean_rate"]["point"] > twin["rmse_mean_rate"]["point"] > 0


def test_kl_rmse_pearson_helpers():
    p = np.array([0.5, 0.3, 0.2])
    assert metrics.kl_divergence(p, p) == 0.0
    q = np.array([0.2, 0.3, 0.3, 0.2])  # p is padded with a zero bin
    model, data = np.append(p, 0.0) + 1e-8, q + 1e-8
    model, data = model / model.sum(), data / data.sum()
    assert metrics.kl_divergence(p, q) == pytest.approx(np.sum(model * np.log(model / data)), rel=1e-12)
    assert metrics.rmse([1.0, np.nan, 3.0], [2.0, 5.0, 3.0]) == pytest.approx(np.sqrt(0.5))
    a, b = np.random.default_rng(11).normal(size=(2, 50))
    assert metrics.pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    np.testing.assert_array_equal(metrics.upper_triangle(np.arange(9).reshape(3, 3)), [1, 2, 5])


def test_isi_exclusion_is_reported():
    real = _poisson(40, 30, 5, 0.5, seed=12)
    generated = _poisson(40, 30, 5, 0.5, seed=13)
    generated[..., 2] = 0  # silent neuron: no ISIs, excluded
    generated[..., 3] = 0
    generated[:2, :2, 3] = 1  # 2 ISIs only: excluded with min_isis=5
    result = metrics.compare(real, generated, BIN, n_bootstrap=0, min_isis=5)
    assert result["isi_neurons_excluded"]["point"] == 2
    assert np.isfinite(result["rmse_mean_isi"]["point"])


def test_bootstrap_is_seeded_and_matches_resampled_recomputation():
    real, generated = _poisson(25, 20, 6, 0.6, seed=14), _poisson(30, 20, 6, 0.5, seed=15)
    first = metrics.compare(real, generated, BIN, n_bootstrap=3, seed=4)
    assert first == metrics.compare(real, generated, BIN, n_bootstrap=3, seed=4)
    other = metrics.compare(real, generated, BIN, n_bootstrap=3, seed=5)
    assert first["kl_population_count"]["bootstrap"] != other["kl_population_count"]["bootstrap"]
    # the resamples are the seeded generator's draws: real trials, then generated trials
    rng = np.random.default_rng(4)
    draws_real, draws_generated = rng.integers(0, 25, size=(3, 25)), rng.integers(0, 30, size=(3, 30))
    for b in range(3):
        direct = metrics.compare_statistics(metrics.summarize(real[draws_real[b]], None, BIN),
                                            metrics.summarize(generated[draws_generated[b]], None, BIN))
        for name, value in direct.items():
            assert first[name]["bootstrap"][b] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    values = np.array(first["rmse_correlation"]["bootstrap"])
    assert first["rmse_correlation"]["mean"] == pytest.approx(values.mean())
    assert first["rmse_correlation"]["std"] == pytest.approx(values.std())


def test_compare_speed_smaller_size():
    """A regression guard at a quarter of the 2000 x 140 x 182 size benchmarked in
    ``benchmarks/test_metrics_bench.py`` (results: ``benchmarks/results/metrics_cpu.md``)."""
    real, generated = _poisson(500, 140, 182, 0.1, seed=16), _poisson(500, 140, 182, 0.1, seed=17)
    start = time.perf_counter()
    result = metrics.compare(real, generated, BIN, n_bootstrap=5, seed=0)
    assert time.perf_counter() - start < 6.0
    assert len(result["kl_population_count"]["bootstrap"]) == 5


# ------------------------------------------------------------------------------------------- elephant


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # quantities deprecations inside elephant
def test_agrees_with_elephant():
    pytest.importorskip("elephant", reason="elephant not installed (pip install elephant)")
    import neo
    import quantities as pq
    from elephant.conversion import BinnedSpikeTrain
    from elephant.spike_train_correlation import correlation_coefficient
    from elephant.statistics import cv, fanofactor, isi

    n, t, n_neurons = 12, 40, 5
    counts = _poisson(n, t, n_neurons, np.linspace(0.2, 1.2, n_neurons), seed=18)
    lengths = np.full(n, t)
    times = _loop_spike_times(counts, lengths, BIN)
    stats = metrics.summarize(counts, lengths, BIN)
    trains = [[neo.SpikeTrain(times[i][j] * pq.s, t_start=0 * pq.s, t_stop=t * BIN * pq.s)
               for j in range(n_neurons)] for i in range(n)]

    _, neuron, flat_times = metrics.spike_times(counts, lengths, BIN)
    looped = np.concatenate([np.concatenate(trial) for trial in times])
    np.testing.assert_allclose(flat_times, looped, rtol=1e-12)
    assert np.bincount(neuron).tolist() == counts.sum(axis=(0, 1)).tolist()
    for j in range(n_neurons):
        pooled = np.concatenate([isi(trains[i][j]).magnitude for i in range(n)])
        np.testing.assert_allclose(stats.isi_mean[j], pooled.mean(), rtol=1e-10)
        np.testing.assert_allclose(stats.isi_std[j], pooled.std(), rtol=1e-8)
        np.testing.assert_allclose(stats.isi_cv[j], cv(pooled), rtol=1e-8)
        fano = fanofactor([trains[i][j] for i in range(n)])
        np.testing.assert_allclose(stats.fano_factor[j], fano, rtol=1e-12)

    concatenated = [neo.SpikeTrain(np.concatenate([times[i][j] + i * t * BIN for i in range(n)]) * pq.s,
                                   t_start=0 * pq.s, t_stop=n * t * BIN * pq.s) for j in range(n_neurons)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        binned = BinnedSpikeTrain(concatenated, bin_size=BIN * pq.s)
    np.testing.assert_array_equal(binned.to_array(), counts.reshape(-1, n_neurons).T)
    np.testing.assert_allclose(stats.correlation, correlation_coefficient(binned), atol=1e-12)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_metrics_and_figures(tmp_path, capsys):
    rng = np.random.default_rng(19)
    real_counts, generated_counts = _poisson(40, 20, 6, 0.4, seed=20), _poisson(15, 20, 6, 0.4, seed=21)
    lengths = rng.integers(10, 21, size=40)
    real_counts[np.arange(20)[None, :] >= lengths[:, None]] = 0
    real = write_dataset(tmp_path / "real.h5", real_counts.astype(np.uint8), bin_width=BIN, lengths=lengths,
                         latents=rng.normal(size=(40, 20, 3)).astype(np.float32))
    generated = write_dataset(tmp_path / "generated.h5", generated_counts.astype(np.uint8), bin_width=BIN)
    out = tmp_path / "eval"
    assert main(["--real", str(real), "--generated", str(generated), "--split", "all", "--out", str(out),
                 "--bootstrap", "2"]) == 0
    printed = capsys.readouterr().out

    saved = json.loads((out / "metrics.json").read_text())
    kl = saved["metrics"]["kl_population_count"]
    line = next(row for row in printed.splitlines() if row.startswith(metrics.METRIC_LABELS["kl_population_count"]))
    assert line.split()[-4:] == [f"{kl['point']:.4g}", f"{kl['mean']:.4g}", "±", f"{kl['std']:.2g}"]
    assert set(saved["metrics"]) == set(metrics.METRIC_LABELS)
    assert set(saved["metrics"]["rmse_mean_isi"]) == {"mean", "std", "point", "bootstrap"}
    assert saved["real"]["n_trials"] == 40 and saved["generated"]["n_trials"] == 15
    names = {"rasters.png", "statistics.png", "population_counts.png", "correlations.png", "latents.png"}
    assert {p.name for p in out.glob("*.png")} == names
    assert all((out / name).stat().st_size > 1000 for name in names)


def test_cli_rejects_mismatched_files(tmp_path, capsys):
    counts = _poisson(10, 20, 6, 0.4, seed=22).astype(np.uint8)
    real = write_dataset(tmp_path / "real.h5", counts, bin_width=BIN)
    fewer = write_dataset(tmp_path / "fewer.h5", counts[..., :4], bin_width=BIN)
    coarser = write_dataset(tmp_path / "coarser.h5", counts, bin_width=2 * BIN)
    for other, message in ((fewer, "neuron counts differ"), (coarser, "bin widths differ")):
        with pytest.raises(SystemExit):
            main(["--real", str(real), "--generated", str(other), "--split", "all", "--no-plots"])
        assert message in capsys.readouterr().err
