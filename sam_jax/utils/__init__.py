"""The official module paths of `segment_anything.utils`, so that code written for the official
package runs with `sam_jax` in its place: `transforms`, `amg` and `onnx` re-export the real code
from where it lives in sam-jax's layout. Nothing inside sam-jax imports from here."""
