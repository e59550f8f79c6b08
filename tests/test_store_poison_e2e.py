"""Poisoned traces over real sockets: a node that sends nonsense token counts, a client whose
X-Request-Id is not UTF-8 and a model name with a lone surrogate, among good requests through the
real router. Every request leaves its row in the database file."""

import asyncio
import json
import sqlite3

import aiohttp
import pytest
from aiohttp import web
from herd_analytics import store_of
from herd_api_formats import counts

from herd_kernel.testing import heartbeat_payload

MODEL = "fake:1b"


def _final_counts(data: bytes, _api: str, *, whole: bool) -> dict[str, int | None]:
    """The trace's token counts from an answer, as the pipeline reads them (the dialects'
    shared reader, which both Ollama's and OpenAI's shapes go through)."""
    prompt, completion = counts(data, whole)
    return {"prompt_tokens": prompt, "completion_tokens": completion}

# the raw JSON text of eval_count in the final chunk, chosen by the prompt "bad N"
BAD_COUNTS = ['"12"', "1.5", "1e400", "true", "[1]", '{"a":1}', "1" * 5000, str(2**63),
              "-1e400", "null"]


def final_chunk(eval_count: str) -> bytes:
    return (b'{"model":"' + MODEL.encode() + b'","created_at":"2025-01-01T00:00:00Z",'
            b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
            b'"prompt_eval_count":' + eval_count.encode() + b',"eval_count":'
            + eval_count.encode() + b',"total_duration":1}\n')


@pytest.mark.parametrize("raw", BAD_COUNTS)
def test_counts_from_node_json_are_ints_or_none(raw):
    tail = b'{"message":{"content":"hi"},"done":false}\n' + final_chunk(raw)
    assert _final_counts(tail, "ollama", whole=False) == {"prompt_tokens": None,
                                                          "completion_tokens": None}


@pytest.mark.parametrize("raw,count", [("3", 3), ("12.0", 12), ("0", 0), (str(2**63 - 1), 2**63 - 1)])
def test_whole_number_counts_are_kept(raw, count):
    assert _final_counts(final_chunk(raw), "ollama", whole=True) == {"prompt_tokens": count,
                                                                     "completion_tokens": count}
    usage = b'{"usage":{"prompt_tokens":' + raw.encode() + b',"completion_tokens":"7"}}'
    assert _final_counts(usage, "openai", whole=True) == {"prompt_tokens": count,
                                                          "completion_tokens": None}


@pytest.fixture
async def fake_node():
    """A tiny Ollama: /api/chat streams one token, then a final chunk whose counts the prompt picks."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        count = BAD_COUNTS[int(prompt.split()[1])] if prompt.startswith("bad ") else "3"
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"model":"' + MODEL.encode() + b'","message":{"role":"assistant",'
                             b'"content":"hi"},"done":false}\n')
        await response.write(final_chunk(count))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def raw_post(url: str, path: str, body: bytes, header_lines: bytes) -> bytes:
    """One HTTP/1.1 request written byte for byte (aiohttp's client only sends str headers)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                 + header_lines + b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_poisoned_traces_lose_no_row(herd_router, fake_node, tmp_path):
    router = await herd_router(plugins="backend-ollama,analytics", env={"FLEET_DATA_DIR": str(tmp_path / "d")})
    beat = heartbeat_payload("fake", url=fake_node, loaded=[MODEL])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/heartbeat", json=beat) as r:
            assert r.status == 200

        async def chat(prompt: str, request_id: str) -> int:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
            async with http.post(f"{router.url}/api/chat", json=body,
                                 headers={"X-Request-Id": request_id}) as r:
                await r.read()
                return r.status

        jobs = [chat(f"good {i}", f"good-{i}") for i in range(24)]
        jobs += [chat(f"bad {i}", f"bad-{i}") for i in range(len(BAD_COUNTS))]
        statuses = await asyncio.gather(*jobs)
        assert statuses == [200] * len(jobs)

        # a model name with a lone surrogate (valid JSON, invalid UTF-8 once decoded): a 404 trace
        async with http.post(f"{router.url}/api/chat",
                             data=b'{"model": "\\udc80", "messages": []}') as r:
            assert r.status == 404
            assert "error" in await r.json()

    # an X-Request-Id that is not UTF-8 (the server decodes it with surrogateescape)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "good x"}]})
    answer = await raw_post(router.url, "/api/chat", body.encode(),
                            b"X-Request-Id: req-\xff\xfe-latin\r\n")
    assert answer.startswith(b"HTTP/1.1 200")

    await store_of(router.services).flush()
    db = sqlite3.connect(tmp_path / "d" / "latency.db")
    rows = db.execute("SELECT request_id, model, status, prompt_tokens, completion_tokens "
                      "FROM request_traces").fetchall()
    by_id = {row[0]: row for row in rows}
    assert len(rows) == 24 + len(BAD_COUNTS) + 2
    assert all(by_id[f"good-{i}"][3:] == (3, 3) for i in range(24))
    counts = [by_id[f"bad-{i}"][3:] for i in range(len(BAD_COUNTS))]
    # "12", 1e400, true, [1], {...}, a 5,000-digit or out-of-range integer, null: no count at all;
    # 1.5 is a number but not a whole one: none either
    assert counts == [(None, None)] * len(BAD_COUNTS)
    # an id the router cannot echo in a header is replaced by its own; the row is still there
    assert [rid for rid in by_id if rid.startswith("req-")] == []
    assert [row[1] for row in rows if row[1] != MODEL] == ["\ufffd"]
    assert store_of(router.services).failed == 0
    async with aiohttp.ClientSession() as http:  # what an operator (and the health checks) see
        async with http.get(f"{router.url}/fleet/status") as r:
            store = (await r.json())["trace_store"]
    assert store == {"written": len(rows), "dropped": 0, "failed": 0, "queued": 0}
