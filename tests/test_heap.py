"""The training loop's heap policy holds for the training only (glibc's malloc on Linux)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peftops.training.memory import _LIBC

pytestmark = pytest.mark.skipif(_LIBC is None or not sys.platform.startswith("linux"),
                                reason="glibc's mallopt")


# Run in a fresh process: malloc serves a request from any free chunk big enough before it looks
# at the threshold, and a long test session's heap has large free chunks.
CHECK = """
import ctypes, json
from peftops.training.memory import training_heap

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]


def on_heap(nbytes):
    ptr = libc.malloc(nbytes)
    try:
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= ptr < hi:
                    return True
        return False
    finally:
        libc.free(ptr)


def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20


def touched_then_freed(nbytes):
    ptr = libc.malloc(nbytes)
    ctypes.memset(ptr, 1, nbytes)
    libc.free(ptr)


out = {}
with training_heap() as trim:
    out["compact_trims"] = trim.__name__ == "trim_heap"
    out["inside_1mb"], out["inside_64kb"] = on_heap(1 << 20), on_heap(64 << 10)
out["after_1mb"], out["after_16mb"] = on_heap(1 << 20), on_heap(16 << 20)
try:
    with training_heap():
        raise RuntimeError("a failed step")
except RuntimeError:
    pass
out["after_error_1mb"] = on_heap(1 << 20)

base = rss_mb()
with training_heap(compact=False) as trim:
    trim()
    out["retain_64mb"] = on_heap(64 << 20)
    touched_then_freed(256 << 20)
    out["retained_mb"] = rss_mb() - base
out["after_retain_released_mb"] = rss_mb() - base
out["after_retain_64mb"], out["after_retain_1mb"] = on_heap(64 << 20), on_heap(1 << 20)
print(json.dumps(out))
"""


def test_training_heap_maps_large_buffers_only_while_training():
    """Compact (with recomputation): inside, a 1 MB buffer gets its own mapping (returned to the OS
    when freed) and the loop trims at a step's low points; after it, and after a failed training,
    it comes from the heap again, so evaluation after a training does not fault in every
    activation. Retain (without): even a 64 MB buffer comes from the heap, freed pages stay
    resident inside the block and leave after it, and glibc maps large buffers apart again."""
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    retained, released = got.pop("retained_mb"), got.pop("after_retain_released_mb")
    assert got == {"compact_trims": True, "inside_1mb": False, "inside_64kb": True, "after_1mb": True,
                   "after_16mb": True, "after_error_1mb": True,
                   "retain_64mb": True, "after_retain_64mb": False, "after_retain_1mb": True}
    # Without recomputation a freed buffer's pages stay for the next step (256 MB touched and
    # freed inside the block), and leave the process when the training ends.
    assert retained >= 200, retained
    assert released <= 32, released
