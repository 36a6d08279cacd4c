"""What this CPU can do, read without importing torch or the project (benchmark workers import it too)."""

from pathlib import Path


def cpu_bf16_units() -> list[str]:
    """The bf16 matrix units this CPU announces (Linux /proc/cpuinfo flags); empty elsewhere or without them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    found = set(flags.split(":", 1)[1].split())
    return [unit for flag, unit in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in found]
