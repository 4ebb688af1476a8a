"""Process memory readings shared by the benchmark scripts (Linux /proc, ru_maxrss fallback)."""

from __future__ import annotations

import platform
import re
import resource


def status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_mb() -> float:
    kb = status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    return peak_rss_mb()


def peak_rss_mb() -> float:
    kb = status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 2**20


def reset_peak_rss() -> bool:
    """Reset VmHWM (and ru_maxrss) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None
