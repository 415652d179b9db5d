"""Peak memory of a stage: CUDA max-allocated on a GPU, the process's peak RSS on a CPU.

``ru_maxrss`` is a high-water mark for the whole life of the process, so a second stage in the
same process would inherit the first one's peak. On Linux the kernel's own high-water mark
(``VmHWM``) can be reset to the current RSS (writing ``5`` to ``/proc/self/clear_refs``): the
peak *during* the stage is then exact and costs nothing while the stage runs. Elsewhere a thread
samples the RSS every 5 ms, which can miss a short spike and competes with the training thread
for the interpreter. Freed memory is handed back to the OS first (``malloc_trim``) so the
previous stage's garbage does not count.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _glibc():
    try:
        lib = ctypes.CDLL("libc.so.6")
        return lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None
    except OSError:  # not glibc
        return None


_LIBC = _glibc()
# Allocations from this size up get their own mapping (see set_mmap_threshold).
MMAP_THRESHOLD = 256 * 1024


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def set_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> None:
    """Serve allocations of ``nbytes`` and more with their own mappings (glibc's ``mallopt``).

    glibc's adaptive threshold otherwise climbs to 32 MB and moves large activation buffers
    onto the heap, where freed ones stay resident. A fixed threshold returns big buffers to the
    OS as soon as autograd frees them; smaller ones stay on the heap, where reusing a page
    costs no page fault, and the training loop trims the heap at the two points of a step where
    little is alive (after the forward, after the optimizer step). The trade-off, measured on
    Gemma 3 270M LoRA (CPU, recomputed activations, 30 steps of SST-2 x 8, one seed;
    ``bench/train_bench.py --run lora --seed 0``, one run per setting, the threshold and the
    trims edited between runs): 64 KiB, no trims 3.53 examples/s at 1,552 MB peak RSS;
    256 KiB, no trims 3.86 at 1,586 MB; 256 KiB with the trims 3.95 at 1,554 MB; 1 MiB with
    the trims 4.80 at 1,642 MB; glibc's default 1,714 MB. Process-wide; a no-op off glibc.
    """
    if _LIBC is not None:
        _LIBC.mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD


# The ceiling glibc's adaptive threshold climbs toward as a process frees large buffers (64-bit).
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
# glibc's defaults for what ``retain`` changes (M_MMAP_MAX, M_TRIM_THRESHOLD), put back after it.
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024


def _retain_freed_memory() -> None:
    """Serve every allocation from the heap (no mapping of its own, M_MMAP_MAX = 0) and never
    trim it (M_TRIM_THRESHOLD out of reach): a freed buffer's pages stay in the process for the
    next allocation of its size."""
    if _LIBC is not None:
        _LIBC.mallopt(-4, 0)  # M_MMAP_MAX
        _LIBC.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD (a C int)


@contextmanager
def training_heap(compact: bool = True, nbytes: int = MMAP_THRESHOLD) -> Iterator[Callable[[], None]]:
    """The heap policy of one training, for the block only; yields what the loop calls at a
    step's two low points (after the forward, after the optimizer step). Afterwards: glibc's
    defaults, a fixed threshold at its adaptive ceiling (glibc has no call that restores the
    adaptive one) and a trim, so the freed training buffers leave the process.

    ``compact`` (the loop uses it with activation checkpointing, the low-memory mode):
    ``set_mmap_threshold(nbytes)`` and ``trim_heap`` at the low points, so freed buffers leave the
    resident set at once, at the price of a fresh, zeroed page for every buffer of every step.

    Not ``compact`` (no recomputation: nothing was asked to save memory): freed buffers stay on
    the heap (``_retain_freed_memory``) and the next step reuses their pages. Every step allocates
    the same buffers (activations, autograd's gradients, autocast's weight copies), so what the
    compact policy pays is page faults and the kernel zeroing each page again: on Gemma 3 270M,
    bf16, two threads, 30 steps of SST-2 x 8 without recomputation (the demo's settings;
    ``python bench/heap_probe.py --method lora|full --rounds 2``, two rounds each), LoRA
    10.58 / 8.81 -> 14.50 / 14.50 examples/s at a training peak of 1,435 -> 1,558-1,567 MB, FFT
    3.68 / 4.13 -> 6.96 / 6.82 at 6,000 -> 8,015 MB (FFT's buffers are large and of many sizes, so
    the kept heap fragments).

    What either buys after the block: with the training's small threshold left in place,
    everything a process runs after a training (evaluation, latency, the merge's parity) got a
    fresh mapping for every activation buffer: the SST-2 dev evaluation of the bench's LoRA ran
    at two thirds of its speed (bf16 19.3 -> 13.0 examples/s, fp32 10.0 -> 7.1;
    ``python bench/eval_probe.py [--training-heap]``, BENCHMARKS.md "bf16")."""
    if compact:
        set_mmap_threshold(nbytes)
    else:
        _retain_freed_memory()
    try:
        yield trim_heap if compact else _no_trim
    finally:
        if _LIBC is not None:
            _LIBC.mallopt(-4, _GLIBC_MMAP_MAX)
            _LIBC.mallopt(-1, _GLIBC_TRIM_THRESHOLD)
        set_mmap_threshold(GLIBC_MMAP_THRESHOLD_MAX)
        trim_heap()


def _no_trim() -> None:
    """The retaining policy's low points: keep the pages."""


def freeze_heap() -> None:
    """Collect, then move every object alive now out of the collector's sight (``gc.freeze``).
    A long-lived process (a fleet, a Ray worker) holds ~600k objects from torch, transformers,
    Prefect and MLflow plus its warm base; without this each ``release_memory`` scans them all
    (0.37 s a collection after those imports, once per training) though none is garbage. Objects created later
    are collected as usual; a frozen object is freed by reference counting but never as part of
    a cycle, so call it where what is alive is meant to stay (after imports, after a worker's
    first task), not between tasks."""
    global _FROZEN
    gc.collect()
    gc.freeze()
    _FROZEN = True


_FROZEN = False  # freeze_heap has run in this process


def heap_frozen() -> bool:
    """Whether :func:`freeze_heap` has run in this process. A flag, because
    ``gc.get_freeze_count()`` walks every frozen object: ~60 ms at the ~580k a warm fleet
    worker holds (``python -m bench.fleet_bench --probe gc``), paid at every task."""
    return _FROZEN


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc only)."""
    gc.collect()
    trim_heap()


_HWM_LOCK = threading.Lock()
_ACTIVE: list["PeakMemory"] = []  # open contexts using the kernel's high-water mark


def _read_hwm() -> int | None:
    """The process's peak RSS since the last reset (``VmHWM``), bytes; None if not readable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _fold_hwm() -> bool:
    """Give every open context the peak since the last reset (call with the lock held, before a
    reset and at each exit): nested contexts then each see their own peak. False when ``VmHWM``
    cannot be read."""
    hwm = _read_hwm()
    for ctx in _ACTIVE:
        ctx.peak_bytes = max(ctx.peak_bytes, hwm or 0)
    return hwm is not None


class PeakMemory:
    """Context manager measuring peak memory in MB while its block runs (contexts may nest)."""

    def __init__(self, device: str | torch.device = "cpu", interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda"
            return self
        self.peak_bytes = current_rss_bytes()
        with _HWM_LOCK:
            if _fold_hwm() and _reset_hwm():
                _ACTIVE.append(self)
                self.method = "hwm"
                return self
        self.method = "sampled"
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "hwm":
            with _HWM_LOCK:
                _fold_hwm()
                _ACTIVE.remove(self)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "process_peak_rss"
