"""Process-wide floating-point settings every graphrec process that computes starts with.

**Subnormal floats are flushed to zero.** A weight (or activation) on its way to zero passes through the
subnormal range (``|x| < 1.2e-38`` in float32), where x86 arithmetic takes a slow microcode path, tens of
times slower per operation. It happens in training here: when DIN's attention MLP over a behaviour
history stops receiving gradient, weight decay shrinks its first layer geometrically (measured on the
default world: the largest weight fell from 8e-19 to 1e-29 between epochs 4 and 7), its pre-activations
and their gradients go subnormal, and the ranker's epochs grew 5x within one run. Flushed, those values are
exact zeros — which is what they had become anyway. Set once at the start of a process, before PyTorch
starts its intra-op threads, which inherit the calling thread's floating-point mode.
"""
from __future__ import annotations


def flush_denormals() -> bool:
    """Flush subnormal floats to zero in this process's CPU arithmetic (x86 FTZ/DAZ); False where the CPU
    has no such mode (nothing changes there). NumPy's warning that float64's smallest subnormal reads as
    zero (``np.finfo``, e.g. when matplotlib starts) says just that, so it is silenced."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
    return bool(torch.set_flush_denormal(True))
