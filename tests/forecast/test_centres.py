"""The location pathway (forecast.centres): lesion centres lie in their lesions, drawn centres keep
their distance and follow their seed, the location network learns a known intensity, and a
centre-conditioned model trains and samples end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forecast.centres import (LocationNet, centre_batch, centre_map, centre_nll, draw_centres, fit_location, lesion_centres)
from forecast.config import ForecastConfig
from tests.forecast.conftest import TEST_NET, interrupt_training


def test_lesion_centres_lie_inside_their_lesions() -> None:
    m = np.zeros((16, 16, 16), np.uint8)
    m[2:5, 2:5, 2:5] = 1  # a cube: centre (3, 3, 3)
    m[10, 8:14, 8] = 1  # a rod: centre (10, 10 or 11, 8)
    m[12:15, 2, 2] = 1
    m[12, 2:5, 2] = 1  # an L: the centroid is outside the lesion, the centre is not
    c = lesion_centres(m)
    assert len(c) == 3
    assert all(m[tuple(x)] == 1 for x in c)
    assert [3, 3, 3] in c.tolist()
    assert lesion_centres(np.zeros((4, 4, 4))).shape == (0, 3)
    maps, counts = centre_batch(torch.from_numpy(np.stack([m, np.zeros_like(m)])[:, None].astype(np.float32)))
    assert maps.shape == (2, 1, 16, 16, 16) and counts.tolist() == [3.0, 0.0]
    assert float(maps[0].sum()) == 3 and float(maps[1].sum()) == 0


def test_drawn_centres_keep_their_distance_and_follow_their_seed() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 12, 12))
    a = draw_centres(logits, 20, seed=7, min_distance=3)
    assert len(a) == 20 and np.array_equal(a, draw_centres(logits, 20, seed=7, min_distance=3))
    assert not np.array_equal(a, draw_centres(logits, 20, seed=8, min_distance=3))
    d = np.abs(a[:, None] - a[None]).max(-1) + np.eye(len(a), dtype=int) * 99
    assert d.min() >= 3
    # a grid of 12^3 holds at most 4^3 = 64 centres 3 apart: asking for more returns what fits
    assert len(draw_centres(logits, 200, seed=1, min_distance=3)) <= 64
    # an intensity that puts (almost) all mass on one slab draws there
    lg = np.full((12, 12, 12), -30.0)
    lg[:, :, 5] = 0.0
    assert (draw_centres(lg, 5, seed=2)[:, 2] == 5).all()
    assert centre_map(a, (12, 12, 12)).sum() == 20


def test_location_net_learns_a_known_intensity() -> None:
    """Centres are drawn with log intensity 2 x channel 0 (channel 1 is noise); the fitted network's
    held-out NLL per centre comes within 0.15 nats of the true intensity's (about 3 standard errors of
    the mean log ratio over 300 centres) and far below the uniform intensity's."""
    shape = (12, 12, 12)

    def patient(i: int) -> tuple[torch.Tensor, np.ndarray]:
        r = np.random.default_rng([i, 5])
        ch = r.normal(size=(2, *shape)).astype(np.float32)
        p = np.exp(2.0 * ch[0].astype(np.float64)).ravel()
        k = r.choice(p.size, size=3, p=p / p.sum(), replace=False)
        return torch.from_numpy(ch), np.array(np.unravel_index(k, shape)).T

    def true_nll(pairs: list) -> float:
        lg = torch.stack([2.0 * c[0] for c, _ in pairs])
        s, n = centre_nll(lg, [k for _, k in pairs])
        return float(s) / n

    val = [patient(1000 + i) for i in range(100)]
    net = LocationNet(2, hidden=4)
    fit = fit_location(net, patient, 1000, val, epochs=4, batch=16, seed=0)
    assert fit.n_train == 1000 and fit.centres_val == 300
    assert fit.val_nll < true_nll(val) + 0.15
    assert fit.val_nll < np.log(np.prod(shape)) - 1.0
    s, n = centre_nll(net(torch.stack([c for c, _ in val])), [k for _, k in val])
    assert n == 300 and abs(float(s) / n - fit.val_nll) < 1e-4
    assert not any(p.requires_grad for p in net.parameters())


def test_config_needs_the_count_head() -> None:
    from mseval.errors import InputError

    with pytest.raises(InputError, match="centre_map"):
        ForecastConfig(centre_map=True).check()
    assert ForecastConfig(centre_map=True, count_head=True).in_channels == ForecastConfig().in_channels + 1


def test_train_and_sample_a_centre_conditioned_model(tiny_cohort: Path, tmp_path: Path) -> None:
    """Training records the location fit; sampling draws the requested number of centres per member
    (as many as fit), reproducibly from the seeds."""
    from forecast.checkpoint import build_model, load_checkpoint
    from forecast.ensemble import forecast_cohort, member_centre_maps
    from forecast.sampler import SamplerSettings
    from forecast.train import train
    from mseval.io.store import ForecastStore

    cfg = ForecastConfig(name="t", **TEST_NET, steps=2, batch_size=2, checkpoint_every=1, lr=1e-3, seed=5, count_head=True,
                         count_head_epochs=50, val_fraction=0.34, centre_map=True, location_epochs=2)
    ckpt = train(tiny_cohort, cfg, tmp_path / "m", device="cpu")
    rec = ckpt.provenance["location"]
    assert rec["epochs"] == 2 and 1 <= rec["best_epoch"] <= 2 and np.isfinite(rec["train_nll"])
    model = build_model(load_checkpoint(tmp_path / "m"))
    assert any(k.startswith("location.") for k in model.state_dict())
    logits = np.random.default_rng(0).normal(size=(32, 32, 32))
    maps = member_centre_maps(logits, [0, 3, 7], [11, 12, 13], 4)
    assert maps.shape == (3, 1, 32, 32, 32) and maps.sum(dim=(1, 2, 3, 4)).tolist() == [0.0, 3.0, 7.0]
    assert torch.equal(maps, member_centre_maps(logits, [0, 3, 7], [11, 12, 13], 4))
    kw = dict(samples=2, arms="placebo", settings=SamplerSettings("ddim", 2, 1.0), patients=["P001", "P002"], seed=3)
    forecast_cohort(tiny_cohort, tmp_path / "m", tmp_path / "s1", **kw)
    forecast_cohort(tiny_cohort, tmp_path / "m", tmp_path / "s2", **kw)
    a, b = ForecastStore.open(tmp_path / "s1"), ForecastStore.open(tmp_path / "s2")
    for key in a.keys():
        assert np.array_equal(a.block(*key).masks()[0], b.block(*key).masks()[0])


def test_resuming_a_centre_conditioned_model_equals_the_uninterrupted_run(tiny_cohort: Path, tmp_path: Path) -> None:
    """The location network is fitted once, at step 0; a resumed run takes it (and its fit record) from
    the checkpoint and ends with the same weights as the uninterrupted run."""
    from forecast.train import train

    cfg = ForecastConfig(name="t", **TEST_NET, steps=3, batch_size=2, checkpoint_every=10, lr=1e-3, seed=5, count_head=True,
                         count_head_epochs=25, val_fraction=0.34, centre_map=True, location_epochs=1)
    straight = train(tiny_cohort, cfg, tmp_path / "a", device="cpu")
    interrupt_training(tiny_cohort, cfg, tmp_path / "b", at_step=2)
    resumed = train(tiny_cohort, cfg, tmp_path / "b", resume=True, device="cpu")
    assert resumed.step == straight.step == 3
    assert resumed.provenance["location"] == straight.provenance["location"]
    assert all(torch.equal(resumed.ema[k], straight.ema[k]) for k in straight.ema)


def test_the_renderer_does_not_depend_on_the_location_fit(tiny_cohort: Path, tmp_path: Path) -> None:
    """The renderer trains on the observed centres: fitting the location network for more epochs changes
    the location weights and nothing else (every other weight, EMA and optimizer state is bit-equal), and
    the location's EMA copy is the fitted weights' EMA replayed over the steps (`forecast.train.ema_update`)."""
    from forecast.train import ema_update, train

    base = dict(name="t", **TEST_NET, steps=3, batch_size=2, checkpoint_every=10, lr=1e-3, seed=5, count_head=True, count_head_epochs=25,
                val_fraction=0.34, centre_map=True)
    one = train(tiny_cohort, ForecastConfig(**base, location_epochs=1), tmp_path / "a", device="cpu")
    three = train(tiny_cohort, ForecastConfig(**base, location_epochs=3), tmp_path / "b", device="cpu")
    loc = [k for k in one.model if k.startswith("location.")]
    assert loc and any(not torch.equal(one.model[k], three.model[k]) for k in loc)
    for k in one.model:
        if k not in loc:
            assert torch.equal(one.model[k], three.model[k]) and torch.equal(one.ema[k], three.ema[k]), k
    assert one.optimizer is not None and three.optimizer is not None
    assert all(torch.equal(a, b) for a, b in zip(one.optimizer["state"][0].values(), three.optimizer["state"][0].values()))
    fitted = {k: three.model[k].clone() for k in loc}
    ema = {k: v.clone() for k, v in fitted.items()}
    holder = torch.nn.Module()
    for k, v in fitted.items():
        holder.register_buffer(k.replace(".", "_"), v)
    renamed = {k.replace(".", "_"): v for k, v in ema.items()}
    for step in range(1, base["steps"] + 1):
        ema_update(renamed, holder, 0.999, step)
    assert all(torch.equal(renamed[k.replace(".", "_")], three.ema[k]) for k in loc)
