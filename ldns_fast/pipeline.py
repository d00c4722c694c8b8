"""Public API of a trained model: ``load`` a run folder, then ``encode``, ``decode`` and ``sample``."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ldns_fast.checkpoint import CheckpointError, load_checkpoint, require_finite
from ldns_fast.config import RunConfig, from_dict
from ldns_fast.data import SpikeData, valid_mask
from ldns_fast.data.hdf5 import as_counts
from ldns_fast.diffusion import DiffusionSchedule, guided, make_sampler, sample as run_sampler
from ldns_fast.diffusion.samplers import ModelFn
from ldns_fast.models import Autoencoder, Denoiser
from ldns_fast.spike_history import SpikeHistoryConfig, SpikeHistoryModel
from ldns_fast.run import (
    AUTOENCODER_DIGEST, AUTOENCODER_FILE, DIFFUSION_FILE, SPIKE_HISTORY_FILE, LatentStats, weights_digest,
)
from ldns_fast.validation import check_conditions, check_device, check_seed, is_integer, is_number

M = TypeVar("M", bound=torch.nn.Module)

# Compiled sampling runs the denoiser on lengths padded up to a multiple of this, so trials of
# different lengths share one compiled graph (and one CUDA graph per bucket).
LENGTH_BUCKET = 64
# Default budget of bins (trials x padded length) per denoiser batch, as in the ONNX sampler; the
# memory of a batch grows with it (see LDNS.batch_bytes).
DEFAULT_MAX_BINS = 1 << 16
# Peak memory of sampling per bin and denoiser channel (activations, the S4 FFT convolutions'
# spectra and 2L-long outputs, the decoder): 52-56 bytes measured on CPU (peak RSS growth from 32768 to
# 131072 bins, hidden 64 and 128), rounded up.
DENOISER_BYTES_PER_BIN_CHANNEL = 64


@dataclass
class Samples:
    """Generated trials: latents ``[n, C_latent, T]``, rates and spikes ``[n, N, T]``, lengths ``[n]``."""

    latents: torch.Tensor
    rates: torch.Tensor
    spikes: torch.Tensor
    lengths: torch.Tensor

    def to_spike_data(self, bin_width: float, description: str = "") -> SpikeData:
        """These trials in the dataset file layout (``[n, T, channels]``) as in-memory :class:`SpikeData`."""

        def layout(x: torch.Tensor) -> np.ndarray:
            return x.transpose(1, 2).contiguous().numpy()

        return SpikeData(
            spikes=as_counts(layout(self.spikes), "generated trials"), bin_width=bin_width,
            lengths=self.lengths.numpy(), split_codes=np.zeros(len(self.lengths), dtype=np.uint8),
            rates=layout(self.rates), latents=layout(self.latents), description=description,
        )


class LDNS:
    """A trained autoencoder + EMA denoiser with its latent normalisation, ready to sample."""

    def __init__(
        self, config: RunConfig, autoencoder: Autoencoder, denoiser: Denoiser,
        latent_mean: torch.Tensor, latent_std: torch.Tensor, bin_width: float, n_bins: int,
        spike_history: SpikeHistoryModel | None = None,
    ) -> None:
        self.config = config
        self.spike_history = spike_history
        self.autoencoder = autoencoder.eval()
        self.denoiser = denoiser.eval()
        self.schedule = DiffusionSchedule(config.schedule)
        self.latent_mean, self.latent_std = latent_mean, latent_std
        self.bin_width, self.n_bins = bin_width, n_bins
        self._compiled_denoiser: tuple[Denoiser, torch.nn.Module] | None = None  # (source, compiled)

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> LDNS:
        """Load ``run_dir/diffusion.pt`` (EMA weights) and ``run_dir/autoencoder.pt``.

        The denoiser (and spike-history model) must have been trained on this very autoencoder: their
        checkpoints record its weights' SHA-256, checked here. Checkpoints written before that record
        existed load with a warning (the pair cannot be checked).

        Raises:
            CheckpointError: a missing, corrupt, unfinished or malformed checkpoint (config, weights of
                other shapes, NaN weights or statistics, bad ``bin_width``), or an ``autoencoder.pt``
                other than the one the denoiser was trained on, naming the file.
            ValueError: a device this machine does not have.
        """
        run_dir = Path(run_dir)
        device = check_device(device)
        diff_path, ae_path, history_path = (run_dir / f for f in (DIFFUSION_FILE, AUTOENCODER_FILE, SPIKE_HISTORY_FILE))
        diff = load_checkpoint(diff_path, "diffusion", ("ema", "latent_mean", "latent_std", "bin_width", "n_bins"),
                               device)
        ae = load_checkpoint(ae_path, "autoencoder", ("model",), device)
        if not diff.get("complete", False):
            raise CheckpointError(f"{diff_path} holds an unfinished run; resume training first")
        with _malformed(diff_path):
            config = from_dict(RunConfig, diff["config"])
            denoiser = _restored(diff_path, Denoiser(config.denoiser), diff["ema"]["shadow"])
            latent_mean, latent_std = _latent_statistics(diff, config.denoiser.latent)
            bin_width, n_bins = _data_scales(diff)
        with _malformed(ae_path):
            require_finite(ae_path, ae["model"])  # NaN weights are named as such before the pairing check
            digest = weights_digest(ae["model"])
            _check_trained_on(diff, diff_path, ae_path, digest)
            autoencoder = _restored(ae_path, Autoencoder(config.autoencoder), ae["model"])
        history = None
        if history_path.exists():
            record = load_checkpoint(history_path, "spike_history", ("model",), device)
            _check_trained_on(record, history_path, ae_path, digest)
            with _malformed(history_path):
                cfg = from_dict(SpikeHistoryConfig, record["config"])
                history = _restored(history_path, SpikeHistoryModel.from_config(config.autoencoder.n_neurons, cfg),
                                    record["model"]).to(device)
        return cls(config, autoencoder.to(device), denoiser.to(device), latent_mean, latent_std, bin_width, n_bins,
                   history)

    @torch.no_grad()
    def encode(self, spikes: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Spike counts ``[B, N, T]`` (tensor or array) with an optional 0/1 ``mask [B, T]`` -> autoencoder
        latents ``[B, C_latent, T]``."""
        spikes = self._input("spikes", spikes, self.config.autoencoder.n_neurons, "N")
        if bool((spikes < 0).any()) or not torch.equal(spikes, spikes.round()):
            raise ValueError("spikes must be non-negative integer counts")
        if mask is not None:
            mask = _as_float_tensor("mask", mask).to(self.device)
            expected = (spikes.shape[0], spikes.shape[2])
            if tuple(mask.shape) != expected:
                raise ValueError(f"mask must have shape [B, T] = {expected}, got {tuple(mask.shape)}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must hold only 0 and 1")
        return self.autoencoder.encode(spikes, mask)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Latents ``[B, C_latent, T]`` (tensor or array) -> Poisson rates ``[B, N, T]`` (per bin)."""
        return self.autoencoder.decode(self._input("latents", latents, self.config.autoencoder.latent, "C_latent"))

    def _input(self, name: str, x: torch.Tensor | np.ndarray, channels: int, symbol: str) -> torch.Tensor:
        """``x`` as a finite float32 tensor ``[B, channels, T]`` on the model's device, B and T >= 1."""
        x = _as_float_tensor(name, x)
        if x.dim() != 3 or x.shape[1] != channels or x.shape[0] == 0 or x.shape[2] == 0:
            raise ValueError(f"{name} must have shape [B, {symbol}={channels}, T] with B, T >= 1, "
                             f"got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contain NaN or infinite values")
        return x.to(self.device)

    @torch.no_grad()
    def sample(
        self, n: int, length: int | None = None, lengths: list[int] | torch.Tensor | None = None,
        sampler: str = "sde-dpm++", steps: int = 20, seed: int | None = None, batch_size: int = 256,
        progress: bool = False, spike_history: bool = False, conditions: torch.Tensor | None = None,
        behavior: torch.Tensor | None = None, guidance_scale: float = 1.0, compile: bool = False,
        max_bins: int = DEFAULT_MAX_BINS, **sampler_kwargs,
    ) -> Samples:
        """Generate ``n`` trials of ``length`` bins (default: the training length) or per-trial ``lengths``.

        ``sampler`` is ``"ddpm"``, ``"ddim"``, ``"dpm++"`` or ``"sde-dpm++"`` with ``steps`` steps; ``seed``
        makes the latents and the spikes reproducible. Spikes are Poisson in the rates, or drawn
        autoregressively by the fitted spike-history model with ``spike_history=True``. A conditional model takes
        ``conditions [n, cond_dim]`` and/or ``behavior [n, B, T]``; ``guidance_scale`` w mixes the
        conditional and unconditional predictions as ``uncond + w (cond - uncond)`` (classifier-free
        guidance: 0 is unconditional, 1 conditional only).

        ``compile=True`` runs the denoiser through ``torch.compile`` (``mode="reduce-overhead"``, i.e.
        CUDA graphs, on CUDA; the default mode on CPU). Each denoiser call then sees its length padded to
        a multiple of :data:`LENGTH_BUCKET` and its batch to ``min(n, batch_size, max_bins // that length)``
        trials, with the padding masked out, so calls share compiled graphs; the sampler itself (and its random draws)
        runs at the true shape, so the samples equal the uncompiled ones up to float rounding. The first
        call per shape compiles (seconds on CPU). S4 kernels are cached per length either way.

        Trials run in consecutive batches of at most ``batch_size`` trials and ``max_bins`` bins (trials
        x longest length), which bounds the memory of a denoiser call (:meth:`batch_bytes`); a trial
        longer than ``max_bins`` is refused with the memory it would need. :meth:`batches` yields the
        same batches as they are made (bounded memory for many trials).
        """
        parts = list(self.batches(
            n, length, lengths, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
            spike_history=spike_history, conditions=conditions, behavior=behavior, guidance_scale=guidance_scale,
            compile=compile, max_bins=max_bins, **sampler_kwargs,
        ))
        lengths = torch.cat([part.lengths for _, part in parts])
        return _concatenate([(part.latents, part.rates, part.spikes) for _, part in parts], lengths)

    def batches(
        self, n: int, length: int | None = None, lengths: list[int] | torch.Tensor | None = None,
        sampler: str = "sde-dpm++", steps: int = 20, seed: int | None = None, batch_size: int = 256,
        progress: bool = False, spike_history: bool = False, conditions: torch.Tensor | None = None,
        behavior: torch.Tensor | None = None, guidance_scale: float = 1.0, compile: bool = False,
        max_bins: int = DEFAULT_MAX_BINS, **sampler_kwargs,
    ) -> Iterator[tuple[int, Samples]]:
        """The trials of :meth:`sample` (same arguments, same values) batch by batch, as they are made.

        Yields ``(start, part)``: ``part`` holds trials ``start : start + len(part.lengths)`` padded to
        their own longest length. The arguments are checked here, before the first batch is asked for.
        """
        if spike_history and self.spike_history is None:
            raise ValueError("this run has no spike-history model; train it with --spike-history")
        n, lengths = self._lengths(n, length, lengths)
        for name, value in (("batch_size", batch_size), ("max_bins", max_bins)):
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_number(guidance_scale) \
                or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        conditions, behavior = self._check_conditions(n, int(lengths.max()), conditions, behavior)
        groups = self._plan(lengths, batch_size, max_bins, compile)
        gen = self._generator(seed)
        schedule_sampler = make_sampler(sampler, self.schedule, **sampler_kwargs)
        schedule_sampler.set_timesteps(steps)  # checks steps now, before the first batch

        @torch.no_grad()
        def generate() -> Iterator[tuple[int, Samples]]:
            for part in groups:
                part_lengths = lengths[part]
                B, T = len(part_lengths), int(part_lengths.max())
                mask = valid_mask(part_lengths, T).to(self.device)
                cond = None if conditions is None else conditions[part]
                beh = None if behavior is None else behavior[part, :, :T]
                if compile:  # padded to one shape per length bucket, within the bin budget
                    padded_T = _bucket(T)
                    rows = min(n, batch_size, max(1, max_bins // padded_T))
                    padded_fn = self._guided(
                        _pad(mask, rows, padded_T), _pad(cond, rows), _pad(beh, rows, padded_T), guidance_scale,
                        self._compiled(), self.denoiser.kernel_spectra(padded_T),
                    )
                    model_fn = _cropped(padded_fn, rows, padded_T, B, T)
                else:
                    model_fn = self._guided(mask, cond, beh, guidance_scale)
                z = run_sampler(  # inputs: seeded noise and validated conditions; the output is checked below
                    model_fn, (B, self.config.denoiser.latent, T),
                    schedule_sampler, steps, generator=gen, device=self.device, progress=progress,
                )
                if not bool(torch.isfinite(z).all()):
                    raise ValueError("the denoiser produced NaN or infinite latents; check the model weights")
                latents = LatentStats(self.latent_mean, self.latent_std).denormalise(z, mask)
                rates = self.decode(latents) * mask[:, None]
                if spike_history:
                    spikes = self.spike_history.sample(rates.clamp_min(1e-6), gen, mask)
                else:
                    spikes = torch.poisson(rates, generator=gen)
                yield part.start, Samples(latents.cpu(), rates.cpu(), spikes.cpu(), part_lengths)

        return generate()

    def batch_bytes(self, bins: int) -> int:
        """Estimated peak memory (bytes) of sampling a batch of ``bins`` bins (trials x padded length):
        the denoiser's activations and S4 convolutions, and the batch's latents, rates and spikes."""
        outputs = 4 * (self.config.denoiser.latent + 2 * self.config.autoencoder.n_neurons)
        return bins * (DENOISER_BYTES_PER_BIN_CHANNEL * self.config.denoiser.hidden + outputs)

    def _lengths(self, n: int, length: int | None, lengths: object) -> tuple[int, torch.Tensor]:
        """Validated ``n`` and per-trial lengths ``[n]`` (int64): ``lengths``, else ``length`` (default
        the training length) for every trial."""
        if not is_integer(n, numpy=True) or n < 1:
            raise ValueError(f"n must be a positive number of trials, got {n!r}")
        n = int(n)
        if lengths is None:
            length = self.n_bins if length is None else length
            if not is_integer(length, numpy=True) or length < 1:
                raise ValueError(f"length must be a positive integer number of bins, got {length!r}")
            return n, torch.full((n,), int(length), dtype=torch.long)
        values = lengths.cpu().numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)
        if values.shape != (n,) or values.dtype.kind not in "iu" or values.min() < 1:
            raise ValueError(f"lengths must hold n={n} positive integers, got {values.tolist()[:10]}")
        return n, torch.as_tensor(values, dtype=torch.long)

    def _plan(self, lengths: torch.Tensor, batch_size: int, max_bins: int, compile: bool) -> list[slice]:
        """Consecutive batches of at most ``batch_size`` trials and ``max_bins`` bins (trials x longest
        length, bucketed when ``compile``); a ValueError with the memory estimate when one trial is over."""
        padded = [_bucket(t) if compile else t for t in lengths.tolist()]
        longest = max(padded)
        if longest > max_bins:
            raise ValueError(
                f"a trial of {longest} bins exceeds max_bins={max_bins}, the bins per denoiser batch; sampling it "
                f"would need about {self.batch_bytes(longest) / 2**30:.2g} GiB: raise max_bins (--max-bins) if "
                f"the memory is there, or sample shorter trials"
            )
        groups, start, widest = [], 0, 0
        for i, t in enumerate(padded):
            widest = max(widest, t)
            if i - start == batch_size or (i - start + 1) * widest > max_bins:
                groups.append(slice(start, i))
                start, widest = i, t
        groups.append(slice(start, len(padded)))
        return groups

    @torch.no_grad()
    def reconstruct(self, data: SpikeData, seed: int | None = None, batch_size: int = 256) -> Samples:
        """Autoencoder reconstruction of real trials: encode, decode to rates, draw Poisson spikes.

        Generated data can match real data only as well as these reconstructions do (the autoencoder's
        ceiling), so comparing both with the real set tells where fidelity is lost. Returns
        :class:`Samples` with the trials' lengths (latents ``[n, C_latent, T]``, rates and spikes
        ``[n, N, T]``, zero past each length).
        """
        if data.n_neurons != self.config.autoencoder.n_neurons:
            raise ValueError(f"the data have {data.n_neurons} neurons, the autoencoder expects "
                             f"{self.config.autoencoder.n_neurons}")
        gen = self._generator(seed)
        lengths = torch.as_tensor(data.lengths, dtype=torch.long)
        parts = []
        for start in range(0, data.n_trials, batch_size):
            part = slice(start, start + batch_size)
            T = int(lengths[part].max())
            mask = valid_mask(lengths[part], T).to(self.device)
            spikes = torch.as_tensor(np.asarray(data.spikes[part, :T]), dtype=torch.float32).transpose(1, 2)
            latents = self.encode(spikes, mask) * mask[:, None]
            rates = self.decode(latents) * mask[:, None]
            parts.append((latents.cpu(), rates.cpu(), torch.poisson(rates, generator=gen).cpu()))
        return _concatenate(parts, lengths)

    def _generator(self, seed: int | None) -> torch.Generator:
        """A generator on the model's device: seeded, or non-deterministic without touching torch's global one."""
        gen = torch.Generator(self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(check_seed(seed))
        return gen

    def condition_inputs(self, data: SpikeData) -> dict[str, torch.Tensor]:
        """``sample`` keyword arguments with the ``conditions``/``behavior`` of ``data`` (file layout) that
        this model is conditioned on (empty for an unconditional model)."""
        c, kwargs = self.config.denoiser, {}
        if c.cond_dim and data.conditions is not None:
            kwargs["conditions"] = torch.as_tensor(data.conditions, dtype=torch.float32)
        if c.behavior_channels and data.behavior is not None:
            kwargs["behavior"] = torch.as_tensor(data.behavior, dtype=torch.float32).transpose(1, 2)
        return kwargs

    def _check_conditions(
        self, n: int, T: int, conditions: torch.Tensor | None, behavior: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validate ``conditions [n, cond_dim]`` and ``behavior [n, B, >= T]`` against the model."""
        c = self.config.denoiser
        conditions, behavior = (None if t is None else torch.as_tensor(t, dtype=torch.float32, device=self.device)
                                for t in (conditions, behavior))
        check_conditions(n, T, c.cond_dim, c.behavior_channels, conditions, behavior)
        return conditions, behavior

    def _compiled(self) -> torch.nn.Module:
        """``self.denoiser`` under ``torch.compile`` (made once per denoiser; CUDA graphs on CUDA)."""
        if self._compiled_denoiser is None or self._compiled_denoiser[0] is not self.denoiser:
            self._compiled_denoiser = (self.denoiser, compile_denoiser(self.denoiser, self.device))
        return self._compiled_denoiser[1]

    def _guided(
        self, mask: torch.Tensor, cond: torch.Tensor | None, behavior: torch.Tensor | None, scale: float,
        denoiser: torch.nn.Module | None = None, spectra: list[torch.Tensor] | None = None,
    ) -> ModelFn:
        """``model_fn(x, t)`` for the sampler, with classifier-free guidance when conditions are given.

        ``denoiser``: what to call (default ``self.denoiser``, e.g. its compiled form); ``spectra``: the
        denoiser's S4 kernel spectra for this length, passed to every call, or None.
        """
        extra = {} if spectra is None else {"spectra": spectra}
        return guided(self.denoiser if denoiser is None else denoiser, mask, cond, behavior, scale, **extra)


def _check_trained_on(record: dict, path: Path, ae_path: Path, digest: str) -> None:
    """Raise a CheckpointError unless the checkpoint ``record`` (read from ``path``) was trained on the
    autoencoder of weights ``digest``; warn when it does not record its autoencoder (older files)."""
    recorded = record.get(AUTOENCODER_DIGEST)
    if recorded is None:
        warnings.warn(f"{path} does not record which autoencoder it was trained on (written by an older "
                      f"ldns_fast): cannot check that {ae_path} belongs with it", UserWarning, stacklevel=3)
    elif recorded != digest:
        raise CheckpointError(f"{ae_path} is not the autoencoder {path} was trained on (their weights differ); "
                              f"keep the files of one run together, or retrain")


@contextmanager
def _malformed(path: Path) -> Iterator[None]:
    """Turn a malformed config, a value of the wrong type or weights of other shapes read from ``path``
    into a :class:`CheckpointError` naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:  # load_state_dict: RuntimeError
        raise CheckpointError(f"checkpoint {path} does not hold a usable model: {err}") from err


def _restored(path: Path, model: M, state: dict[str, torch.Tensor]) -> M:
    """``model`` with the finite weights ``state`` loaded (CheckpointError naming ``path`` otherwise)."""
    require_finite(path, state)
    model.load_state_dict(state)
    return model


def _latent_statistics(record: dict, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's latent ``mean`` and ``std`` ``[channels]``: finite tensors, std > 0."""
    mean, std = record["latent_mean"], record["latent_std"]
    shapes_ok = all(isinstance(t, torch.Tensor) and tuple(t.shape) == (channels,) for t in (mean, std))
    if not shapes_ok or not bool(torch.isfinite(mean).all() & torch.isfinite(std).all() & (std > 0).all()):
        raise ValueError(f"latent_mean and latent_std must be finite tensors of shape [{channels}] with "
                         f"latent_std > 0")
    return mean, std


def _as_float_tensor(name: str, x: object) -> torch.Tensor:
    """A float32 tensor of a tensor or numeric array (ValueError naming ``name`` otherwise)."""
    if isinstance(x, torch.Tensor):
        return x.float()
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric tensor or array, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.float32))


def _data_scales(record: dict) -> tuple[float, int]:
    """The checkpoint's ``bin_width`` (positive finite seconds) and training length ``n_bins`` (positive int)."""
    bin_width, n_bins = record["bin_width"], record["n_bins"]
    if not is_number(bin_width) \
            or not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be a positive finite number of seconds, got {bin_width!r}")
    if not is_integer(n_bins) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return float(bin_width), n_bins


def compile_denoiser(denoiser: Denoiser, device: torch.device) -> torch.nn.Module:
    """``denoiser`` under ``torch.compile`` with static shapes: ``mode="reduce-overhead"`` (CUDA graphs) on
    CUDA, where each call also returns a fresh tensor; the default mode elsewhere. Call it with
    ``spectra=denoiser.kernel_spectra(L)`` so the S4 kernel cache lookup stays outside the graph."""
    if torch.device(device).type != "cuda":
        return torch.compile(denoiser, dynamic=False)
    return _CudaGraphSafe(torch.compile(denoiser, mode="reduce-overhead", dynamic=False))


class _CudaGraphSafe(torch.nn.Module):
    """Wraps a ``reduce-overhead`` compiled module: each call starts a new CUDA-graph step and returns a
    copy, so an earlier output (the conditional prediction under guidance) is never overwritten."""

    def __init__(self, compiled: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: torch.Tensor | None, **kwargs: object) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs).clone()


def _bucket(T: int) -> int:
    """``T`` rounded up to a multiple of :data:`LENGTH_BUCKET` (the lengths compiled calls see)."""
    return -(-T // LENGTH_BUCKET) * LENGTH_BUCKET


def _pad(t: torch.Tensor | None, rows: int, length: int | None = None) -> torch.Tensor | None:
    """Zero-pad ``t [B, ...]`` to ``rows`` trials and, given ``length``, its last (time) axis to ``length``."""
    if t is None:
        return None
    t = torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])
    return t if length is None else F.pad(t, (0, length - t.shape[-1]))


def _cropped(padded_fn: ModelFn, rows: int, length: int, B: int, T: int) -> ModelFn:
    """``x [B, C, T], t [B] -> padded_fn(x, t)`` on inputs zero-padded to ``rows`` trials and ``length``
    bins, cropped back to ``[B, C, T]``.

    ``padded_fn`` must mask the padding (its mask is padded with zeros). Padded bins and trials then
    never reach valid ones: the denoiser works per trial and pointwise in time apart from its S4 layers,
    whose inputs are masked and whose kernel taps do not depend on the length.
    """

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return padded_fn(_pad(x, rows, length), _pad(t, rows))[:B, :, :T]

    return model_fn


def _concatenate(parts: list[tuple[torch.Tensor, ...]], lengths: torch.Tensor) -> Samples:
    """Batches of (latents, rates, spikes), each padded in time to the longest trial, as one :class:`Samples`."""
    T_max = int(lengths.max())
    return Samples(*(torch.cat([_pad_time(p[i], T_max) for p in parts]) for i in range(3)), lengths)


def _pad_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """Zero-pad ``x [..., t]`` to ``[..., T]``."""
    return torch.nn.functional.pad(x, (0, T - x.shape[-1]))


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> LDNS:
    """Load a trained run folder (see :meth:`LDNS.load`)."""
    return LDNS.load(run_dir, device)
