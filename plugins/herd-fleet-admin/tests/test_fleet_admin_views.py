"""How settings are shown, with no server: secrets never, sources and choices always."""

from herd_fleet_admin import setting_view, toggles

from herd_kernel.config import Setting, resolve

TOKEN = Setting(env="FLEET_SOMETHING_API_TOKEN", type=str, default="", help="a token")
MARKED = Setting(env="FLEET_SOMETHING_HIDDEN", type=str, default="dflt", help="x", secret=True)
MODE = Setting(env="FLEET_MODE", type=str, default="a", help="m", choices=("a", "b"),
               runtime=True, plugin="shaper-mode")


def test_a_secret_is_shown_only_as_whether_it_is_set():
    config = resolve([TOKEN, MARKED, MODE], {"FLEET_SOMETHING_API_TOKEN": "tok-123"})
    token, marked = setting_view(config, TOKEN), setting_view(config, MARKED)
    assert (token["value"], token["default"], token["set"], token["secret"]) == \
        (None, None, True, True)  # by its name, though not marked
    assert (marked["value"], marked["default"], marked["set"]) == (None, None, True)
    assert "tok-123" not in repr([token, marked]) and "dflt" not in repr(marked)
    assert toggles(config) == {"mode": "a"}


def test_a_runtime_value_shows_what_it_replaced():
    config = resolve([MODE], {"FLEET_MODE": "B"})
    config.set_runtime("FLEET_MODE", "a")
    view = setting_view(config, MODE)
    assert (view["value"], view["source"], view["configured"]) == ("a", "runtime", "b")
    assert view["choices"] == ["a", "b"] and view["plugin"] == "shaper-mode"
    assert view["runtime"] is True and "secret" not in view
