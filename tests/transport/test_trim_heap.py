"""trim_heap: the listener's freed heap goes back to the kernel before sessions fork from it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# In a child interpreter: 20,000 freed 2,000-byte blocks (glibc malloc, not pymalloc) held in
# the heap by a live block above them, so free() cannot trim them; RSS before and after.
PROBE = textwrap.dedent("""
    import os
    from backupd.transport.worker import trim_heap

    def rss_kb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    blocks = [bytes(2000) + bytes([i % 256]) for i in range(20_000)]
    top = bytes(2000) + b"top"
    del blocks
    before = rss_kb()
    trim_heap()
    print(before, rss_kb(), len(top))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_trim_heap_returns_freed_heap_pages():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    before, after, _ = map(int, done.stdout.split())
    assert before - after >= 20_000, f"RSS {before} kB -> {after} kB: the ~40 MB freed were not given back"

