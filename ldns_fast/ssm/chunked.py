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
cut for each length (:func:`chunk_plan`) from small tables built once per layer (:class:`ChunkTables`). The chunk-to-chunk recurrence is a work-efficient scan
(:func:`_scan`): level ``k`` combines states in pairs with the decay ``a^(2^k)`` and hands the pair sums to
level ``k + 1``, so ``s`` levels cover ``2^(s + 1)`` chunks (:func:`capacity`), the work is about twice one
pass over the states, and an exported graph needs no loop (levels past what a length needs run on one state
or none). The anti-causal
states are scanned in reverse chunk order beside the causal ones. The decays ``a^(2^k) = exp(q 2^k log mu)``
(in :func:`chunk_plan`, with the sub-blocks for ``q``) are computed in float64 and cast: no ``sin(l theta)``
at large ``l`` in single precision, and the scan is stable (``|a| < 1``).

Chunks are formed and states moved by gathers, not padded slices, so every size in a graph traced with a
dynamic length is a simple function of ``L``. Cost ``O(B H L (q + M))``, memory ``O(B H L (1 + M / q))``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldns_fast.validation import is_integer

from .diagonal import DiagonalForm
from .fftconv import fold_kernel

# Chunk length (bins): chunks hold CHUNK to 2 CHUNK - 1 bins (benchmarks/results/long_recordings_cpu.md).
CHUNK = 128


def chunk_shape(L: int, chunk: int = CHUNK) -> tuple[int, int]:
    """``(C, q)``: the number of chunks and bins per chunk (the last padded) for a sequence of ``L >= 1`` bins."""
    n_chunks = torch.sym_max(L // chunk, 1)  # builtin max for ints; a size expression when traced
    return n_chunks, (L + n_chunks - 1) // n_chunks


def scan_steps(n_states: int) -> int:
    """Levels of the work-efficient scan over ``n_states`` chunk states (level ``k`` pairs states ``2^k`` chunks
    apart)."""
    return max(n_states.bit_length() - 1, 0)


def steps_for(L: int, chunk: int = CHUNK) -> int:
    """Scan levels that a sequence of ``L`` bins needs."""
    return scan_steps(chunk_shape(L, chunk)[0] - 1)


def capacity(steps: int, chunk: int = CHUNK) -> int:
    """Longest sequence (bins) that ``steps`` scan levels convolve exactly (``2^(steps + 1)`` chunks)."""
    return chunk * (2 ** (steps + 1) + 1) - 1


@dataclass
class ChunkTables:
    """Tables of one layer's diagonal form, enough for the chunked convolution at any length (a plan for a
    length cuts its operands from them: :func:`chunk_plan`).

    ``folded [H, 2S]``: the kernels' first ``S = 2 CHUNK`` taps (longer than any chunk) as one circular kernel
    (:func:`~ldns_fast.ssm.fftconv.fold_kernel`). ``powers [S + 1, 2, H, M]``: real and imaginary parts of
    ``mu^k``, ``k = 0..S``. ``weights [2, n_kernels, H, M]``: of ``w``. ``log_mu [2, H, M]`` (float64): of
    ``log mu``, for the scan's decays.
    """

    folded: torch.Tensor
    powers: torch.Tensor
    weights: torch.Tensor
    log_mu: torch.Tensor

    @property
    def chunk(self) -> int:
        return self.folded.shape[-1] // 4


@dataclass
class ScanLevel:
    """One level of the work-efficient scan (:func:`_scan`) over ``n`` states: its decay ``a^(2^k)`` and gathers.

    ``same``, ``swapped`` ``[H, 1, 1, 1, 2, M]``: the factors ``[a_re, a_re]`` and ``[-a_im, a_im]`` of a state
    ``[re, im]`` and of its swap ``[im, re]``. ``pairs``, ``odds`` ``[n // 2]``: the states ``2i`` and ``2i + 1``
    summed into pair ``i``; ``evens [(n + 1) // 2]``: the states ``2i``; ``order [n]``: where state ``c`` sits
    among the evens followed by the scanned pairs; ``previous [n]`` (``c - 1``, clamped) and ``fill
    [n, 1, 1]`` (1 for even ``c >= 2``, else 0): the state an even one adds.
    """

    same: torch.Tensor
    swapped: torch.Tensor
    pairs: torch.Tensor
    odds: torch.Tensor
    evens: torch.Tensor
    order: torch.Tensor
    previous: torch.Tensor
    fill: torch.Tensor


@dataclass
class ChunkPlan:
    """Operands cut from :class:`ChunkTables` for sequences of ``length`` bins in ``C`` chunks of ``q`` bins, and the scan's
    gathers and levels. Each direction scans ``n = C - 1`` chunk states, the anti-causal one in reverse chunk
    order (so both scans run forward); a chunk reads the scanned state of the chunk before it.

    ``toeplitz [H, q, q]``; ``state_in [H, q, n_kernels 2M]`` and ``readout [H, q, n_kernels 2M]`` (transposed),
    the directions side by side; ``sources [C']``: the chunks whose states are computed (all ``C``, or none
    when ``C = 1``); ``scanned [n_kernels n]``: their (chunk, direction) rows in scan order; ``read
    [C n_kernels]``: for each chunk and direction, 1 + the scanned row it reads, or 0 for none (a zero row);
    ``levels``: :class:`ScanLevel` ``k`` (decay ``a^(2^k)``, ``a = mu^q``). The gathers depend on ``L`` alone.
    """

    toeplitz: torch.Tensor
    state_in: torch.Tensor
    readout: torch.Tensor
    sources: torch.Tensor
    scanned: torch.Tensor
    read: torch.Tensor
    levels: list[ScanLevel]
    length: int

    @property
    def steps(self) -> int:
        return len(self.levels)


@torch.no_grad()
def chunk_tables(
    form: DiagonalForm, chunk: int = CHUNK, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ChunkTables:
    """:class:`ChunkTables` of a diagonal form for chunks of ``chunk`` bins (tables of ``2 chunk`` taps: see
    :func:`chunk_shape`), computed in float64 and stored in ``dtype`` on ``device`` (default: the form's);
    ``log_mu`` stays float64."""
    if not is_integer(chunk) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    w, log_mu = form.w.to(torch.complex128), form.log_mu.to(torch.complex128)
    k = torch.arange(2 * chunk + 1, dtype=torch.float64, device=log_mu.device)
    powers = torch.exp(log_mu[..., None] * k).permute(2, 0, 1)  # [S + 1, H, M]
    device = log_mu.device if device is None else device
    return ChunkTables(
        folded=fold_kernel(form.kernel(2 * chunk)).to(device=device, dtype=dtype),
        powers=torch.stack([powers.real, powers.imag], 1).to(device=device, dtype=dtype),
        weights=torch.stack([w.real, w.imag]).to(device=device, dtype=dtype),
        log_mu=torch.stack([log_mu.real, log_mu.imag]).to(device=device),
    )


def chunk_plan(tables: ChunkTables, L: int, steps: int | None = None) -> ChunkPlan:
    """:class:`ChunkPlan` for sequences of ``L`` bins with ``steps`` scan levels (default: what ``L`` needs; an
    exported graph fixes it, which bounds ``L`` by :func:`capacity`). The operands are cut for ``q`` by gathers
    of the tables' rows (a graph builds them per call from small tables: nothing for onnxruntime to fold at
    load time); the decays are computed in float64 and cast to the tables' dtype."""
    if steps is None:
        steps = steps_for(L, tables.chunk)
    if not is_integer(steps) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    (w_re, w_im), log_mu = tables.weights, tables.log_mu  # [n_kernels, H, M]
    n_kernels, H, M = w_re.shape
    device, dtype = tables.folded.device, tables.folded.dtype
    C, q = chunk_shape(L, tables.chunk)
    bins = torch.arange(q, device=device)
    lag = (bins[None, :] - bins[:, None]) % tables.folded.shape[-1]  # [q, q]: T[i, j] = folded[(j - i) mod 2S]

    def powers(k: torch.Tensor) -> torch.Tensor:  # mu^k for k [q]: [q, 2, H, M]
        return tables.powers.index_select(0, k)

    def states(z: torch.Tensor) -> torch.Tensor:  # [q, 2, H, M] -> [H, q, 2M]
        return z.permute(2, 0, 1, 3).reshape(H, -1, 2 * M)

    def readout(k: int, z: torch.Tensor) -> torch.Tensor:  # Re(w z), -Im(w z) per mode: [H, q, 2M]
        re, im = z.unbind(1)
        return states(torch.stack([w_re[k] * re - w_im[k] * im, -(w_re[k] * im + w_im[k] * re)], 1))

    flipped = q - 1 - bins
    ins, outs = [states(powers(flipped))], [readout(0, powers(bins + 1))]  # causal: mu^(q - 1 - j), w mu^(i + 1)
    if n_kernels == 2:  # anti-causal: mu^j, w mu^(q - 1 - i)
        ins.append(states(powers(bins)))
        outs.append(readout(1, powers(flipped)))
    scale = q * 2 ** torch.arange(steps, dtype=torch.float64, device=log_mu.device)  # a^(2^k) = mu^scale
    log_a = log_mu[:, None] * scale[:, None, None]  # [2, steps, H, M]
    a_re, a_im = torch.exp(log_a[0]) * torch.cos(log_a[1]), torch.exp(log_a[0]) * torch.sin(log_a[1])
    factors = torch.stack([torch.stack([a_re, a_re], -2), torch.stack([-a_im, a_im], -2)], 1).to(dtype)
    levels, n = [], C - 1
    for same, swapped in factors[:, :, :, None, None, None].unbind(0):  # [H, 1, 1, 1, 2, M] each
        half, evens, state = n // 2, (n + 1) // 2, torch.arange(n, device=device)
        pairs, even = torch.arange(half, device=device) * 2, state % 2 == 0
        levels.append(ScanLevel(
            same, swapped, pairs, pairs + 1, torch.arange(evens, device=device) * 2,
            torch.where(even, state // 2, evens + state // 2), (state - 1).clamp_min(0),
            (even & (state > 0)).to(dtype)[:, None, None]))
        n = half
    chunk, kernel = torch.arange(C, device=device), torch.arange(n_kernels, device=device)
    position = torch.arange(C - 1, device=device)
    order = torch.stack([position, C - 1 - position][:n_kernels])  # [n_kernels, n]: chunks in scan order
    source = torch.stack([chunk - 1, C - 2 - chunk][:n_kernels], 1)  # [C, n_kernels]: scan position read
    computed = torch.sym_min(C, C * (C - 1))  # every chunk's state input, none for a single chunk
    return ChunkPlan(
        toeplitz=tables.folded.index_select(-1, lag.reshape(-1)).reshape(H, q, q),
        state_in=torch.cat(ins, -1), readout=torch.cat(outs, -1),
        sources=torch.arange(computed, device=device), scanned=(order * n_kernels + kernel[:, None]).reshape(-1),
        read=torch.where(source >= 0, 1 + kernel * (C - 1) + source, 0).reshape(-1), levels=levels, length=L,
    )


def _rotate(x: torch.Tensor, level: ScanLevel) -> torch.Tensor:
    """``a x`` for complex states ``x [..., n, 2, M]`` (real, imaginary), ``a`` the level's decay."""
    return x * level.same + x.flip(-2) * level.swapped


def _scan(x: torch.Tensor, levels: list[ScanLevel]) -> torch.Tensor:
    """Inclusive scan ``z[c] = a z[c - 1] + x[c]`` of states ``x [H, B, n_kernels, n, 2, M]`` along axis 3,
    work-efficient: states are summed in pairs (decay ``a``), the ``n // 2`` pair sums scanned with decay
    ``a^2`` by the next level, and the even states filled in (``z[2i] = a z[2i - 1] + x[2i]``). A traced graph
    holds every level (those past what a length needs run on one state or none, and are exact for them)."""
    n = x.shape[3]
    if not levels or (isinstance(n, int) and n <= 1):
        return x
    level = levels[0]
    odd = _scan(_rotate(x.index_select(3, level.pairs), level) + x.index_select(3, level.odds), levels[1:])
    w = torch.cat([x.index_select(3, level.evens), odd], 3).index_select(3, level.order)  # x[2i], z[2i + 1]
    return w + _rotate(w.index_select(3, level.previous), level) * level.fill


def chunked_conv(
    u: torch.Tensor, tables: ChunkTables, D: torch.Tensor | None = None, plan: ChunkPlan | None = None,
) -> torch.Tensor:
    """Convolve ``u [B, H, L]`` as :func:`~ldns_fast.ssm.fft_conv` does, by chunks (see the module docstring).

    ``tables``: from :func:`chunk_tables`; ``D [H]``: skip term; ``plan``: from :func:`chunk_plan` for this
    length (default: made here). The sequence is zero-padded to ``C q`` bins for :func:`padded_chunked_conv`.
    """
    H = tables.folded.shape[0]
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[1] != H:
        raise ValueError(f"u must be a tensor of shape [B, H={H}, L], "
                         f"got {getattr(u, 'shape', type(u))}")
    L = u.shape[-1]
    C, q = chunk_shape(L, tables.chunk)
    if plan is None:
        plan = chunk_plan(tables, L)
    elif chunk_shape(plan.length, tables.chunk) != (C, q):
        raise ValueError(f"a chunk plan for {plan.length} bins does not fit a sequence of {L} bins")
    elif steps_for(L, tables.chunk) > plan.steps:
        raise ValueError(f"{L} bins need {steps_for(L, tables.chunk)} scan steps; this chunk plan has {plan.steps} "
                         f"(up to {capacity(plan.steps, tables.chunk)} bins)")
    y = padded_chunked_conv(u if C * q == L else F.pad(u, (0, C * q - L)), tables, plan)[..., :L]
    return y if D is None else y + D[:, None] * u


def padded_chunked_conv(u: torch.Tensor, tables: ChunkTables, plan: ChunkPlan) -> torch.Tensor:
    """The chunked convolution (no skip term) of ``u [B, H, C q]``: a sequence of ``plan.length`` bins zero-padded
    to whole chunks (``chunk_shape(plan.length)``), as an exported graph carries it from layer to layer;
    returns ``[B, H, C q]`` (the padding's outputs are meaningless).

    Channels lead inside (``[H, B C, q]``), so every matmul is batched over ``H`` alone, and every size is a
    product of ``B``, ``C`` and ``q`` (no slice, padding or broadcast batch that would need a guard on them
    in a traced graph).
    """
    B, H = u.shape[0], u.shape[1]
    C, q = chunk_shape(plan.length, tables.chunk)
    chunks = torch.permute_copy(u.reshape(B, H, C, q), (1, 0, 2, 3)).reshape(H, B * C, q)
    y = chunks @ plan.toeplitz + _carried(chunks, B, tables.log_mu.shape[-1], plan)  # [H, B C, q]
    return y.reshape(H, B, C * q).transpose(0, 1)


def _carried(chunks: torch.Tensor, B: int, M: int, plan: ChunkPlan) -> torch.Tensor:
    """What the states add to the in-chunk products ``[H, B C, q]`` of ``chunks [H, B C, q]`` (``B`` trials, ``M``
    modes): every chunk's state inputs (both directions) come from one matmul, are scanned in each direction's
    chunk order, and each chunk reads the state of the chunk before it by one readout matmul."""
    H, q, n_kernels = chunks.shape[0], chunks.shape[-1], plan.state_in.shape[-1] // (2 * M)
    x = chunks.reshape(H, B, -1, q).index_select(2, plan.sources).reshape(H, -1, q) @ plan.state_in
    x = x.reshape(H, B, -1, 2 * M).index_select(2, plan.scanned)  # [H, B, K n, 2M]
    z = _scan(x.reshape(H, B, n_kernels, -1, 2, M), plan.levels).reshape(H, B, -1, 2 * M)
    z = torch.cat([z.new_zeros(H, B, 1, 2 * M), z], 2)  # row 0: no state
    states = z.index_select(2, plan.read)  # [H, B, C K, 2M]: rows (chunk, direction)
    return states.reshape(H, chunks.shape[1], n_kernels * 2 * M) @ plan.readout.transpose(-1, -2)
