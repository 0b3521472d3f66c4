"""The hand-written sampling loops: exact on an oracle network, guidance as defined, per-member noise."""

from __future__ import annotations

import pytest
import torch

from forecast.config import ForecastConfig
from forecast.diffusion import Parametrization, alphas_cumprod
from forecast.sampler import SamplerSettings, ddim_timesteps, sample

ACP = alphas_cumprod(ForecastConfig())


def _x0(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, 1, 8, 8, 8), generator=g) * 2 - 1


def _oracle(x0: torch.Tensor, prediction: str, rflow: bool = False):
    """A network that knows x0, so its output is the exact noise (epsilon, v, x0 or flow velocity) of x_t."""

    def net(x_t, cond, t, labels):
        if rflow:
            s = (t / 1000.0).view(-1, 1, 1, 1, 1)
            return (x_t - x0) / s  # x_t = (1 - s) x0 + s n  =>  n - x0 = (x_t - x0) / s
        a = ACP[t.long()].float().view(-1, 1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return {"epsilon": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

    return net


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 50), ("ddim", 7), ("ddpm", 20), ("ddpm", 1000)])
def test_oracle_network_gives_back_x0(prediction, sampler, steps):
    x0 = _x0()
    cond = torch.zeros(3, 2, 8, 8, 8)
    labels = torch.eye(3)
    out = sample(_oracle(x0, prediction), cond, labels, _gens(3), SamplerSettings(sampler, steps, 1.0, clip_x0=True),
                 alphas_cumprod=ACP, prediction=prediction)
    torch.testing.assert_close(out, x0, atol=2e-5, rtol=0)


def test_oracle_velocity_gives_back_x0_with_rectified_flow():
    x0 = _x0(1)
    out = sample(_oracle(x0, "v", rflow=True), torch.zeros(3, 1, 8, 8, 8), torch.eye(3), _gens(3), SamplerSettings("rflow", 10))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_ddim_timesteps_are_consecutive_and_cover_the_schedule():
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))


def test_guidance_combines_conditional_and_unconditional_outputs():
    calls = []

    def net(x, cond, t, labels):
        calls.append(labels.clone())
        # output depends on the label only: class k gives k / 10
        return (labels.argmax(1).float() / 10).view(-1, 1, 1, 1, 1).expand_as(x).clone()

    labels = torch.tensor([[0.0, 0, 1]])  # class 2
    st = lambda w: SamplerSettings("ddim", 1, w, clip_x0=False)  # noqa: E731
    g = lambda: _gens(1)  # noqa: E731
    pred = Parametrization("x0")
    assert pred.prediction == "x0"
    out = sample(net, torch.zeros(1, 1, 4, 4, 4), labels, g(), st(3.0), alphas_cumprod=ACP, prediction="x0")
    torch.testing.assert_close(out, torch.full_like(out, 0.0 + 3.0 * 0.2))  # u + w (c - u), u = 0
    assert len(calls) == 1 and calls[0].shape[0] == 2  # both halves in one batch
    calls.clear()
    out0 = sample(net, torch.zeros(1, 1, 4, 4, 4), labels, g(), st(0.0), alphas_cumprod=ACP, prediction="x0")
    assert torch.all(out0 == 0) and calls[0].argmax(1).tolist() == [0]


def test_each_member_draws_its_own_noise():
    net = lambda x, c, t, lab: 0.3 * x  # noqa: E731 - a contractive fake network, output depends on x_t
    cond = torch.zeros(4, 1, 8, 8, 8)
    labels = torch.eye(4)
    st = SamplerSettings("ddpm", 5)
    together = sample(net, cond, labels, _gens(4), st, alphas_cumprod=ACP, prediction="epsilon")
    apart = torch.cat([sample(net, cond[i:i + 1], labels[i:i + 1], [_gens(4)[i]], st, alphas_cumprod=ACP, prediction="epsilon")
                       for i in range(4)])
    assert torch.equal(together, apart)
    assert not torch.equal(together[0], together[1])


def test_guidance_zero_equals_the_unconditional_model(trained):
    from forecast.checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(trained)
    model = build_model(ckpt)
    cfg = ckpt.config
    cond = torch.randn(2, cfg.in_channels - 1, *cfg.shape, generator=torch.Generator().manual_seed(0))
    arm = torch.zeros(2, cfg.num_classes)
    arm[:, 1] = 1
    null = torch.zeros(2, cfg.num_classes)
    null[:, 0] = 1
    kw = {"alphas_cumprod": ACP, "prediction": cfg.prediction}
    g0 = sample(model, cond, arm, _gens(2), SamplerSettings("ddim", 2, 0.0), **kw)
    unc = sample(model, cond, null, _gens(2), SamplerSettings("ddim", 2, 1.0), **kw)
    cnd = sample(model, cond, arm, _gens(2), SamplerSettings("ddim", 2, 1.0), **kw)
    assert torch.equal(g0, unc)
    assert not torch.equal(g0, cnd)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_one_step_calls_the_network_once_at_t_max(sampler):
    """`--steps 1` evaluates the network on pure noise at t = T-1 (not t = 0) and jumps to x0."""
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(1000, 2) == [999, 0]
    x0 = _x0()
    seen: list[torch.Tensor] = []
    oracle = _oracle(x0, "x0")

    def net(x, c, t, lab):  # noqa: ANN001, ANN202
        seen.append(t.clone())
        return oracle(x, c, t, lab)

    out = sample(net, torch.zeros(3, 2, 8, 8, 8), torch.eye(3), _gens(3), SamplerSettings(sampler, 1, 1.0),
                 alphas_cumprod=ACP, prediction="x0")
    assert len(seen) == 1 and seen[0].tolist() == [999, 999, 999]
    torch.testing.assert_close(out, x0, atol=2e-5, rtol=0)


def test_chunked_rows_gives_the_same_output_in_smaller_calls():
    from forecast.sampler import chunked_rows

    sizes: list[int] = []

    def net(x, c, t, lab):  # noqa: ANN001, ANN202
        sizes.append(x.shape[0])
        return x * 2 + c[:, :1] + t.view(-1, 1, 1, 1, 1) + lab[:, :1, None, None, None]

    x, c = torch.randn(5, 1, 4, 4, 4), torch.randn(5, 2, 4, 4, 4)
    t, lab = torch.arange(5), torch.eye(5)
    whole = net(x, c, t, lab)
    sizes.clear()
    assert torch.equal(chunked_rows(net, 2)(x, c, t, lab), whole) and sizes == [2, 2, 1]
