"""The S4 layer: an SSM convolution kernel, its convolution and a skip term, with an inference cache.

Two convolutions: ``conv="fft"`` (the default; any use, differentiable in every parameter) and
``conv="chunked"`` (:mod:`.chunked`: matmuls only, linear in ``L``, with a small plan per length;
inference only: no gradient reaches the kernel parameters through it). On CPU torch's FFT measured as fast
at 140 bins and faster from 2,048 bins on (``benchmarks/results/long_recordings_cpu.md``), so nothing picks
the chunked scan automatically; it is what the ONNX export builds its long-recording graphs from.

The kernel depends only on the weights and the length ``L``, so when no gradient can flow to it
(grad mode off, or the kernel parameters frozen) its spectrum (:func:`kernel_spectrum`, what the FFT
convolution multiplies by) is computed once per ``(L, device, dtype)`` and reused, and so are the chunked
scan's operands (one set for every length) and its plans (per length). The cache is keyed on every
kernel parameter's storage pointer and version counter, so optimiser steps, in-place edits,
``load_state_dict`` and ``.to()`` invalidate it.

A call checks its input's shape and dtype only: no NaN scan and no host-device synchronisation (values
are validated where they enter the package: :class:`~ldns_fast.pipeline.LDNS`, the CLIs and data readers).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ldns_fast.validation import is_integer

from .chunked import ChunkPlan, ChunkTables, chunk_plan, chunk_tables, chunked_conv
from .diagonal import diagonal_form
from .fftconv import fft_conv, kernel_spectrum, spectrum_conv
from .ssm_kernels import DiagonalKernel, DPLRKernel

# Number of cached convolution operands (kernel spectra, one per length, and the chunked scan's) kept,
# least recently used evicted first.
KERNEL_CACHE_SIZE = 8
CONV_MODES = ("fft", "chunked")

class S4(nn.Module):
    """S4 layer ``y = K * u + D u`` on ``[B, H, L]`` sequences.

    Args:
        d_model: channels ``H``.
        d_state: state size ``N`` (even).
        mode: ``"dplr"`` (original S4, HiPPO-LegS with rank-1 term, bilinear) or ``"diag"`` (S4D).
        disc: ``"bilinear"`` or ``"zoh"`` (``"zoh"`` only with ``mode="diag"``).
        init: ``"legs"`` or ``"lin"`` (``"lin"`` only with ``mode="diag"``).
        bidirectional: also convolve with a second, anti-causal kernel.
        dt_min, dt_max: range of the log-uniform initial step sizes.
        backend: kernel backend (``"auto"``, ``"naive"``, ``"torch"``, ``"keops"``, ``"triton"``).
        conv: ``"fft"`` or ``"chunked"`` (inference only; see the module docstring).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        mode: str = "dplr",
        disc: str = "bilinear",
        init: str = "legs",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
        conv: str = "fft",
    ) -> None:
        super().__init__()
        if not is_integer(d_model) or d_model < 1:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        if conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {CONV_MODES}, got {conv!r}")
        self.d_model, self.conv = d_model, conv
        if mode == "dplr":
            if disc != "bilinear" or init != "legs":
                raise ValueError(
                    f"mode='dplr' supports only disc='bilinear' and init='legs', got disc={disc!r}, init={init!r}"
                )
            self.kernel: nn.Module = DPLRKernel(d_model, d_state, bidirectional, dt_min, dt_max, backend)
        elif mode == "diag":
            self.kernel = DiagonalKernel(d_model, d_state, init, disc, bidirectional, dt_min, dt_max, backend)
        else:
            raise ValueError(f"mode must be 'dplr' or 'diag', got {mode!r}")
        self.D = nn.Parameter(torch.randn(d_model))
        self._cache: OrderedDict[tuple, torch.Tensor | ChunkTables] = OrderedDict()
        self._cache_signature: tuple = ()

    def clear_kernel_cache(self) -> None:
        """Drop every cached convolution operand."""
        self._cache.clear()
        self._cache_signature = ()

    def _parameter_signature(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.kernel.parameters())

    def _cacheable(self) -> bool:
        """True when no gradient can flow to the kernel (grad mode off or kernel parameters frozen)."""
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.kernel.parameters())

    def _cached(self, key: tuple, build: Callable[[], torch.Tensor | ChunkTables]) -> torch.Tensor | ChunkTables:
        """The cache entry ``key`` (with the kernel's device and dtype), built under no_grad when missing."""
        signature = self._parameter_signature()
        if signature != self._cache_signature:
            self.clear_kernel_cache()
            self._cache_signature = signature
        ref = self.kernel.log_dt
        key = (*key, ref.device, ref.dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with torch.no_grad():
            value = build()
        self._cache[key] = value
        if len(self._cache) > KERNEL_CACHE_SIZE:
            self._cache.popitem(last=False)
        return value

    # Runs eagerly under torch.compile (the lookup reads storage pointers and version counters, which
    # dynamo cannot trace): a compiled caller gets a graph break here, or passes the spectrum to forward().
    # torch._disable_dynamo is torch.compiler.disable imported on first call: importing torch's compiler
    # at import time would import triton (torch 2.13), which importing ldns_fast must not.
    @torch._disable_dynamo
    def cached_spectrum(self, L: int) -> torch.Tensor:
        """Kernel spectrum ``[H, L + 1]`` (complex) for length ``L``, computed once per weights and ``L``.

        A value without gradient history: no gradient reaches the kernel parameters through it.
        """
        return self._cached(("spectrum", L), lambda: kernel_spectrum(self.kernel(L)))

    @torch._disable_dynamo
    def cached_chunk_tables(self) -> ChunkTables:
        """The chunked scan's tables (any length; the kernel's dtype and device), computed once per weights.

        Built from the kernel's diagonal form (:func:`~ldns_fast.ssm.diagonal.diagonal_form`, which
        raises :class:`~ldns_fast.ssm.diagonal.DiagonalFormError` for an ill-conditioned DPLR kernel).
        """
        ref = self.kernel.log_dt
        return self._cached(("chunked",), lambda: chunk_tables(diagonal_form(self.kernel), dtype=ref.dtype,
                                                               device=ref.device))

    @torch._disable_dynamo
    def cached_chunk_plan(self, L: int) -> ChunkPlan:
        """The chunked scan's plan (cuts, decays, gathers) for length ``L``, made once per weights and ``L``."""
        return self._cached(("chunk-scan", L), lambda: chunk_plan(self.cached_chunk_tables(), L))

    def _check_input(self, u: object) -> torch.Tensor:
        if not isinstance(u, torch.Tensor) or u.dim() != 3 or not u.is_floating_point():
            desc = f"{tuple(u.shape)} {u.dtype}" if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"u must be a real floating tensor of shape [B, H, L], got {desc}")
        if u.shape[1] != self.d_model or u.shape[2] == 0:
            raise ValueError(
                f"u must have shape [B, H={self.d_model}, L>=1] for d_model={self.d_model}, got {tuple(u.shape)}"
            )
        return u

    def forward(self, u: torch.Tensor, spectrum: torch.Tensor | None = None) -> torch.Tensor:
        """``u [B, H, L]`` -> ``[B, H, L]``.

        ``spectrum``: the kernel spectrum ``[H, L + 1]`` for this length, from :meth:`cached_spectrum`
        (for a compiled caller that looks it up outside its graph); used as given, so no gradient
        reaches the kernel parameters. Without it the kernel is cached when no gradient can reach it.
        """
        u = self._check_input(u)
        L = u.shape[-1]
        if spectrum is None:
            if not self._cacheable():
                if self.conv == "chunked":
                    raise ValueError("conv='chunked' is for inference: it passes no gradient to the kernel "
                                     "parameters (use torch.no_grad(), freeze the kernel, or conv='fft')")
                return fft_conv(u, self.kernel(L), self.D)
            if self.conv == "chunked":
                return chunked_conv(u, self.cached_chunk_tables(), self.D, self.cached_chunk_plan(L))
            spectrum = self.cached_spectrum(L)
        elif tuple(spectrum.shape) != (self.d_model, L + 1) or not spectrum.is_complex():
            raise ValueError(
                f"spectrum must be a complex tensor of shape [H, L + 1] = [{self.d_model}, {L + 1}], "
                f"got {tuple(spectrum.shape)} {spectrum.dtype}"
            )
        return spectrum_conv(u, spectrum, self.D)
