"""The one mapping of errors to Prometheus's errorType, used by core and plugin endpoints."""

from __future__ import annotations

import json

from agent.query.errors import BadDataError, ExecutionError
from agent.storage.errors import BackPressure, StoreClosed
from agent.web.api.envelope import ApiError, error_of, failure


def test_error_of_maps_each_kind_once() -> None:
    assert error_of(ApiError("not_found", "x")) == ("not_found", "x")
    assert error_of(BadDataError("bad")) == ("bad_data", "bad")
    assert error_of(ExecutionError("boom")) == ("execution", "boom")
    kind, message = error_of(StoreClosed("store is closed")) or ("", "")
    assert kind == "canceled" and message.endswith("store is closed")
    assert error_of(BackPressure("full")) == ("unavailable", "full")
    assert error_of(KeyError("x")) is None


def test_failure_status_follows_the_error_type() -> None:
    resp = failure("execution", "boom")
    assert resp.status == 422
    assert resp.body is not None
    assert json.loads(bytes(resp.body)) == {  # type: ignore[arg-type]
        "status": "error",
        "errorType": "execution",
        "error": "boom",
    }
    assert failure("canceled", "x").status == 503
