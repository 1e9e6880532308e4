"""Peak memory of this process: :class:`PeakMemory` (CUDA allocator, or peak resident set on CPU).

CUDA: ``torch.cuda.max_memory_allocated`` (tensors, not the allocator's cache), reset by
``torch.cuda.reset_peak_memory_stats``. CPU: the peak resident set size -- on Linux the kernel's
``VmHWM`` of ``/proc/self/status``, which ``/proc/self/clear_refs`` lowers to the current size;
elsewhere ``getrusage``'s ``ru_maxrss``, which cannot be lowered (the peak of the whole process).
"""

from __future__ import annotations

import sys

import torch


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``), or None where unreadable."""
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

    Linux: ``VmHWM``, the peak of this process's own memory. Not ``ru_maxrss``: after
    subprocess's vfork + exec it also carries the parent's peak, which would hide any child
    smaller than the parent. Elsewhere: ``getrusage`` ``ru_maxrss``.
    """
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Lower the peak to the current resident size (Linux >= 4.0: ``/proc/self/clear_refs`` = 5), so a
    transient earlier peak does not hide a smaller later one; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory on ``device`` above the usage when it was created, in bytes.

    ``PeakMemory(device)`` takes the baseline; :meth:`reset` starts a new peak (a phase) at the
    current usage; :meth:`above_baseline` is the peak since the last reset minus the baseline.
    ``resettable`` is False where the CPU peak cannot be lowered (not Linux).
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.resettable = self.reset()
        self.baseline = self._peak()

    def reset(self) -> bool:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        return reset_peak_rss()

    def _peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else peak_rss_bytes()

    def above_baseline(self) -> int:
        return max(self._peak() - self.baseline, 0)
