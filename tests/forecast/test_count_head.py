"""The count pathway (forecast.count_head): the NB2 head learns a known law, the network is
conditioned on the count, training and sampling carry the count end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from forecast.config import ForecastConfig
from forecast.count_head import (CountHead, draw_counts, feature_matrix, fit_count_head, nb2_nll, nb2_params, nb2_pmf)
from forecast.model import NET2Denoiser, arm_weights, count_labels
from tests.forecast.conftest import TEST_NET

ARMS = ("placebo", "drug")


def _law_table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Features and NB2 counts whose log mean is 0.8 log1p(gd) + 0.3 log1p(t2) - 0.02 (age - 37) + log years
    + log 0.5 on the drug arm, alpha 0.3 + 0.5 x (gd == 0): a law a log-linear NB2 with one alpha cannot hold."""
    rng = np.random.default_rng(seed)
    gd = rng.poisson(1.5, n)
    t2 = 1 + rng.poisson(6, n)
    age = rng.normal(37, 9, n)
    years = rng.uniform(0.85, 1.0, n)
    arm = rng.choice(ARMS, n)
    mu = np.exp(0.8 * np.log1p(gd) + 0.3 * np.log1p(t2) - 0.02 * (age - 37) + np.log(years) + np.log(0.5) * (arm == "drug"))
    alpha = 0.3 + 0.5 * (gd == 0)
    y = rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu))
    f = pd.DataFrame({"arm": arm, "gd_count": gd, "t2_count": t2, "t2_volume_mm3": t2 * 200.0, "age": age, "followup_years": years})
    return f, y, mu, alpha


def test_head_recovers_a_known_law() -> None:
    """Fitted on 4000 patients, the head's mean and dispersion are close to the law's, and its held-out
    log score is within 0.02 nats of the true law's (the true law is the best possible)."""
    cfg = ForecastConfig(arms=ARMS)
    f, y, _, _ = _law_table(4000, 1)
    fv, yv, _, _ = _law_table(1000, 2)
    ft, yt, mut, at = _law_table(4000, 3)
    head = CountHead(cfg.num_classes)
    w = lambda t: arm_weights(cfg, list(t["arm"])).numpy()  # noqa: E731
    fit = fit_count_head(head, feature_matrix(f), w(f), y, feature_matrix(fv), w(fv), yv, epochs=1500)
    assert fit.best_epoch > 0 and np.isfinite(fit.val_nll)
    mean, alpha = nb2_params(head, feature_matrix(ft), w(ft))
    assert np.median(np.abs(np.log(mean / mut))) < 0.1
    nll_head = float(nb2_nll(torch.tensor(np.log(mean)), torch.tensor(np.log(alpha)), torch.tensor(yt, dtype=torch.float64)))
    nll_true = float(nb2_nll(torch.tensor(np.log(mut)), torch.tensor(np.log(at)), torch.tensor(yt, dtype=torch.float64)))
    assert nll_head - nll_true < 0.02
    # the treatment effect: the drug/placebo ratio of the head's means for the same patients
    drug = ft.assign(arm="drug")
    plac = ft.assign(arm="placebo")
    ratio = nb2_params(head, feature_matrix(drug), w(drug))[0].mean() / nb2_params(head, feature_matrix(plac), w(plac))[0].mean()
    assert abs(ratio - 0.5) < 0.05


def test_nb2_nll_and_pmf_match_scipy() -> None:
    mu, alpha = np.array([0.3, 2.0, 11.0]), np.array([0.2, 1.0, 3.0])
    y = np.array([0, 3, 7])
    r = 1 / alpha
    ref = -stats.nbinom.logpmf(y, r, r / (r + mu)).mean()
    got = float(nb2_nll(torch.tensor(np.log(mu)), torch.tensor(np.log(alpha)), torch.tensor(y, dtype=torch.float64)))
    assert got == pytest.approx(ref, rel=1e-10)
    pmf = nb2_pmf(mu, alpha)
    assert np.allclose(pmf.sum(1), 1, atol=1e-9)
    assert np.allclose(pmf[np.arange(3), y], stats.nbinom.pmf(y, r, r / (r + mu)))


def test_draw_counts_follow_the_law_and_their_seeds() -> None:
    seeds = list(range(20000))
    n = np.array(draw_counts(2.5, 0.5, seeds))
    assert n.mean() == pytest.approx(2.5, abs=4 * np.sqrt(2.5 + 0.5 * 2.5**2) / np.sqrt(len(n)))
    assert draw_counts(2.5, 0.5, [7, 8]) == [int(n[7]), int(n[8])]


def test_the_count_changes_the_network_output_and_the_null_row_drops_it() -> None:
    cfg = ForecastConfig(name="t", **TEST_NET, arms=ARMS, count_head=True)
    torch.manual_seed(0)
    m = NET2Denoiser(cfg).eval()
    with torch.no_grad():
        for p in m.unet.parameters():  # MONAI zero-initialises the output convolution (and the count MLP starts small)
            if p.abs().max() == 0:
                p.normal_(std=0.1)
        for p in m.unet.class_embedding.count.parameters():
            p.normal_(std=0.5)
    x, cond, t = torch.randn(2, 1, 32, 32, 32), torch.randn(2, 7, 32, 32, 32), torch.tensor([500, 500])
    w = arm_weights(cfg, ["drug", "drug"])
    with torch.no_grad():
        a = m(x, cond, t, count_labels(w, torch.tensor([0.0, 0.0])))
        b = m(x, cond, t, count_labels(w, torch.tensor([5.0, 5.0])))
        no_count = m(x, cond, t, count_labels(w, None))
        arm_only = m(x, cond, t, w)
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(no_count, arm_only)
    assert not any(p.requires_grad for p in m.count_head.parameters())


def test_config_needs_the_lesion_masks() -> None:
    from mseval.errors import InputError

    with pytest.raises(InputError, match="count_head"):
        ForecastConfig(inputs=("t1", "t2"), count_head=True).check()


def test_train_and_sample_a_count_conditioned_model(tiny_cohort: Path, tmp_path: Path) -> None:
    """Two steps of training record the head's fit; sampling records the requested counts, which
    follow from the seeds and the head (the same counts again when resampled)."""
    from forecast.checkpoint import load_checkpoint
    from forecast.ensemble import forecast_cohort
    from forecast.sampler import SamplerSettings
    from forecast.train import train
    from mseval.io.store import ForecastStore

    cfg = ForecastConfig(name="t", **TEST_NET, steps=2, batch_size=2, checkpoint_every=1, lr=1e-3, seed=5, count_head=True,
                         count_head_epochs=50, val_fraction=0.34)
    ckpt = train(tiny_cohort, cfg, tmp_path / "m", device="cpu")
    rec = ckpt.provenance["count_head"]
    assert rec["n_train"] + rec["n_val"] == 12 and rec["n_val"] >= 2
    settings = SamplerSettings("ddim", 2, 1.0)
    kw = dict(samples=3, arms="placebo,ocrelizumab", settings=settings, patients=["P001", "P002"], seed=3)
    forecast_cohort(tiny_cohort, tmp_path / "m", tmp_path / "s1", **kw)
    forecast_cohort(tiny_cohort, load_checkpoint(tmp_path / "m"), tmp_path / "s2", **kw)
    a, b = ForecastStore.open(tmp_path / "s1"), ForecastStore.open(tmp_path / "s2")
    for key in a.keys():
        ra, rb = a.block(*key).sampler, b.block(*key).sampler
        assert len(ra["requested_counts"]) == 3 and ra["requested_counts"] == rb["requested_counts"]


def test_count_tries_never_moves_a_member_further_from_its_count(tiny_cohort: Path, tmp_path: Path) -> None:
    """Rejection on the count: every member's first draw is the draw without rejection; a redraw
    replaces it only when closer to the requested count, so |drawn - requested| can only shrink."""
    from forecast.ensemble import forecast_cohort
    from forecast.evaluate import CONNECTIVITY, MIN_VOLUME_MM3
    from forecast.sampler import SamplerSettings
    from forecast.train import train
    from mseval.io.store import ForecastStore
    from mseval.lesions.components import count_lesions

    cfg = ForecastConfig(name="t", **TEST_NET, steps=1, batch_size=2, checkpoint_every=1, lr=1e-3, seed=5, count_head=True,
                         count_head_epochs=25)
    train(tiny_cohort, cfg, tmp_path / "m", device="cpu")
    gaps = {}
    for tries in (1, 3):
        out = tmp_path / f"s{tries}"
        forecast_cohort(tiny_cohort, tmp_path / "m", out, samples=3, arms="placebo", settings=SamplerSettings("ddim", 2, 1.0, count_tries=tries),
                        patients=["P001", "P002", "P003"], seed=1)
        st = ForecastStore.open(out)
        g = []
        for key in sorted(st.keys()):
            b = st.block(*key)
            masks, affine = b.masks()
            got = [count_lesions(m, affine, connectivity=CONNECTIVITY, min_volume_mm3=MIN_VOLUME_MM3).count for m in masks]
            g += [abs(x - r) for x, r in zip(got, b.sampler["requested_counts"])]
        gaps[tries] = np.array(g)
    assert (gaps[3] <= gaps[1]).all()
