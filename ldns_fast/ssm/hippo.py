"""HiPPO-LegS state matrices, dense and in diagonal-plus-low-rank (DPLR) form.

LegS: ``A[n, k] = -sqrt(2n+1) sqrt(2k+1)`` below the diagonal, ``-(n+1)`` on it, 0 above;
``B[n] = sqrt(2n+1)``; low-rank factor ``P[n] = sqrt(n + 1/2)``. The normal part
``S = A + P P^T = -I/2 + (skew-symmetric)`` is diagonalised by a unitary ``V``, so
``A = V (Lambda - P~ P~^H) V^H`` with ``P~ = V^H P`` and ``B~ = V^H B``. The eigenvalues come in
conjugate pairs; only the half with positive imaginary part is kept (``Np = N / 2``).
"""
from __future__ import annotations

import torch

from ldns_fast.validation import require_even_state


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense HiPPO-LegS system in float64: ``A [N, N]``, low-rank factor ``P [N]``, ``B [N]``."""
    require_even_state(N, "state size N")
    n = torch.arange(N, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    A = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, torch.sqrt(n + 0.5), root.clone()


def hippo_legs_dplr(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS in DPLR form, one state per conjugate pair.

    Returns:
        ``(Lambda, P, B)``, each complex128 ``[N/2]``: eigenvalues with ``Re = -1/2`` and
        ``Im > 0``, and the low-rank factor and input vector in that eigenbasis (``V^H P``, ``V^H B``).
        The full system is ``diag([Lambda, conj Lambda]) - P_full P_full^H`` with
        ``P_full = [P, conj P]`` and ``B_full = [B, conj B]``.
    """
    A, P, B = hippo_legs(N)
    normal = A + P[:, None] * P[None, :]
    skew = normal + 0.5 * torch.eye(N, dtype=torch.float64)
    # -i * skew is Hermitian: real eigenvalues mu give skew's eigenvalues i * mu, V unitary.
    mu, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    keep = mu > 0
    if int(keep.sum()) != N // 2:
        raise RuntimeError(f"expected {N // 2} positive-frequency eigenvalues, got {int(keep.sum())}")
    V = V[:, keep]
    Lambda = torch.complex(torch.full_like(mu[keep], -0.5), mu[keep])
    Vh = V.conj().T
    return Lambda, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128)
