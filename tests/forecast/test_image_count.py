"""The image count model: loading observed targets, fitting, determinism, and an ablation per input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forecast.image_count import ImageCountNet, collate, count_pmf, fit_image_count, logits_for
from forecast.image_count_data import IMAGE_CHANNELS, MASK_CHANNELS, load_arrays, visit_horizons
from mseval.errors import InputError
from mseval.io.cohort import read_cohort
from mseval.lesions.components import count_lesions


@pytest.fixture(scope="module")
def multi_visit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    out = tmp_path_factory.mktemp("ic") / "cohort"
    simulate_trial(out, TrialConfig(patients_per_arm=3, shape=(20, 24, 20), seed=5, base_rate=8.0))
    return out


@pytest.fixture(scope="module")
def arrays(multi_visit: Path):
    c = read_cohort(multi_visit)
    return c, list(c.arms["arm"]), load_arrays(c, c.patient_ids, list(c.arms["arm"]))


@pytest.fixture(scope="module")
def fitted(arrays):
    _, arms, ps = arrays
    net = ImageCountNet(len(IMAGE_CHANNELS) + len(MASK_CHANNELS), len(arms), hidden=4, mlp=8)
    fit = fit_image_count(net, ps[:14], ps[14:], epochs=3, batch=7, seed=3)
    return net, fit


def test_targets_are_the_observed_cumulative_masks(arrays) -> None:
    c, arms, ps = arrays
    assert visit_horizons(c) == ("w24", "w48", "w96")
    for pid, p in zip(c.patient_ids, ps):
        assert p.cond.shape == (7, 20, 24, 20) and p.brain.dtype == bool and p.arm == arms.index(c.row(pid)["arm"])
        assert np.all(np.diff(p.years) > 0) and np.isfinite(p.years).all()
        m = c.load_visit(pid, "w96")["net2_mask_cumulative"]
        assert p.counts[-1] == count_lesions(m.data, m.affine, connectivity=26, min_volume_mm3=3.0).count
        assert np.all(np.diff(p.counts) >= -1)  # cumulative (two lesions may merge as they grow)
    assert sum(p.counts[-1] for p in ps) > 0


def test_sampling_inputs_read_no_follow_up(arrays) -> None:
    c, arms, _ = arrays
    p = load_arrays(c, c.patient_ids[:2], arms, with_targets=False)[0]
    assert p.counts.size == 0 and p.centres.shape == (0, 3)


def test_single_visit_cohort_without_visits_table_is_refused(tiny_cohort: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    c = replace(read_cohort(tiny_cohort), visits=None)  # a cohort written before visits.csv existed
    with pytest.raises(InputError, match="multi-visit"):
        visit_horizons(c)


def test_fit_keeps_the_best_held_out_epoch_and_is_deterministic(arrays, fitted) -> None:
    _, arms, ps = arrays
    net, fit = fitted
    assert fit.best_count_epoch == 1 + int(np.argmin([h[1] for h in fit.history]))  # each pathway its own criterion
    assert fit.best_centre_epoch == 1 + int(np.argmin([h[2] for h in fit.history]))
    from forecast.image_count import evaluate_loss

    got = evaluate_loss(net, ps[14:], batch=7)
    assert np.isclose(got[1], fit.val_count_nll, rtol=1e-5) and np.isclose(got[2], fit.val_centre_nll, rtol=1e-5)
    again = ImageCountNet(7, len(arms), hidden=4, mlp=8)
    fit_image_count(again, ps[:14], ps[14:], epochs=3, batch=7, seed=3)
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_stopped_fit_resumes_to_the_uninterrupted_weights(arrays, fitted, tmp_path: Path) -> None:
    """Stopped after its second epoch (the state file written, then the run killed), the same fit started again with the
    same state file runs only the third epoch and ends with the uninterrupted run's weights, epochs and history, bit for
    bit (the linear head's refits included); a state file of another run (another seed) is refused, naming the file."""
    from forecast.image_count import TrainingStateError

    _, arms, ps = arrays
    net, fit = fitted
    for head in ("mlp", "linear"):
        kw = {"count_head": head, "count_trunk": "gated"} if head == "linear" else {}
        whole = ImageCountNet(7, len(arms), hidden=4, mlp=8, **kw)
        ref = fit_image_count(whole, ps[:14], ps[14:], epochs=3, batch=7, seed=3)
        state = tmp_path / f"{head}.pt"
        stopped = ImageCountNet(7, len(arms), hidden=4, mlp=8, **kw)

        def stop(epoch: int, _n: int, _v: float) -> None:
            if epoch == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fit_image_count(stopped, ps[:14], ps[14:], epochs=3, batch=7, seed=3, state_file=state, progress=stop)
        seen = []
        again = ImageCountNet(7, len(arms), hidden=4, mlp=8, **kw)
        got = fit_image_count(again, ps[:14], ps[14:], epochs=3, batch=7, seed=3, state_file=state, progress=lambda e, _n, _v: seen.append(e))
        assert seen == [3] and got == ref, head
        for (k, a), b in zip(whole.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), (head, k)
        with pytest.raises(TrainingStateError, match="another training run") as e:
            fit_image_count(ImageCountNet(7, len(arms), hidden=4, mlp=8, **kw), ps[:14], ps[14:], epochs=3, batch=7, seed=4, state_file=state)
        assert e.value.path == state
    with pytest.raises(TrainingStateError, match="already past epoch 1"):  # fewer epochs than it ran: not the run it resumes
        fit_image_count(ImageCountNet(7, len(arms), hidden=4, mlp=8, count_head="linear", count_trunk="gated"), ps[:14], ps[14:], epochs=1,
                        batch=7, seed=3, state_file=state)
    state.write_bytes(b"not a state")
    with pytest.raises(TrainingStateError, match="not a readable training state"):
        fit_image_count(ImageCountNet(7, len(arms), hidden=4, mlp=8), ps[:14], ps[14:], epochs=3, batch=7, seed=3, state_file=state)


def _outputs(net: ImageCountNet, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        m, _, lg = net(batch["cond"], batch["brain"], batch["tab"], batch["arm"], batch["years"])
        return m.numpy(), logits_for(lg, batch["arm"]).numpy()


def test_the_pathways_share_no_parameter(arrays) -> None:
    _, arms, _ = arrays
    net = ImageCountNet(7, len(arms), hidden=4, mlp=8, count_hidden=3)
    a, b = {id(t) for t in net.count_parameters()}, {id(t) for t in net.centre_parameters()}
    assert not a & b and a | b == {id(t) for t in net.parameters()}


def test_every_input_changes_the_forecast(arrays, fitted) -> None:
    _, arms, ps = arrays
    net, _ = fitted
    b = collate(ps[:6])
    mu, lg = _outputs(net, b)
    brain = b["brain"].numpy()

    def changed(batch: dict) -> tuple[float, float]:
        m2, l2 = _outputs(net, batch)
        return float(np.abs(m2 - mu).max()), float(np.abs(l2 - lg)[brain].max())

    cond = b["cond"].clone().requires_grad_(True)
    m, _, _ = net(cond, b["brain"], b["tab"], b["arm"], b["years"])
    (grad,) = torch.autograd.grad(m.sum(), cond)
    for name, zero in (("images", range(len(IMAGE_CHANNELS))), ("masks", range(len(IMAGE_CHANNELS), 7))):
        dm, dl = changed(collate(ps[:6], zero_channels=tuple(zero)))
        assert dl > 1e-5, name  # the centre law reads them; the size is measured in bench/image_count_dev.py
        assert dm > 0 and float(grad[:, list(zero)].abs().sum()) > 1e-4, name  # and so does the count law
    for j in range(4):  # each tabular feature moves the count law
        tab = b["tab"].clone()
        tab[:, j] += 1.0
        assert changed(b | {"tab": tab})[0] > 1e-4, j
    other = (b["arm"] + 1) % len(arms)
    dm, dl = changed(b | {"arm": other})
    assert dm > 1e-4 and dl > 1e-6  # the arm changes how many and where
    m2, _ = _outputs(net, b | {"years": b["years"] * 2})
    assert np.allclose(m2, mu + np.log(2), atol=1e-5)  # constant rate within each scheduled interval
    t = b["years"].numpy()
    rates = np.diff(np.exp(mu), prepend=0, axis=1) / np.diff(t, prepend=0, axis=1)
    assert np.abs(np.log(rates[:, 1:] / rates[:, :1])).max() > 1e-4  # but not one rate over the whole follow-up


def test_a_patient_unlike_every_training_patient_gets_a_rate_near_the_training_range(arrays) -> None:
    """After fitting, each interval's log rate is held within the training patients' range under every arm widened by
    SUPPORT_MARGIN: the training patients' forecasts under every arm are those of the unbounded law; a patient whose
    images and features lie far outside (images x 30, counts x 1000), to whom the unbounded law gives a count far beyond
    any training patient's, gets at most e^SUPPORT_MARGIN times the largest training rate; a net saved before the
    bounds existed loads unbounded. (On 14 training patients the linear head's counterfactual rates are themselves far
    out, so the bounds here are wide; the test is of the mechanism. arm_age off: with it one arm's term sits on the
    boundary.)"""
    from dataclasses import replace

    from forecast.image_count import SUPPORT_MARGIN

    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, count_trunk="gated", count_head="linear", arm_age=False)
    fit_image_count(net, ps[:14], ps[14:], epochs=1, batch=7, seed=3, centres=False)
    assert torch.isfinite(net.rate_lo).all() and (net.rate_hi - net.rate_lo >= 2 * SUPPORT_MARGIN).all()
    free = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, count_trunk="gated", count_head="linear", arm_age=False)
    free.load_state_dict({k: v for k, v in net.state_dict().items() if k not in ("rate_lo", "rate_hi")})  # as saved before the bounds
    assert torch.isinf(free.rate_lo).all() and torch.isinf(free.rate_hi).all()

    def law(model: ImageCountNet, patients: list, arm: int | None = None) -> np.ndarray:
        b = collate(patients)
        a = b["arm"] if arm is None else torch.full_like(b["arm"], arm)
        with torch.no_grad():
            return model(b["cond"], b["brain"], b["tab"], a, b["years"], centres=False)[0].numpy()

    for k in range(len(arms)):  # the training patients, under every arm: unchanged
        assert np.array_equal(law(net, ps[:14], k), law(free, ps[:14], k)), k
    odd = [replace(p, cond=p.cond * 30.0, tab=p.tab * np.array([1000.0, 1000.0, 1000.0, 1.0])) for p in ps[14:]]
    top = max(law(net, ps[:14], k)[:, -1].max() for k in range(len(arms)))
    assert law(free, odd)[:, -1].max() > top + 5.0  # e^5: far beyond any training patient's expected count
    years = collate(odd)["years"].numpy()
    dt = np.diff(years, axis=1, prepend=0.0)
    ceiling = np.log((np.exp(net.rate_hi.numpy()) * dt).sum(1))  # every interval at its bound: the largest cumulative mean
    assert (law(net, odd)[:, -1] <= ceiling + 1e-5).all() and ceiling.max() < law(free, odd)[:, -1].max() - 3.0


def test_count_pmf_is_the_nb2_law() -> None:
    from scipy import stats

    pmf = count_pmf(np.log([0.5, 4.0]), np.log([0.3, 1.2]))
    assert np.allclose(pmf.sum(-1), 1.0)
    assert np.allclose(pmf @ np.arange(pmf.shape[1]), [0.5, 4.0], rtol=1e-6)
    r = 1 / 1.2
    assert np.isclose(pmf[1, 3], stats.nbinom.pmf(3, r, r / (r + 4.0)))


def test_trajectory_likelihood_is_the_negative_multinomial() -> None:
    from scipy import stats

    from forecast.image_count import trajectory_logpmf

    mu = torch.tensor([[1.0, 2.5, 4.0]])
    alpha = torch.tensor([[0.7, 0.7, 0.7]])
    r = 1 / 0.7
    # one visit observed: the NB2 marginal
    lp, n = trajectory_logpmf(torch.tensor([[float("nan"), 3.0, float("nan")]]), mu.log(), alpha.log())
    assert int(n[0]) == 1 and np.isclose(float(lp[0]), stats.nbinom.logpmf(3, r, r / (r + 2.5)), atol=1e-5)
    # all observed: NB2 of the total times the multinomial split of the increments (1, 2, 1) with means (1, 1.5, 1.5)
    lp, _ = trajectory_logpmf(torch.tensor([[1.0, 3.0, 4.0]]), mu.log(), alpha.log())
    want = stats.nbinom.logpmf(4, r, r / (r + 4.0)) + stats.multinomial.logpmf([1, 2, 1], 4, [0.25, 0.375, 0.375])
    assert np.isclose(float(lp[0]), want, atol=1e-5)


def test_count_only_fit_trains_the_count_pathway_alone(arrays) -> None:
    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, mlp=8, count_hidden=3)
    torch.manual_seed(0)
    fit = fit_image_count(net, ps[:14], ps[14:], epochs=2, batch=7, seed=3, centres=False)
    assert fit.best_centre_epoch == 0 and np.isnan(fit.val_centre_nll) and fit.best_count_epoch >= 1
    fresh = ImageCountNet(7, len(arms), hidden=4, mlp=8, count_hidden=3)
    torch.manual_seed(3)  # fit_image_count re-initialises from its seed: the centre pathway keeps those weights
    for m in fresh.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)) and m is not fresh.shift:
            m.reset_parameters()
    for a, b in zip(net.centre_parameters()[:-2], fresh.centre_parameters()[:-2]):
        assert torch.equal(a, b)
    b = collate(ps[:4])
    with torch.no_grad():
        m1, _, lg = net(b["cond"], b["brain"], b["tab"], b["arm"], b["years"], centres=False)
        m2, _, _ = net(b["cond"], b["brain"], b["tab"], b["arm"], b["years"])
    assert lg is None and torch.equal(m1, m2)


def test_an_optional_mtr_map_is_read_as_an_image(tmp_path: Path) -> None:
    """A cohort simulated with --mtr: `inputs` may name its MTR map, which is z-scored inside the brain like the
    sequences (not read as a 0/1 mask), and it is lower at the visible pre-lesional sites."""
    from forecast.image_count_data import OPTIONAL_IMAGE_CHANNELS
    from mseval.simulate.model import TrialConfig
    from mseval.simulate.trial import simulate_trial

    assert "mtr" in OPTIONAL_IMAGE_CHANNELS
    out = tmp_path / "mtr"
    simulate_trial(out, TrialConfig(patients_per_arm=1, shape=(20, 24, 20), seed=6, mtr=True))
    c = read_cohort(out)
    p = load_arrays(c, c.patient_ids[:2], list(c.arms["arm"]), inputs=IMAGE_CHANNELS + MASK_CHANNELS + ("mtr",))[0]
    m = p.cond[-1][p.brain]
    assert p.cond.shape[0] == len(IMAGE_CHANNELS) + len(MASK_CHANNELS) + 1
    assert abs(float(m.mean())) < 1e-3 and abs(float(m.std()) - 1.0) < 1e-2 and len(np.unique(m)) > 100


def test_inputs_naming_an_image_the_cohort_lacks_are_refused_naming_it(multi_visit: Path) -> None:
    c = read_cohort(multi_visit)
    with pytest.raises(InputError, match="no baseline mtr image") as e:
        load_arrays(c, c.patient_ids[:1], list(c.arms["arm"]), inputs=IMAGE_CHANNELS + ("mtr",))
    assert e.value.field == "mtr" and "\n" not in e.value.message


def test_reading_in_worker_processes_gives_the_same_arrays_and_errors(arrays, multi_visit: Path) -> None:
    """load_arrays over two processes (18 patients: three chunks) equals the serial read, field by field and in order;
    a bad input inside a worker surfaces as the same one-line InputError."""
    c, arms, serial = arrays
    seen = []
    par = load_arrays(c, c.patient_ids, arms, workers=2, progress=lambda d, n: seen.append((d, n)))
    assert len(par) == len(serial) and seen[-1] == (len(serial), len(serial))
    for a, b in zip(par, serial):
        assert a.arm == b.arm and np.array_equal(a.cond, b.cond) and np.array_equal(a.brain, b.brain) and np.array_equal(a.tab, b.tab)
        assert np.array_equal(a.counts, b.counts, equal_nan=True) and np.array_equal(a.years, b.years) and np.array_equal(a.centres, b.centres)
    with pytest.raises(InputError, match="no baseline mtr image") as e:
        load_arrays(c, c.patient_ids, arms, inputs=IMAGE_CHANNELS + ("mtr",), workers=2)
    assert e.value.field == "mtr"


def image_effect(net: ImageCountNet, ps: list) -> float:
    """Largest change of the count law's log means when every image channel is zeroed (the ablation)."""
    b = collate(ps)
    with torch.no_grad():
        m, _, _ = net(b["cond"], b["brain"], b["tab"], b["arm"], b["years"], centres=False)
        m0, _, _ = net(collate(ps, zero_channels=tuple(range(5)))["cond"], b["brain"], b["tab"], b["arm"], b["years"], centres=False)
    return float((m - m0).abs().max())


def test_gated_detectors_start_as_raised_white_matter_rules_and_the_images_reach_the_count(arrays) -> None:
    """The `gated` count trunk at its initialisation (WhiteStripe units): a lesion-free white-matter voxel with FLAIR 3 SDs
    above normal fires the FLAIR detectors, normal white matter barely, grey matter (T1 far below) and lesion voxels not;
    trained, the count law reads the images (the ablation) and the trunk's name is checked."""
    from forecast.image_count import GatedDetectors

    det = GatedDetectors(7, 6)
    x = torch.zeros(5, 7, 1, 1, 1)
    x[0, 2] = 3.0  # raised FLAIR, white matter
    x[2, 0], x[2, 2] = -70.0, 3.0  # grey matter (T1 far below the stripe), FLAIR bright
    x[3, 2], x[3, 5] = 3.0, 1.0  # a lesion voxel
    x[4, 0], x[4, 1], x[4, 2], x[4, 3] = -6.0, 2.0, 2.0, 2.0  # diffusely abnormal: every sequence a little off
    d = det(x)[:, :, 0, 0, 0].detach().numpy()  # detector 0: the signs' sum above 1.5; detector 1: FLAIR above 1.5
    assert d[0, 1] > 0.8 and d[1, 1] < 0.1 and d[2, 1] < 0.01 and d[3, 1] < 0.01, d
    assert d[4, 0] > 0.8 and d[1, 0] < 0.1 and d[4, 0] > d[4, 1], d
    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, mlp=8, count_hidden=3, count_trunk="gated")
    fit_image_count(net, ps[:14], ps[14:], epochs=2, batch=7, seed=3, centres=False)
    assert image_effect(net, ps[:6]) > 1e-5
    with pytest.raises(ValueError, match="count_trunk must be one of"):
        ImageCountNet(7, len(arms), count_trunk="unet")


def test_linear_count_head_starts_at_its_maximum_likelihood_fit_and_reads_the_images(arrays) -> None:
    """`count_head="linear"`: epoch 0 is the NB2 regression on the initial summaries fitted by maximum likelihood (the
    training NLL's gradient in the head vanishes there); every epoch refits it, so after training it is again the
    maximum on the trunk's new summaries (the gradient two orders below its value half a nat away from the maximum); the
    images reach the count (the ablation); a wrong head name is refused."""
    from forecast.image_count import LinearCountLaw, trajectory_logpmf

    _, arms, ps = arrays
    # without arm x age: with two training patients per arm that term's maximum lies on the boundary (dispersion -> 0)
    net = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, count_trunk="gated", count_head="linear", arm_age=False)
    assert isinstance(net.count, LinearCountLaw)

    def head_gradient() -> float:
        b = collate(ps[:14])
        net.zero_grad(set_to_none=True)
        with torch.no_grad():
            x = net.count_inputs(net.image_summary(b["cond"], b["brain"]), b["tab"], b["arm"])
        log_mu, log_alpha = net.count_law(x, b["years"])
        (-trajectory_logpmf(b["counts"], log_mu, log_alpha)[0].mean()).backward()
        return max(float(t.grad.abs().max()) for t in net.count.parameters())

    fit0 = fit_image_count(net, ps[:14], ps[14:], epochs=0, batch=7, seed=3, centres=False)
    assert fit0.best_count_epoch == 0 and np.isfinite(fit0.val_count_nll)
    g0 = head_gradient()
    with torch.no_grad():  # away from the maximum the gradient is not small: the check can fail
        net.count.intercept += 0.5
    g1 = head_gradient()
    fit_image_count(net, ps[:14], ps[14:], epochs=2, batch=7, seed=3, centres=False, lr=3e-2)
    g2 = head_gradient()
    assert g0 < 0.01 * g1 and g2 < 0.01 * g1, (g0, g1, g2)  # float32 L-BFGS on 14 patients: near, not at, zero
    assert image_effect(net, ps[:6]) > 1e-4
    with pytest.raises(ValueError, match="count_head must be one of"):
        ImageCountNet(7, len(arms), count_head="gam")


def test_linear_head_refit_that_meets_a_non_finite_summary_keeps_the_head_and_summaries_are_not_amplified(arrays) -> None:
    """A refit on non-finite inputs returns False and changes nothing; the summary scale never falls below its floor
    (a random conv trunk's summaries barely vary: centred, not amplified)."""
    from forecast.image_count import SUMMARY_SD_FLOOR, _fit_linear_count

    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, count_head="linear")
    fit_image_count(net, ps[:14], ps[14:], epochs=1, batch=7, seed=3, centres=False)
    assert float(net.summary_sd.min()) >= SUMMARY_SD_FLOOR
    before = [t.detach().clone() for t in net.count.parameters()]
    bad = torch.full((14, 6), float("nan"))
    assert _fit_linear_count(net, ps[:14], bad) is False
    assert all(torch.equal(a, b) for a, b in zip(before, net.count.parameters()))



def test_multiscale_centre_trunk_reads_images_masks_and_arm_and_refits_from_scratch(arrays) -> None:
    """`centre_trunk="multiscale"`: trained, its centre law changes when the images or the masks are zeroed or the arm
    changes; a second fit from the same seed on the same net gives the same weights; a wrong name is refused."""
    from forecast.image_count import CENTRE_TRUNKS, evaluate_loss

    trunk = "multiscale"
    assert CENTRE_TRUNKS == ("shallow", trunk)
    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, centre_trunk=trunk)
    fit = fit_image_count(net, ps[:14], ps[14:], epochs=2, batch=7, seed=3)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    b = collate(ps[:6])
    brain = b["brain"].numpy()
    _, lg = _outputs(net, b)
    assert np.isfinite(lg[brain]).all() and fit.best_centre_epoch >= 1
    for zero in (range(5), range(5, 7)):
        _, l2 = _outputs(net, b | {"cond": collate(ps[:6], zero_channels=tuple(zero))["cond"]})
        assert float(np.abs(l2 - lg)[brain].max()) > 1e-5, zero
    net.shift.bias.data += torch.linspace(0, 1, len(arms))  # trained shifts start at zero; make the arm's effect visible
    _, l3 = _outputs(net, b | {"arm": (b["arm"] + 1) % len(arms)})
    _, l4 = _outputs(net, b)
    assert float(np.abs(l3 - l4)[brain].max()) > 1e-3
    fit_image_count(net, ps[:14], ps[14:], epochs=2, batch=7, seed=3)
    for k, v in net.state_dict().items():
        assert torch.equal(v, first[k]), k
    assert np.isclose(evaluate_loss(net, ps[14:], batch=7)[2], fit.val_centre_nll, rtol=1e-5)
    with pytest.raises(ValueError, match="centre_trunk must be one of"):
        ImageCountNet(7, len(arms), centre_trunk="vit")


def test_multiscale_features_smooth_inside_the_brain_and_see_far() -> None:
    """The fixed smoothing is a normalised convolution: a constant inside the brain stays that constant up to the brain's
    edge and nothing outside the brain leaks in; a voxel 8 voxels away moves a multiscale logit, beyond the shallow trunk's
    7-voxel receptive field (which it does not move)."""
    from forecast.image_count import MultiscaleFeatures

    m = MultiscaleFeatures(1, 2)
    brain = torch.zeros(1, 20, 24, 20, dtype=torch.bool)
    brain[0, 3:17, 4:20, 3:17] = True
    x = torch.full((1, 1, 20, 24, 20), 2.0)
    x[:, :, :3] = 50.0  # outside the brain
    for k, s in enumerate(m.sigmas):
        if max(s) > 0:
            num, den = m._blur(torch.cat([x * brain[:, None], brain[:, None].float()], 1), k).split([1, 1], 1)
            v = (num / den.clamp_min(1e-3))[0, 0][brain[0]]
            assert torch.allclose(v, torch.full_like(v, 2.0), atol=1e-5), s
    torch.manual_seed(0)
    far = {}
    for trunk in ("shallow", "multiscale"):
        net = ImageCountNet(7, 6, hidden=4, count_hidden=3, centre_trunk=trunk)
        cond = torch.randn(1, 7, 20, 24, 20)
        whole = torch.ones(1, 20, 24, 20, dtype=torch.bool)
        years = torch.tensor([[0.5, 1.0, 2.0]])
        with torch.no_grad():
            a = net(cond, whole, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), years)[2][0, 0, 10, 12, 10]
            cond[0, 5, 10, 12, 18] += 5.0  # a lesion voxel 8 voxels away
            b = net(cond, whole, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), years)[2][0, 0, 10, 12, 10]
        far[trunk] = float((a - b).abs())
    assert far["shallow"] == 0.0 and far["multiscale"] > 1e-6, far


def test_multiscale_geometry_is_the_32_grid_s_voxels_there_and_the_same_millimetres_elsewhere() -> None:
    """On the 32^3 MNI grid `multiscale_geometry` gives the trunk's historical voxel scales (so the shipped checkpoint, which
    records none, computes the same logits bit for bit); on a finer grid the scales and margin are the same millimetres."""
    from forecast.image_count import MULTISCALE_SIGMAS, REFERENCE_VOXEL_MM, multiscale_geometry
    from mseval.simulate.anatomy import default_spacing

    g32 = multiscale_geometry(default_spacing((32, 32, 32)))
    assert g32 == {"sigmas": [[s, s, s] for s in MULTISCALE_SIGMAS], "margin": [1, 1, 1]}
    g1 = multiscale_geometry((1.0, 1.0, 1.0))
    assert g1["sigmas"][1] == list(REFERENCE_VOXEL_MM) and g1["margin"] == [6, 7, 6]
    torch.manual_seed(0)
    legacy = ImageCountNet(7, 6, hidden=4, count_hidden=3)
    explicit = ImageCountNet(7, 6, hidden=4, count_hidden=3, **g32)
    explicit.load_state_dict(legacy.state_dict())
    assert "sigmas" not in legacy.arguments and explicit.arguments["sigmas"] == g32["sigmas"]
    cond, brain = torch.randn(2, 7, 32, 32, 32), torch.rand(2, 32, 32, 32) > 0.2
    args = (torch.zeros(2, 4), torch.tensor([0, 3]), torch.tensor([[0.5, 1.0, 2.0]] * 2))
    with torch.no_grad():
        assert torch.equal(legacy(cond, brain, *args)[2], explicit(cond, brain, *args)[2])
    with pytest.raises(ValueError, match="multiscale"):
        ImageCountNet(7, 6, centre_trunk="shallow", **g32)


def test_multiscale_maps_mean_the_same_millimetres_on_two_grids() -> None:
    """A smooth image and a small bright spot sampled on a 16^3 and a 32^3 grid of the same field of view: with
    `multiscale_geometry` of each grid's voxel size, every fixed map (smoothed channel, neighbourhood maximum) agrees at the
    same physical points to within what the coarser sampling loses; with the voxel scales of the 32^3 grid used on both
    (the trunk before distances were in mm), the smoothing on the coarse grid is twice as wide in mm and the maps disagree
    several times more."""
    from forecast.image_count import MultiscaleFeatures, multiscale_geometry

    fov = np.array([182.0, 218.0, 182.0])

    def sampled(n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        sp = fov / n
        axes = [(np.arange(n) + 0.5) * s - f / 2 for s, f in zip(sp, fov)]
        X, Y, Z = np.meshgrid(*axes, indexing="ij")
        img = np.exp(-((X / 40) ** 2 + (Y / 60) ** 2 + (Z / 40) ** 2)) + 0.5 * (np.abs(X - 20) < 12) * (np.abs(Y) < 14) * (np.abs(Z + 10) < 12)
        return torch.tensor(img, dtype=torch.float32)[None, None], torch.ones(1, n, n, n, dtype=torch.bool), sp

    (x16, b16, sp16), (x32, b32, sp32) = sampled(16), sampled(32)
    def maps(x, b, geometry):  # noqa: ANN001, ANN202
        return MultiscaleFeatures(1, 1, geometry["sigmas"], geometry["margin"]).maps(x, b)[0].detach()

    def gap(g16: dict, g32: dict) -> float:
        fine = torch.nn.functional.avg_pool3d(maps(x32, b32, g32)[None], 2)[0]  # the 32^3 maps averaged onto the 16^3 voxels
        coarse = maps(x16, b16, g16)
        return float((fine[1:] - coarse[1:]).abs().mean() / coarse[1:].abs().mean())  # the smoothed channels

    in_mm = gap(multiscale_geometry(sp16), multiscale_geometry(sp32))
    in_voxels = gap(multiscale_geometry(sp32), multiscale_geometry(sp32))
    assert in_mm < 0.03 and in_voxels > 10 * in_mm, (in_mm, in_voxels)  # measured: 0.009 and 0.25


def test_linear_head_lets_the_arm_effect_vary_with_age(arrays) -> None:
    """The linear head's inputs hold arm x age: after fitting, a patient's log rate ratio between two arms changes with
    the age fed in (it would be one number per arm pair without the term), and zeroing the term's weights removes it."""
    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, count_trunk="gated", count_head="linear")
    fit_image_count(net, ps[:14], ps[14:], epochs=1, batch=7, seed=3, centres=False)
    b = collate(ps[:1])

    def lrr(age: float) -> float:
        tab = b["tab"].clone()
        tab[:, 3] = age
        with torch.no_grad():
            m = [net(b["cond"], b["brain"], tab, torch.tensor([k]), b["years"], centres=False)[0][0, -1] for k in (0, 1)]
        return float(m[1] - m[0])

    assert abs(lrr(25.0) - lrr(55.0)) > 1e-4
    with torch.no_grad():
        net.count.slope.weight[0, -len(arms):] = 0.0
    # the same up to float32 rounding of the log means (one arm has no training lesion here, so its ratio is far out)
    assert abs(lrr(25.0) - lrr(55.0)) < 1e-6 * max(1.0, abs(lrr(25.0)))


def test_flexible_count_terms_reach_the_mean_and_the_dispersion(arrays) -> None:
    """`count_terms="flexible"`: after the maximum-likelihood fit the quadratic count terms move the mean (zeroing their
    weights changes it); the dispersion model's inputs are the arm and the counts (alpha differs between arms and with
    the T2 count); the architecture
    rebuilds from `arguments` (a checkpoint's) with the same forecast; the MLP head or an unknown name is refused, and the
    default head's arguments are those of checkpoints written before the option existed."""
    from forecast.image_count import QUADRATIC_TERMS

    _, arms, ps = arrays
    net = ImageCountNet(7, len(arms), hidden=4, count_hidden=3, count_trunk="gated", count_head="linear", arm_age=False, count_terms="flexible")
    fit_image_count(net, ps[:14], ps[14:], epochs=0, batch=7, seed=3, centres=False)
    b = collate(ps[:6])

    def law(model: ImageCountNet, arm: torch.Tensor, tab: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            m, a, _ = model(b["cond"], b["brain"], b["tab"] if tab is None else tab, arm, b["years"], centres=False)
        return m, a

    with torch.no_grad():  # 14 training patients put the fitted dispersion on its floor; the wiring, at a set value
        net.count.log_alpha.fill_(-1.0)
        net.count.dispersion.weight.fill_(0.3)
    m0, a0 = law(net, b["arm"])
    assert float((law(net, torch.zeros_like(b["arm"]))[1] - law(net, torch.full_like(b["arm"], 1))[1]).abs().max()) > 1e-4
    more = b["tab"].clone()
    more[:, 1] *= 3.0  # three times the T2 lesions
    assert float((law(net, b["arm"], more)[1] - a0).abs().max()) > 1e-4
    twin = ImageCountNet(**net.arguments)
    twin.load_state_dict(net.state_dict())
    twin.eval()
    assert torch.equal(law(twin, b["arm"])[0], m0)
    with torch.no_grad():
        net.count.slope.weight[0, -len(QUADRATIC_TERMS):] = 0.0
    assert float((law(net, b["arm"])[0] - m0).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="linear head"):
        ImageCountNet(7, len(arms), count_head="mlp", count_terms="flexible")
    with pytest.raises(ValueError, match="count_terms must be one of"):
        ImageCountNet(7, len(arms), count_head="linear", count_terms="spline")
    assert "count_terms" not in ImageCountNet(7, len(arms), count_head="linear").arguments
