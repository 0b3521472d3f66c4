"""Procedural brain phantom (`mseval.simulate.anatomy`) and MRI synthesizer (`mseval.simulate.mri`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mseval.simulate.anatomy import (
    TISSUE_LABELS,
    Anatomy,
    default_spacing,
    make_anatomy,
)
from mseval.simulate.mri import SEQUENCES, head_layers, render_slices, synthesize_mri

SHAPES = [(16, 16, 16), (32, 32, 32), (48, 56, 48)]
CSF, GM, WM, DGM, VEN = (TISSUE_LABELS[k] for k in ("csf", "gm", "wm", "deep_gm", "ventricles"))
CONN26 = np.ones((3, 3, 3), dtype=bool)


def _on_border(mask: np.ndarray) -> bool:
    return bool(
        mask[[0, -1], :, :].any() or mask[:, [0, -1], :].any() or mask[:, :, [0, -1]].any()
    )


def test_labels_dict_is_fixed():
    assert TISSUE_LABELS == {
        "background": 0, "csf": 1, "gm": 2, "wm": 3, "deep_gm": 4, "ventricles": 5
    }


def test_default_spacing_spans_mni_field_of_view():
    for shape in [(16, 16, 16), (64, 76, 64), (182, 218, 182)]:
        sp = default_spacing(shape)
        assert np.allclose(np.array(shape) * np.array(sp), (182.0, 218.0, 182.0))
    assert default_spacing((182, 218, 182)) == (1.0, 1.0, 1.0)


def test_same_arguments_give_identical_bytes_and_seed_changes_folding():
    a = make_anatomy((32, 32, 32), seed=3)
    b = make_anatomy((32, 32, 32), seed=3)
    c = make_anatomy((32, 32, 32), seed=4)
    assert a.labels.tobytes() == b.labels.tobytes()
    assert np.array_equal(a.affine, b.affine) and a.spacing == b.spacing
    assert a.labels.tobytes() != c.labels.tobytes()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ventricle_scale", [0.7, 1.0, 1.6])
def test_structure_of_the_phantom(shape, ventricle_scale):
    anat = make_anatomy(shape, ventricle_scale=ventricle_scale, seed=1)
    labels = anat.labels
    assert isinstance(anat, Anatomy)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == set(TISSUE_LABELS.values())
    brain = anat.brain_mask
    assert brain.dtype == np.uint8 and np.array_equal(brain, (labels > 0).astype(np.uint8))
    assert not _on_border(brain > 0)
    wm = anat.wm_mask
    assert wm.dtype == np.uint8 and np.array_equal(wm, (labels == WM).astype(np.uint8))
    _, n_components = ndimage.label(wm > 0, structure=CONN26)
    assert n_components == 1
    counts = np.bincount(labels[labels > 0], minlength=6)
    frac_wm = counts[WM] / counts.sum()
    assert 0.35 <= frac_wm <= 0.5
    assert counts[WM] == counts[1:].max()  # the largest tissue
    # Both hemispheres have ventricles and deep grey matter.
    nx = shape[0]
    for lab in (VEN, DGM):
        assert (labels[: nx // 2] == lab).any() and (labels[(nx + 1) // 2 :] == lab).any()


def test_ventricle_scale_enlarges_ventricles():
    vols = [
        int((make_anatomy((48, 56, 48), ventricle_scale=s).labels == VEN).sum())
        for s in (0.7, 1.0, 1.6)
    ]
    assert vols[0] < vols[1] < vols[2]
    with pytest.raises(ValueError):
        make_anatomy((32, 32, 32), ventricle_scale=5.0)


def test_structures_sit_where_expected():
    anat = make_anatomy((91, 109, 91), seed=0)  # 2 mm voxels
    labels = anat.labels
    ijk = np.argwhere(labels > 0)
    world = ijk * np.array(anat.spacing) + anat.affine[:3, 3]
    centroid = world.mean(axis=0)
    assert np.all(np.abs(centroid) < 10.0)  # brain roughly centred
    ven = np.argwhere(labels == VEN) * np.array(anat.spacing) + anat.affine[:3, 3]
    assert np.all(np.abs(ven[:, 0]) < 45.0)  # ventricles are central ...
    assert (ven[:, 0] < 0).sum() > 0.4 * len(ven)  # ... in both hemispheres
    # Interhemispheric fissure: CSF on the midline in the upper brain.
    mid = labels[labels.shape[0] // 2]
    z_top = labels.shape[2] // 2 + int(35 / anat.spacing[2])
    assert (mid[:, z_top] == CSF).sum() >= 10


def test_affine_centres_the_volume():
    for shape in [(16, 16, 16), (32, 40, 24), (48, 56, 48)]:
        anat = make_anatomy(shape)
        assert anat.affine.shape == (4, 4) and anat.affine.dtype == np.float64
        centre = np.append((np.array(shape) - 1) / 2.0, 1.0)
        assert np.allclose(anat.affine @ centre, [0, 0, 0, 1], atol=1e-9)
        assert np.allclose(np.diag(anat.affine)[:3], anat.spacing)


def test_small_field_of_view_shrinks_the_phantom_to_fit():
    anat = make_anatomy((40, 40, 40), spacing=(1.0, 1.0, 1.0))
    assert anat.spacing == (1.0, 1.0, 1.0)
    assert not _on_border(anat.brain_mask > 0)
    assert set(np.unique(anat.labels).tolist()) == set(TISSUE_LABELS.values())


def test_ventricle_distance_mm():
    anat = make_anatomy((32, 32, 32))
    d = anat.ventricle_distance_mm()
    assert d.shape == (32, 32, 32) and d.dtype == np.float32
    ven = anat.labels == VEN
    assert np.all(d[ven] == 0) and np.all(d[~ven] > 0)
    expect = ndimage.distance_transform_edt(~ven, sampling=anat.spacing)
    assert np.allclose(d, expect, atol=1e-3)
    assert d[~ven].min() >= min(anat.spacing) - 1e-4


# ---------------------------------------------------------------- MRI
@pytest.fixture(scope="module")
def mri_case():
    anat = make_anatomy((48, 56, 48), seed=2)
    labels = anat.labels
    rng = np.random.default_rng(0)
    core = np.argwhere(ndimage.binary_erosion(labels == WM, iterations=2))
    lesion = np.zeros(labels.shape, dtype=np.uint8)
    for c in core[rng.choice(len(core), 6, replace=False)]:
        lesion[tuple(slice(i - 1, i + 2) for i in c)] = 1
    lesion &= (labels == WM).astype(np.uint8)
    gd = np.zeros_like(lesion)
    first = np.argwhere(lesion)[:10]
    gd[tuple(first.T)] = 1
    images = synthesize_mri(anat, lesion, gd, np.random.default_rng(7), noise=0.03)
    return anat, lesion, gd, images


def _means(anat, lesion, img):
    labels = anat.labels
    out = {}
    for name in ("csf", "gm", "wm", "deep_gm", "ventricles"):
        m = (labels == TISSUE_LABELS[name]) & (lesion == 0)
        core = ndimage.binary_erosion(m)
        out[name] = float(img[core if core.sum() >= 20 else m].mean())
    out["fluid"] = float(img[((labels == CSF) | (labels == VEN)) & (lesion == 0)].mean())
    out["lesion"] = float(img[lesion > 0].mean())
    return out


def test_images_are_finite_float32_and_zero_outside_head(mri_case):
    anat, _, _, images = mri_case
    assert tuple(images) == SEQUENCES == ("t1", "t2", "flair", "pd", "t1gd")
    head = head_layers(anat) > 0
    assert head[anat.labels > 0].all() and (~head).any()
    for img in images.values():
        assert img.shape == anat.labels.shape and img.dtype == np.float32
        assert np.isfinite(img).all() and img.min() >= 0
        assert np.all(img[~head] == 0)
        assert 300 < np.percentile(img[head], 99) < 1500


def test_contrast_orderings(mri_case):
    anat, lesion, gd, images = mri_case
    t1 = _means(anat, lesion, images["t1"])
    assert t1["wm"] > t1["gm"] > t1["fluid"] and t1["lesion"] < t1["wm"]
    t2 = _means(anat, lesion, images["t2"])
    assert t2["fluid"] > t2["gm"] > t2["wm"] and t2["lesion"] > t2["wm"]
    fl = _means(anat, lesion, images["flair"])
    others = [v for k, v in fl.items() if k != "lesion"]
    assert fl["lesion"] > max(others)
    assert fl["gm"] > fl["wm"] > fl["fluid"]
    pd = _means(anat, lesion, images["pd"])
    assert pd["fluid"] > pd["wm"] and pd["gm"] > pd["wm"]
    assert abs(pd["csf"] - pd["gm"]) < 0.15 * pd["gm"]
    # Gd enhancement shows on t1gd only.
    enh = gd > 0
    plain = (lesion > 0) & ~enh
    assert images["t1gd"][enh].mean() > _means(anat, lesion, images["t1gd"])["wm"]
    assert images["t1"][enh].mean() < t1["wm"]
    assert images["t1gd"][enh].mean() > images["t1gd"][plain].mean() + 200


def test_synthesis_is_deterministic_given_rng(mri_case):
    anat, lesion, gd, images = mri_case
    again = synthesize_mri(anat, lesion, gd, np.random.default_rng(7), noise=0.03)
    other = synthesize_mri(anat, lesion, gd, np.random.default_rng(8), noise=0.03)
    for seq in SEQUENCES:
        assert images[seq].tobytes() == again[seq].tobytes()
        assert images[seq].tobytes() != other[seq].tobytes()


def test_noise_level_controls_noise():
    anat = make_anatomy((32, 32, 32))
    zero = np.zeros(anat.labels.shape, dtype=np.uint8)
    core = ndimage.binary_erosion(anat.labels == WM)
    sd = []
    for noise in (0.0, 0.05):
        img = synthesize_mri(anat, zero, zero, np.random.default_rng(1), noise=noise)["flair"]
        sd.append(float(img[core].std()))
    assert sd[1] > 2 * sd[0]
    with pytest.raises(ValueError):
        synthesize_mri(anat, zero[:-1], zero, np.random.default_rng(1))


def test_render_slices_writes_png(tmp_path, mri_case):
    anat, lesion, _, images = mri_case
    out = tmp_path / "slices.png"
    render_slices(images, out, lesion_mask=lesion)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
