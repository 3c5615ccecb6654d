"""Pallas kernels (GPU and TPU), each with the exact XLA computation it replaces as its reference."""
