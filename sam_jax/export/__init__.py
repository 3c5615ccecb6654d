"""Exports of a loaded model for runtimes outside this package: `onnx` (the official decoder
export, emitted from the model's parameters)."""
