import pytest
from herd_backend_ollama.keepalive import FOREVER, is_command, keep_alive_seconds


@pytest.mark.parametrize("value,seconds", [
    (0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), (1.5, 1.5), ("5m", 300.0),
    ("1h30m", 5400.0), ("300ms", 0.3), (-1, FOREVER), ("-1m", FOREVER),
])
def test_keep_alive_as_ollama_reads_it(value, seconds):
    assert keep_alive_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, True, "soon", "300", "5 m", [], {}])
def test_keep_alive_ollama_would_refuse_or_absent_is_none(value):
    assert keep_alive_seconds(value) is None


def test_a_command_has_nothing_to_infer():
    assert is_command("/api/generate", {"model": "m", "keep_alive": 0, "prompt": ""})
    assert is_command("/api/generate", {"model": "m", "keep_alive": 0})
    assert is_command("/api/chat", {"model": "m", "keep_alive": -1, "messages": []})
    assert not is_command("/api/generate", {"model": "m", "keep_alive": 0, "prompt": "hi"})
    assert not is_command("/api/generate", {"model": "m", "keep_alive": 0, "images": ["x"]})
    assert not is_command("/api/chat", {"model": "m", "messages": []})  # a plain load: routed
    assert not is_command("/api/embed", {"model": "m", "keep_alive": 0})
