"""ONNX export and onnxruntime sampling (installed as ``ldns_fast.export``).

The exporters arrive with the pipeline; this package holds their home in the layout.
"""
