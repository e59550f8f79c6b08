from herd_kernel.latency import LatencyHistory


def test_p75_of_the_recent_window():
    history = LatencyHistory(window=4)
    assert history.p75_ms("n", "m") is None and history.samples("n", "m") == 0
    for value in (100, 200, 300, 400):
        history.record("n", "m", value)
    assert history.p75_ms("n", "m") == 300  # nearest rank over 4 samples
    for value in (10, 10, 10, 10):  # the window forgets the old, slow samples
        history.record("n", "m", value)
    assert history.p75_ms("n", "m") == 10 and history.samples("n", "m") == 4


def test_keys_are_separate_and_restore_seeds():
    history = LatencyHistory()
    history.restore([("a", "m", 50.0), ("b", "m", 500.0)])
    assert history.p75_ms("a", "m") == 50.0 and history.p75_ms("b", "m") == 500.0
    history.record("a", "m", 1.0, ttft_ms=0.5)
    assert history.ttft_p50_ms("a", "m") == 0.5 and history.ttft_p50_ms("b", "m") is None


async def test_completed_requests_feed_the_history(herd_router):
    from herd_kernel.models import Trace

    router = await herd_router(plugins="backend-ollama")
    services = router.services
    for status, latency in (("completed", 120.0), ("failed", 9999.0)):
        services.record(Trace(request_id="r", timestamp=0, model="M", api="ollama", path="/api/chat",
                              node_id="n", status=status, http_status=200, latency_ms=latency))
    assert services.latency.p75_ms("n", "m:latest") == 120.0
    assert services.latency.samples("n", "m:latest") == 1


def test_incremental_p75_equals_the_p75_of_the_window():
    import collections
    import random

    from herd_kernel.latency import _quantile

    rng = random.Random(5)
    history = LatencyHistory(window=16)
    window: collections.deque[float] = collections.deque(maxlen=16)
    for _ in range(500):
        value = rng.choice([rng.random() * 100, 5.0, 7.0])  # with repeats, as real latencies have
        history.record("a", "m", value)
        window.append(value)
        assert history.p75_ms("a", "m") == _quantile(window, 0.75)
    assert history.samples("a", "m") == 16
