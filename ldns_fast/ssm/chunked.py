"""Chunked-scan S4 convolution: linear in ``L``, made of matmuls, gathers and elementwise ops only.

A layer in diagonal form (:mod:`.diagonal`: ``K_k[l] = Re sum_m w[k, m] mu_m^l``, ``|mu| < 1``) is a
diagonal linear time-invariant system. A sequence of ``L`` bins is split into ``C = max(1, L // CHUNK)``
chunks of ``q = ceil(L / C)`` bins (``CHUNK <= q < 2 CHUNK``; a sequence shorter than ``2 CHUNK`` is one
chunk, a plain Toeplitz product), ``t = cq + i``:

- causal part: ``y[t] = sum_{j <= i} K_0[i - j] u[cq + j] + Re sum_m w_0m mu_m^(i + 1) S_m[c]`` with the
  state ``S_m[c] = sum_{s < cq} mu_m^(cq - 1 - s) u[s]``, i.e. ``S[c + 1] = a S[c] + x[c]``, ``a = mu^q`` and
  ``x_m[c] = sum_j mu_m^(q - 1 - j) u[cq + j]``;
- anti-causal part (bidirectional, ``y[t] += sum_{l >= 0} K_1[l] u[t + 1 + l]``): the mirror image, with
  ``G_m[c] = sum_{s >= (c + 1) q} mu_m^(s - (c + 1) q) u[s]`` read out by ``w_1m mu_m^(q - 1 - i)``.

The in-chunk parts of both directions form one ``q x q`` Toeplitz matrix; states enter and leave by one
matmul per chunk (``[q] -> [2M]``: real parts, then imaginary parts). All of these are sub-blocks of tables
built once per layer (:class:`ChunkOperands`). The chunk-to-chunk recurrence is a doubling scan: step ``k``
adds ``a^(2^k)`` times the partial sums ``2^k`` states back, so ``s`` steps cover ``2^s`` states
(:func:`capacity`) and an exported graph needs no loop; the anti-causal states are scanned in reverse chunk
order beside the causal ones. The decays ``a^(2^k) = exp(q 2^k log mu)`` (in :func:`chunk_plan`, with the
sub-blocks for ``q``) are computed in float64 and cast: no ``sin(l theta)`` at large ``l`` in single
precision, and the scan is stable (``|a| < 1``).

Chunks are formed and states shifted by gathers, not padded slices, so every size in a graph traced with a
dynamic length is ``L``, ``C``, ``q`` or ``C - 1``. Cost ``O(B H L (q + M + M log C / q))``, memory
``O(B H L (1 + M / q))``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .diagonal import DiagonalForm
from .fftconv import toeplitz

# Chunk length (bins): chunks hold CHUNK to 2 CHUNK - 1 bins (benchmarks/results/long_recordings_cpu.md).
CHUNK = 128


def chunk_shape(L: int, chunk: int = CHUNK) -> tuple[int, int]:
    """``(C, q)``: the number of chunks and bins per chunk (the last padded) for a sequence of ``L >= 1`` bins."""
    n_chunks = L // chunk
    n_chunks = max(n_chunks, 1) if isinstance(n_chunks, int) else torch.sym_max(n_chunks, 1)
    return n_chunks, (L + n_chunks - 1) // n_chunks


def scan_steps(n_states: int) -> int:
    """Doubling steps that scan ``n_states`` chunk states (shifts ``1, 2, .., 2^(s - 1)``)."""
    return max(n_states - 1, 0).bit_length()


def steps_for(L: int, chunk: int = CHUNK) -> int:
    """Doubling steps that a sequence of ``L`` bins needs."""
    return scan_steps(chunk_shape(L, chunk)[0] - 1)


def capacity(steps: int, chunk: int = CHUNK) -> int:
    """Longest sequence (bins) that ``steps`` doubling steps convolve exactly."""
    return chunk * (2**steps + 2) - 1


@dataclass
class ChunkTables:
    """Tables of one layer's diagonal form, enough for the chunked convolution at any length.

    ``taps [n_kernels, H, S]``: the kernels' first ``S = 2 CHUNK`` taps (longer than any chunk).
    ``powers [2, H, M, S + 1]``: real and imaginary parts of ``mu^k``. ``weights [2, n_kernels, H, M]``: of
    ``w``. ``log_mu [2, H, M]`` (float64): of ``log mu``, for the scan matrices.
    """

    taps: torch.Tensor
    powers: torch.Tensor
    weights: torch.Tensor
    log_mu: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tables by field name (for registering them as buffers)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ChunkOperands:
    """What :func:`chunked_conv` multiplies by, for any length, built from :class:`ChunkTables`; every
    matrix multiplies rows (bins or states) from the right.

    ``toeplitz [H, S, S]``: in-chunk, both directions (``y_chunk = x_chunk @ toeplitz``). ``state_in
    [n_kernels, H, S, 2M]`` and ``readout [n_kernels, H, 2M, S]`` (state columns: the modes' real parts,
    then their imaginary parts); a chunk of ``q`` bins uses the last (causal) or first ``q`` bins of the
    state input and the first (causal) or last ``q`` of the readout, so that powers run up to ``q - 1``.
    ``log_mu [2, H, M]`` (float64).
    """

    toeplitz: torch.Tensor
    state_in: torch.Tensor
    readout: torch.Tensor
    log_mu: torch.Tensor

    @property
    def chunk(self) -> int:
        return self.toeplitz.shape[-1] // 2


@dataclass
class ChunkPlan:
    """:class:`ChunkOperands` cut for sequences of ``length`` bins in ``C`` chunks of ``q`` bins, and the scan's
    decays and shifts. The ``n = C - 1`` states of each direction are scanned together, the anti-causal ones
    in reverse chunk order (so both scans run forward).

    ``toeplitz [H, q, q]``; ``state_in [H, n_kernels, q, 2M]`` and ``readout [H, n_kernels, 2M, q]``;
    ``rows [n_kernels, n]``: the chunks whose states are scanned (``0..C-2``; ``C-1..1``); ``targets
    [n_kernels, C]``: the scanned state each chunk reads (``c - 1``; ``C - 2 - c``), -1 for none. Per
    doubling step ``k``, with ``a^(2^k) = a_re + i a_im`` (``a = mu^q``): ``decays``, the factors
    ``[a_re, a_re]`` and ``[-a_im, a_im]`` ``[H, 1, 1, 1, 2, M]`` of a state ``[re, im]`` and of its swap
    ``[im, re]``; ``shifts``, the state ``c - 2^k`` each state reads (``[n]``, clamped) and whether it exists
    (``[n, 1, 1]``, 0/1).
    """

    toeplitz: torch.Tensor
    state_in: torch.Tensor
    readout: torch.Tensor
    rows: torch.Tensor
    targets: torch.Tensor
    decays: list[tuple[torch.Tensor, torch.Tensor]]
    shifts: list[tuple[torch.Tensor, torch.Tensor]]
    length: int

    @property
    def steps(self) -> int:
        return len(self.decays)


@torch.no_grad()
def chunk_tables(
    form: DiagonalForm, chunk: int = CHUNK, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ChunkTables:
    """:class:`ChunkTables` of a diagonal form for chunks of ``chunk`` bins (tables of ``2 chunk`` taps: see
    :func:`chunk_shape`), computed in float64 and stored in ``dtype`` on ``device`` (default: the form's);
    ``log_mu`` stays float64."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    w, log_mu = form.w.to(torch.complex128), form.log_mu.to(torch.complex128)
    k = torch.arange(2 * chunk + 1, dtype=torch.float64, device=log_mu.device)
    powers = torch.exp(log_mu[..., None] * k)
    device = log_mu.device if device is None else device
    return ChunkTables(
        taps=form.kernel(2 * chunk).to(device=device, dtype=dtype),
        powers=torch.stack([powers.real, powers.imag]).to(device=device, dtype=dtype),
        weights=torch.stack([w.real, w.imag]).to(device=device, dtype=dtype),
        log_mu=torch.stack([log_mu.real, log_mu.imag]).to(device=device),
    )


def chunk_operands(tables: ChunkTables) -> ChunkOperands:
    """Build the convolution operands from :class:`ChunkTables` (gathers and products only)."""
    n_kernels, H, S = tables.taps.shape
    (p_re, p_im), (w_re, w_im) = tables.powers, tables.weights  # [H, M, S + 1], [n_kernels, H, M]
    up = torch.stack([p_re[..., :S], p_im[..., :S]], -3)  # [H, 2, M, S]: mu^j
    down = up.flip(-1)  # mu^(S - 1 - j)
    # State in: mu^(S - 1 - j) (causal), mu^j (anti-causal); readout: w mu^(i + 1), w mu^(S - 1 - i).
    state_in = torch.stack([down, up][:n_kernels]).flatten(-3, -2).transpose(-1, -2)  # [n_kernels, H, S, 2M]
    readout = []
    for k, (re, im) in enumerate([(p_re[..., 1:], p_im[..., 1:]), tuple(down.unbind(-3))][:n_kernels]):
        wr, wi = w_re[k][..., None], w_im[k][..., None]  # Re(w z) = wr re - wi im; -Im(w z) = -(wr im + wi re)
        readout.append(torch.cat([wr * re - wi * im, -(wr * im + wi * re)], -2))  # [H, 2M, S]
    return ChunkOperands(toeplitz(tables.taps).transpose(-1, -2), state_in, torch.stack(readout), tables.log_mu)


def chunk_plan(ops: ChunkOperands, L: int, steps: int | None = None) -> ChunkPlan:
    """:class:`ChunkPlan` for sequences of ``L`` bins with ``steps`` doubling steps (default: what ``L``
    needs; an exported graph fixes it, which bounds ``L`` by :func:`capacity`). Sub-blocks are cut by
    gathers (no minimum of ``q`` and the tables' size in a traced graph); the decays are computed in float64
    and cast to the operands' dtype."""
    if steps is None:
        steps = steps_for(L, ops.chunk)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    n_kernels, S = ops.state_in.shape[0], ops.toeplitz.shape[-1]
    device, dtype = ops.toeplitz.device, ops.toeplitz.dtype
    C, q = chunk_shape(L, ops.chunk)
    head = torch.arange(q, device=device)
    tail = head + (S - q)
    cuts = [(tail, head), (head, tail)][:n_kernels]  # bins of the state input and of the readout, per direction
    scale = q * 2 ** torch.arange(steps, dtype=torch.float64, device=ops.log_mu.device)  # a^(2^k) = mu^scale
    log_a = ops.log_mu[:, None] * scale[:, None, None]  # [2, steps, H, M]
    a_re, a_im = torch.exp(log_a[0]) * torch.cos(log_a[1]), torch.exp(log_a[0]) * torch.sin(log_a[1])
    factors = torch.stack([torch.stack([a_re, a_re], -2), torch.stack([-a_im, a_im], -2)], 1).to(dtype)
    position, chunk = torch.arange(C - 1, device=device), torch.arange(C, device=device)
    sources = [position - 2**step for step in range(steps)]
    return ChunkPlan(
        toeplitz=ops.toeplitz.index_select(-2, head).index_select(-1, head),
        state_in=torch.stack([ops.state_in[k].index_select(-2, bins) for k, (bins, _) in enumerate(cuts)], 1),
        readout=torch.stack([ops.readout[k].index_select(-1, bins) for k, (_, bins) in enumerate(cuts)], 1),
        rows=torch.stack([position, C - 1 - position][:n_kernels]),
        targets=torch.stack([chunk - 1, C - 2 - chunk][:n_kernels]),
        decays=[(f[0, :, None, None, None], f[1, :, None, None, None]) for f in factors.unbind(0)],
        shifts=[(source.clamp_min(0), (source >= 0).to(dtype)[:, None, None]) for source in sources], length=L,
    )


def _scan(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Inclusive scan ``z[c] = a z[c - 1] + x[c]`` of states ``x [H, n_kernels, B, n, 2, M]`` (real, imaginary)
    along axis 3 by doubling: ``z[c] += a^(2^s) z[c - 2^s]``. Shifts are gathers of the same size (not padded
    slices), so a traced graph holds no new size."""
    n = x.shape[3]
    for step, ((source, inside), (same, swapped)) in enumerate(zip(plan.shifts, plan.decays)):
        if isinstance(n, int) and 2**step >= n:  # concrete sizes: nothing further (a graph keeps every step)
            break
        s = x.index_select(3, source) * inside
        x = x + s * same + s.flip(-2) * swapped
    return x


def chunked_conv(
    u: torch.Tensor, ops: ChunkOperands, D: torch.Tensor | None = None, plan: ChunkPlan | None = None,
) -> torch.Tensor:
    """Convolve ``u [B, H, L]`` as :func:`~ldns_fast.ssm.fft_conv` does, by chunks (see the module docstring).

    ``ops``: from :func:`chunk_operands`; ``D [H]``: skip term; ``plan``: from :func:`chunk_plan` for this
    length (default: made here). The sequence is zero-padded to ``C q`` bins for :func:`padded_chunked_conv`.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[1] != ops.toeplitz.shape[0]:
        raise ValueError(f"u must be a tensor of shape [B, H={ops.toeplitz.shape[0]}, L], "
                         f"got {getattr(u, 'shape', type(u))}")
    L = u.shape[-1]
    C, q = chunk_shape(L, ops.chunk)
    if plan is None:
        plan = chunk_plan(ops, L)
    elif chunk_shape(plan.length, ops.chunk) != (C, q):
        raise ValueError(f"a chunk plan for {plan.length} bins does not fit a sequence of {L} bins")
    elif steps_for(L, ops.chunk) > plan.steps:
        raise ValueError(f"{L} bins need {steps_for(L, ops.chunk)} scan steps; this chunk plan has {plan.steps} "
                         f"(up to {capacity(plan.steps, ops.chunk)} bins)")
    y = padded_chunked_conv(u if C * q == L else F.pad(u, (0, C * q - L)), ops, plan)[..., :L]
    return y if D is None else y + D[:, None] * u


def padded_chunked_conv(u: torch.Tensor, ops: ChunkOperands, plan: ChunkPlan) -> torch.Tensor:
    """The chunked convolution (no skip term) of ``u [B, H, C q]``: a sequence of ``plan.length`` bins zero-padded
    to whole chunks (``chunk_shape(plan.length)``), as an exported graph carries it from layer to layer;
    returns ``[B, H, C q]`` (the padding's outputs are meaningless).

    Channels lead inside (``[H, B C, q]``), so every matmul is batched over ``H`` alone, and every size is a
    product of ``B``, ``C`` and ``q`` (no slice, padding or broadcast batch that would need a guard on them
    in a traced graph).
    """
    B, H, M = u.shape[0], u.shape[1], ops.log_mu.shape[-1]
    C, q = chunk_shape(plan.length, ops.chunk)
    chunks = torch.permute_copy(u.reshape(B, H, C, q), (1, 0, 2, 3)).reshape(H, B * C, q)
    y = chunks @ plan.toeplitz  # [H, B C, q]
    if not isinstance(C, int) or C > 1:
        # Causal: the states of chunks 0..C-2, scanned forward, enter chunks 1..C-1; anti-causal: those of
        # chunks C-1..1 enter C-2..0. Rows are gathered, not sliced.
        n_kernels, n = plan.state_in.shape[1], C - 1
        kernel = torch.arange(n_kernels, device=u.device)[:, None, None]
        trial = torch.arange(B, device=u.device)[:, None]
        rows = (trial * C + plan.rows[:, None]).reshape(-1)  # [n_kernels B n]
        x = (chunks.index_select(1, rows).reshape(H, n_kernels, B * n, q) @ plan.state_in)
        x = _scan(x.reshape(H, n_kernels, B, n, 2, M), plan)
        r = (x.reshape(H, n_kernels, B * n, 2 * M) @ plan.readout).reshape(H, n_kernels * B * n, q)
        r = torch.cat([r.new_zeros(H, 1, q), r], 1)  # row 0: no state
        targets = plan.targets[:, None]  # [n_kernels, 1, C]
        index = torch.where(targets >= 0, 1 + (kernel * B + trial) * n + targets, 0).reshape(-1)
        y = y + r.index_select(1, index).reshape(H, n_kernels, B * C, q).sum(1)
    return y.reshape(H, B, C * q).transpose(0, 1)
