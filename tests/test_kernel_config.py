from pathlib import Path

import pytest

from herd_kernel.config import ROUTER_SETTINGS, Setting, SettingError, resolve


def test_flags_override_env_override_defaults():
    env = {"FLEET_PORT": "12000", "FLEET_HOST": "127.0.0.2"}
    config = resolve(ROUTER_SETTINGS, env, {"FLEET_PORT": 13000})
    assert config["FLEET_PORT"] == 13000  # flag wins
    assert config.host == "127.0.0.2"  # env wins over default
    assert config.heartbeat_timeout == 15.0  # default
    assert isinstance(config["FLEET_DATA_DIR"], Path)


def test_flags_by_short_key_and_none_means_unset():
    config = resolve(ROUTER_SETTINGS, {"FLEET_PORT": "12000"}, {"port": None, "host": "::1"})
    assert config.port == 12000
    assert config.host == "::1"


@pytest.mark.parametrize(
    "kind,raw,expected",
    [(bool, "yes", True), (bool, "0", False), (int, " 42 ", 42), (float, "1.5", 1.5), (str, "x", "x")],
)
def test_values_are_parsed_by_declared_type(kind, raw, expected):
    spec = Setting(env="FLEET_X", type=kind, default=None, help="x")
    assert resolve([spec], {"FLEET_X": raw})["FLEET_X"] == expected


def test_bad_value_names_the_variable():
    with pytest.raises(SettingError, match="FLEET_PORT='eleven'"):
        resolve(ROUTER_SETTINGS, {"FLEET_PORT": "eleven"})
    spec = Setting(env="FLEET_FLAG", type=bool, default=False, help="a flag")
    with pytest.raises(SettingError, match="FLEET_FLAG"):
        resolve([spec], {"FLEET_FLAG": "perhaps"})


def test_unknown_flag_is_an_error():
    with pytest.raises(SettingError, match="unknown setting"):
        resolve(ROUTER_SETTINGS, {}, {"FLEET_NOPE": 1})


def test_with_overrides_keeps_the_rest():
    config = resolve(ROUTER_SETTINGS, {"FLEET_PORT": "1"})
    changed = config.with_overrides(host="10.0.0.1")
    assert changed.host == "10.0.0.1" and changed.port == 1 and config.host == "0.0.0.0"
