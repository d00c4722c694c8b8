"""ONNX export (:mod:`ldns_fast.export`): parity of onnxruntime with torch, the operations in the
graphs, metadata, the torch-free runtime :class:`OnnxSampler`, and errors.

Models have random weights perturbed away from their zero-initialised gates, so every S4 layer shapes
the output. Tolerance: relative error (norm over the valid bins) <= 1e-4 against torch in float32.
Graphs: direct Toeplitz (S4D, unconditional), FFT (DPLR, conditional) and chunked scan (DPLR).
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ldns_fast.config import merge, preset  # noqa: E402
from ldns_fast.data import read_dataset, valid_mask  # noqa: E402
from ldns_fast.diffusion import make_sampler, make_timesteps, sample  # noqa: E402
from ldns_fast.export import ExportError, OnnxSampler, export_onnx, read_metadata  # noqa: E402
from ldns_fast.export.modules import KERNEL_CHUNK, DiagonalS4, crop, pad  # noqa: E402
from ldns_fast.export.onnx_export import CHUNKED_MIN_CAPACITY  # noqa: E402
from ldns_fast.models import Autoencoder, Denoiser  # noqa: E402
from ldns_fast.pipeline import LDNS  # noqa: E402
from ldns_fast.ssm import S4  # noqa: E402
from ldns_fast.ssm.chunked import CHUNK  # noqa: E402

TOL = 1e-4
STEPS = 3


def random_model(mode: str, cond_dim: int = 0, behavior_channels: int = 0, seed: int = 0) -> LDNS:
    torch.manual_seed(seed)
    config = merge(preset("cpu"), {
        "autoencoder": {"n_neurons": 12, "hidden": 16, "latent": 4, "n_blocks": 1, "d_state": 8, "ssm_mode": mode},
        "denoiser": {"latent": 4, "hidden": 16, "n_blocks": 2, "d_state": 8, "ssm_mode": mode,
                     "cond_dim": cond_dim, "behavior_channels": behavior_channels},
    })
    autoencoder, denoiser = Autoencoder(config.autoencoder), Denoiser(config.denoiser)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LDNS(config, autoencoder, denoiser, torch.randn(4), torch.rand(4) + 0.5, bin_width=0.01, n_bins=24)


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory) -> tuple[LDNS, Path]:
    model = random_model("diag")
    out = tmp_path_factory.mktemp("onnx-diag")
    export_onnx(model, out, sampler="ddim", steps=STEPS, conv="direct")
    return model, out


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> tuple[LDNS, Path]:
    model = random_model("dplr", cond_dim=2, behavior_channels=3, seed=1)
    out = tmp_path_factory.mktemp("onnx-dplr")
    export_onnx(model, out, sampler="dpm++", steps=STEPS, conv="fft", guidance_scale=2.0)
    return model, out


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> tuple[LDNS, Path]:
    model = random_model("dplr", seed=2)
    out = tmp_path_factory.mktemp("onnx-chunked")
    export_onnx(model, out, sampler="ddim", steps=STEPS, conv="chunked")
    return model, out


def torch_reference(model: LDNS, noise: torch.Tensor, lengths: torch.Tensor, sampler: str, scale: float = 1.0,
                    conditions: torch.Tensor | None = None, behavior: torch.Tensor | None = None):
    """What :meth:`LDNS.sample` computes from ``noise`` (latents and rates, zero past each length)."""
    mask = valid_mask(lengths, noise.shape[-1])
    model_fn = model._guided(mask, conditions, behavior, scale)
    with torch.no_grad():
        z = sample(model_fn, noise.shape, make_sampler(sampler, model.schedule), STEPS, initial_noise=noise)
        latents = (z * model.latent_std[:, None] + model.latent_mean[:, None]) * mask[:, None]
        return latents.numpy(), (model.decode(latents) * mask[:, None]).numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def run_session(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_reuse = read_metadata(path)["session_options"]["enable_mem_reuse"]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)


# ------------------------------------------------------------------------------- diagonal form


@pytest.mark.parametrize("conv", ["direct", "fft", "chunked"])
@pytest.mark.parametrize("mode", ["diag", "dplr"])
def test_diagonal_s4_reproduces_the_layer_at_any_length(mode: str, conv: str) -> None:
    torch.manual_seed(3)
    layer = S4(6, 16, mode=mode, bidirectional=True, backend="torch")
    with torch.no_grad():
        for p in layer.kernel.parameters():
            p.add_(0.1 * torch.randn_like(p))
    exported = DiagonalS4(layer, conv, max_length=4096)
    for L in (1, 37, KERNEL_CHUNK, 3 * KERNEL_CHUNK + 5):
        if conv != "chunked":
            with torch.no_grad():
                want = layer.double().kernel(L).float()
                layer.float()
                got = exported.kernel(L)
            assert got.shape == want.shape
            assert relative_error(got.numpy(), want.numpy()) < 1e-5, L
        u = torch.randn(2, 6, L)
        exported.prepare(L)
        with torch.no_grad():  # the chunked scan runs on whole chunks (the padding's outputs are dropped)
            got = crop(exported(pad(u, conv)), conv, L)
            assert relative_error(got.numpy(), layer(u).numpy()) < 1e-5


def test_diagonal_s4_refuses_an_inexact_decomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    import ldns_fast.ssm.diagonal as diagonal

    layer = S4(4, 8, mode="dplr", bidirectional=True, backend="torch")
    monkeypatch.setattr(diagonal, "DIAGONAL_FORM_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="too ill-conditioned"):
        DiagonalS4(layer, "chunked", max_length=100)


# ------------------------------------------------------------------------------ graph parity


@pytest.mark.parametrize("lengths", [[24, 24], [7], [100, 1, 63, 40, 100], [300, 299, 5]])
def test_sampler_graph_matches_torch_for_unseen_batches_and_lengths(unconditional, lengths: list[int]) -> None:
    model, out = unconditional
    lengths = torch.tensor(lengths)
    noise = torch.randn(len(lengths), 4, int(lengths.max()), generator=torch.Generator().manual_seed(len(lengths)))
    want_latents, want_rates = torch_reference(model, noise, lengths, "ddim")
    latents, rates = run_session(out / "sampler.onnx", {"noise": noise.numpy(), "lengths": lengths.numpy()})
    assert relative_error(latents, want_latents) < TOL and relative_error(rates, want_rates) < TOL
    for i, length in enumerate(lengths.tolist()):
        assert not latents[i, :, length:].any() and not rates[i, :, length:].any()


@pytest.mark.parametrize("lengths", [[24, 9], [130, 64, 1]])
def test_conditional_dplr_fft_sampler_with_guidance_matches_torch(conditional, lengths: list[int]) -> None:
    model, out = conditional
    gen = torch.Generator().manual_seed(5)
    lengths = torch.tensor(lengths)
    B, T = len(lengths), int(lengths.max())
    noise, cond, behavior = torch.randn(B, 4, T, generator=gen), torch.randn(B, 2, generator=gen), \
        torch.randn(B, 3, T, generator=gen)
    want = torch_reference(model, noise, lengths, "dpm++", 2.0, cond, behavior)
    got = run_session(out / "sampler.onnx", {"noise": noise.numpy(), "lengths": lengths.numpy(),
                                             "conditions": cond.numpy(), "behavior": behavior.numpy()})
    assert relative_error(got[0], want[0]) < TOL and relative_error(got[1], want[1]) < TOL


def test_denoiser_and_decoder_graphs_match_torch(conditional) -> None:
    model, out = conditional
    gen = torch.Generator().manual_seed(6)
    x, cond, behavior = torch.randn(3, 4, 50, generator=gen), torch.randn(3, 2, generator=gen), \
        torch.randn(3, 3, 50, generator=gen)
    t, lengths = torch.tensor([999, 10, 400]), torch.tensor([50, 20, 33])
    with torch.no_grad():
        want = model.denoiser(x, t, valid_mask(lengths, 50), cond, behavior).numpy()
        want_rates = model.decode(x).numpy()
    got = run_session(out / "denoiser.onnx", {"x": x.numpy(), "t": t.numpy(), "lengths": lengths.numpy(),
                                              "conditions": cond.numpy(), "behavior": behavior.numpy()})[0]
    assert relative_error(got, want) < TOL
    assert relative_error(run_session(out / "decoder.onnx", {"latents": x.numpy()})[0], want_rates) < TOL


@pytest.mark.parametrize("lengths", [[24, 24], [1], [129, 128, 127, 2], [255, 3], [256], [1000, 257, 3]])
def test_chunked_sampler_graph_matches_torch_for_unseen_lengths(chunked, lengths: list[int]) -> None:
    model, out = chunked
    lengths = torch.tensor(lengths)
    noise = torch.randn(len(lengths), 4, int(lengths.max()), generator=torch.Generator().manual_seed(len(lengths)))
    want_latents, want_rates = torch_reference(model, noise, lengths, "ddim")
    latents, rates = run_session(out / "sampler.onnx", {"noise": noise.numpy(), "lengths": lengths.numpy()})
    assert relative_error(latents, want_latents) < TOL and relative_error(rates, want_rates) < TOL
    for i, length in enumerate(lengths.tolist()):
        assert not latents[i, :, length:].any() and not rates[i, :, length:].any()


def test_chunked_sampler_makes_a_50000_bin_trial_like_torch(chunked) -> None:
    model, out = chunked
    model = copy.deepcopy(model)
    for module in model.denoiser.modules():  # an independent reference: torch's FFT convolutions
        if isinstance(module, S4):
            module.conv = "fft"
    lengths = torch.tensor([50_000])
    noise = torch.randn(1, 4, 50_000, generator=torch.Generator().manual_seed(7))
    want_latents, want_rates = torch_reference(model, noise, lengths, "ddim")
    batch = OnnxSampler(out / "sampler.onnx").sample(lengths=[50_000], noise=[noise[0].numpy()], seed=0)
    assert relative_error(batch.latents, want_latents) < TOL and relative_error(batch.rates, want_rates) < TOL


# Operators that onnxruntime's CUDA execution provider implements for float32 (and for the int64/bool
# tensors of shape arithmetic and masks), from the "Operators implemented by CUDAExecutionProvider"
# table (domain ai.onnx) of onnxruntime's docs/OperatorKernels.md (main branch, 2025). It lists no DFT
# and no STFT: a graph holding them falls back to the CPU for those nodes. "If" is there too (its condition
# is read on the host; its branches' nodes run on the device and are checked here like the main graph's).
CUDA_FLOAT32_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Concat", "ConstantOfShape", "Conv", "Cos", "CumSum", "Div",
    "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "Greater", "GreaterOrEqual", "Identity", "If", "LayerNormalization", "Less", "LessOrEqual", "Log", "MatMul", "Max",
    "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "Range", "Reciprocal", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "Softplus",
    "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where",
})


def op_types(path: Path) -> set[str]:
    """Operator types of a graph and of every subgraph (``If`` branches) inside it."""
    import onnx

    model = onnx.load(str(path))
    assert not model.functions, "local functions would hide their operators"
    types, graphs = set(), [model.graph]
    while graphs:
        graph = graphs.pop()
        assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
        types |= {node.op_type for node in graph.node}
        graphs += [attr.g for node in graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]
    return types


@pytest.mark.parametrize("graph", ["sampler", "denoiser", "decoder"])
def test_chunked_graphs_hold_only_operators_of_the_cuda_provider(chunked, conditional, graph: str) -> None:
    ops = op_types(chunked[1] / f"{graph}.onnx")
    assert ops <= CUDA_FLOAT32_OPS, sorted(ops - CUDA_FLOAT32_OPS)
    assert not ops & {"DFT", "STFT", "Loop", "Scan"}
    if graph != "decoder":  # the check can fail: the FFT graphs hold DFTs
        assert "MatMul" in ops and "DFT" in op_types(conditional[1] / f"{graph}.onnx")


def profiled_nodes(path: Path, feed: dict[str, np.ndarray]) -> list[dict]:
    """onnxruntime's profile events of every node run on ``feed`` (subgraph nodes included; no fusion)."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_mem_reuse = read_metadata(path)["session_options"]["enable_mem_reuse"]
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / f"profile-{next(iter(feed.values())).shape[-1]}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert nodes, "the profile lists no node"
    return nodes


@pytest.mark.parametrize("graph", ["sampler", "denoiser"])
def test_chunked_graphs_run_one_chunk_trials_through_their_direct_graph(chunked, graph: str) -> None:
    _, out = chunked
    path = out / f"{graph}.onnx"
    assert read_metadata(path)["direct_below"] == 2 * CHUNK  # one chunk: fewer than 2 CHUNK bins

    def branches(L: int) -> set[str]:
        feed = {"noise" if graph == "sampler" else "x": np.zeros((1, 4, L), np.float32), "lengths": np.array([L])}
        if graph == "denoiser":
            feed["t"] = np.array([500])
        names = {e["name"] for e in profiled_nodes(path, feed)}
        return {branch for branch in ("short/", "long/") if any(n.startswith(branch) for n in names)}

    assert branches(2 * CHUNK - 1) == {"short/"} and branches(2 * CHUNK) == {"long/"}
    ops = op_types(path)
    assert "If" in ops and "Less" in ops


def test_dispatch_by_length_refuses_graphs_of_different_signatures(chunked, unconditional) -> None:
    import onnx

    from ldns_fast.export.by_length import dispatch_by_length

    sampler, denoiser = (onnx.load(str(chunked[1] / f"{g}.onnx")) for g in ("sampler", "denoiser"))
    with pytest.raises(ValueError, match="different inputs"):
        dispatch_by_length(sampler, denoiser, "noise", 10)
    with pytest.raises(ValueError, match="holds a subgraph"):  # an If-dispatched graph is not flat
        dispatch_by_length(sampler, sampler, "noise", 10)
    flat = onnx.load(str(unconditional[1] / "decoder.onnx"))
    with pytest.raises(ValueError, match="'rates' is not an input"):
        dispatch_by_length(flat, flat, "rates", 10)


def tensor_sizes(path: Path, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Element count of every tensor a graph computes from ``feed``, by node (:func:`profiled_nodes`)."""
    sizes = {}
    for event in profiled_nodes(path, feed):
        shapes = [shape for output in event["args"].get("output_type_shape", []) for shape in output.values()]
        size = max([int(np.prod(shape)) for shape in shapes], default=0)
        sizes[event["name"]] = max(size, sizes.get(event["name"], 0))
    return sizes


@pytest.mark.parametrize("fixture, short, long", [("chunked", 2048, 8192), ("unconditional", 250, 1000)])
def test_chunked_denoiser_graph_grows_linearly_with_the_length(fixture: str, short: int, long: int, request) -> None:
    _, out = request.getfixturevalue(fixture)

    def sizes(L: int) -> dict[str, int]:
        feed = {"x": np.random.default_rng(0).standard_normal((1, 4, L), np.float32),
                "t": np.array([500]), "lengths": np.array([L])}
        return tensor_sizes(out / "denoiser.onnx", feed)

    before, after = sizes(short), sizes(long)
    # The largest tensor and all tensors together (per node: the scan's deepest levels hold no state at the
    # short length and a few at the long one).
    growth = max(max(after.values()) / max(before.values()), sum(after.values()) / sum(before.values()))
    if fixture == "chunked":  # at most ~4x more for a 4x longer input (chunk rounding aside)
        assert growth <= 4.5, growth
    else:  # the direct graph's L x L Toeplitz matrices grow 16x: the check can fail
        assert growth >= 15, growth


def test_metadata_describes_the_model(unconditional) -> None:
    model, out = unconditional
    meta = read_metadata(out / "sampler.onnx")
    assert meta["graph"] == "sampler" and (meta["sampler"], meta["steps"], meta["conv"]) == ("ddim", STEPS, "direct")
    assert meta["timesteps"] == make_timesteps(model.schedule, STEPS, "trailing").tolist()  # DDIM's default spacing
    assert meta["bin_width"] == model.bin_width and meta["n_neurons"] == 12 and meta["latent_channels"] == 4
    assert np.allclose(meta["latent_mean"], model.latent_mean.numpy())
    assert np.allclose(meta["latent_std"], model.latent_std.numpy())
    assert meta["config"]["denoiser"]["hidden"] == 16 and meta["inputs"] == ["noise", "lengths"]
    assert read_metadata(out / "denoiser.onnx")["alphas_cumprod"][0] == pytest.approx(model.schedule.alpha_bar(0))
    assert (meta["chunk"], meta["max_length"]) == (None, model.n_bins)  # a direct graph, for the training length


def test_chunked_metadata_records_chunk_and_capacity(chunked) -> None:
    _, out = chunked
    meta = read_metadata(out / "sampler.onnx")
    assert (meta["conv"], meta["chunk"]) == ("chunked", CHUNK) and meta["session_options"]["enable_mem_reuse"]
    assert meta["max_length"] >= CHUNKED_MIN_CAPACITY and read_metadata(out / "denoiser.onnx")["max_length"] == \
        meta["max_length"]
    assert read_metadata(out / "decoder.onnx")["max_length"] is None  # pointwise in time


def test_onnx_sampler_refuses_lengths_its_graph_cannot_hold(unconditional, chunked, tmp_path: Path) -> None:
    direct = OnnxSampler(unconditional[1] / "sampler.onnx")
    with pytest.raises(ValueError, match=r"direct graph.*a 300-bin trial needs a bin budget of 90000 \(L x L\) "
                                         r"and max_bins is 89999"):
        direct.sample(lengths=[300, 2], max_bins=89_999)
    with pytest.raises(ValueError, match="bin budget"):
        direct.sample_to_hdf5(tmp_path / "long.h5", lengths=[300], max_bins=1000)
    assert not (tmp_path / "long.h5").exists()
    assert direct.sample(lengths=[300, 2], max_bins=90_000).latents.shape == (2, 4, 300)
    sampler = OnnxSampler(chunked[1] / "sampler.onnx")
    sampler.metadata["max_length"] = 100  # as for a graph exported with fewer scan levels
    with pytest.raises(ValueError, match="holds trials up to 100 bins, got one of 101"):
        sampler.sample(lengths=[101])


# -------------------------------------------------------------------------- runtimes without torch


def test_exported_file_runs_in_a_process_without_ldns_fast_or_torch(unconditional, tmp_path: Path) -> None:
    model, out = unconditional
    lengths = torch.tensor([40, 13])
    noise = torch.randn(2, 4, 40, generator=torch.Generator().manual_seed(9))
    np.save(tmp_path / "noise.npy", noise.numpy())
    script = f"""
import json, sys
import numpy as np
import onnxruntime as ort
path = {str(out / 'sampler.onnx')!r}
probe = ort.SessionOptions()
probe.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
meta = ort.InferenceSession(path, probe).get_modelmeta().custom_metadata_map
options = ort.SessionOptions()
options.enable_mem_reuse = json.loads(meta["session_options"])["enable_mem_reuse"]
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
latents, rates = session.run(None, {{"noise": np.load({str(tmp_path / 'noise.npy')!r}),
                                     "lengths": np.array([40, 13], dtype=np.int64)}})
np.save({str(tmp_path / 'rates.npy')!r}, rates)
assert not [m for m in sys.modules if m == "torch" or m.startswith("ldns_fast")], "imported torch or ldns_fast"
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    _, want_rates = torch_reference(model, noise, lengths, "ddim")
    assert relative_error(np.load(tmp_path / "rates.npy"), want_rates) < TOL


def test_onnx_sampler_needs_no_torch_and_writes_the_dataset_format(chunked, tmp_path: Path) -> None:
    _, out = chunked
    script = f"""
import sys
from ldns_fast.export import OnnxSampler
sampler = OnnxSampler({str(out / 'sampler.onnx')!r})
sampler.sample_to_hdf5({str(tmp_path / 's.h5')!r}, lengths=[30, 5, 18], seed=3, max_bins=40)
assert "torch" not in sys.modules, "OnnxSampler imported torch"
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    data = read_dataset(tmp_path / "s.h5")
    assert data.spikes.shape == (3, 30, 12) and data.lengths.tolist() == [30, 5, 18] and data.bin_width == 0.01
    expected = OnnxSampler(out / "sampler.onnx").sample(lengths=[30, 5, 18], seed=3)
    assert np.array_equal(data.spikes, expected.spikes.transpose(0, 2, 1))
    assert np.allclose(data.latents, expected.latents.transpose(0, 2, 1))


def test_onnx_sampler_results_do_not_depend_on_batching(chunked) -> None:
    _, out = chunked
    sampler = OnnxSampler(out / "sampler.onnx")
    lengths = [50, 3, 24, 24, 61, 10]
    one_call = sampler.sample(lengths=lengths, seed=11, max_bins=10_000)
    many_calls = sampler.sample(lengths=lengths, seed=11, max_bins=60)
    assert np.allclose(one_call.latents, many_calls.latents, rtol=1e-5, atol=1e-6)
    assert np.array_equal(one_call.spikes, many_calls.spikes)  # each trial draws from its own stream
    assert one_call.latents.shape == (6, 4, 61) and one_call.lengths.tolist() == lengths
    for i, length in enumerate(lengths):
        assert not one_call.spikes[i, :, length:].any()
    assert not np.array_equal(sampler.sample(lengths=lengths, seed=12).latents, one_call.latents)


def test_onnx_sampler_runs_long_calls_without_the_memory_arena(chunked, monkeypatch: pytest.MonkeyPatch) -> None:
    import ldns_fast.export.runtime as runtime

    _, out = chunked
    sampler = OnnxSampler(out / "sampler.onnx")
    lengths = [300, 40]
    with_arena = sampler.sample(lengths=lengths, seed=3)
    assert sampler._arena_free is None  # 340 bins: below the threshold
    monkeypatch.setattr(runtime, "ARENA_FREE_BINS", 600)  # one call of 2 x 300 bins
    without = sampler.sample(lengths=lengths, seed=3)
    assert sampler._arena_free is not None and sampler._arena_free is not sampler.session
    assert not sampler._arena_free.get_session_options().enable_cpu_mem_arena
    assert sampler.session.get_session_options().enable_cpu_mem_arena
    assert np.allclose(without.latents, with_arena.latents, rtol=1e-5, atol=1e-6)
    assert np.array_equal(without.spikes, with_arena.spikes)


def test_onnx_sampler_refuses_counts_beyond_the_count_type(unconditional) -> None:
    from ldns_fast.data import DataFormatError

    sampler = OnnxSampler(unconditional[1] / "sampler.onnx")
    run = sampler._run
    sampler._run = lambda feed: (lambda latents, rates: (latents, rates * 0 + 1e6))(*run(feed))  # implausible
    with pytest.raises(DataFormatError, match=r"sampling trial 0 from .*sampler.onnx: 'spikes' holds a count of "
                                              r"\d+, above 65535"):
        sampler.sample(lengths=[5], seed=0)


def test_onnx_sampler_long_recording_in_bounded_batches(conditional) -> None:
    _, out = conditional
    sampler = OnnxSampler(out / "sampler.onnx")
    assert sampler.conv == "fft"
    T = 3000
    cond, behavior = np.zeros((1, 2), np.float32), np.zeros((1, 3, T), np.float32)
    (batch,) = list(sampler.batches(lengths=[T], conditions=cond, behavior=behavior, seed=0, max_bins=1))
    assert batch.latents.shape == (1, 4, T) and np.isfinite(batch.rates).all() and batch.rates.min() >= 0


def test_onnx_sampler_rejects_bad_requests(unconditional, conditional, tmp_path: Path) -> None:
    _, plain = unconditional
    _, cond_dir = conditional
    sampler, conditional_sampler = OnnxSampler(plain / "sampler.onnx"), OnnxSampler(cond_dir / "sampler.onnx")
    with pytest.raises(ValueError, match="lengths must be positive integers"):
        sampler.sample(lengths=[4, 0])
    with pytest.raises(ValueError, match="n must be a positive number"):
        sampler.sample(0)
    with pytest.raises(ValueError, match="takes no conditions"):
        sampler.sample(2, conditions=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"give conditions \[n, 2\]"):
        conditional_sampler.sample(2)
    with pytest.raises(ValueError, match=r"conditions must have shape \[n, cond_dim\] = \[2, 2\]"):
        conditional_sampler.sample(2, conditions=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="conditions contain NaN"):
        conditional_sampler.sample(2, conditions=np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match=r"behavior must have shape \[n, B, T\]"):
        conditional_sampler.sample(2, conditions=np.zeros((2, 2)), behavior=np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"noise\[1\] must be finite with shape \[4, 3\]"):
        sampler.sample(lengths=[2, 3], noise=[np.zeros((4, 2)), np.zeros((4, 2))])
    with pytest.raises(ValueError, match="not an exported sampler"):
        OnnxSampler(plain / "decoder.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxSampler(tmp_path / "missing.onnx")
    (tmp_path / "exists.h5").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        sampler.sample_to_hdf5(tmp_path / "exists.h5", 2)
    assert (tmp_path / "exists.h5").read_bytes() == b"keep me"


def forged_sampler(path: Path, metadata: dict[str, str]) -> Path:
    """A one-node ONNX file carrying ``metadata`` (raw strings, normally JSON) as its metadata_props."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "forged", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


VALID_SAMPLER_METADATA = {
    "format": '"ldns_fast.onnx/1"', "graph": '"sampler"', "n_neurons": "12", "latent_channels": "4", "cond_dim": "0",
    "behavior_channels": "0", "training_length": "16", "steps": "2", "bin_width": "0.01", "conv": '"direct"',
    "sampler": '"ddim"', "session_options": '{"enable_mem_reuse": true}',
}


@pytest.mark.parametrize("change, message", [
    ({"n_neurons": "{12"}, "metadata 'n_neurons' is not valid JSON"),
    ({"n_neurons": None, "conv": None}, r"the sampler metadata lacks \['conv', 'n_neurons'\]"),
    ({"latent_channels": '"4"'}, "metadata 'latent_channels' must be an integer >= 1, got '4'"),
    ({"cond_dim": "-1"}, "metadata 'cond_dim' must be an integer >= 0"),
    ({"bin_width": "-0.01"}, "metadata 'bin_width' must be a positive number"),
    ({"conv": '"wavelet"'}, "metadata 'conv' must be 'direct', 'fft' or 'chunked'"),
    ({"max_length": "0"}, "metadata 'max_length' must be null or an integer >= 1, got 0"),
    ({"session_options": "{}"}, "metadata 'session_options' must be a mapping with 'enable_mem_reuse'"),
])
def test_onnx_sampler_refuses_forged_metadata_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    metadata = {k: v for k, v in {**VALID_SAMPLER_METADATA, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        OnnxSampler(forged_sampler(tmp_path / "forged.onnx", metadata))


def test_export_refuses_stochastic_samplers_and_existing_files(unconditional, tmp_path: Path) -> None:
    model, out = unconditional
    with pytest.raises(ValueError, match="only deterministic samplers"):
        export_onnx(model, tmp_path, sampler="ddpm", steps=2)
    with pytest.raises(ValueError, match="only deterministic samplers"):  # noise drawn at tracing would be baked in
        export_onnx(model, tmp_path, sampler="sde-dpm++", steps=2)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        export_onnx(model, out, steps=2)
    with pytest.raises(ValueError, match="conv must be"):
        export_onnx(model, tmp_path, conv="wavelet")
    assert not list(tmp_path.iterdir())


def test_export_cli_on_a_trained_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ldns_fast.export.__main__ import main as export_main
    from ldns_fast.train import main as train_main

    monkeypatch.setenv("LDNS_FAST_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert train_main(["--out", str(run), "--set", "data.lorenz.n_trials=40", "--set", "data.lorenz.n_bins=16",
                       "--set", "data.lorenz.n_neurons=8", "--set", "autoencoder.hidden=8",
                       "--set", "autoencoder.d_state=4", "--set", "autoencoder.latent=4", "--set", "denoiser.hidden=8",
                       "--set", "denoiser.d_state=4", "--ae-epochs", "1", "--diffusion-epochs", "1",
                       "--no-progress"]) == 0
    assert export_main([str(run), "--steps", "2", "--sampler", "dpm++"]) == 0
    meta = read_metadata(run / "onnx" / "sampler.onnx")
    assert (meta["conv"], meta["training_length"], meta["n_neurons"]) == ("direct", 16, 8)
    assert json.loads(json.dumps(meta["config"])) == meta["config"]
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        export_main([str(run), "--steps", "2"])
    with pytest.raises(SystemExit, match="error: "):
        export_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
