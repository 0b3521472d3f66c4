"""DDP on the CPU: two gloo processes train one model; both ranks end with the same weights."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init: str, cohort: str, out: str, result: str) -> None:
    import torch.distributed as dist

    from forecast.config import ForecastConfig
    from forecast.train import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = ForecastConfig(name="ddp", channels=(8, 8, 16), attention_levels=(False, False, False), num_head_channels=8,
                             steps=2, batch_size=2, checkpoint_every=1, seed=3)
        ckpt = train(cohort, cfg, out, device="cpu")
        flat = torch.cat([v.flatten().double() for v in ckpt.model.values() if v.is_floating_point()])
        torch.save({"rank": rank, "weights": flat, "step": ckpt.step}, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_with_two_gloo_processes(tiny_cohort: Path, tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tiny_cohort), str(tmp_path / "ckpt"), str(tmp_path / "res")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"res.{r}") for r in (0, 1))
    assert r0["step"] == r1["step"] == 2
    assert torch.equal(r0["weights"], r1["weights"])  # gradients were all-reduced: one model
    from forecast.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "ckpt").step == 2  # rank 0 wrote the checkpoint
