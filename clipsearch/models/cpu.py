"""What this processor offers, and which image-encoder path was measured fastest on it.

`--precision auto` used to pick a path from /proc/cpuinfo's flags: bf16 autocast in torch
wherever the processor had bf16 hardware. Measured on such a processor, that path was five
times slower than the fp32 ONNX graph. So the candidates are now timed when a model's
encoders are prepared (onnx_image.py) and `auto` takes the fastest; the flags only say
whether bf16 is worth timing at all. The decisions take the feature set as a parameter, so
tests run them on made-up processors; $CLIPSEARCH_CPU_FLAGS stands in for /proc/cpuinfo in
child processes and test runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_features() -> frozenset[str]:
    """The processor's feature flags: $CLIPSEARCH_CPU_FLAGS (comma or space separated) if set, else /proc/cpuinfo's
    (an empty set where there is no /proc/cpuinfo, as on macOS)."""
    override = os.environ.get("CLIPSEARCH_CPU_FLAGS")
    if override is not None:
        return frozenset(re.split(r"[,\s]+", override.strip())) - {""}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(features: frozenset[str]) -> bool:
    """Whether the processor computes bfloat16 in hardware (AVX-512 BF16 or AMX): only then is bf16 worth timing."""
    return bool(features & BF16_FLAGS)


def fastest(speeds: Mapping[str, float], features: frozenset[str], graphs_only: bool = False) -> str:
    """The path with the most images per second in `speeds`; bf16 only on bf16 hardware (a record made on
    another processor does not count), and never when `graphs_only`. fp32 when nothing was measured."""
    usable = {path: speed for path, speed in speeds.items()
              if path != "bf16" or (native_bf16(features) and not graphs_only)}
    return max(usable, key=lambda path: usable[path]) if usable else "fp32"
