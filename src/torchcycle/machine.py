"""What timings were measured on, recorded next to every timing (export reports, benchmarks)."""

from __future__ import annotations

import platform
from pathlib import Path


def machine() -> dict:
    """What the timings were measured on."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}

