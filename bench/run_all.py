"""`make bench`: run every benchmark and print its figures (record them in bench/RESULTS.md)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_count  # noqa: E402
import bench_effects  # noqa: E402
import bench_evaluate  # noqa: E402
import bench_simulate  # noqa: E402
import bench_store  # noqa: E402
import validity  # noqa: E402


def main() -> None:
    print(f"# mseval benchmarks on {platform.machine()}, {platform.python_version()}, {__import__('os').cpu_count()} cores")
    for name, mod in [
        ("store read (182x218x182 masks)", bench_store),
        ("mseval count (182x218x182 masks, 10-40 lesions)", bench_count),
        ("mseval evaluate metrics, paper-scale counts table", bench_evaluate),
        ("mseval effects statistics, paper-scale", bench_effects),
        ("simulator", bench_simulate),
        ("validity: 500 simulated trials", validity),
    ]:
        print(f"\n## {name}")
        for k, v in mod.run().items():
            print(f"{k:42s} {v:12.2f}")


if __name__ == "__main__":
    main()
