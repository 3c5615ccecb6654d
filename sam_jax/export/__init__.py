"""Exports of a loaded model for runtimes outside this package: `onnx` (the official decoder
export, emitted from the model's parameters, and the image encoder) and `stablehlo` (the image
encoder as a serialized `jax.export` artifact)."""
