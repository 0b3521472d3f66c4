"""`mseval forecast export STORE --bids OUT` writes BIDS derivatives that `mseval forecast import --bids` reads back
into the same store."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mseval.cli import main


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _round_trip(store: Path, tmp_path: Path) -> Path:
    assert main(["forecast", "export", str(store), "--bids", str(tmp_path / "bids")]) == 0
    deriv = next((tmp_path / "bids" / "derivatives").iterdir())
    assert main(["forecast", "import", str(deriv), "--bids", "--out", str(tmp_path / "back")]) == 0
    assert _files(store) == _files(tmp_path / "back")  # store.json, index, masks, sparse, prob, provenance: byte for byte
    return deriv


def test_export_import_gives_back_the_store_and_its_counts(trial: dict[str, Path], tmp_path: Path) -> None:
    deriv = _round_trip(trial["store"], tmp_path)
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "mseval"
    names = sorted(p.name for p in deriv.glob("sub-P001/ses-forecast/anat/*"))
    assert "sub-P001_ses-forecast_label-NET2_desc-ifnb1aimsample1_mask.nii.gz" in names and len(names) == 6 * 2
    for name, store in (("a", trial["store"]), ("b", tmp_path / "back")):
        assert main(["count", str(store), "--out", str(tmp_path / f"count_{name}")]) == 0
    for f in ("counts.parquet", "lesions.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "count_a" / f), pd.read_parquet(tmp_path / "count_b" / f))


def test_probability_maps_and_provenance_survive_the_round_trip(trial: dict[str, Path], tmp_path: Path, foreign) -> None:  # noqa: ANN001
    foreign(trial["store"], tmp_path / "theirs", probability=True)
    assert main(["forecast", "import", str(tmp_path / "theirs"), "--probability", "--name", "their-model", "--trained-on", "none",
                 "--out", str(tmp_path / "store")]) == 0
    deriv = _round_trip(tmp_path / "store", tmp_path)
    assert deriv.name == "theirmodel"
    assert len(list(deriv.rglob("*_probseg.nii.gz"))) == len(list(deriv.rglob("*_mask.nii.gz"))) > 0


def test_export_into_the_trials_bids_dataset_adds_only_its_pipeline(trial: dict[str, Path], bids_copy: Path, cli) -> None:  # noqa: ANN001
    before = _files(bids_copy)
    assert main(["forecast", "export", str(trial["store"]), "--bids", str(bids_copy), "--pipeline", "oracle"]) == 0
    after = _files(bids_copy)
    assert {k: v for k, v in after.items() if not k.startswith("derivatives/oracle/")} == before
    res = cli("forecast", "export", trial["store"], "--bids", bids_copy, "--pipeline", "oracle")
    assert res.code == 2 and "exists" in res.err and _files(bids_copy) == after
    res = cli("forecast", "export", trial["store"], "--bids", bids_copy, "--pipeline", "bad_name")
    assert res.code == 2 and "--pipeline" in res.err and _files(bids_copy) == after


def test_every_model_a_store_records_survives_the_round_trip(trial: dict[str, Path], tmp_path: Path) -> None:
    """A rendered store records two models (the decoder that drew the masks, the forecaster whose trajectories it
    rendered): export and import give back both, so a report on the re-imported store still sees the forecaster's
    training patients."""
    import shutil

    from mseval.provenance import PROVENANCE_FILE, write_store_provenance

    store = tmp_path / "two"
    shutil.copytree(trial["store"], store)
    blocks_checkpoint = str(pd.read_parquet(store / "index.parquet")["checkpoint"].iloc[0])
    write_store_provenance(store, blocks_checkpoint, {"train": {}, "validation": {}})  # the model that drew the masks
    write_store_provenance(store, "zz-forecaster", {"train": {"P001": "0123456789abcdef"}, "validation": {}})
    _round_trip(store, tmp_path)
    back = json.loads((tmp_path / "back" / PROVENANCE_FILE).read_text())["checkpoints"]
    assert "zz-forecaster" in back and len(back) >= 2
