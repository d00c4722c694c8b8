"""State-space layers (S4D, DPLR S4) built on :mod:`ldns_fast.kernels`.

- :class:`S4`: the layer ``[B, H, L] -> [B, H, L]`` with an inference kernel cache and a choice of
  convolution (``conv``: FFT or chunked scan).
- :class:`DPLRKernel`, :class:`DiagonalKernel`: real SSM kernels ``L -> [n_kernels, H, L]``;
  :func:`diagonal_form`: any of them as ``K = Re(sum_m w mu^l)``.
- :func:`fft_conv`, :func:`direct_conv`: causal or bidirectional convolution with a skip term (FFT or
  Toeplitz product); :func:`chunked_conv`: the same, linear in ``L`` with matmuls only, from a diagonal
  form (:func:`chunk_tables`, :func:`chunk_plan`).
- :func:`hippo_legs`, :func:`hippo_legs_dplr`: HiPPO-LegS matrices, dense and in DPLR form.
"""
from .chunked import ChunkPlan, ChunkTables, chunk_plan, chunk_tables, chunked_conv
from .diagonal import DiagonalForm, DiagonalFormError, diagonal_form
from .fftconv import direct_conv, fft_conv, fold_kernel, kernel_spectrum, spectrum_conv, toeplitz, toeplitz_conv
from .hippo import hippo_legs, hippo_legs_dplr
from .s4 import KERNEL_CACHE_SIZE, S4
from .ssm_kernels import DiagonalKernel, DPLRKernel, bilinear_nodes

__all__ = [
    "KERNEL_CACHE_SIZE",
    "S4",
    "ChunkTables",
    "DPLRKernel",
    "DiagonalForm",
    "DiagonalFormError",
    "DiagonalKernel",
    "ChunkPlan",
    "bilinear_nodes",
    "chunk_tables",
    "chunked_conv",
    "diagonal_form",
    "direct_conv",
    "fft_conv",
    "fold_kernel",
    "hippo_legs",
    "hippo_legs_dplr",
    "kernel_spectrum",
    "chunk_plan",
    "spectrum_conv",
    "toeplitz",
    "toeplitz_conv",
]
