"""ONNX export and onnxruntime sampling (installed as ``ldns_fast.export``).

- :func:`export_onnx` (``python -m ldns_fast.export``): a trained run -> ``sampler.onnx`` (a whole
  unrolled DDIM / DPM-Solver++ sampler), ``denoiser.onnx`` (one step) and ``decoder.onnx`` (latents ->
  rates), with dynamic batch and length axes and the model's metadata inside.
- :class:`OnnxSampler`: runs ``sampler.onnx`` with onnxruntime and numpy only (no torch), in batches
  under a bin budget, writing HDF5 incrementally.

Importing this package does not import torch; :func:`export_onnx` does, on first use.
"""
import importlib

_HOMES = {
    "OnnxSampler": "runtime", "SampleBatch": "runtime", "read_metadata": "runtime",
    "export_onnx": "onnx_export", "ExportedFiles": "onnx_export", "ExportError": "errors",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
