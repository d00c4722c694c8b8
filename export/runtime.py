"""Run an exported LDNS sampler with onnxruntime and numpy only (no torch, no model code).

:class:`OnnxSampler` reads the metadata inside ``sampler.onnx``, chooses execution providers
(TensorRT, CUDA, then CPU, whichever this onnxruntime has), validates requests, groups trials of
similar length into batches under a bin budget (so a one-hour recording and a thousand short trials
both fit in memory), draws each trial's initial noise and Poisson spikes from its own seeded stream as
its batch runs (results do not depend on the batching), and writes HDF5 incrementally. It refuses a
trial that the graph cannot hold: longer than a chunked graph's ``max_length``, or, for a direct graph
(an ``L x L`` Toeplitz matrix per S4 channel, as much memory as ``L`` trials of ``L`` bins), one whose
``L * L`` exceeds the bin budget.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ldns_fast.validation import is_integer, is_number

# Bins (trials x padded length) per onnxruntime call; activations scale with it.
DEFAULT_MAX_BINS = 1 << 16
# Calls of at least this many bins (trials x padded length) run on CPU in a session without onnxruntime's memory
# arena: a long recording's activations are freed as they die instead of staying reserved (a 180,000-bin trial:
# 1.77 GiB resident peak instead of 2.90 GiB; benchmarks/results/long_recordings_cpu.md); shorter calls keep
# the arena (faster there).
ARENA_FREE_BINS = 1 << 17
# Poisson counts drawn at once (neurons x bins): bounds the int64 draws of a long trial (8 MiB).
POISSON_BLOCK = 1 << 20
FFT_MIN_BUCKET = 64


@dataclass
class SampleBatch:
    """Trials ``index [k]`` (positions in the request) with ``latents [k, C, t]``, ``rates`` and ``spikes``
    ``[k, N, t]`` (zero past each length) and ``lengths [k]``."""

    index: np.ndarray
    latents: np.ndarray
    rates: np.ndarray
    spikes: np.ndarray
    lengths: np.ndarray


class OnnxSampler:
    """An exported ``sampler.onnx`` ready to generate trials.

    Args:
        path: the ONNX file written by ``python -m ldns_fast.export``.
        providers: onnxruntime execution providers; default TensorRT/CUDA when available, then CPU.
        threads: intra-op threads on CPU (default: onnxruntime's choice).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.metadata = read_metadata(self.path)
        if self.metadata.get("graph") != "sampler":
            raise ValueError(f"{self.path} is a {self.metadata.get('graph')!r} graph, not an exported sampler")
        _check_sampler_metadata(self.path, self.metadata)
        options.enable_mem_reuse = bool(self.metadata["session_options"]["enable_mem_reuse"])
        available = ort.get_available_providers()
        if providers is None:
            preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
            providers = [p for p in preferred if p in available]
        self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        self.on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        self._options, self._providers, self._arena_free = options, list(providers), None
        m = self.metadata
        self.n_neurons, self.latent_channels = int(m["n_neurons"]), int(m["latent_channels"])
        self.cond_dim, self.behavior_channels = int(m["cond_dim"]), int(m["behavior_channels"])
        self.bin_width, self.conv = float(m["bin_width"]), m["conv"]

    def sample(
        self, n: int | None = None, length: int | None = None, lengths: Sequence[int] | None = None,
        conditions: np.ndarray | None = None, behavior: np.ndarray | None = None, seed: int | None = None,
        max_bins: int = DEFAULT_MAX_BINS, noise: Sequence[np.ndarray] | None = None,
    ) -> SampleBatch:
        """Generate trials in memory (see :meth:`batches` for the arguments); arrays padded to the longest."""
        parts = list(self.batches(n, length, lengths, conditions, behavior, seed, max_bins, noise))
        lengths_all = np.concatenate([p.lengths for p in parts])
        order = np.argsort(np.concatenate([p.index for p in parts]))
        T = int(lengths_all.max())

        def gather(name: str) -> np.ndarray:
            arrays = [getattr(p, name) for p in parts]
            padded = [np.pad(a, ((0, 0), (0, 0), (0, T - a.shape[-1]))) for a in arrays]
            return np.concatenate(padded)[order]

        return SampleBatch(np.arange(len(order)), gather("latents"), gather("rates"), gather("spikes"),
                           lengths_all[order])

    def batches(
        self, n: int | None = None, length: int | None = None, lengths: Sequence[int] | None = None,
        conditions: np.ndarray | None = None, behavior: np.ndarray | None = None, seed: int | None = None,
        max_bins: int = DEFAULT_MAX_BINS, noise: Sequence[np.ndarray] | None = None,
    ) -> Iterator[SampleBatch]:
        """Yield generated batches of similar-length trials.

        Either ``n`` trials of ``length`` bins (default: the training length) or per-trial ``lengths``.
        ``conditions [n, cond_dim]`` and ``behavior [n, B, >= length]`` for a conditional model.
        ``seed`` seeds the initial noise (``noise``: explicit per-trial ``[C, length_i]`` arrays instead)
        and the Poisson spikes. ``max_bins`` bounds trials x padded length per call.
        """
        from ldns_fast.data.hdf5 import COUNT_DTYPE, as_counts

        lengths = self._lengths(n, length, lengths)
        conditions, behavior = self._conditions(len(lengths), int(lengths.max()), conditions, behavior)
        self._check_budget(lengths, max_bins)
        if noise is not None:
            noise = self._check_noise(noise, lengths)
        # One random stream per trial: its noise, then its spikes. Draws happen batch by batch (bounded
        # memory) and no trial's values depend on the batching.
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(lengths))]
        for index in self._plan(lengths, max_bins):
            L = self._padded_length(int(lengths[index].max()))
            start = np.zeros((len(index), self.latent_channels, L), np.float32)
            for row, i in enumerate(index):
                start[row, :, : lengths[i]] = noise[i] if noise is not None else \
                    streams[i].standard_normal((self.latent_channels, int(lengths[i])), dtype=np.float32)
            feed = {"noise": start, "lengths": lengths[index].astype(np.int64)}
            if conditions is not None:
                feed["conditions"] = conditions[index]
            if self.behavior_channels:
                b = np.zeros((len(index), self.behavior_channels, L), np.float32)
                if behavior is not None:
                    t = min(L, behavior.shape[2])
                    b[:, :, :t] = behavior[index, :, :t]
                feed["behavior"] = b
            latents, rates = self._run(feed)
            t = int(lengths[index].max())
            latents, rates = latents[..., :t], rates[..., :t]
            spikes = np.zeros(rates.shape, COUNT_DTYPE)
            for row, i in enumerate(index):  # counts beyond COUNT_DTYPE are refused, never wrapped
                # Blocks of neurons: int64 draws stay small for long trials, and the stream is consumed in
                # the same (neuron-major) order as one draw of the whole trial.
                block = max(1, POISSON_BLOCK // int(lengths[i]))
                for start in range(0, rates.shape[1], block):
                    draws = streams[i].poisson(rates[row, start : start + block, : lengths[i]])
                    spikes[row, start : start + block, : lengths[i]] = as_counts(
                        draws, f"sampling trial {i} from {self.path}")
            yield SampleBatch(index, latents, rates, spikes, lengths[index])

    def sample_to_hdf5(
        self, path: str | os.PathLike, n: int | None = None, length: int | None = None,
        lengths: Sequence[int] | None = None, conditions: np.ndarray | None = None,
        behavior: np.ndarray | None = None, seed: int | None = None, max_bins: int = DEFAULT_MAX_BINS,
        overwrite: bool = False, progress: bool = False,
    ) -> Path:
        """Generate trials batch by batch into a dataset file (``docs/data_format.md``), atomically."""
        from ldns_fast.data.hdf5 import DatasetWriter

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        lengths = self._lengths(n, length, lengths)
        self._check_budget(lengths, max_bins)
        description = f"ldns_fast ONNX samples from {self.path.name}: {self.metadata['sampler']}-" \
                      f"{self.metadata['steps']}, seed {seed}"
        writer = DatasetWriter(path, len(lengths), int(lengths.max()), self.n_neurons, self.latent_channels,
                               self.bin_width, description)
        with writer, tqdm(total=len(lengths), unit="trial", disable=not progress) as bar:
            for part in self.batches(None, None, lengths, conditions, behavior, seed, max_bins):
                order = np.argsort(part.index)  # the writer stores trials in increasing file order
                if (order == np.arange(len(order))).all():
                    order = slice(None)  # views, not copies, of long trials
                writer.write(part.index[order], *(_file_layout(a[order]) for a in (part.spikes, part.rates,
                                                                                   part.latents)),
                             part.lengths[order])
                bar.update(len(part.index))
        return path

    # ------------------------------------------------------------------------------------- helpers

    def _run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if not self.on_gpu:
            noise = feed["noise"]
            return tuple(self._cpu_session(noise.shape[0] * noise.shape[-1]).run(["latents", "rates"], feed))
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in ("latents", "rates"):
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return tuple(binding.copy_outputs_to_cpu())

    def _cpu_session(self, bins: int):
        """The session for a CPU call of ``bins`` bins: without the memory arena from :data:`ARENA_FREE_BINS` on
        (made on first use)."""
        if bins < ARENA_FREE_BINS:
            return self.session
        if self._arena_free is None:
            import onnxruntime as ort

            self._options.enable_cpu_mem_arena = False  # self.session copied the options when it was made
            self._arena_free = ort.InferenceSession(str(self.path), self._options, providers=self._providers)
        return self._arena_free

    def _padded_length(self, L: int) -> int:
        """FFT graphs: the next power of two (onnxruntime's fast DFT); direct and chunked graphs: ``L``."""
        return max(FFT_MIN_BUCKET, 1 << (L - 1).bit_length()) if self.conv == "fft" else L

    def _check_budget(self, lengths: np.ndarray, max_bins: int) -> None:
        """Refuse ``max_bins`` that is not a positive integer, and trials this graph cannot hold."""
        if not is_integer(max_bins) or max_bins < 1:
            raise ValueError(f"max_bins must be a positive integer, got {max_bins!r}")
        longest, limit = int(lengths.max()), self.metadata.get("max_length")
        if self.conv == "direct" and longest * longest > max_bins:
            raise ValueError(
                f"{self.path.name} is a direct graph: it holds an L x L Toeplitz matrix per S4 channel, so a "
                f"{longest}-bin trial needs a bin budget of {longest * longest} (L x L) and max_bins is {max_bins}; "
                f"raise max_bins or re-export with --conv chunked (linear in the length)")
        if self.conv == "chunked" and limit is not None and longest > limit:
            raise ValueError(f"{self.path.name} holds trials up to {limit} bins, got one of {longest}; "
                             f"re-export it with --max-length {longest}")

    def _plan(self, lengths: np.ndarray, max_bins: int) -> Iterator[np.ndarray]:
        """Trial indices grouped by padded length (longest first), at most ``max_bins`` bins per group."""
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < len(order):
            L = self._padded_length(int(lengths[order[start]]))
            size = max(1, max_bins // L)
            group = order[start : start + size]
            yield group
            start += len(group)

    def _lengths(self, n: int | None, length: int | None, lengths: Sequence[int] | None) -> np.ndarray:
        if lengths is None:
            if not is_integer(n, numpy=True) or n < 1:
                raise ValueError(f"n must be a positive number of trials, got {n!r}")
            length = int(self.metadata["training_length"]) if length is None else length
            lengths = [length] * int(n)
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer) \
                or lengths.min() < 1:
            raise ValueError(f"lengths must be positive integers, one per trial, got {lengths.tolist()[:10]}")
        if n is not None and len(lengths) != n:
            raise ValueError(f"n={n} does not match {len(lengths)} lengths")
        return lengths.astype(np.int64)

    def _conditions(
        self, n: int, T: int, conditions: np.ndarray | None, behavior: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        from ldns_fast.validation import check_conditions

        conditions, behavior = (None if a is None else np.asarray(a, dtype=np.float32) for a in (conditions, behavior))
        check_conditions(n, T, self.cond_dim, self.behavior_channels, conditions, behavior, required=True)
        return conditions, behavior

    def _check_noise(self, noise: Sequence[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
        if len(noise) != len(lengths):
            raise ValueError(f"noise must hold one array per trial ({len(lengths)}), got {len(noise)}")
        checked = []
        for i, (z, t) in enumerate(zip(noise, lengths)):
            z = np.asarray(z, dtype=np.float32)
            if z.shape != (self.latent_channels, int(t)) or not np.isfinite(z).all():
                raise ValueError(f"noise[{i}] must be finite with shape [{self.latent_channels}, {int(t)}], "
                                 f"got {list(z.shape)}")
            checked.append(z)
        return checked


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``ldns_fast`` metadata of an exported ONNX file (JSON values decoded), read by onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        raise ValueError(f"{path}: not a readable ONNX file ({err})") from err
    props = session.get_modelmeta().custom_metadata_map
    if not props.get("format", "").startswith('"ldns_fast.onnx/'):
        raise ValueError(f"{path} has no ldns_fast metadata: export it with python -m ldns_fast.export")
    metadata = {}
    for key, value in props.items():
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({err}); re-export the file") from err
    return metadata


# Integer fields of a sampler's metadata and their least valid values.
_SAMPLER_INTEGERS = {"n_neurons": 1, "latent_channels": 1, "cond_dim": 0, "behavior_channels": 0,
                     "training_length": 1, "steps": 1}


def _check_sampler_metadata(path: Path, m: dict) -> None:
    """Raise a ValueError naming the key of incomplete or forged sampler metadata."""
    missing = sorted({*_SAMPLER_INTEGERS, "bin_width", "conv", "sampler", "session_options"} - set(m))
    if missing:
        raise ValueError(f"{path}: the sampler metadata lacks {missing}; re-export it with python -m ldns_fast.export")
    for key, least in _SAMPLER_INTEGERS.items():
        if not is_integer(m[key]) or m[key] < least:
            raise ValueError(f"{path}: metadata {key!r} must be an integer >= {least}, got {m[key]!r}")
    width = m["bin_width"]
    if not is_number(width) or not (math.isfinite(width) and width > 0):
        raise ValueError(f"{path}: metadata 'bin_width' must be a positive number of seconds, got {width!r}")
    if m["conv"] not in ("direct", "fft", "chunked"):
        raise ValueError(f"{path}: metadata 'conv' must be 'direct', 'fft' or 'chunked', got {m['conv']!r}")
    limit = m.get("max_length")  # absent from files exported before chunked graphs
    if limit is not None and (not is_integer(limit) or limit < 1):
        raise ValueError(f"{path}: metadata 'max_length' must be null or an integer >= 1, got {limit!r}")
    if not isinstance(m["session_options"], dict) or "enable_mem_reuse" not in m["session_options"]:
        raise ValueError(f"{path}: metadata 'session_options' must be a mapping with 'enable_mem_reuse'")


def _file_layout(x: np.ndarray) -> np.ndarray:
    """``[k, channels, t]`` -> ``[k, t, channels]`` (the dataset file layout)."""
    return np.ascontiguousarray(np.swapaxes(x, 1, 2))
