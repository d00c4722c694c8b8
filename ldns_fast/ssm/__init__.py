"""State-space layers (S4D, DPLR S4) built on :mod:`ldns_fast.kernels`.

- :class:`S4`: the layer ``[B, H, L] -> [B, H, L]`` with an inference kernel cache.
- :class:`DPLRKernel`, :class:`DiagonalKernel`: real SSM kernels ``L -> [n_kernels, H, L]``.
- :func:`fft_conv`: causal or bidirectional FFT convolution with a skip term.
- :func:`hippo_legs`, :func:`hippo_legs_dplr`: HiPPO-LegS matrices, dense and in DPLR form.
"""
from .fftconv import fft_conv, fold_kernel
from .hippo import hippo_legs, hippo_legs_dplr
from .s4 import KERNEL_CACHE_SIZE, S4
from .ssm_kernels import DiagonalKernel, DPLRKernel, bilinear_nodes

__all__ = [
    "KERNEL_CACHE_SIZE",
    "S4",
    "DPLRKernel",
    "DiagonalKernel",
    "bilinear_nodes",
    "fft_conv",
    "fold_kernel",
    "hippo_legs",
    "hippo_legs_dplr",
]
