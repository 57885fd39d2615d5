"""What the CPU can do: its name and the instruction sets that decide int8 kernels and rounding
(one place that reads them, for the device fingerprint, manifests and runtime settings)."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Optional

__all__ = ["cpu_name", "instruction_sets", "has_int8_dot_product", "is_x86", "INT8_ISAS"]

# The flags that matter for int8 and fp16 kernels, in /proc/cpuinfo spelling (x86 and Arm).
INT8_ISAS = (
    "sse4_1",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "fphp",
    "sve",
    "sve2",
    "sme",
)
_MAC_NAMES = {
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_FP16": "fphp",
    "hw.optional.arm.FEAT_SME": "sme",
    "hw.optional.neon": "asimd",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512vnni": "avx512_vnni",
}


def _cpuinfo() -> Optional[str]:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_name() -> str:
    text = _cpuinfo()
    if text:
        for line in text.splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine()


def _sysctl(key: str) -> Optional[str]:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def instruction_sets() -> tuple[str, ...]:
    """The int8/fp16-relevant instruction sets this CPU reports (empty where it cannot be read)."""
    text = _cpuinfo()
    flags: set[str] = set()
    if text:
        for line in text.splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    elif platform.system() == "Darwin":
        flags = {name for key, name in _MAC_NAMES.items() if _sysctl(key) == "1"}
    return tuple(isa for isa in INT8_ISAS if isa in flags)


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_int8_dot_product() -> Optional[bool]:
    """Whether this x86 CPU sums int8 products in 32 bits (VNNI or AMX); None off x86 or where the
    flags cannot be read. Without it, u8 x s8 kernels add product pairs in saturating 16 bits."""
    if not is_x86():
        return None
    isas = instruction_sets()
    if not isas:
        return None
    return any(isa in isas for isa in ("avx512_vnni", "avx_vnni", "amx_int8"))
