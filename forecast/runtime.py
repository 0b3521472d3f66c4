"""Device settings for training and sampling, and the record of them that every checkpoint and
store block carries, so a reader knows which reproducibility claims hold.

- CPU: every kernel is deterministic; with `forecast.ensemble.MIN_NET_BATCH` padding, a sampled
  member is bit-identical whatever the batch size. That is the only place we claim it.
- CUDA (default): TF32 matmuls/convolutions and `cudnn.benchmark` (fastest kernels, chosen per
  shape, so results can differ in the last bits between runs and batch sizes).
- CUDA with `deterministic=True`: `torch.use_deterministic_algorithms(True)`, cuDNN deterministic,
  no benchmark, no TF32, `CUBLAS_WORKSPACE_CONFIG=:4096:8`: the same run on the same GPU model,
  driver and batch size repeats bit for bit; a different batch size may still differ in the last bits.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def configure_backend(device: torch.device, *, deterministic: bool = False) -> dict[str, Any]:
    """Apply the settings above for `device` and return `runtime_record(device, ...)`."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        else:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return runtime_record(device, deterministic=deterministic)


def runtime_record(device: torch.device, *, deterministic: bool = False) -> dict[str, Any]:
    """What ran and what it guarantees: device, device name, autocast dtype, torch version, the
    deterministic settings, and `batch_size_invariant` / `bit_identical_rerun` claimed only where they hold."""
    cuda = device.type == "cuda"
    rec: dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "autocast_dtype": "bfloat16" if cuda else "float32",
        "torch": str(torch.__version__),
        "deterministic": bool(deterministic) if cuda else True,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else False,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
        "batch_size_invariant": not cuda,
        "bit_identical_rerun": (not cuda) or bool(deterministic),
    }
    return rec


__all__ = ["configure_backend", "runtime_record"]
