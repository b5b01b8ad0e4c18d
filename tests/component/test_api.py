from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sip4ai.calls import CallStatus
from sip4ai.sip.interface import EndCause
from tests.component.apifixtures import Stack, api_stack


pytestmark = pytest.mark.component

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
CALL = {"target": "+61400000000", "task": "Confirm the appointment for Tuesday at 2pm"}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with api_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: Stack, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(stack.app)


async def create(client: TestClient[Any, Any], **extra: Any) -> str:
    resp = await client.post("/api/calls", json=CALL | extra)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    call_id: str = body["call_id"]
    return call_id


async def test_health(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_status_shape(client: TestClient[Any, Any], stack: Stack) -> None:
    await stack.until(lambda: stack.manager.sip_registered)
    call_id = await create(client)
    body = await (await client.get("/status")).json()
    assert body["sip_registered"] is True
    assert body["active_calls"] == 1
    assert body["calls"] == [{"id": call_id, "status": "initiating", "duration": 0}]
    assert body["uptime"].endswith("s")


async def test_create_call_answers_201_with_docs_body(
    client: TestClient[Any, Any], stack: Stack
) -> None:
    resp = await client.post("/api/calls", json=CALL | {"caller_id": "+61299990000"})
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == {"success", "call_id", "status", "created_at"}
    assert body["success"] is True and body["status"] == "initiating"
    uuid.UUID(body["call_id"])
    assert body["created_at"].endswith("Z")
    assert stack.engine is not None
    await stack.until(lambda: len(stack.engine.dialled) == 1 if stack.engine else False)
    _, request = stack.engine.dialled[0]
    assert request.target == "+61400000000" and request.caller_id == "+61299990000"


async def test_short_form_post_call(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/call", json=CALL)
    assert resp.status == 201


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"task": "x"}, "'target' is a required property"),
        ({"target": "+61400000000"}, "'task' is a required property"),
        ({"target": "0400000000", "task": "x"}, "target"),
        (CALL | {"max_duration_seconds": 0}, "max_duration_seconds"),
        (CALL | {"provider": "skynet"}, "provider"),
        (CALL | {"event_webhook": "not a url"}, "event_webhook"),
        (CALL | {"functions": [{"name": "f", "webhook": "ftp://x"}]}, "functions.0.webhook"),
        (CALL | {"surprise": 1}, "surprise"),
        ([1, 2], "body"),
    ],
)
async def test_create_call_validation(
    client: TestClient[Any, Any], body: Any, fragment: str
) -> None:
    resp = await client.post("/api/calls", json=body)
    assert resp.status == 400
    payload = await resp.json()
    assert payload["code"] == "VALIDATION_ERROR"
    assert fragment in payload["error"]


async def test_malformed_json(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/api/calls", data=b'{"target": ', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert await resp.json() == {"error": "request body is not valid JSON", "code": "INVALID_JSON"}


async def test_wrong_content_type(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/calls", data=b"target=1", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["code"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_oversize_body_413(client: TestClient[Any, Any]) -> None:
    big = {"target": "+61400000000", "task": "x" * (70 * 1024)}
    resp = await client.post("/api/calls", json=big)
    assert resp.status == 413
    assert (await resp.json())["code"] == "PAYLOAD_TOO_LARGE"


async def test_unknown_call_404(client: TestClient[Any, Any]) -> None:
    missing = str(uuid.uuid4())
    for method, path, body in [
        ("GET", f"/api/calls/{missing}", None),
        ("DELETE", f"/api/calls/{missing}", None),
        ("POST", f"/api/calls/{missing}/inject", {"message": "hi"}),
        ("POST", f"/calls/{missing}/inject", {"message": "hi"}),
    ]:
        resp = await client.request(method, path, json=body)
        assert resp.status == 404, path
        assert await resp.json() == {"error": "call not found", "code": "NOT_FOUND"}


async def test_unknown_route_and_method(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["code"] == "NOT_FOUND"
    resp = await client.put("/health")
    assert resp.status == 405 and (await resp.json())["code"] == "METHOD_NOT_ALLOWED"


async def test_get_call_and_lifecycle(client: TestClient[Any, Any], stack: Stack) -> None:
    assert stack.engine is not None
    call_id = await create(client)
    leg = await stack.leg_of(call_id)
    stack.engine.remote_ringing(leg)
    await stack.until(lambda: stack.manager.active[call_id].record.status is CallStatus.RINGING)
    stack.engine.remote_answer(leg)
    await stack.until(lambda: stack.manager.active[call_id].record.status is CallStatus.IN_PROGRESS)
    body = await (await client.get(f"/api/calls/{call_id}")).json()
    assert body["status"] == "in_progress" and body["duration"] is None
    stack.engine.remote_end(leg, EndCause.REMOTE_HANGUP)
    await stack.until(lambda: call_id not in stack.manager.active)
    body = await (await client.get(f"/api/calls/{call_id}")).json()
    assert body["status"] == "completed"
    assert body["end_reason"] == "remote_hangup"
    assert body["ended_at"].endswith("Z") and body["duration"] == 0
    assert set(body) >= {
        "id",
        "status",
        "direction",
        "target",
        "provider",
        "duration",
        "transcript",
        "created_at",
    }


async def test_busy_outbound_call_fails_with_reason(
    client: TestClient[Any, Any], stack: Stack
) -> None:
    assert stack.engine is not None
    call_id = await create(client)
    leg = await stack.leg_of(call_id)
    stack.engine.remote_end(leg, EndCause.BUSY, 486)
    await stack.until(lambda: call_id not in stack.manager.active)
    body = await (await client.get(f"/api/calls/{call_id}")).json()
    assert (body["status"], body["end_reason"], body["duration"]) == ("failed", "busy", 0)


async def test_delete_ends_call_then_409(client: TestClient[Any, Any], stack: Stack) -> None:
    assert stack.engine is not None
    call_id = await create(client)
    leg = await stack.leg_of(call_id)
    stack.engine.remote_answer(leg)
    await stack.until(lambda: stack.manager.active[call_id].record.status is CallStatus.IN_PROGRESS)
    resp = await client.delete(f"/api/calls/{call_id}")
    assert resp.status == 200
    assert await resp.json() == {"success": True, "call_id": call_id, "status": "ending"}
    await stack.until(lambda: call_id not in stack.manager.active)
    assert stack.engine.hung_up == [leg]
    body = await (await client.get(f"/api/calls/{call_id}")).json()
    assert (body["status"], body["end_reason"]) == ("completed", "api_hangup")
    resp = await client.delete(f"/api/calls/{call_id}")
    assert resp.status == 409 and (await resp.json())["code"] == "CONFLICT"
    resp = await client.post(f"/api/calls/{call_id}/inject", json={"message": "late"})
    assert resp.status == 409 and (await resp.json())["code"] == "CONFLICT"


async def test_inject_roles(client: TestClient[Any, Any], stack: Stack) -> None:
    call_id = await create(client)
    resp = await client.post(f"/api/calls/{call_id}/inject", json={"message": "VIP customer"})
    assert resp.status == 200
    assert await resp.json() == {"success": True, "call_id": call_id, "status": "injected"}
    resp = await client.post(f"/calls/{call_id}/inject", json={"message": "hi", "role": "user"})
    assert resp.status == 200
    assert stack.manager.active[call_id].injected == [("system", "VIP customer"), ("user", "hi")]
    resp = await client.post(f"/api/calls/{call_id}/inject", json={"message": "x", "role": "ai"})
    assert resp.status == 400
    resp = await client.post(f"/api/calls/{call_id}/inject", json={"role": "user"})
    assert resp.status == 400


async def test_list_pagination_and_filter(client: TestClient[Any, Any], stack: Stack) -> None:
    ids = [await create(client) for _ in range(5)]
    await stack.manager.end(ids[0])  # no leg answered yet -> fails as cancelled before answer
    body = await (await client.get("/api/calls?limit=2")).json()
    assert body["total"] == 5 and body["limit"] == 2 and body["offset"] == 0
    assert [c["id"] for c in body["calls"]] == ids[::-1][:2]
    body = await (await client.get("/api/calls?limit=2&offset=4")).json()
    assert [c["id"] for c in body["calls"]] == [ids[0]]
    body = await (await client.get("/api/calls")).json()
    assert body["limit"] == 20 and len(body["calls"]) == 5
    body = await (await client.get("/api/calls?status=initiating")).json()
    assert body["total"] >= 4
    assert all(c["status"] == "initiating" for c in body["calls"])


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=abc", "offset=-1", "status=dancing", "offset=1.5"]
)
async def test_list_bad_query(client: TestClient[Any, Any], query: str) -> None:
    resp = await client.get(f"/api/calls?{query}")
    assert resp.status == 400
    assert (await resp.json())["code"] == "BAD_REQUEST"


async def test_no_sip_gives_503(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    async with api_stack(tmp_path, with_sip=False) as s:
        client = await aiohttp_client(s.app)
        resp = await client.post("/api/calls", json=CALL)
        assert resp.status == 503
        assert (await resp.json())["code"] == "SIP_UNAVAILABLE"
        body = await (await client.get("/status")).json()
        assert body["sip_registered"] is False


async def test_max_calls_gives_409(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    async with api_stack(tmp_path, max_calls=1) as s:
        client = await aiohttp_client(s.app)
        await create(client)
        resp = await client.post("/api/calls", json=CALL)
        assert resp.status == 409


@pytest.mark.parametrize("path", ["/status", "/metrics", "/api/calls", "/openapi.json"])
async def test_token_required_when_set(
    tmp_path: Path, aiohttp_client: ClientFactory, path: str
) -> None:
    async with api_stack(tmp_path, token="s3cret-token") as s:
        client = await aiohttp_client(s.app)
        assert (await client.get("/health")).status == 200
        resp = await client.get(path)
        assert resp.status == 401
        assert (await resp.json())["code"] == "UNAUTHORIZED"
        resp = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401
        resp = await client.get(path, headers={"Authorization": "Basic s3cret-token"})
        assert resp.status == 401
        resp = await client.get(path, headers={"Authorization": "Bearer s3cret-token"})
        assert resp.status == 200


async def test_token_guards_writes(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    async with api_stack(tmp_path, token="tok") as s:
        client = await aiohttp_client(s.app)
        assert (await client.post("/api/calls", json=CALL)).status == 401
        assert (await client.post("/call", json=CALL)).status == 401
        ok = await client.post("/api/calls", json=CALL, headers={"Authorization": "Bearer tok"})
        assert ok.status == 201


async def test_metrics_exposition(client: TestClient[Any, Any], stack: Stack) -> None:
    await client.get("/health")
    await client.get("/nope")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    for name in (
        "sip4ai_build_info",
        "sip4ai_uptime_seconds",
        "sip4ai_sip_registered",
        "sip4ai_active_calls",
        "sip4ai_calls_total",
        "sip4ai_call_duration_seconds_bucket",
        "sip4ai_api_requests_total",
    ):
        assert name in text, name
    assert 'sip4ai_api_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text


async def test_metrics_count_finished_calls(client: TestClient[Any, Any], stack: Stack) -> None:
    call_id = await create(client)
    await stack.manager.end(call_id)
    await stack.until(lambda: call_id not in stack.manager.active)
    text = await (await client.get("/metrics")).text()
    assert (
        'sip4ai_calls_total{direction="outbound",end_reason="api_hangup",status="failed"} 1.0'
        in text
    )
    assert "sip4ai_active_calls 0.0" in text


async def test_without_ai_calls_are_refused(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    """No provider key and no AUDIO_FILE: outbound requests get 503, inbound calls 480."""
    async with api_stack(tmp_path) as s:
        s.manager.ai_available = False
        client = await aiohttp_client(s.app)
        resp = await client.post("/api/calls", json=CALL)
        assert resp.status == 503
        assert (await resp.json())["code"] == "AI_UNAVAILABLE"
        assert s.engine is not None
        leg = s.engine.ring_in()
        await s.until(lambda: bool(s.engine and s.engine.rejected))
        assert s.engine.rejected == [(leg, 480)]
        assert s.manager.active == {}


async def test_reserved_function_name_is_rejected(client: TestClient[Any, Any]) -> None:
    body = CALL | {"functions": [{"name": "end_call", "webhook": "https://example.com/x"}]}
    resp = await client.post("/api/calls", json=body)
    assert resp.status == 400
    payload = await resp.json()
    assert payload["code"] == "VALIDATION_ERROR" and "functions[0].name" in payload["error"]


async def test_live_events_stream_until_the_call_ends(
    client: TestClient[Any, Any], stack: Stack
) -> None:
    assert stack.engine is not None
    call_id = await create(client)
    leg = await stack.leg_of(call_id)
    resp = await client.get(f"/api/calls/{call_id}/events")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    stack.engine.remote_answer(leg)
    await stack.until(lambda: stack.manager.active[call_id].record.status is CallStatus.IN_PROGRESS)
    stack.engine.remote_end(leg, EndCause.REMOTE_HANGUP)
    text = await asyncio.wait_for(resp.text(), 5)  # the stream closes after the final event
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert events == ["call.state", "call.answered", "call.completed"]
    resp = await client.get(f"/api/calls/{call_id}/events")  # an ended call: snapshot only
    assert [line for line in (await resp.text()).splitlines() if line.startswith("event:")] == [
        "event: call.state"
    ]


async def test_max_duration_ends_the_call_before_the_limit(stack: Stack) -> None:
    assert stack.engine is not None
    record = await stack.manager.create_outbound("+61400000000", task="t", max_duration_seconds=6)
    leg = await stack.leg_of(record.id)
    stack.engine.remote_answer(leg)
    started = asyncio.get_running_loop().time()
    await stack.until(lambda: record.id not in stack.manager.active, timeout_s=10)
    assert asyncio.get_running_loop().time() - started < 6  # goodbye starts 5 s before the limit
    final = await stack.manager.get(record.id)
    assert (final.status, final.end_reason) == (CallStatus.COMPLETED, "max_duration")
    assert stack.engine.hung_up == [leg]


async def test_last_transcript_segment_is_kept_and_announced_before_the_end(stack: Stack) -> None:
    assert stack.engine is not None
    events: list[str] = []
    stack.manager.subscribe(lambda _record, event: events.append(event))
    record = await stack.manager.create_outbound("+61400000000", task="t")
    leg = await stack.leg_of(record.id)
    stack.engine.remote_answer(leg)
    await stack.until(
        lambda: stack.manager.active[record.id].record.status is CallStatus.IN_PROGRESS
    )
    handle = stack.manager.handle(stack.manager.active[record.id])
    handle.add_transcript("ai", "Goodbye")  # persisted in the background ...
    stack.engine.remote_end(leg, EndCause.REMOTE_HANGUP)  # ... while the call ends
    await stack.until(lambda: record.id not in stack.manager.active)
    final = await stack.store.get(record.id)
    assert final is not None and final.status is CallStatus.COMPLETED
    assert [e.text for e in final.transcript] == ["Goodbye"]
    assert events[-2:] == ["transcript.update", "call.completed"]
