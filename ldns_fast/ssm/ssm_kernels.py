"""SSM convolution kernels: S4D (diagonal) and the original DPLR S4 (HiPPO-LegS, rank-1 correction).

Both modules map a length ``L`` to a real kernel ``[n_kernels, H, L]`` (``n_kernels`` is 2 when
bidirectional, else 1). Each direction has its own output vector ``C``; the state matrix ``A``, the
input vector ``B`` (and ``P``) and the step ``dt`` are shared. Every state is one of a conjugate pair,
so ``Np = N / 2`` complex states describe a real system of size ``N``.

Complex parameters are stored as real views ``[..., 2]`` (so optimisers, ``.double()`` and state dicts
see plain real tensors). ``Re(A)`` is stored as ``log(-Re A)`` so it stays negative (stable).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ldns_fast.kernels import cauchy_kernel, vandermonde_kernel
from ldns_fast.validation import require_even_state

from .hippo import hippo_legs_dplr


def _complex_parameter(z: torch.Tensor) -> nn.Parameter:
    """A float32 real-view parameter ``[..., 2]`` holding the complex tensor ``z``."""
    return nn.Parameter(torch.view_as_real(z.to(torch.complex64)).clone())


def _random_complex(*shape: int) -> torch.Tensor:
    """Complex normal samples with variance 1/2 in each of the real and imaginary parts."""
    return torch.complex(torch.randn(*shape), torch.randn(*shape)) * math.sqrt(0.5)


class _SSMKernel(nn.Module):
    """Parameters shared by both kernels: ``log_dt [H]``, ``A [H, Np]``, ``B [H, Np]``, ``C [n_kernels, H, Np]``."""

    def __init__(
        self,
        d_model: int,
        A: torch.Tensor,
        B: torch.Tensor,
        bidirectional: bool,
        dt_min: float,
        dt_max: float,
        backend: str,
    ) -> None:
        super().__init__()
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        H, Np = d_model, A.shape[-1]
        self.n_kernels = 2 if bidirectional else 1
        self.backend = backend
        log_min, log_max = math.log(dt_min), math.log(dt_max)
        self.log_dt = nn.Parameter(torch.rand(H) * (log_max - log_min) + log_min)
        A, B = A.expand(H, Np), B.expand(H, Np)
        self.log_neg_A_real = nn.Parameter(torch.log(-A.real).float().clone())
        self.A_imag = nn.Parameter(A.imag.float().clone())
        self.B = _complex_parameter(B)
        self.C = _complex_parameter(_random_complex(self.n_kernels, H, Np))

    def dt(self) -> torch.Tensor:
        """Step sizes ``[H]``."""
        return torch.exp(self.log_dt)

    def A(self) -> torch.Tensor:
        """Diagonal state eigenvalues ``[H, Np]`` (complex, negative real part)."""
        return torch.complex(-torch.exp(self.log_neg_A_real), self.A_imag)

    def B_complex(self) -> torch.Tensor:
        """Input vector ``[H, Np]`` (complex)."""
        return torch.view_as_complex(self.B)

    def C_complex(self) -> torch.Tensor:
        """Output vectors ``[n_kernels, H, Np]`` (complex)."""
        return torch.view_as_complex(self.C)


class DiagonalKernel(_SSMKernel):
    """S4D kernel ``K[h, l] = 2 Re(sum_n C'[h, n] dA[h, n]^l)`` via :func:`vandermonde_kernel`.

    Args:
        d_model: channels ``H``.
        d_state: state size ``N`` (even); ``Np = N / 2`` complex states.
        init: ``"legs"`` (diagonal part of HiPPO-LegS and its ``B``) or ``"lin"``
            (``A_n = -1/2 + i pi n``, ``B = 1``).
        disc: ``"zoh"`` or ``"bilinear"``.
        bidirectional: two output vectors ``C`` (forward and backward kernels).
        dt_min, dt_max: range of the log-uniform initial step sizes.
        backend: kernel backend passed to :func:`vandermonde_kernel`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        disc: str = "zoh",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
    ) -> None:
        require_even_state(d_state, "d_state")
        if disc not in ("zoh", "bilinear"):
            raise ValueError(f"disc must be 'zoh' or 'bilinear', got {disc!r}")
        if init == "legs":
            A, _, B = hippo_legs_dplr(d_state)
        elif init == "lin":
            n = torch.arange(d_state // 2, dtype=torch.float64)
            A = torch.complex(torch.full_like(n, -0.5), math.pi * n)
            B = torch.ones_like(A)
        else:
            raise ValueError(f"init must be 'legs' or 'lin', got {init!r}")
        super().__init__(d_model, A, B, bidirectional, dt_min, dt_max, backend)
        self.disc = disc

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C', log dA)``: output weights ``[n_kernels, H, Np]`` and log state powers ``[H, Np]``."""
        dt, A = self.dt()[:, None], self.A()
        dtA = dt * A
        CB = self.C_complex() * self.B_complex()
        if self.disc == "zoh":
            return CB * torch.expm1(dtA) / A, dtA
        return CB * dt / (1 - dtA / 2), torch.log((1 + dtA / 2) / (1 - dtA / 2))

    def forward(self, L: int) -> torch.Tensor:
        """Real kernel ``[n_kernels, H, L]``."""
        v, x = self.discretize()
        n_kernels, H, Np = v.shape
        x = x.expand(n_kernels, H, Np)
        K = vandermonde_kernel(v.reshape(-1, Np), x.reshape(-1, Np), L, backend=self.backend, check_finite=False)
        return K.reshape(n_kernels, H, L)


LOW_RANK_SQUARINGS = 4  # squarings of dA^(2^j) kept as diagonal plus rank 2^j, before dense ones


class FactoredPower(NamedTuple):
    """A conjugate-pair matrix ``M = diag([delta, conj delta]) + [U; conj U] [W, conj W] / 2`` kept factored
    as complex ``delta [H, Np]``, ``U [H, Np, r]``, ``W [H, r, Np]``, acting on row vectors ``x [H, R, Np]``.

    ``x`` stands for the real row ``[Re x, -Im x]`` in real and imaginary coordinates, where ``M`` is the real
    matrix ``Bd(delta) + [Re U; Im U] [Re W, -Im W]`` (``Bd``: the 2 x 2-block diagonal of multiplication by
    ``delta``, :meth:`dense`); in these terms ``x M = x delta + Re(x U) W``.
    """

    delta: torch.Tensor
    U: torch.Tensor
    W: torch.Tensor

    def squared(self) -> FactoredPower:
        """``M^2``: ``delta^2``, ``[delta U, U]`` and ``[W; W delta + Re(W U) W]`` (the rank doubles; no
        ``N x N`` product)."""
        delta, U, W = self
        return FactoredPower(delta * delta, torch.cat([delta[..., None] * U, U], -1),
                             torch.cat([W, self.rows_times(W)], -2))

    def rows_times(self, x: torch.Tensor) -> torch.Tensor:
        """``x M`` for complex rows ``x [H, R, Np]``."""
        return torch.baddbmm(x * self.delta[:, None, :], (x @ self.U).real.to(x.dtype), self.W)

    def dense(self) -> torch.Tensor:
        """The real ``[H, N, N]`` matrix (N = 2 Np): the rank-r product plus the block diagonal's three diagonals
        (one out-of-place scatter, so the backward gathers them instead of copying the gradient per diagonal)."""
        delta, U, W = self
        H, Np = delta.shape
        main, upper = torch.arange(2 * Np, device=delta.device), torch.arange(Np, device=delta.device)
        rows = torch.cat([main, upper, upper + Np])
        cols = torch.cat([main, upper + Np, upper])
        values = torch.cat([delta.real, delta.real, -delta.imag, delta.imag], -1)  # [H, 4 Np]
        product = torch.cat([U.real, U.imag], -2) @ torch.cat([W.real, -W.imag], -1)
        return product.index_put((torch.arange(H, device=delta.device)[:, None], rows, cols), values, accumulate=True)


class _RowsTimesPower(torch.autograd.Function):
    """``rows D^q`` for ``rows [H, R, N]`` and ``D [H, N, N]`` by q row products, with one batched matmul for
    the gradient of ``D``: ``dD = sum_j x_j^T g_(j+1)`` over the chain ``x_(j+1) = x_j D`` (autograd would add q
    outer products of inner size R, each a full ``N x N`` pass)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, D: torch.Tensor, q: int) -> torch.Tensor:
        chain = [rows]
        for _ in range(q):
            chain.append(chain[-1] @ D)
        ctx.save_for_backward(torch.cat(chain[:-1], 1), D)  # x_0 .. x_(q-1): [H, q R, N]
        ctx.q = q
        return chain[-1]

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        xs, D = ctx.saved_tensors
        grads = []  # g_q .. g_1
        for _ in range(ctx.q):
            grads.append(g)
            g = g @ D.transpose(-1, -2)
        dD = xs.transpose(-1, -2) @ torch.cat(grads[::-1], 1)
        return g, dD, None


def conjugate_pair_power(c: torch.Tensor, delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                         L: int) -> torch.Tensor:
    """The first half of ``[c, conj(c)] M^L`` for ``M = diag([delta, conj delta]) + [a, conj a]^T [b, conj b]``
    (the DPLR ``dA``): c complex ``[..., H, Np]``, ``delta, a, b`` complex ``[H, Np]``, L >= 0 -> ``[..., H, Np]``.

    Such an M is similar to a real matrix through the change to real and imaginary coordinates
    ``T = [[I, I], [-i I, i I]] / 2``: ``T M T^-1 = Bd(delta) + [Re a; Im a] [2 Re b, -2 Im b]``
    (:class:`FactoredPower` with ``U = a``, ``W = 2 b``), ``[c, conj c] T^-1 = 2 [Re c, -Im c]``, and
    ``[x, y] T`` has the first half ``(x - i y) / 2`` (the rows start as ``[Re c, -Im c]``: the 2 and 1/2 cancel).

    The power: ``M^(2^k)`` with ``L / 2^k`` in [8, 16), the first :data:`LOW_RANK_SQUARINGS` squarings
    factored (rank 2^j), then dense real ones (a real matmul costs a quarter of a complex one); the rows take
    one product per set bit of the remainder ``r`` (factored ones first: the powers commute), then q real
    products with ``M^(2^k)``. Stopping the squarings short of ``log2 L`` halves the work of a full power, and
    the factored squarings save four dense ones.
    """
    *lead, H, Np = c.shape
    x = c.reshape(-1, H, Np).transpose(0, 1)  # [H, R, Np]
    k = max(0, L.bit_length() - 4)
    factored = [FactoredPower(delta, a[..., None], 2 * b[..., None, :])]
    for _ in range(min(k, LOW_RANK_SQUARINGS)):
        factored.append(factored[-1].squared())
    q, r = divmod(L, 1 << k)
    for bit, level in enumerate(factored[:k]):
        if r >> bit & 1:
            x = level.rows_times(x)
    dense = [factored[-1].dense()]  # M^(2^j) for j = len(factored) - 1 .. k
    for _ in range(k + 1 - len(factored)):
        dense.append(dense[-1] @ dense[-1])
    rows = torch.cat([x.real, -x.imag], -1)  # [H, R, N]
    if q:
        rows = _RowsTimesPower.apply(rows, dense[-1], q)
    for bit in range(len(factored), k):
        if r >> bit & 1:
            rows = rows @ dense[bit + 1 - len(factored)]
    out = torch.complex(rows[..., :Np], -rows[..., Np:]).transpose(0, 1)
    return out.reshape(*lead, H, Np)


def bilinear_nodes(L: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cauchy nodes for frequencies ``k = 0 .. ceil(L/2) - 1`` (all of rfft's except ``omega = -1``).

    With ``omega_k = exp(-2 pi i k / L)`` and ``t = tan(pi k / L)``:
    ``z_k = 2 (1 - omega_k) / (1 + omega_k) = 2 i t`` and ``2 / (1 + omega_k) = 1 + i t``.
    Returns ``(z, scale)``, both complex ``[ceil(L/2)]``, computed in float64 then cast to ``dtype``.
    """
    k = torch.arange((L + 1) // 2, dtype=torch.float64, device=device)
    t = torch.tan(math.pi * k / L)
    z = torch.complex(torch.zeros_like(t), 2 * t)
    scale = torch.complex(torch.ones_like(t), t)
    return z.to(dtype), scale.to(dtype)


class DPLRKernel(_SSMKernel):
    """Original S4 kernel (bilinear): ``K[l] = C_full dA^l dB`` for ``A = diag(Lambda) - P P^H``.

    Computed from the truncated generating function ``C~ (I - omega dA)^{-1} dB`` at the roots of unity,
    ``C~ = C_full (I - dA^L)``, with the rank-1 Woodbury identity over four Cauchy sums (one
    :func:`cauchy_kernel` call: the sums share their poles), then an inverse real FFT. ``C_full dA^L`` is
    formed functionally for each ``L`` (:func:`conjugate_pair_power`: the rows of ``C`` times a power of the real
    form of ``dA`` per channel, never a complex ``N x N`` matrix); no parameter is ever mutated.

    Args:
        d_model: channels ``H``.
        d_state: state size ``N`` (even); ``Np = N / 2`` complex states per channel.
        bidirectional: two output vectors ``C`` (forward and backward kernels).
        dt_min, dt_max: range of the log-uniform initial step sizes.
        backend: kernel backend passed to :func:`cauchy_kernel`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
    ) -> None:
        require_even_state(d_state, "d_state")
        Lambda, P, B = hippo_legs_dplr(d_state)
        super().__init__(d_model, Lambda, B, bidirectional, dt_min, dt_max, backend)
        self.P = _complex_parameter(P.expand(d_model, -1))

    def P_complex(self) -> torch.Tensor:
        """Low-rank factor ``[H, Np]`` (complex)."""
        return torch.view_as_complex(self.P)

    def discrete_state_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(delta, a, b)``, complex ``[H, Np]``: the bilinear ``dA = (I - h A)^{-1} (I + h A)`` (``h = dt / 2``)
        is ``diag([delta, conj delta]) + [a, conj a]^T [b, conj b]``.

        ``dA = 2 (I - h A)^{-1} - I`` and ``I - h A = diag(1 - h Lambda_full) + h P_full P_full^H`` is diagonal
        plus rank 1, so by Sherman-Morrison, with ``d = 1 / (1 - h Lambda)``: ``delta = 2 d - 1``,
        ``a = -2 g d P``, ``b = conj(P) d`` and the real gain ``g = h / (1 + 2 h sum |P|^2 Re d)``.
        """
        h = (self.dt() / 2)[:, None]
        P = self.P_complex()
        d = 1 / (1 - h * self.A())
        gain = h / (1 + 2 * h * (torch.view_as_real(P).square().sum(-1) * d.real).sum(-1, keepdim=True))
        return 2 * d - 1, -2 * gain * d * P, P.conj() * d

    def discrete_state_matrix(self) -> torch.Tensor:
        """The bilinear ``dA`` as a complex ``[H, N, N]`` matrix (from :meth:`discrete_state_parts`)."""
        delta, a, b = self.discrete_state_parts()
        u, w = torch.cat([a, a.conj()], -1), torch.cat([b, b.conj()], -1)
        return torch.diag_embed(torch.cat([delta, delta.conj()], -1)) + u[..., :, None] * w[..., None, :]

    def forward(self, L: int) -> torch.Tensor:
        """Real kernel ``[n_kernels, H, L]``."""
        dt, Lambda, P, B, C = self.dt(), self.A(), self.P_complex(), self.B_complex(), self.C_complex()
        nk = self.n_kernels
        C_tilde = C - conjugate_pair_power(C, *self.discrete_state_parts(), L)  # [nk, H, Np]

        z, scale = bilinear_nodes(L, Lambda.dtype, Lambda.device)
        left = torch.cat([C_tilde, P.conj().unsqueeze(0)], dim=0)  # [nk + 1, H, Np]: (C~ || Q)
        right = torch.stack([B, P], dim=0)  # [2, H, Np]: (B || P)
        v = left[:, None] * right[None] * dt[:, None]  # [nk + 1, 2, H, Np]
        r = cauchy_kernel(v, z, dt[:, None] * Lambda, backend=self.backend, check_finite=False)  # [nk+1, 2, H, M]
        r00, r01, r10, r11 = r[:nk, 0], r[:nk, 1], r[nk, 0], r[nk, 1]
        k_f = (r00 - r01 * r10 / (1 + r11)) * scale
        if L % 2 == 0:
            # omega = -1: (I + dA)^{-1} dB = dt B / 2, so k_f = C~_full B_full dt / 2 (no low-rank term).
            nyquist = (C_tilde * B * dt[:, None]).sum(-1).real
            k_f = torch.cat([k_f, nyquist.unsqueeze(-1).to(k_f.dtype)], dim=-1)
        return torch.fft.irfft(k_f, n=L)
