"""The `mseval forecast` sub-app: torch-free import, train -> sample -> evaluate from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

from mseval.commands.forecast import main


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, mseval.commands.forecast as fc; assert 'torch' not in sys.modules and 'monai' not in sys.modules; print(sorted(c.callback.__name__ for c in fc.app.registered_commands))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "['evaluate', 'forecast_export', 'forecast_import', 'image_laws', 'image_render', 'image_sample', 'image_train', 'plan', 'sample', 'train']" in res.stdout


def test_train_resume_sample_evaluate(tiny_cohort, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({
        "name": "cli", "shape": [32, 32, 32], "inputs": ["flair", "t2_lesion_mask"], "channels": [8, 8, 16],
        "attention_levels": [False, False, False], "objective": "rflow", "prediction": "v", "sampler": "rflow",
        "steps": 1, "batch_size": 2, "lr": 0.001, "seed": 1, "val_fraction": 0.5, "sample_steps": 2,
    }))
    ckpt = tmp_path / "ckpt"
    assert main(["train", str(tiny_cohort), "--config", str(cfg), "--out", str(ckpt)]) == 0
    assert main(["train", str(tiny_cohort), "--config", str(cfg), "--out", str(ckpt), "--resume", "--steps", "2"]) == 0
    assert "step 2" in capsys.readouterr().out
    assert main(["evaluate", str(ckpt), str(tiny_cohort), "--out", str(tmp_path / "ev"), "--samples", "2", "--batch-size", "12"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["split"] == "validation" and summary["patients"] == 6
    assert {"auc_p_active", "crps_count", "oracle_crps_count", "white_matter_share", "per_arm"} <= summary.keys()
    assert (tmp_path / "ev" / "evaluation.csv").is_file() and (tmp_path / "ev" / "per_arm.csv").is_file()


def test_bad_config_is_one_line(tiny_cohort, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"name": "x"')
    assert main(["train", str(tiny_cohort), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid JSON" in err
    assert not (tmp_path / "o").exists()
