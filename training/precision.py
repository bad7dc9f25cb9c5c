"""Compute precision and XLA for this machine (`training.mixed_precision: auto`).

Measured on the 2-core machines this project runs on:

- AVX2-only CPUs (no bf16 units): bf16 matmuls run at the fp32 rate (tf.matmul 2048²:
  113 vs 128 GFLOP/s), so float32 is the choice; XLA speeds up our training step
  ("small", `python bench/train.py`: 1,839 → 2,173 target tokens/s).
- CPUs with native bf16 (`avx512_bf16` or `amx_bf16` in the CPU flags, e.g. Zen 4):
  mixed_bfloat16 without XLA is fastest ("small": 3,850 tok/s against 3,006 with XLA
  and 3,014 for float32 with XLA): TensorFlow's oneDNN bf16 kernels beat XLA's CPU dots.
  Not for every shape: the main job's narrow model (d_model 128) trains faster in float32
  with XLA on an AMX Xeon (epoch 90 s against 101 s), so its config sets the precision
  (training/results/sweep/full_length.md).
"""

import os

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISIONS = ("auto", "none", "mixed_bfloat16", "mixed_float16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is missing)."""
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags=None):
    """True when the CPU computes bf16 dot products natively."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(mixed_precision="auto", jit_compile="auto", flags=None):
    """(Keras dtype policy name or None for float32, XLA on/off) for a run.

    Example:
    >>> resolve_precision("auto", "auto", flags={"avx2", "fma"})
    (None, True)
    >>> resolve_precision("auto", "auto", flags={"avx512f", "avx512_bf16"})
    ('mixed_bfloat16', False)
    >>> resolve_precision("none", False)
    (None, False)
    """
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {mixed_precision!r}")
    if mixed_precision == "auto":
        mixed_precision = "mixed_bfloat16" if native_bf16(flags) else "none"
    if jit_compile == "auto":
        jit_compile = mixed_precision == "none"
    policy = None if mixed_precision == "none" else mixed_precision
    return policy, bool(jit_compile)
