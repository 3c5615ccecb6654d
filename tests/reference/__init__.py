"""What the tests and the benchmarks share: the references they compare against and the helpers
that build both sides. Importing this package imports nothing; torch is imported only by the
modules that use the official code:

    official.py      the official PyTorch SAM (perturbed, resized, saved and converted)   torch
    training.py      a PyTorch transcription of the fine-tuning recipe                    torch
    evaluation.py    the evaluation protocols transcribed onto the official predictor     torch
    compare.py       the parity contract's comparisons                                     NumPy
    models.py        sam-jax models made from others (fresh output heads)                  JAX
    jaxpr.py         the equations of a traced program and its FLOP count                  JAX
    multiprocess.py  a real multi-process JAX run on this machine
"""
