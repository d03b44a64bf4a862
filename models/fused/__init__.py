"""The "fused" backend: one autograd node per neuron layer and per ASA module.

Every spiking layer and ASA module takes ``backend="fused"`` (the default) or ``backend="eager"``.
The eager backend is the definition, stepped one time step at a time under plain autograd, in
the model files (models/module/). The Functions here compute the same values with less memory
and time: each forward runs without an autograd graph and saves one tensor, and each backward is
written out by hand. Forward outputs equal the eager ones bit for bit; gradients equal them to
float rounding (tests/test_fused.py). Nothing in the model files depends on how these work.
"""

BACKENDS = ("fused", "eager")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend
