"""What CPU a figure was measured on: its model and the vector ISA that decides INT8 and FP32 speed.

ONNX Runtime's x86 kernels differ by ISA: AVX2 alone multiplies uint8 x int8 with VPMADDUBSW (16-bit
intermediate sums), AVX-512 VNNI and AVX-VNNI with VPDPBUSD, AMX with tile instructions. A latency
without the CPU's name and ISA cannot be compared with another, so every benchmark and export report
records `cpu_info()`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name figures are reported under, in the order they are listed.
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "asimddp": "NEON dot product",
    "i8mm": "I8MM",
    "sve": "SVE",
}


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """`{"model", "isa", "vnni", "cores"}` of this machine (Linux: from /proc/cpuinfo)."""
    text = cpuinfo if cpuinfo is not None else read_cpuinfo()
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    isa = [name for flag, name in ISA_FLAGS.items() if flag in flags]
    return {
        "model": model,
        "isa": isa,
        "vnni": any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8")),
        "cores": os.cpu_count(),
    }


def read_cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text(errors="replace") if path.is_file() else ""


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line, e.g. `Intel(R) Xeon(R) Processor, 2 cores, AVX2 FMA AVX-512 AVX-512 VNNI AMX-INT8`."""
    info = info or cpu_info()
    return f"{info['model']}, {info['cores']} cores, {' '.join(info['isa']) or 'no vector ISA flags found'}"
