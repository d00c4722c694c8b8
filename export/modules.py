"""Torch modules shaped for ONNX export: S4 layers in diagonal form and an unrolled sampler.

Every module here traces with dynamic batch and length axes. The S4 convolution (see :data:`CONV_MODES`)
is a direct Toeplitz product or a real FFT of length ``2L``, both from kernels generated in the graph for
the input's length from a float64 diagonal form (no complex numbers), or the chunked scan
(:mod:`ldns_fast.ssm.chunked`: float32 matmuls and elementwise ops, linear in the length). Graphs of the
chunked scan pad their input once to whole chunks and run the denoiser at that length (the padding stays
masked), so no layer reshuffles its bins.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ldns_fast.data import valid_mask
from ldns_fast.diffusion import DiffusionSchedule, guided, make_sampler
from ldns_fast.models import Autoencoder, Denoiser
from ldns_fast.run import LatentStats
from ldns_fast.ssm import S4, kernel_spectrum, spectrum_conv, toeplitz, toeplitz_conv
from ldns_fast.ssm.chunked import (
    ChunkTables, chunk_plan, chunk_shape, chunk_tables, padded_chunked_conv, steps_for,
)
from ldns_fast.ssm.diagonal import DiagonalFormError, diagonal_form

from .errors import ExportError

CONV_MODES = ("direct", "fft", "chunked")
# Taps per chunk when generating kernels: K[q * CHUNK + r] = Re(sum_m (w mu^(q CHUNK)) mu^r).
KERNEL_CHUNK = 256


class DiagonalS4(nn.Module):
    """An :class:`~ldns_fast.ssm.S4` layer for export: ``u [B, H, L] -> [B, H, L]``, same outputs.

    ``direct``/``fft``: the kernel for any ``L`` is built from float64 ``w [n_kernels, H, M]`` and
    ``log mu [H, M]`` as a product of chunk anchors ``w mu^(q C)`` ``[.., M, L / C]`` with in-chunk powers
    ``mu^r`` ``[H, M, C]`` (exact phases: no ``sin(l theta)`` at large ``l`` in single precision).
    ``chunked``: float32 :class:`~ldns_fast.ssm.chunked.ChunkTables`, and enough scan levels for
    ``max_length`` bins.
    """

    def __init__(self, layer: S4, conv: str, max_length: int) -> None:
        super().__init__()
        if conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {CONV_MODES}, got {conv!r}")
        try:
            form = diagonal_form(layer.kernel)
        except DiagonalFormError as err:
            raise ExportError(f"cannot export this model: {err}") from err
        self.conv = conv
        if conv == "chunked":
            self.steps = steps_for(max_length)
            tables = chunk_tables(form)
            for name in ("folded", "powers", "weights", "log_mu"):
                self.register_buffer(name, getattr(tables, name).contiguous())
        else:
            self.register_buffer("w_re", form.w.real.clone())
            self.register_buffer("w_im", form.w.imag.clone())
            self.register_buffer("a", form.log_mu.real.clone())
            self.register_buffer("b", form.log_mu.imag.clone())
        self.register_buffer("D", layer.D.detach().float().clone())
        self.operand: object = None  # set by prepare(): shared by every sampling step

    def kernel(self, L: int) -> torch.Tensor:
        """Real float32 kernel ``[n_kernels, H, L]`` (``direct``/``fft``)."""
        n_chunks = L // KERNEL_CHUNK + 2  # enough taps; never 1, so tracing has no size-1 special case
        r = torch.arange(KERNEL_CHUNK, dtype=torch.float64, device=self.a.device)
        q = torch.arange(n_chunks, dtype=torch.float64, device=self.a.device) * KERNEL_CHUNK
        a, b = self.a[..., None], self.b[..., None]
        inner_abs, anchor_abs = torch.exp(a * r), torch.exp(a * q)
        inner_re, inner_im = inner_abs * torch.cos(b * r), inner_abs * torch.sin(b * r)
        anchor_re, anchor_im = anchor_abs * torch.cos(b * q), anchor_abs * torch.sin(b * q)
        w_re, w_im = self.w_re[..., None], self.w_im[..., None]
        left_re = (w_re * anchor_re - w_im * anchor_im).transpose(-1, -2)  # [n_kernels, H, n_chunks, M]
        left_im = (w_re * anchor_im + w_im * anchor_re).transpose(-1, -2)
        K = left_re @ inner_re - left_im @ inner_im  # [n_kernels, H, n_chunks, CHUNK]
        positions = torch.arange(L, device=K.device)  # a gather, not a slice: no guards on L vs chunks
        return K.flatten(-2).index_select(-1, positions).float()

    def conv_operand(self, L: int) -> object:
        """What the convolution needs for length ``L``: Toeplitz ``[H, L, L]``, spectrum ``[H, L + 1]`` or
        :class:`~ldns_fast.ssm.chunked.ChunkTables` with the :class:`~ldns_fast.ssm.chunked.ChunkPlan`
        for ``L``."""
        if self.conv == "chunked":
            tables = ChunkTables(self.folded, self.powers, self.weights, self.log_mu)
            return tables, chunk_plan(tables, L, self.steps)
        K = self.kernel(L)
        return toeplitz(K) if self.conv == "direct" else kernel_spectrum(K)

    def prepare(self, L: int | None) -> None:
        """Build the convolution operand for length ``L`` once (``None``: forget it)."""
        self.operand = None if L is None else self.conv_operand(L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u [B, H, L]``; ``chunked``: ``[B, H, C q]``, the prepared length padded to whole chunks."""
        if self.conv == "chunked":
            tables, plan = self.operand
            return padded_chunked_conv(u, tables, plan) + self.D[:, None] * u
        operand = self.operand if self.operand is not None else self.conv_operand(u.shape[-1])
        conv = toeplitz_conv if self.conv == "direct" else spectrum_conv
        return conv(u, operand, self.D)


def padded_length(conv: str, L: int) -> int:
    """The length graphs of ``conv`` run their denoiser at: ``L``, or whole chunks for ``chunked``."""
    if conv != "chunked":
        return L
    n_chunks, q = chunk_shape(L)
    return n_chunks * q


def pad(t: torch.Tensor | None, conv: str) -> torch.Tensor | None:
    """``t [B, C, L]`` zero-padded to :func:`padded_length` bins by a gather (no guard on ``L`` in a traced
    graph); unchanged unless ``conv`` is ``chunked``."""
    if t is None or conv != "chunked":
        return t
    index = torch.arange(padded_length(conv, t.shape[-1]), device=t.device).clamp_max(t.shape[-1])
    return F.pad(t, (0, 1)).index_select(-1, index)


def crop(t: torch.Tensor, conv: str, L: int) -> torch.Tensor:
    """The first ``L`` bins of ``t [B, C, >= L]`` by a gather; unchanged unless ``conv`` is ``chunked``."""
    return t if conv != "chunked" else t.index_select(-1, torch.arange(L, device=t.device))


@contextlib.contextmanager
def prepared(layers: list[DiagonalS4], L: int) -> Iterator[None]:
    """Every layer's convolution operand built for length ``L`` (once per graph call, shared by its steps),
    forgotten afterwards."""
    for layer in layers:
        layer.prepare(L)
    try:
        yield
    finally:
        for layer in layers:
            layer.prepare(None)


def to_diagonal_s4(model: nn.Module, conv: str, max_length: int) -> nn.Module:
    """A copy of ``model`` (eval mode) with every :class:`S4` replaced by a :class:`DiagonalS4`."""
    model = copy.deepcopy(model).eval().cpu()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, S4):
                setattr(module, child_name, DiagonalS4(child, conv, max_length))
    return model


class DenoiserStep(nn.Module):
    """One denoiser call ``(x [B, C, L], t [B], lengths [B], conditions?, behavior?) -> output [B, C, L]``."""

    def __init__(self, denoiser: Denoiser, conv: str, max_length: int) -> None:
        super().__init__()
        self.conv = conv
        self.denoiser = to_diagonal_s4(denoiser, conv, max_length)
        self.layers = [m for m in self.denoiser.modules() if isinstance(m, DiagonalS4)]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor,
        conditions: torch.Tensor | None = None, behavior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        L = x.shape[-1]
        padded = padded_length(self.conv, L)
        with prepared(self.layers, L):
            out = self.denoiser(pad(x, self.conv), t, valid_mask(lengths, padded), conditions,
                                pad(behavior, self.conv))
        return crop(out, self.conv, L)


class Decoder(nn.Module):
    """Latents ``[B, C_latent, L]`` (unnormalised) -> rates ``[B, N, L]``."""

    def __init__(self, autoencoder: Autoencoder) -> None:
        super().__init__()
        self.autoencoder = copy.deepcopy(autoencoder).eval().cpu()

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents)


class UnrolledSampler(nn.Module):
    """A whole deterministic sampler, unrolled: ``(noise [B, C, L], lengths [B], conditions?, behavior?)`` ->
    ``(latents [B, C, L], rates [B, N, L])``, both zero past each trial's length.

    ``conditions [B, cond_dim]`` and ``behavior [B, B_ch, L]`` are inputs when the model has them;
    classifier-free guidance with ``guidance_scale`` (fixed at export) mixes conditional and
    unconditional predictions. S4 kernels are generated once per call and shared by all steps.
    """

    def __init__(
        self, denoiser: Denoiser, autoencoder: Autoencoder, schedule: DiffusionSchedule,
        latent_mean: torch.Tensor, latent_std: torch.Tensor, sampler: str, steps: int, conv: str,
        max_length: int, guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(sampler, str) or sampler.lower() not in ("ddim", "dpm++"):
            raise ValueError(f"only deterministic samplers ('ddim', 'dpm++') can be exported, got {sampler!r}")
        self.sampler = make_sampler(sampler, copy.deepcopy(schedule))  # tracing fills its tables
        self.sampler.set_timesteps(steps)
        self.timesteps: list[int] = self.sampler.timesteps.tolist()
        self.conv = conv
        self.denoiser = to_diagonal_s4(denoiser, conv, max_length)
        self.decoder = Decoder(autoencoder)
        self.register_buffer("latent_mean", latent_mean.detach().float().cpu().clone())
        self.register_buffer("latent_std", latent_std.detach().float().cpu().clone())
        self.guidance_scale = float(guidance_scale)
        self.layers = [m for m in self.denoiser.modules() if isinstance(m, DiagonalS4)]

    def forward(
        self, noise: torch.Tensor, lengths: torch.Tensor,
        conditions: torch.Tensor | None = None, behavior: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        L = noise.shape[-1]
        padded = padded_length(self.conv, L)  # the denoiser runs on whole chunks; the padding stays masked
        mask, behavior = valid_mask(lengths, padded), pad(behavior, self.conv)
        model_fn = guided(self.denoiser, mask, conditions, behavior, self.guidance_scale)
        self.sampler.reset()
        x = pad(noise, self.conv)
        with prepared(self.layers, L):
            for t in self.timesteps:
                t_batch = torch.full((noise.shape[0],), t, dtype=torch.long, device=noise.device)
                x = self.sampler.step(model_fn(x, t_batch), t, x)
        mask = valid_mask(lengths, L)
        latents = LatentStats(self.latent_mean, self.latent_std).denormalise(crop(x, self.conv, L), mask)
        return latents, self.decoder(latents) * mask[:, None]

