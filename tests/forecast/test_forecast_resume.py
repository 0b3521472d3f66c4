"""Resume only what matches: a forecast store holds one checkpoint's samples made one way; a
checkpoint's id depends on its content, not on when it was trained or saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from forecast.checkpoint import content_digest, load_checkpoint, save_checkpoint  # noqa: E402
from mseval.commands.forecast import main  # noqa: E402


def test_checkpoint_id_ignores_the_wall_clock_and_follows_the_weights(trained: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained)
    again = load_checkpoint(trained)
    again.log = [{**r, "seconds": r.get("seconds", 0.0) + 1234.5} for r in again.log]  # a slower machine, same steps
    save_checkpoint(again, tmp_path / "copy")
    assert load_checkpoint(tmp_path / "copy").id == ckpt.id
    payload = ckpt.to_payload()
    name = next(iter(payload["ema"]))
    payload["ema"][name] = payload["ema"][name] + 1e-3
    assert content_digest(payload) != ckpt.digest


def test_sample_resume_refuses_other_settings(trained: Path, tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    pid = "P001" if (tiny_cohort / "images" / "P001").is_dir() else sorted(p.name for p in (tiny_cohort / "images").iterdir())[0]
    base = ["sample", str(tiny_cohort), "--checkpoint", str(trained), "--out", str(out), "--arms", "placebo", "--patients", pid,
            "--steps", "2", "--device", "cpu"]
    assert main([*base, "--samples", "2", "--seed", "3"]) == 0
    recorded = json.loads((out / "store.json").read_text())["settings"]
    assert recorded["samples"] == 2 and recorded["seed"] == 3 and recorded["checkpoint"] == load_checkpoint(trained).id
    capsys.readouterr()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for extra, option in ((["--samples", "3", "--seed", "3"], "--samples"), (["--samples", "2", "--seed", "4"], "--seed"),
                          (["--samples", "2", "--seed", "3", "--steps", "3"], "--sampler/--steps/--guidance")):
        assert main([*base[:-4], *extra, "--device", "cpu"] if "--steps" in extra else [*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and option in err and "--overwrite" in err, err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert main([*base, "--samples", "3", "--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "store.json").read_text())["settings"]["samples"] == 3
