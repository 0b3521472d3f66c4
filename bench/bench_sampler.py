"""Sampler benchmark: seconds per ensemble member, DDIM-50 with 8 members batched vs DDPM-1000 one
member at a time (the MONAI tutorial way), same network (the `tiny` config at 32^3, random
weights: speed does not depend on them), same machine, one run. The batched run uses the layout
`mseval forecast sample` uses (channels-last 3D on the CPU); it is also timed with the plain layout.

    .venv/bin/python bench/bench_sampler.py [--config tiny] [--members 8] [--ddpm-steps 1000] [--threads N]

With `--ddpm-steps K < 1000` the DDPM run stops after K of its 1000 steps and its time is scaled by
1000 / K (said so in the output): every DDPM step costs the same network call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(config: str = "tiny", members: int = 8, ddpm_steps: int = 1000, ddim_steps: int = 50, threads: int | None = None,
        device: str | None = None) -> dict[str, float]:
    import torch

    from forecast.config import ForecastConfig
    from forecast.diffusion import alphas_cumprod
    from forecast.model import NET2Denoiser, arm_weights
    from forecast.sampler import SamplerSettings, sample

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = ForecastConfig.load(config).with_(arms=("placebo", "drug"))
    torch.manual_seed(0)
    model = NET2Denoiser(cfg).to(dev).eval()
    acp = alphas_cumprod(cfg)
    cond = torch.randn(1, cfg.in_channels - 1, *cfg.shape, device=dev)
    bf16 = dev.type == "cuda"

    import copy

    from forecast.ensemble import inference_layout, to_layout

    fast_model = inference_layout(copy.deepcopy(model), dev)  # what `mseval forecast sample` runs

    def wrap(m, layout):  # noqa: ANN001, ANN202
        def call(x, c, t, lab):  # noqa: ANN001, ANN202
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                return m(layout(x, dev), layout(c, dev), t, lab).contiguous()
        return call

    net = wrap(model, lambda x, _d: x)  # the plain model, as the MONAI tutorials run it
    fast_net = wrap(fast_model, to_layout)

    def timed(n: int, settings: SamplerSettings, net=fast_net) -> float:  # noqa: ANN001
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        labels = arm_weights(cfg, ["drug"] * n, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sample(net, cond.expand(n, *cond.shape[1:]), labels, gens, settings, alphas_cumprod=acp, prediction=cfg.prediction)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(min(members, 2), SamplerSettings("ddim", 2))  # warm-up
    timed(min(members, 2), SamplerSettings("ddim", 2), net)
    ddim = timed(members, SamplerSettings("ddim", ddim_steps)) / members
    ddim_plain = timed(members, SamplerSettings("ddim", ddim_steps), net) / members
    # DDPM-1000 one at a time (all 1000 steps, or the first K network calls and noise draws, scaled)
    t_ddpm = timed(1, SamplerSettings("ddpm", ddpm_steps), net) if ddpm_steps >= cfg.num_train_timesteps else None
    if t_ddpm is None:
        gens = [torch.Generator().manual_seed(0)]
        labels = arm_weights(cfg, ["drug"], device=dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = torch.randn(1, 1, *cfg.shape, generator=gens[0]).to(dev)
            for t in range(cfg.num_train_timesteps - 1, cfg.num_train_timesteps - 1 - ddpm_steps, -1):
                eps = net(x, cond, torch.full((1,), t, device=dev), labels)
                x = 0.999 * x + 0.01 * eps + 0.01 * torch.randn(x.shape, generator=gens[0]).to(dev)
        t_ddpm = (time.perf_counter() - t0) * cfg.num_train_timesteps / ddpm_steps
    out = {
        f"ddim{ddim_steps}_batched{members}_s_per_member": ddim,
        f"ddim{ddim_steps}_batched{members}_plain_layout_s_per_member": ddim_plain,
        "ddpm1000_one_at_a_time_s_per_member": t_ddpm,
        "speedup": t_ddpm / ddim,
        "speedup_plain_layout": t_ddpm / ddim_plain,
        "ddpm_steps_timed": float(min(ddpm_steps, cfg.num_train_timesteps)),
    }
    if dev.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--ddpm-steps", type=int, default=1000, help="time this many of DDPM's 1000 steps and scale (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    res = run(a.config, a.members, a.ddpm_steps, a.ddim_steps, a.threads, a.device)
    import platform

    import torch

    print(f"# sampler benchmark: config {a.config}, {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() and a.device != "cpu" else ""))
    if res["ddpm_steps_timed"] < 1000:
        print(f"# DDPM timed over {int(res['ddpm_steps_timed'])} of 1000 steps, scaled to 1000")
    for k, v in res.items():
        print(f"{k:42s} {v:12.4f}")


if __name__ == "__main__":
    main()
