import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from herd_kernel.config import (
    ROUTER_SETTINGS,
    RuntimeSettings,
    Setting,
    SettingError,
    resolve,
    runtime_value,
)


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


# --- where a value came from, and runtime settings -------------------------------------------

TOGGLE = Setting(env="FLEET_TOGGLE", type=bool, default=False, help="t", runtime=True)
LEVEL = Setting(env="FLEET_LEVEL", type=float, default=1.0, help="l", runtime=True)
MODE = Setting(env="FLEET_MODE", type=str, default="a", help="m", runtime=True,
               choices=("a", "b"))
FIXED = Setting(env="FLEET_FIXED", type=int, default=1, help="f")
SPECS = (TOGGLE, LEVEL, MODE, FIXED)


def test_each_value_knows_its_source():
    config = resolve(SPECS, {"FLEET_TOGGLE": "1"}, {"FLEET_FIXED": 2})
    assert [config.source(s.env) for s in SPECS] == ["env", "default", "default", "flag"]
    assert config.with_overrides(level=2.0).source("FLEET_LEVEL") == "flag"


def test_choices_are_checked_and_read_as_declared():
    assert resolve(SPECS, {"FLEET_MODE": " B "})["FLEET_MODE"] == "b"
    with pytest.raises(SettingError, match="FLEET_MODE='c': expected one of a, b"):
        resolve(SPECS, {"FLEET_MODE": "c"})


@pytest.mark.parametrize("spec,raw,expected", [
    (TOGGLE, True, True), (TOGGLE, "off", False), (LEVEL, 2, 2.0), (LEVEL, "2.5", 2.5),
    (FIXED, 3, 3), (FIXED, 3.0, 3), (MODE, "B", "b"),
])
def test_runtime_values_take_json_or_what_the_environment_would(spec, raw, expected):
    value = runtime_value(spec, raw, spec.key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("spec,raw,words", [
    (TOGGLE, 1, "must be true or false, not 1"), (TOGGLE, "maybe", "not a valid bool"),
    (LEVEL, True, "must be a number"), (LEVEL, [1], r"must be a number, not \[1\]"),
    (FIXED, 1.5, "must be an integer"), (MODE, 1, "must be a string"),
    (MODE, "c", "expected one of a, b"),
])
def test_wrong_runtime_values_name_the_field(spec, raw, words):
    with pytest.raises(SettingError, match=words) as caught:
        runtime_value(spec, raw, "the_name")
    assert caught.value.field == "the_name"


def test_a_runtime_change_is_in_place_and_can_be_undone():
    config = resolve(SPECS, {"FLEET_TOGGLE": "yes"})
    held = config  # what a plugin was handed at start-up
    config.set_runtime("FLEET_TOGGLE", False)
    assert held["FLEET_TOGGLE"] is False and held.toggle is False
    assert (config.source("FLEET_TOGGLE"), config.configured("FLEET_TOGGLE")) == ("runtime", True)
    config.set_runtime("FLEET_TOGGLE", None)
    assert config["FLEET_TOGGLE"] is True and config.source("FLEET_TOGGLE") == "env"
    with pytest.raises(SettingError, match="FLEET_FIXED cannot be changed"):
        config.set_runtime("FLEET_FIXED", 2)


def test_settings_are_found_by_variable_or_key_in_any_case():
    config = resolve(SPECS, {})
    assert config.spec("toggle") is config.spec("FLEET_TOGGLE") is config.spec("fleet_toggle")
    assert config.spec("nope") is None


async def test_runtime_changes_are_saved_owner_only_and_read_back(tmp_path):
    path = tmp_path / "data" / "settings.json"
    config = resolve(SPECS, {"FLEET_LEVEL": "3"})
    store = RuntimeSettings(config, path)
    done = await store.change({"toggle": True, "FLEET_LEVEL": 0.5})
    assert done == {"FLEET_TOGGLE": (False, True), "FLEET_LEVEL": (3.0, 0.5)}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text()) == {
        "version": 1, "settings": {"FLEET_LEVEL": 0.5, "FLEET_TOGGLE": True}}

    fresh = resolve(SPECS, {"FLEET_LEVEL": "3"})
    RuntimeSettings(fresh, path).load()
    assert (fresh["FLEET_TOGGLE"], fresh["FLEET_LEVEL"]) == (True, 0.5)
    assert fresh.source("FLEET_LEVEL") == "runtime" and fresh.configured("FLEET_LEVEL") == 3.0

    await store.change({"level": None})
    assert config["FLEET_LEVEL"] == 3.0
    assert json.loads(path.read_text())["settings"] == {"FLEET_TOGGLE": True}


async def test_a_bad_change_changes_nothing(tmp_path):
    config = resolve(SPECS, {})
    store = RuntimeSettings(config, tmp_path / "settings.json")
    for changes, field in (({"toggle": True, "fixed": 2}, "fixed"),
                           ({"toggle": True, "nope": 1}, "nope"),
                           ({"toggle": True, "level": "x"}, "level")):
        with pytest.raises(SettingError) as caught:
            await store.change(changes)
        assert caught.value.field == field
    assert config["FLEET_TOGGLE"] is False and not (tmp_path / "settings.json").exists()


async def test_a_change_that_cannot_be_saved_is_not_made(tmp_path):
    (tmp_path / "blocked").write_text("a file where the data dir should be")
    config = resolve(SPECS, {})
    store = RuntimeSettings(config, tmp_path / "blocked" / "settings.json")
    with pytest.raises(OSError):
        await store.change({"toggle": True})
    assert config["FLEET_TOGGLE"] is False and config.source("FLEET_TOGGLE") == "default"


def test_loading_skips_what_it_cannot_use_and_keeps_what_others_own(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"version": 1, "settings": {
        "FLEET_TOGGLE": True, "FLEET_FIXED": 9, "FLEET_LEVEL": "high",
        "FLEET_OF_A_PLUGIN_NOT_LOADED": 1}}))
    config = resolve(SPECS, {})
    store = RuntimeSettings(config, path)
    with capture_logs() as logs:
        store.load()
    assert config["FLEET_TOGGLE"] is True
    assert config["FLEET_FIXED"] == 1 and config["FLEET_LEVEL"] == 1.0  # not runtime; bad value
    assert [e["setting"] for e in logs if e["log_level"] == "error"] == ["FLEET_LEVEL"]
    assert "FLEET_OF_A_PLUGIN_NOT_LOADED" in store.saved  # written back with the next change


@pytest.mark.parametrize("text", ["{not json", "[]", '{"settings": []}'])
def test_an_unreadable_file_leaves_the_configured_values_and_says_so(tmp_path, text):
    path = tmp_path / "settings.json"
    path.write_text(text)
    config = resolve(SPECS, {})
    with capture_logs() as logs:
        RuntimeSettings(config, path).load()
    assert config["FLEET_TOGGLE"] is False
    assert logs[0]["event"].startswith("runtime settings unreadable")


def test_numbers_are_finite_and_within_their_bounds():
    from herd_kernel.config import Setting, SettingError, parse_value, resolve, runtime_value

    pct = Setting(env="FLEET_X_PCT", type=float, default=10.0, help="a share", bounds="(0, 100]")
    assert resolve([pct], {"FLEET_X_PCT": "100"})["FLEET_X_PCT"] == 100.0
    for raw in ("0", "-1", "100.5", "nan", "inf", "-inf"):
        with pytest.raises(SettingError, match="FLEET_X_PCT"):
            resolve([pct], {"FLEET_X_PCT": raw})
    # flags parsed by argparse arrive typed, runtime changes as JSON: checked the same way
    expected = r"expected a value in \(0, 100\] \(above 0, at most 100\)"
    with pytest.raises(SettingError, match=expected):
        parse_value(pct, 0.0)
    with pytest.raises(SettingError, match="x_pct"):
        runtime_value(pct, 101, "x_pct")
    port = Setting(env="FLEET_Y", type=int, default=1, help="", bounds="[0, 65535]")
    assert parse_value(port, "0") == 0 and parse_value(port, "65535") == 65535
    with pytest.raises(SettingError, match="65536"):
        parse_value(port, "65536")
    # with no bounds a number only has to be finite
    free = Setting(env="FLEET_Z", type=float, default=1.0, help="")
    assert parse_value(free, "-3.5") == -3.5
    with pytest.raises(SettingError, match="finite"):
        parse_value(free, "NaN")
    for bad in ("0, 1", "[a, 1]", "[2, 1]", "(0 1)"):
        with pytest.raises(ValueError, match="bounds"):
            Setting(env="FLEET_W", type=float, default=1.0, help="", bounds=bad)


def test_every_declared_default_lies_within_its_bounds():
    from herd_kernel.config import check_number
    from herd_kernel.testing import make_config, make_host

    host = make_host()
    specs = make_config(host).specs
    assert any(s.bounds for s in specs)
    for spec in specs:
        assert check_number(spec, spec.default) == spec.default, spec.env
