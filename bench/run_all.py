"""`make bench`: run every benchmark and print its figures (record them in bench/RESULTS.md)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_count  # noqa: E402
import bench_effects  # noqa: E402
import bench_evaluate  # noqa: E402
import bench_read_arrays  # noqa: E402
import bench_sampler  # noqa: E402
import bench_simulate  # noqa: E402
import bench_store  # noqa: E402
import validity  # noqa: E402


class _Sampler:
    """DDPM timed over 100 of its 1000 steps and scaled (the script says so in its output)."""

    @staticmethod
    def run() -> dict[str, float]:
        return bench_sampler.run(ddpm_steps=100, threads=2)


def main() -> None:
    print(f"# mseval benchmarks on {platform.machine()}, {platform.python_version()}, {__import__('os').cpu_count()} cores")
    for name, mod in [
        ("store read (182x218x182 masks)", bench_store),
        ("mseval count (182x218x182 masks, 10-40 lesions)", bench_count),
        ("mseval evaluate metrics, paper-scale counts table", bench_evaluate),
        ("mseval effects statistics, paper-scale", bench_effects),
        ("simulator", bench_simulate),
        ("reading patients for the image forecaster (N4 + WhiteStripe, 32^3)", bench_read_arrays),
        ("diffusion sampler: DDIM-50 batched vs DDPM-1000 one at a time (tiny config)", _Sampler),
        ("validity: 500 simulated trials", validity),
    ]:
        print(f"\n## {name}")
        for k, v in mod.run().items():
            print(f"{k:42s} {v:12.2f}")


if __name__ == "__main__":
    main()
