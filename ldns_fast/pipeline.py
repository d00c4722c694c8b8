"""Public API of a trained model: ``load`` a run folder, then ``encode``, ``decode`` and ``sample``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldns_fast.checkpoint import CheckpointError, load_checkpoint
from ldns_fast.config import RunConfig, from_dict
from ldns_fast.data import SpikeData, valid_mask
from ldns_fast.diffusion import DiffusionSchedule, make_sampler, sample as run_sampler
from ldns_fast.diffusion.samplers import ModelFn
from ldns_fast.models import Autoencoder, Denoiser
from ldns_fast.spike_history import SpikeHistoryConfig, SpikeHistoryModel
from ldns_fast.ssm import skip_finite_check
from ldns_fast.training.stages import AUTOENCODER_FILE, DIFFUSION_FILE, SPIKE_HISTORY_FILE

# Compiled sampling runs the denoiser on lengths padded up to a multiple of this, so trials of
# different lengths share one compiled graph (and one CUDA graph per bucket).
LENGTH_BUCKET = 64


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
            spikes=layout(self.spikes).astype(np.uint16), bin_width=bin_width, lengths=self.lengths.numpy(),
            split_codes=np.zeros(len(self.lengths), dtype=np.uint8), rates=layout(self.rates),
            latents=layout(self.latents), description=description,
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
        """Load ``run_dir/diffusion.pt`` (EMA weights) and ``run_dir/autoencoder.pt``."""
        run_dir = Path(run_dir)
        diff = load_checkpoint(run_dir / DIFFUSION_FILE, "diffusion", ("ema", "latent_mean", "latent_std"), device)
        ae = load_checkpoint(run_dir / AUTOENCODER_FILE, "autoencoder", ("model",), device)
        if not diff.get("complete", False):
            raise CheckpointError(f"{run_dir / DIFFUSION_FILE} holds an unfinished run; resume training first")
        config = from_dict(RunConfig, diff["config"])
        autoencoder = Autoencoder(config.autoencoder)
        autoencoder.load_state_dict(ae["model"])
        denoiser = Denoiser(config.denoiser)
        denoiser.load_state_dict(diff["ema"]["shadow"])
        history = None
        if (run_dir / SPIKE_HISTORY_FILE).exists():
            record = load_checkpoint(run_dir / SPIKE_HISTORY_FILE, "spike_history", ("model",), device)
            cfg = from_dict(SpikeHistoryConfig, record["config"])
            history = SpikeHistoryModel.from_config(config.autoencoder.n_neurons, cfg)
            history.load_state_dict(record["model"])
        return cls(
            config, autoencoder.to(device), denoiser.to(device), diff["latent_mean"], diff["latent_std"],
            float(diff["bin_width"]), int(diff["n_bins"]), history.to(device) if history is not None else None,
        )

    @torch.no_grad()
    def encode(self, spikes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Spike counts ``[B, N, T]`` -> autoencoder latents ``[B, C_latent, T]``."""
        if spikes.dim() != 3 or spikes.shape[1] != self.config.autoencoder.n_neurons:
            raise ValueError(
                f"spikes must have shape [B, N={self.config.autoencoder.n_neurons}, T], got {tuple(spikes.shape)}"
            )
        spikes = spikes.to(self.device, torch.float32)
        if not bool(torch.isfinite(spikes).all()):
            raise ValueError("spikes contain NaN or infinite values")
        if bool((spikes < 0).any()) or not torch.equal(spikes, spikes.round()):
            raise ValueError("spikes must be non-negative integer counts")
        expected = (spikes.shape[0], spikes.shape[2])
        if mask is not None and tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape [B, T] = {expected}, got {tuple(mask.shape)}")
        return self.autoencoder.encode(spikes, None if mask is None else mask.to(self.device, torch.float32))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C_latent, T]`` -> Poisson rates ``[B, N, T]`` (per bin)."""
        return self.autoencoder.decode(latents.to(self.device))

    @torch.no_grad()
    def sample(
        self, n: int, length: int | None = None, lengths: list[int] | torch.Tensor | None = None,
        sampler: str = "sde-dpm++", steps: int = 20, seed: int | None = None, batch_size: int = 256,
        progress: bool = False, spike_history: bool = False, conditions: torch.Tensor | None = None,
        behavior: torch.Tensor | None = None, guidance_scale: float = 1.0, compile: bool = False,
        **sampler_kwargs,
    ) -> Samples:
        """Generate ``n`` trials of ``length`` bins (default: the training length) or per-trial ``lengths``.

        ``sampler`` is ``"ddpm"``, ``"ddim"``, ``"dpm++"`` or ``"sde-dpm++"`` with ``steps`` steps; ``seed``
        makes the latents and the spikes reproducible. Spikes are Poisson in the rates, or drawn
        autoregressively by the fitted spike-history model with ``spike_history=True``. A conditional model takes
        ``conditions [n, cond_dim]`` and/or ``behavior [n, B, T]``; ``guidance_scale`` w mixes the
        conditional and unconditional predictions as ``uncond + w (cond - uncond)`` (classifier-free
        guidance: 0 is unconditional, 1 conditional only).

        ``compile=True`` runs the denoiser through ``torch.compile`` (``mode="reduce-overhead"``, i.e.
        CUDA graphs, on CUDA; the default mode on CPU). Each denoiser call then sees its batch padded to
        ``min(n, batch_size)`` trials and its length to a multiple of :data:`LENGTH_BUCKET`, with the
        padding masked out, so calls share compiled graphs; the sampler itself (and its random draws)
        runs at the true shape, so the samples equal the uncompiled ones up to float rounding. The first
        call per shape compiles (seconds on CPU). S4 kernels are cached per length either way.
        """
        if spike_history and self.spike_history is None:
            raise ValueError("this run has no spike-history model; train it with --spike-history")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of trials, got {n!r}")
        if lengths is None:
            lengths = torch.full((n,), length or self.n_bins, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        if lengths.shape != (n,) or int(lengths.min()) < 1:
            raise ValueError(f"lengths must hold n={n} positive integers, got {lengths.tolist()[:10]}")
        conditions, behavior = self._check_conditions(n, int(lengths.max()), conditions, behavior)
        gen = self._generator(seed)
        schedule_sampler = make_sampler(sampler, self.schedule, **sampler_kwargs)
        rows = min(n, batch_size)  # the one batch size compiled calls see
        parts = []
        for start in range(0, n, batch_size):
            part_lengths = lengths[start : start + batch_size]
            B, T = len(part_lengths), int(part_lengths.max())
            mask = valid_mask(part_lengths, T).to(self.device)
            part = slice(start, start + batch_size)
            cond = None if conditions is None else conditions[part]
            beh = None if behavior is None else behavior[part, :, :T]
            if compile:
                padded_T = -(-T // LENGTH_BUCKET) * LENGTH_BUCKET
                guided = self._guided(
                    _pad(mask, rows, padded_T), _pad(cond, rows), _pad(beh, rows, padded_T), guidance_scale,
                    self._compiled(), self.denoiser.kernel_spectra(padded_T),
                )
                model_fn = _cropped(guided, rows, padded_T, B, T)
            else:
                model_fn = self._guided(mask, cond, beh, guidance_scale)
            with skip_finite_check():  # inputs: seeded noise and validated conditions; output checked below
                z = run_sampler(
                    model_fn, (B, self.config.denoiser.latent, T),
                    schedule_sampler, steps, generator=gen, device=self.device, progress=progress,
                )
            if not bool(torch.isfinite(z).all()):
                raise ValueError("the denoiser produced NaN or infinite latents; check the model weights")
            latents = (z * self.latent_std[:, None] + self.latent_mean[:, None]) * mask[:, None]
            rates = self.decode(latents) * mask[:, None]
            if spike_history:
                spikes = self.spike_history.sample(rates.clamp_min(1e-6), gen, mask)
            else:
                spikes = torch.poisson(rates, generator=gen)
            parts.append((latents.cpu(), rates.cpu(), spikes.cpu()))
        return _concatenate(parts, lengths)

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
            gen.manual_seed(seed)
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
        if conditions is not None:
            conditions = torch.as_tensor(conditions, dtype=torch.float32, device=self.device)
            if c.cond_dim == 0 or tuple(conditions.shape) != (n, c.cond_dim):
                raise ValueError(f"conditions must have shape [n, cond_dim] = [{n}, {c.cond_dim}] for this model, "
                                 f"got {tuple(conditions.shape)}")
        if behavior is not None:
            behavior = torch.as_tensor(behavior, dtype=torch.float32, device=self.device)
            if c.behavior_channels == 0 or behavior.dim() != 3 or behavior.shape[:2] != (n, c.behavior_channels) \
                    or behavior.shape[2] < T:
                raise ValueError(f"behavior must have shape [n, B, T] = [{n}, {c.behavior_channels}, >= {T}] for "
                                 f"this model, got {tuple(behavior.shape)}")
        for name, value in (("conditions", conditions), ("behavior", behavior)):
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} contain NaN or infinite values")
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
        denoiser = self.denoiser if denoiser is None else denoiser
        extra = {} if spectra is None else {"spectra": spectra}
        if cond is None and behavior is None:
            return lambda x, t: denoiser(x, t, mask, **extra)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            conditional = denoiser(x, t, mask, cond, behavior, **extra)
            if scale == 1.0:
                return conditional
            unconditional = denoiser(x, t, mask, **extra)
            return unconditional + scale * (conditional - unconditional)

        return model_fn


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
