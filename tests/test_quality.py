"""The autoencoder quality report: bits per spike, PSTH baselines, condition groups, decoding, evaluate CLI."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ldns_fast.data import SpikeData, random_split, write_dataset
from ldns_fast.models import Autoencoder, AutoencoderConfig
from ldns_fast.quality import (
    RATE_FLOOR, autoencoder_report, baselines, bits_per_spike, condition_groups, format_report, group_sums,
    grouped_log_likelihood, kmeans, mean_rates, psth_table, rates_report, reconstructed_rates, report_warnings,
    select_psth_smoothing, valid_bins,
)


def tuned_dataset(n: int = 400, T: int = 30, N: int = 12, seed: int = 0, conditions: str = "direction"
                  ) -> SpikeData:
    """Known rates: a bump in time, direction-tuned per neuron, times a per-trial gain; variable lengths.

    ``conditions``: ``"direction"`` ([cos, sin], continuous), ``"discrete"`` (4 directions, one value each)
    or ``"vector"`` ([direction in radians, gain], not unit vectors).
    """
    rng = np.random.default_rng(seed)
    theta = rng.integers(0, 4, n) * np.pi / 2 if conditions == "discrete" else rng.uniform(0, 2 * np.pi, n)
    gain = np.exp(0.3 * rng.standard_normal(n))
    preferred = rng.uniform(0, 2 * np.pi, N)
    bump = np.exp(-0.5 * np.square((np.arange(T) - T / 2) / (T / 6)))
    tuning = np.cos(theta[:, None] - preferred[None, :])  # [n, N]
    rates = 0.15 * gain[:, None, None] * np.exp(1.5 * bump[None, :, None] * tuning[:, None, :])
    lengths = rng.integers(T // 2, T + 1, n)
    rates *= valid_bins(lengths, T)[..., None]
    cond = np.stack([np.cos(theta), np.sin(theta)], 1) if conditions != "vector" else np.stack([theta, gain], 1)
    return SpikeData(spikes=rng.poisson(rates).astype(np.uint8), bin_width=0.01, lengths=lengths,
                     split_codes=random_split(n, seed=seed), conditions=cond, rates=rates.astype(np.float32))


# ---------------------------------------------------------------- independent references


def full_log_likelihood(rates: np.ndarray, counts: np.ndarray, lengths: np.ndarray) -> float:
    """Poisson log-likelihood with the log s! terms, trial by trial, bin by bin (rates clamped like the report)."""
    total = 0.0
    for i, length in enumerate(lengths):
        for t in range(length):
            for k in range(counts.shape[2]):
                r, s = max(float(rates[i, t, k]), RATE_FLOOR), int(counts[i, t, k])
                total += s * math.log(r) - r - math.lgamma(s + 1)
    return total


def hand_psth(train: SpikeData, labels: np.ndarray, group: int, sigma: float) -> np.ndarray:
    """Kernel-weighted average ``[T, N]`` of one group's training trials; falls back to all trials, then
    to the neurons' mean rates, where no trial is within reach (loops)."""
    T, N = train.n_bins, train.n_neurons

    def average(members: list[int], t: int) -> np.ndarray | None:
        top, bottom = np.zeros(N), 0.0
        for i in members:
            for s in range(train.lengths[i]):
                w = float(s == t) if sigma == 0 else math.exp(-0.5 * ((t - s) / sigma) ** 2)
                top += w * train.spikes[i, s]
                bottom += w
        return top / bottom if bottom > 0 else None

    out = np.zeros((T, N))
    for t in range(T):
        value = average([i for i in range(train.n_trials) if labels[i] == group], t)
        if value is None:
            value = average(list(range(train.n_trials)), t)
        out[t] = value if value is not None else mean_rates(train)
    return out


def small_random_data(seed: int = 5) -> SpikeData:
    """12 trials (8 train, 4 val), 6 bins, 3 neurons, variable lengths, two condition values."""
    rng = np.random.default_rng(seed)
    n, T, N = 12, 6, 3
    lengths = rng.integers(2, T + 1, n)
    spikes = rng.poisson(0.8, (n, T, N)) * valid_bins(lengths, T)[..., None]
    return SpikeData(spikes=spikes.astype(np.uint8), bin_width=0.01, lengths=lengths,
                     split_codes=np.array([0] * 8 + [1] * 4, dtype=np.uint8),
                     conditions=np.arange(n)[:, None] % 2 * 1.0)


def test_bits_per_spike_against_a_hand_computation() -> None:
    data = small_random_data()
    train, held = data.split("train"), data.split("val")
    rates = np.random.default_rng(1).uniform(0.1, 2.0, held.spikes.shape)
    report = rates_report(data, rates, "val")
    n_spikes = sum(int(held.spikes[i, :length].sum()) for i, length in enumerate(held.lengths))
    model = full_log_likelihood(rates, held.spikes, held.lengths)
    valid_train = valid_bins(train.lengths, train.n_bins)
    mean = np.array([sum(float(train.spikes[i, t, k]) for i in range(8) for t in range(train.lengths[i]))
                     for k in range(3)]) / valid_train.sum()
    expected = (model - full_log_likelihood(np.broadcast_to(mean, rates.shape), held.spikes, held.lengths))
    assert report["grouping"] == "values" and report["condition_groups"] == 2
    assert report["n_spikes"] == n_spikes
    assert report["bits_per_spike_vs_mean"] == pytest.approx(expected / (n_spikes * math.log(2)), rel=1e-10)
    labels = (np.arange(12)[data.split_codes == 0] % 2, np.arange(12)[data.split_codes == 1] % 2)
    psth = np.stack([hand_psth(train, labels[0], g, report["psth_smoothing_bins"]) for g in labels[1]])
    expected = model - full_log_likelihood(psth, held.spikes, held.lengths)
    assert report["bits_per_spike_vs_psth"] == pytest.approx(expected / (n_spikes * math.log(2)), rel=1e-10)
    # the function itself, on rates below the floor and without spikes
    valid = valid_bins(held.lengths, held.n_bins)
    tiny = np.full(held.spikes.shape, 1e-9)
    expected = full_log_likelihood(tiny, held.spikes, held.lengths) - model
    assert bits_per_spike(tiny, rates, held.spikes, valid) == pytest.approx(expected / (n_spikes * math.log(2)))
    assert math.isnan(bits_per_spike(rates, tiny, np.zeros_like(rates), valid))


def test_smoothed_psth_table_and_grouped_likelihood_against_loops() -> None:
    data = small_random_data(seed=2)
    train = data.split("train")
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0])  # group 1: two trials, group 2: none (falls back)
    sums, support = group_sums(train.spikes, train.lengths, labels, 3)
    for sigma in (0.0, 1.5):
        table = psth_table(sums, support, sigma)
        for g in range(3):
            np.testing.assert_allclose(table[g], hand_psth(train, labels, g, sigma), rtol=1e-10, atol=1e-12)
        rows = table[labels]
        log_factorials = sum(math.lgamma(int(s) + 1) for i, length in enumerate(train.lengths)
                             for s in train.spikes[i, :length].ravel())
        expected = full_log_likelihood(rows, train.spikes, train.lengths) + log_factorials
        assert grouped_log_likelihood(table, sums, support) == pytest.approx(expected, rel=1e-10)


def test_psth_smoothing_follows_the_data() -> None:
    rng = np.random.default_rng(0)
    T, N = 40, 5
    smooth = 0.05 * np.exp(np.sin(np.arange(T) / T * 2 * np.pi))  # slow and sparse: smoothing pays
    sharp = np.where(np.arange(T) % 2 == 0, 3.0, 0.05)  # alternating bins, many spikes: it does not
    for profile, check in ((smooth, lambda s: s >= 2), (sharp, lambda s: s == 0)):
        spikes = rng.poisson(np.broadcast_to(profile[None, :, None], (60, T, N))).astype(np.uint8)
        data = SpikeData(spikes=spikes, bin_width=0.01, lengths=np.full(60, T), split_codes=np.zeros(60, np.uint8))
        sigma = select_psth_smoothing(data, np.zeros(60, np.int64), 1, np.random.default_rng(0))
        assert check(sigma), sigma


def test_true_rates_beat_both_baselines_and_the_psth_scores_zero_against_itself() -> None:
    data = tuned_dataset()
    held = data.split("val")
    truth = rates_report(data, held.rates, "val")
    assert truth["grouping"] == "kmeans" and truth["condition_groups"] == 8
    assert truth["bits_per_spike_psth_vs_mean"] > 0.1  # the PSTH explains the stimulus-locked structure
    assert truth["bits_per_spike_vs_psth"] > 0.05 and truth["bits_per_spike_vs_mean"] > 0.15
    assert truth["psth_r"] > truth["psth_r_split_half"] > 0
    assert truth["warnings"] == []
    psth = rates_report(data, baselines(data, "val").psth, "val")
    assert abs(psth["bits_per_spike_vs_psth"]) < 1e-12
    assert psth["bits_per_spike_vs_mean"] == pytest.approx(psth["bits_per_spike_psth_vs_mean"], abs=1e-12)
    assert "PSTH r, reconstructed vs real" in format_report(truth)


def test_a_mean_rate_model_is_below_the_psth_and_warned() -> None:
    data = tuned_dataset()
    held = data.split("val")
    flat = np.broadcast_to(mean_rates(data.split("train")), held.spikes.shape)
    report = rates_report(data, flat, "val")
    assert report["bits_per_spike_vs_mean"] == pytest.approx(0.0, abs=1e-12)
    assert report["bits_per_spike_vs_psth"] < -0.1
    assert math.isnan(report["psth_r"])  # flat rates: every series is constant and skipped
    assert report["decoding"]["reconstructed"] > 60  # chance is 90 degrees
    text = " ".join(report["warnings"])
    assert "no better than the trial-averaged PSTH" in text and "decode the conditions much worse" in text
    assert format_report(report).count("WARNING") == 2


@pytest.mark.parametrize("recon, warned", [(4.1, False), (9.5, False), (30.0, True)])
def test_decoding_warning_needs_a_ratio_and_a_real_gap(recon: float, warned: bool) -> None:
    """Real trials decode at 2 degrees, chance 90: 4.1 (2x, but 2 degrees apart) is no loss of information."""
    data = tuned_dataset()
    held = data.split("val")
    report = rates_report(data, np.broadcast_to(mean_rates(data.split("train")), held.spikes.shape), "val")
    report["decoding"].update(real=2.0, reconstructed=recon, chance=90.0)
    assert any("much worse" in w for w in report_warnings(report)) is warned


def test_condition_groups_by_value_and_deterministic_kmeans() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 90)
    points = centres[truth] + 0.1 * rng.standard_normal((90, 2))
    found = kmeans(points, 3, seed=4)
    labels = np.argmin(np.square(points[:, None] - found[None]).sum(-1), 1)
    assert all(len(set(labels[truth == j])) == 1 for j in range(3)) and len(set(labels)) == 3
    np.testing.assert_array_equal(kmeans(points, 3, seed=4), found)
    assert len(kmeans(points[:2], 8)) == 2  # never more centroids than distinct points

    def trials(conditions: np.ndarray | None, n: int = 0) -> SpikeData:
        n = n if conditions is None else len(conditions)
        return SpikeData(spikes=np.zeros((n, 1, 1), np.uint8), bin_width=0.01, lengths=np.ones(n, np.int64),
                         split_codes=np.zeros(n, np.uint8), conditions=conditions)

    continuous = rng.normal(size=(120, 2))
    a = condition_groups(trials(continuous[:100]), trials(continuous[100:]), seed=1)
    b = condition_groups(trials(continuous[:100]), trials(continuous[100:]), seed=1)
    assert a.method == "kmeans" and a.n_groups == 8 and len(set(a.train)) == 8
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.held_out, b.held_out)
    copies = condition_groups(trials(continuous[:100]), trials(continuous[:20]), seed=1)  # copies of training rows
    np.testing.assert_array_equal(copies.held_out, copies.train[:20])

    grouped = condition_groups(trials(np.array([[0.0], [1.0], [2.0], [1.0]])), trials(np.array([[2.0], [3.0]])))
    assert grouped.method == "values" and grouped.n_groups == 4
    assert grouped.train[1] == grouped.train[3] != grouped.train[0]
    assert grouped.held_out[0] == grouped.train[2] and grouped.held_out[1] not in grouped.train
    none = condition_groups(trials(None, 5), trials(None, 3))
    assert none.method == "none" and none.n_groups == 1 and len(none.train) == 5 and len(none.held_out) == 3


@pytest.mark.parametrize("conditions", ["direction", "vector"])
def test_true_rate_draws_decode_like_real_trials(conditions: str) -> None:
    data = tuned_dataset(n=600, conditions=conditions, seed=3)
    decoding = rates_report(data, data.split("val").rates, "val")["decoding"]
    if conditions == "direction":
        assert decoding["metric"] == "mean angular error (deg)"
        assert decoding["real"] < 25 and decoding["chance"] > 70
        assert abs(decoding["reconstructed"] - decoding["real"]) < 0.5 * decoding["real"] + 3
    else:
        assert decoding["metric"] == "R^2"
        assert decoding["real"] > 0.3 and decoding["chance"] < 0.05
        assert abs(decoding["reconstructed"] - decoding["real"]) < 0.15


def test_bad_inputs_are_clear_errors() -> None:
    data = tuned_dataset(n=60)
    shape = data.split("val").spikes.shape
    with pytest.raises(ValueError, match=r"rates must have shape \[n, T, N\]"):
        rates_report(data, np.ones(shape[:2]), "val")
    with pytest.raises(ValueError, match="finite and non-negative"):
        rates_report(data, -np.ones(shape), "val")
    with pytest.raises(ValueError, match="no training trials"):
        rates_report(data.split("val"), np.ones(shape), "val")
    model = Autoencoder(AutoencoderConfig(n_neurons=12, hidden=8, latent=4, n_blocks=1, d_state=4))
    with pytest.raises(ValueError, match="split must be one of"):
        autoencoder_report(model, data, split="validation")
    with pytest.raises(ValueError, match="the data have 7 neurons, the autoencoder expects 12"):
        autoencoder_report(model, tuned_dataset(n=60, N=7))


def test_autoencoder_report_reconstructs_held_out_trials_and_falls_back_to_other_splits() -> None:
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(n_neurons=12, hidden=8, latent=4, n_blocks=1, d_state=4)).eval()
    data = tuned_dataset(n=50)
    rates = reconstructed_rates(model, data, "test", "cpu", batch_size=4)
    test = data.split("test")
    i = int(np.argmin(test.lengths))
    length = int(test.lengths[i])
    spikes = torch.as_tensor(test.spikes[i : i + 1, :length], dtype=torch.float32).transpose(1, 2)
    with torch.no_grad():
        alone = model(spikes)[0][0].T.numpy()
    np.testing.assert_allclose(rates[i, :length], alone, rtol=1e-4, atol=1e-6)
    assert not rates[i, length:].any()

    no_val = dataclasses.replace(data, split_codes=np.where(data.split_codes == 1, 2, data.split_codes))
    report = autoencoder_report(model, no_val, split="val", batch_size=16)
    assert report["split"] == "test" and report["n_trials"] == int((no_val.split_codes == 2).sum())
    assert "'val' split holds no trials" in report["warnings"][0]
    only_train = dataclasses.replace(data, split_codes=np.zeros(50, np.uint8))
    report = autoencoder_report(model, only_train, split="val")
    assert report["split"] == "train" and "no held-out trials" in report["warnings"][1]


def test_evaluate_reconstruction_writes_the_report(tmp_path: Path, capsys) -> None:
    from ldns_fast.evaluate import main as evaluate_main
    from ldns_fast.train import main as train_main

    data = tuned_dataset(n=60, T=16, N=8)
    path = write_dataset(tmp_path / "d.h5", data.spikes, bin_width=0.01, lengths=data.lengths,
                         conditions=data.conditions, split=data.split_codes)
    flags = ["--set", "autoencoder.hidden=16", "--set", "autoencoder.d_state=8", "--set", "autoencoder.latent=4",
             "--set", "denoiser.hidden=16", "--set", "denoiser.d_state=8",
             "--set", "autoencoder_training.batch_size=16", "--set", "diffusion_training.batch_size=16",
             "--ae-epochs", "1", "--diffusion-epochs", "1", "--no-progress"]
    assert train_main(["--out", str(tmp_path / "run"), "--data", str(path), *flags]) == 0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(tmp_path / "run"), "--reconstruction", "--bootstrap", "0",
                          "--no-plots", "--out", str(tmp_path / "eval")]) == 0
    assert "autoencoder quality: test split" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["autoencoder_report"]
    assert report["split"] == "test" and report["n_trials"] == int((data.split_codes == 2).sum())
    assert report["decoding"]["metric"] == "mean angular error (deg)"
    assert isinstance(report["bits_per_spike_vs_psth"], float) and isinstance(report["warnings"], list)
