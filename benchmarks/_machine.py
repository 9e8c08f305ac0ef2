"""The one line that names the machine a benchmark ran on (its figures are that machine's)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine(*versions: str) -> str:
    """'CPU, N cores, Python x.y.z' and any library versions the caller adds."""
    return ", ".join([cpu_name(), f"{os.cpu_count()} cores", f"Python {platform.python_version()}", *versions])
