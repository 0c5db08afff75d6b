"""Large API answers go out in slices (``agent.web.large_body``), byte for byte."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from agent.web.api.envelope import success
from agent.web.large_body import LARGE, SLICE, PartsPayload


def _data(n: int) -> bytes:
    return json.dumps({"resultType": "vector", "result": ["x" * 100] * n}).encode()


async def test_large_answer_arrives_whole(aiohttp_client: Any) -> None:
    big = _data(3 * LARGE // 100)  # several slices
    small = _data(10)
    assert len(big) > 2 * SLICE

    async def handler(request: web.Request) -> web.Response:
        data = big if request.query.get("size") == "big" else small
        return success(data_json=data, warnings=["w"], headers={"X-Test": "1"})

    app = web.Application()
    app.router.add_get("/q", handler)
    client = await aiohttp_client(app)
    for size, data in (("big", big), ("small", small)):
        resp = await client.get("/q", params={"size": size})
        body = await resp.read()
        want = b'{"status":"success","data":' + data + b',"warnings":["w"]}'
        assert body == want
        assert resp.headers["Content-Length"] == str(len(want))
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["X-Test"] == "1"


async def test_parts_payload_honours_a_shorter_length() -> None:
    written: list[bytes] = []

    class Writer:
        async def write(self, chunk: Any) -> None:
            written.append(bytes(chunk))

    parts = [b"a" * (SLICE + 5), b"b" * 10, b"c" * 3]
    payload = PartsPayload(parts, content_type="application/json")
    assert payload.size == SLICE + 18
    assert payload.decode() == b"".join(parts).decode()
    await payload.write_with_length(Writer(), None)  # type: ignore[arg-type]
    assert b"".join(written) == b"".join(parts)
    assert max(len(w) for w in written) <= SLICE
    written.clear()
    await payload.write_with_length(Writer(), SLICE + 7)  # type: ignore[arg-type]
    assert b"".join(written) == b"".join(parts)[: SLICE + 7]
