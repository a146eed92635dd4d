"""Shared helpers of the benchmark scripts: timing, peak memory, machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time


def timed(fn, runs: int) -> tuple[float, list[float]]:
    """Median wall time of ``runs`` calls of ``fn`` and the individual times (seconds)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB; Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average() -> float:
    return os.getloadavg()[0]


def machine_info() -> str:
    """Date, core count, CPU model and Python version, one per line."""

    def sh(c):
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()

    return "\n".join(
        [
            f"date: {sh('date')}",
            f"nproc: {sh('nproc')}",
            sh("lscpu | grep 'Model name'"),
            f"python {platform.python_version()}",
            f"1-min load average at start: {load_average():.2f}",
        ]
    )
