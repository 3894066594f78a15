from __future__ import annotations

from pathlib import Path

import pytest

from rtdecode.config import CONFIG_DIR, Config, ConfigError, load_config, to_dict


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["toy.toml", "cc2017.toml", "hcp.toml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIG_DIR / name)
    assert isinstance(cfg, Config)


def test_default_is_toy_and_matches_dataclass_defaults():
    cfg = load_config()
    assert cfg.data.root == "data/toy"
    assert to_dict(cfg)["window"] == to_dict(Config())["window"]


def test_real_dataset_configs_describe_tr_and_lag():
    cc = load_config(CONFIG_DIR / "cc2017.toml")
    hcp = load_config(CONFIG_DIR / "hcp.toml")
    assert (cc.data.tr, cc.window.lag_trs) == (2.0, 2)
    assert (hcp.data.tr, hcp.window.lag_trs) == (1.0, 4)
    assert cc.data.voxel_selection == "reliability" and cc.data.n_voxels == 4500


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "[window]\nlag_tr = 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(p) in str(exc.value) and "lag_tr" in str(exc.value)


def test_unknown_section(tmp_path):
    p = write(tmp_path, "[windw]\nlag_trs = 3\n")
    with pytest.raises(ConfigError, match="windw"):
        load_config(p)


@pytest.mark.parametrize("text,key", [
    ('[window]\nlag_trs = "two"\n', "window.lag_trs"),
    ("[window]\nlag_trs = 2.5\n", "window.lag_trs"),
    ("[preprocess]\nzscore = 1\n", "preprocess.zscore"),
    ('[ridge]\nalphas = [1.0, "x"]\n', "ridge.alphas[1]"),
    ("[data]\ntr = true\n", "data.tr"),
])
def test_wrong_type_names_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert key in str(exc.value) and str(p) in str(exc.value)


@pytest.mark.parametrize("text,key", [
    ("[window]\nlag_trs = -1\n", "window.lag_trs = -1"),
    ("[data]\ntr = 0\n", "data.tr = 0.0"),
    ('[data]\nvoxel_selection = "best"\n', "data.voxel_selection = 'best'"),
    ("[preprocess]\nbaseline_trs = 0\n", "preprocess.baseline_trs = 0"),
    ("[simulate]\ntr = 1.5\n", "simulate.tr = 1.5"),
])
def test_out_of_range_names_key_and_value(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert key in str(exc.value)


def test_int_accepted_for_float(tmp_path):
    cfg = load_config(write(tmp_path, "[data]\ntr = 1\n"))
    assert cfg.data.tr == 1.0 and isinstance(cfg.data.tr, float)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[window\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
