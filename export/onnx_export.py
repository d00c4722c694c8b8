"""Export a trained LDNS run to ONNX: the whole sampler, one denoiser step and the decoder.

Each graph has dynamic batch and length axes and carries its metadata (``metadata_props``, JSON
values): model config, bin width, neuron count, latent normalisation, sampler, convolution mode, chunk
size, the longest trial the graph is meant for (``max_length``), input/output names and the onnxruntime
session options it needs. Files are written atomically and checked against torch on example inputs
before they are kept.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import torch
from torch import nn

from ldns_fast import __version__
from ldns_fast.atomic import atomic_write
from ldns_fast.pipeline import LDNS

from ldns_fast.ssm.chunked import CHUNK, capacity, steps_for
from ldns_fast.validation import is_integer

from .by_length import dispatch_by_length
from .errors import ExportError
from .modules import CONV_MODES, KERNEL_CHUNK, Decoder, DenoiserStep, UnrolledSampler

FORMAT = "ldns_fast.onnx/1"
# Longest trial (bins) for which conv="auto" picks the direct Toeplitz convolution over the chunked scan:
# its L x L matrices then fit OnnxSampler's default bin budget (256^2 = 65,536), and a chunked graph
# convolves such a trial as one chunk, the same product (benchmarks/results/long_recordings_cpu.md).
DIRECT_MAX_LENGTH = 256
# Chunked graphs hold enough scan levels for at least this many bins (about 87 min at 5 ms; pass a longer
# max_length for more); each further level doubles the capacity for about fifteen small nodes per S4 layer
# (they run on one state or none at shorter lengths).
CHUNKED_MIN_CAPACITY = 1 << 20
# Chunked sampler and denoiser graphs run trials shorter than this (one chunk: chunk_shape) through a direct
# graph inside them (an ONNX If): the same q x q Toeplitz product, without the scan levels such a trial leaves
# empty (64 x 140 bins: 1.79x the direct graph's time without it; benchmarks/results/long_recordings_cpu.md).
ONE_CHUNK_BELOW = 2 * CHUNK
# Relative error allowed between onnxruntime and torch on the export's example inputs.
EXPORT_TOLERANCE = 1e-4
SAMPLER_FILE, DENOISER_FILE, DECODER_FILE = "sampler.onnx", "denoiser.onnx", "decoder.onnx"


@dataclass
class ExportedFiles:
    """Paths of the written graphs."""

    sampler: Path
    denoiser: Path
    decoder: Path


def choose_conv(conv: str, max_length: int) -> str:
    """``"direct"``, ``"fft"`` or ``"chunked"``; ``"auto"`` picks direct up to :data:`DIRECT_MAX_LENGTH`
    bins (the longest expected trial), chunked beyond."""
    if conv == "auto":
        return "direct" if max_length <= DIRECT_MAX_LENGTH else "chunked"
    if conv not in CONV_MODES:
        raise ValueError(f"conv must be 'auto' or one of {CONV_MODES}, got {conv!r}")
    return conv


def export_onnx(
    model: LDNS | str | Path, out_dir: str | Path, *, sampler: str = "ddim", steps: int = 20,
    conv: str = "auto", max_length: int | None = None, guidance_scale: float = 1.0, overwrite: bool = False,
) -> ExportedFiles:
    """Write ``sampler.onnx``, ``denoiser.onnx`` and ``decoder.onnx`` for a trained run into ``out_dir``.

    ``sampler``: ``"ddim"`` (eta 0) or ``"dpm++"`` with ``steps`` steps, unrolled. ``conv``: the S4
    convolution in the graphs (``"direct"`` Toeplitz product, ``"fft"`` real DFTs, ``"chunked"`` scan of
    matmuls, linear in the length and free of DFTs, or ``"auto"`` by ``max_length``, the longest trial
    to sample, default the training length). A chunked graph holds trials up to
    ``max(max_length, CHUNKED_MIN_CAPACITY)`` bins or more (its metadata's ``max_length``).
    ``guidance_scale`` is fixed into the sampler graph.
    """
    ldns = model if isinstance(model, LDNS) else LDNS.load(model)
    if not is_integer(steps) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    max_length = ldns.n_bins if max_length is None else max_length
    if not is_integer(max_length) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    conv = choose_conv(conv, max_length)
    if conv == "chunked":  # the exact capacity of the scan levels it needs
        max_length = capacity(steps_for(max(max_length, CHUNKED_MIN_CAPACITY)))
    out_dir = Path(out_dir)
    files = ExportedFiles(out_dir / SAMPLER_FILE, out_dir / DENOISER_FILE, out_dir / DECODER_FILE)
    existing = [str(p) for p in asdict(files).values() if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True / --overwrite)")
    c = ldns.config.denoiser
    base = _metadata(ldns, conv, max_length)
    example = _example_inputs(ldns)
    cond = {n: example[n] for n, on in (("conditions", c.cond_dim), ("behavior", c.behavior_channels)) if on}

    def sampler_module(conv: str) -> UnrolledSampler:
        return UnrolledSampler(ldns.denoiser, ldns.autoencoder, ldns.schedule, ldns.latent_mean, ldns.latent_std,
                               sampler, steps, conv, max_length, guidance_scale)

    def denoiser_module(conv: str) -> DenoiserStep:
        return DenoiserStep(ldns.denoiser, conv, max_length)

    short = "direct" if conv == "chunked" else None  # what runs one-chunk trials (ONE_CHUNK_BELOW)
    _export(sampler_module, conv, short, {"noise": example["noise"], "lengths": example["lengths"], **cond},
            ["latents", "rates"], files.sampler,
            {**base, "graph": "sampler", "sampler": sampler, "steps": steps,
             "timesteps": sampler_module(conv).timesteps, "guidance_scale": guidance_scale})
    _export(denoiser_module, conv, short, {"x": example["noise"], "t": example["t"], "lengths": example["lengths"],
            **cond}, ["output"], files.denoiser,
            {**base, "graph": "denoiser", "prediction_type": ldns.schedule.prediction_type,
             "alphas_cumprod": ldns.schedule.alphas_cumprod.tolist()})
    _export(lambda conv: Decoder(ldns.autoencoder), conv, None, {"latents": example["noise"]}, ["rates"],
            files.decoder, {**base, "graph": "decoder", "max_length": None, "direct_below": None})  # pointwise in time
    return files


def _metadata(ldns: LDNS, conv: str, max_length: int) -> dict:
    """Metadata shared by the graphs; ``max_length``: the longest trial they are meant for (None: any)."""
    c = ldns.config
    return {
        "format": FORMAT, "ldns_fast_version": __version__, "config": asdict(c), "bin_width": ldns.bin_width,
        "n_neurons": c.autoencoder.n_neurons, "latent_channels": c.denoiser.latent,
        "training_length": ldns.n_bins, "cond_dim": c.denoiser.cond_dim,
        "behavior_channels": c.denoiser.behavior_channels, "conv": conv,
        "chunk": CHUNK if conv == "chunked" else None,
        "max_length": None if conv == "fft" else max_length,
        "direct_below": ONE_CHUNK_BELOW if conv == "chunked" else None,  # lengths run by the inner direct graph
        "latent_mean": ldns.latent_mean.tolist(), "latent_std": ldns.latent_std.tolist(),
        # onnxruntime re-uses DFT buffers across dynamic lengths wrongly: FFT graphs need reuse off.
        "session_options": {"enable_mem_reuse": conv != "fft"},
    }


def _example_inputs(ldns: LDNS) -> dict[str, torch.Tensor]:
    """Tracing inputs whose sizes are not special (batch 2, more than two kernel chunks, two lengths)."""
    c = ldns.config.denoiser
    B, L = 2, 2 * KERNEL_CHUNK + 37
    gen = torch.Generator().manual_seed(0)
    return {
        "noise": torch.randn(B, c.latent, L, generator=gen),
        "t": torch.tensor([999, 500]).clamp_max(ldns.schedule.num_train_timesteps - 1),
        "lengths": torch.tensor([L, L // 2]),
        "conditions": torch.randn(B, max(c.cond_dim, 1), generator=gen),
        "behavior": torch.randn(B, max(c.behavior_channels, 1), L, generator=gen),
    }


def _modulated_norm_as_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None, eps: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The modulated norm's export form ``(out [B, C, L], mean [B, L], rstd [B, L])``: the norm through
    ``native_layer_norm`` on channels-last steps, so the graph holds one ``LayerNormalization`` node (which
    onnxruntime fuses) where the training implementation reduces over channels in place."""
    B, C, L = x.shape
    h, mean, rstd = torch.native_layer_norm(x.transpose(1, 2), (C,), None, None, eps)
    h = h.transpose(1, 2) * (1 + scale) + shift
    if mask is not None:
        h = h * mask[:, None, :]
    return h, mean.reshape(B, L), rstd.reshape(B, L)


@contextlib.contextmanager
def _fused_ops_in_torch_form() -> Iterator[None]:
    """While exporting, the denoiser's fused custom ops (``torch.ops.ldns_fast.*``, which onnxruntime does not
    know) decompose into torch ops (the norm as :func:`_modulated_norm_as_layer_norm`, the gated residual
    through its torch implementation); the registrations are removed afterwards."""
    from torch._decomp import decomposition_table

    from ldns_fast.kernels.ops import implementation

    forms = {
        torch.ops.ldns_fast.modulated_norm.default: _modulated_norm_as_layer_norm,
        torch.ops.ldns_fast.gelu_gate_residual.default: lambda x, y, gate, backend:
            implementation("gelu_gate_residual", "torch")(x, y, gate),
    }
    added = {op: form for op, form in forms.items() if op not in decomposition_table}
    decomposition_table.update(added)
    try:
        yield
    finally:
        for op in added:
            decomposition_table.pop(op, None)


def _export(
    make: Callable[[str], nn.Module], conv: str, short: str | None, inputs: dict[str, torch.Tensor],
    output_names: list[str], path: Path, metadata: dict,
) -> None:
    """Trace ``make(conv)(**inputs)`` with dynamic batch/length axes, check it in onnxruntime, write it atomically.

    ``short``: a convolution mode whose graph (``make(short)``) runs inputs shorter than :data:`ONE_CHUNK_BELOW`
    bins inside the written one (:func:`~ldns_fast.export.by_length.dispatch_by_length`); both branches are
    checked."""
    module = make(conv)
    model, expected = _trace(module, inputs, output_names)
    checks = [(inputs, expected)]
    if short is not None:
        model = dispatch_by_length(_trace(make(short), inputs, output_names)[0], model, next(iter(inputs)),
                                   ONE_CHUNK_BELOW)
        short_inputs = _shortened(inputs, ONE_CHUNK_BELOW - 1)
        with torch.no_grad():
            checks.append((short_inputs, _as_tuple(module(**short_inputs))))
    for key, value in {**metadata, "inputs": list(inputs), "outputs": output_names}.items():
        model.metadata_props.add(key=key, value=json.dumps(value))

    def write(tmp: str) -> None:
        onnx.save_model(model, tmp)
        for feed, want in checks:
            _check_in_onnxruntime(tmp, feed, want, metadata)

    atomic_write(path, write)


def _as_tuple(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _shortened(inputs: dict[str, torch.Tensor], L: int) -> dict[str, torch.Tensor]:
    """``inputs`` cut to their first ``L`` bins (``[B, C, L]`` tensors), with ``lengths`` clamped to ``L``."""
    return {name: value.clamp_max(L) if name == "lengths" else value[..., :L] if value.dim() == 3 else value
            for name, value in inputs.items()}


def _trace(
    module: nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str],
) -> tuple[onnx.ModelProto, tuple[torch.Tensor, ...]]:
    """``module(**inputs)`` traced with dynamic batch/length axes and simplified, and its outputs on ``inputs``."""
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    axes = {"t": {0: batch}, "lengths": {0: batch}, "conditions": {0: batch}}
    shapes = {name: axes.get(name, {0: batch, 2: length}) for name in inputs}
    module.eval()
    # Size-oblivious shape reasoning: the chunked scan's derived sizes (chunks, states) may be 0 or 1 for some
    # lengths, and its gathers and reshapes are correct for all of them; without this torch.export guards
    # on them (contiguity checks) and refuses the dynamic length.
    from torch.fx.experimental import _config as shape_config

    with torch.no_grad(), warnings.catch_warnings(), _fused_ops_in_torch_form(), \
            shape_config.patch(backed_size_oblivious=True):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        expected = module(**inputs)
        program = torch.onnx.export(
            module, (), kwargs=inputs, input_names=list(inputs), output_names=output_names,
            dynamic_shapes=shapes, dynamo=True, verbose=False, optimize=False,
        )
    _simplify(program.model)
    return onnx_ir.serde.serialize_model(program.model), _as_tuple(expected)


def _simplify(model: object) -> None:
    """Drop node metadata, inline, fold constants and remove what is unused or repeated, in place (an
    ``onnx_ir`` model).

    onnxscript's full optimizer also runs its pattern rewriter, whose cost grows with the square of the node
    count: minutes for an unrolled sampler of the chunked scan. onnxruntime fuses what it can when it loads
    the graph."""
    import onnx_ir.passes.common as common
    from onnx_ir.traversal import RecursiveGraphIterator
    from onnxscript.optimizer import fold_constants_ir

    for node in RecursiveGraphIterator(model.graph):  # the exporter's per-node stack traces: most of the file
        node.metadata_props.clear()
    common.InlinePass()(model)
    fold_constants_ir(model, onnx_shape_inference=True)
    for simplify in (common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                     common.RemoveUnusedOpsetsPass(), common.CommonSubexpressionEliminationPass(),
                     common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                     common.DeduplicateInitializersPass()):
        simplify(model)


def _check_in_onnxruntime(path: str, inputs: dict, expected: tuple[torch.Tensor, ...], metadata: dict) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_reuse = metadata["session_options"]["enable_mem_reuse"]
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    for got, want in zip(outputs, expected):
        want = want.numpy()
        err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        if not err <= EXPORT_TOLERANCE:
            raise ExportError(f"{metadata['graph']} graph: onnxruntime differs from torch by {err:.2e} (relative)")
