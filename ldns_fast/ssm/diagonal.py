"""Any trained S4 kernel in diagonal form: ``K[k, h, l] = Re(sum_m w[k, h, m] mu[h, m]^l)``.

S4D kernels are diagonal already (``w = 2 C'``, ``log mu = log dA``). A DPLR kernel's discrete state
matrix ``dA [H, N, N]`` is diagonalised in float64 (``dA = V diag(mu) V^-1``), giving
``w = (C V) * (V^-1 dB)``; the result is checked against the layer's own kernel, because the eigenvectors
of HiPPO-type matrices can be ill-conditioned. The form feeds the chunked convolution
(:mod:`ldns_fast.ssm.chunked`) and the ONNX export.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .ssm_kernels import DiagonalKernel, DPLRKernel

# Largest relative error (float64) between the diagonal form's kernel and the layer's own kernel.
DIAGONAL_FORM_TOLERANCE = 1e-6


class DiagonalFormError(ValueError):
    """An S4 kernel has no faithful diagonal form (the message says why)."""


@dataclass
class DiagonalForm:
    """``w [n_kernels, H, M]`` and ``log_mu [H, M]`` (complex128) of ``K = Re(sum_m w mu^l)``, ``|mu| < 1``."""

    w: torch.Tensor
    log_mu: torch.Tensor

    def kernel(self, L: int) -> torch.Tensor:
        """Real float64 kernel ``[n_kernels, H, L]`` by the direct formula."""
        l = torch.arange(L, dtype=torch.float64, device=self.w.device)
        return (self.w[..., None] * torch.exp(self.log_mu[..., None] * l)).sum(-2).real


@torch.no_grad()
def diagonal_form(kernel: DiagonalKernel | DPLRKernel, check_length: int = 1024) -> DiagonalForm:
    """Diagonal form of an S4 kernel module, verified on ``check_length`` taps (raises :class:`DiagonalFormError`)."""
    k = copy.deepcopy(kernel).double().cpu()
    if isinstance(k, DiagonalKernel):
        v, log_dA = k.discretize()
        form = DiagonalForm(2 * v, log_dA.clone())
    elif isinstance(k, DPLRKernel):
        dA = k.discrete_state_matrix()  # [H, N, N]
        eye = torch.eye(dA.shape[-1], dtype=dA.dtype)
        B, C = k.B_complex(), k.C_complex()
        B_full, C_full = torch.cat([B, B.conj()], -1), torch.cat([C, C.conj()], -1)
        dB = ((dA + eye) / 2 @ (k.dt()[:, None] * B_full)[..., None])[..., 0]  # (I - dt A / 2)^-1 dt B
        mu, V = torch.linalg.eig(dA)
        w = (C_full.unsqueeze(-2) @ V).squeeze(-2) * torch.linalg.solve(V, dB[..., None])[..., 0]
        form = DiagonalForm(w, torch.log(mu))
    else:
        raise DiagonalFormError(f"no diagonal form for an S4 kernel of type {type(kernel).__name__}")
    if not bool((form.log_mu.real < 0).all()):
        raise DiagonalFormError(f"a {type(kernel).__name__} has state eigenvalues with |mu| >= 1 (unstable)")
    ref = k(check_length)
    err = float((form.kernel(check_length) - ref).norm() / ref.norm().clamp_min(1e-300))
    if not err <= DIAGONAL_FORM_TOLERANCE:
        raise DiagonalFormError(
            f"the diagonal form of a {type(kernel).__name__} deviates from its kernel by {err:.2e} (relative, "
            f"limit {DIAGONAL_FORM_TOLERANCE:.0e}): its state matrix is too ill-conditioned"
        )
    return form
