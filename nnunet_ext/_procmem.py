"""Resident memory of this process, for the benchmarks (``ops.benchmark`` and ``evaluation.benchmark``).

Linux reads ``/proc/self/status``; elsewhere ``getrusage``. Kept outside the layered packages so
that the lowest layer (``ops``) can use it too.
"""

from __future__ import annotations

import sys


def status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``), or None where unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``, the peak of this process's own memory. Not
    ``ru_maxrss``: after subprocess's vfork + exec it also carries the parent's peak, which would
    hide any child smaller than the parent. Elsewhere: ``getrusage`` ``ru_maxrss``.
    """
    hwm = status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the peak to the current resident size (Linux >= 4.0: ``/proc/self/clear_refs`` = 5), so a
    transient earlier peak does not hide a smaller later one; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
