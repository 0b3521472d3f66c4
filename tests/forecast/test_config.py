"""The config round-trips through JSON, validates against its schema, and names bad fields."""

from __future__ import annotations

import json

import jsonschema
import pytest

import data_schemas
from forecast.config import ForecastConfig
from mseval.errors import InputError


def test_json_round_trip_is_exact(tmp_path):
    cfg = ForecastConfig(arms=("placebo", "dmf"), channels=(8, 16, 32), inputs=("t1", "flair"), guidance=1.5)
    assert ForecastConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert ForecastConfig.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_shipped_configs_load_and_match_the_schema(name):
    cfg = ForecastConfig.load(name)
    assert cfg.name == name
    jsonschema.validate(cfg.to_dict(), data_schemas.load("forecast_config"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"objective": "gan"}, "objective"),
        ({"inputs": ["t1", "ct"]}, "inputs.1"),
        ({"shape": [30, 32, 32]}, "shape"),
        ({"channels": [8, 12, 16]}, "channels"),
        ({"attention_levels": [False, True]}, "attention_levels"),
    ],
)
def test_bad_config_names_the_field(tmp_path, change, field):
    data = ForecastConfig().to_dict() | change
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        ForecastConfig.load(p)
    assert err.value.field == field
    assert str(p) in err.value.message


def test_ablation_is_one_flag():
    cfg = ForecastConfig(arms=("a", "b"))
    assert cfg.in_channels == 8 and cfg.num_classes == 3
    assert cfg.with_(inputs=("t1", "t2")).in_channels == 3
