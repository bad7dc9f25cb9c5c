"""release_memory gives freed heap back to the system; the peak is the high-water mark."""

import ctypes
import ctypes.util
import json

import pytest

from keras_transformer import memory

pytestmark = pytest.mark.skipif(memory._TRIM is None, reason="needs glibc's malloc_trim")


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def test_freed_heap_below_a_live_block_is_returned():
    libc = _libc()
    # 200 MB in 4 KiB blocks (below malloc's mmap threshold: they come from the heap),
    # written so their pages are resident; the last block stays live, so freeing the
    # others leaves a hole malloc keeps instead of shrinking the heap.
    blocks = [libc.malloc(4096) for _ in range(50_000)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    for block in blocks[:-1]:
        libc.free(block)
    try:
        held = memory.resident_memory_mb()
        released = memory.release_memory()
        assert held - released > 100, (held, released)
        # The peak (getrusage) and the resident set (statm) are read from kernel counters
        # sampled apart (threads cache their page counts): equal up to 1 MB once rounded.
        assert memory.peak_memory_mb() >= held - 1
    finally:
        libc.free(blocks[-1])


def test_image_peak_starts_again_after_exec_while_the_process_peak_does_not():
    """What the train command's phases rely on (keras_transformer/train_command.py): after
    an exec, image_peak_memory_mb measures the new image only; peak_memory_mb keeps the
    whole process's high-water mark."""
    import subprocess
    import sys

    after_exec = ("import json; from keras_transformer import memory; "
                  "print(json.dumps([memory.image_peak_memory_mb(), memory.peak_memory_mb()]))")
    first_image = ("import os, sys\n"
                   "block = bytearray(1500 * 2**20)\n"
                   "block[::4096] = b'\\1' * len(block[::4096])  # make its pages resident\n"
                   f"os.execv(sys.executable, [sys.executable, '-c', {after_exec!r}])\n")
    result = subprocess.run([sys.executable, "-c", first_image], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    image_peak, process_peak = json.loads(result.stdout.splitlines()[-1])
    assert image_peak < 1400 and process_peak >= 1500, (image_peak, process_peak)
