"""Seeds derived from names, so a result does not depend on order, batch size or worker count."""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(base_seed: int, *keys: str | int) -> int:
    """A 63-bit seed for (base_seed, *keys); strings enter through CRC-32 (stable across runs and platforms)."""
    words = [int(base_seed) & 0xFFFFFFFF, (int(base_seed) >> 32) & 0xFFFFFFFF]
    for key in keys:
        words.append(zlib.crc32(key.encode()) if isinstance(key, str) else int(key) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rng_for(base_seed: int, *keys: str | int) -> np.random.Generator:
    """A numpy Generator seeded by `derive_seed(base_seed, *keys)`."""
    return np.random.default_rng(derive_seed(base_seed, *keys))
