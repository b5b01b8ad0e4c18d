"""The HTTP API (aiohttp): thin handlers that parse, call the CallManager and answer JSON.

Errors always use the product's body ``{"error": "...", "code": "NOT_FOUND"}``, produced in one
middleware. With an API token configured, every route but /health needs ``Authorization: Bearer``.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
from aiohttp import web

from sip4ai import openapi
from sip4ai.calls import CallRecord, CallStatus, format_uptime, iso
from sip4ai.errors import AIUnavailable, CallNotFound, CallStateError, ConfigError, SipUnavailable
from sip4ai.functions import functions_from_request
from sip4ai.live import LiveEvents
from sip4ai.manager import CallManager
from sip4ai.metrics import CONTENT_TYPE, Metrics
from sip4ai.sip import ENGINE_LIMITS


logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MANAGER = web.AppKey("manager", CallManager)
METRICS = web.AppKey("metrics", Metrics)
TOKEN = web.AppKey("token", str)
INFO = web.AppKey("info", dict[str, Any])
LIVE = web.AppKey("live", LiveEvents)

_CREATE_VALIDATOR = jsonschema.Draft202012Validator(openapi.CREATE_CALL_SCHEMA)
_INJECT_VALIDATOR = jsonschema.Draft202012Validator(openapi.INJECT_SCHEMA)

_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    503: "SIP_UNAVAILABLE",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _STATUS_CODES.get(status, "INTERNAL_ERROR")


def error_response(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to the product's error body and count the request."""
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message, exc.code)
    except CallNotFound:
        response = error_response(404, "call not found", "NOT_FOUND")
    except CallStateError as exc:
        response = error_response(409, str(exc), "CONFLICT")
    except SipUnavailable as exc:
        response = error_response(503, str(exc), "SIP_UNAVAILABLE")
    except AIUnavailable as exc:
        response = error_response(503, str(exc), "AI_UNAVAILABLE")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason.lower() if exc.status != 413 else "request body too large"
        response = error_response(exc.status, message, _STATUS_CODES.get(exc.status, "BAD_REQUEST"))
    except Exception:
        logger.exception("! %s %s failed", request.method, _route_name(request))
        response = error_response(500, "internal error", "INTERNAL_ERROR")
    metrics.api_requests.labels(_route_name(request), request.method, str(response.status)).inc()
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.path != "/health":
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )
        if not ok:
            raise ApiError(401, "missing or invalid bearer token")
    return await handler(request)


async def _json_body(request: web.Request, validator: jsonschema.Draft202012Validator) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON", "INVALID_JSON") from None
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "body"
        raise ApiError(400, f"{where}: {error.message}", "VALIDATION_ERROR")
    return body


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    now = manager.now()
    live = manager.live_calls()
    info = request.app[INFO]
    return web.json_response(
        {
            "sip_registered": manager.sip_registered,
            # the backend's hard limits (pjsua2: 4 calls per process, platforms, TLS version)
            "sip_engine_limits": ENGINE_LIMITS.get(str(info.get("sip_engine")), {}),
            "active_calls": len(live),
            "calls": [
                {"id": c.id, "status": c.status.value, "duration": c.elapsed(now)} for c in live
            ],
            "uptime": format_uptime(time.monotonic() - request.app[METRICS].started_at),
            **info,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def create_call(request: web.Request) -> web.Response:
    body = await _json_body(request, _CREATE_VALIDATOR)
    try:
        functions_from_request(body.get("functions", ()))
    except ConfigError as exc:
        raise ApiError(400, f"{exc.field}: {exc.message}", "VALIDATION_ERROR") from None
    manager = request.app[MANAGER]
    record = await manager.create_outbound(
        body["target"],
        provider=body.get("provider"),
        task=body["task"],
        instructions=body.get("instructions"),
        caller_id=body.get("caller_id"),
        max_duration_seconds=body.get("max_duration_seconds", 300),
        event_webhook=body.get("event_webhook"),
        functions=tuple(body.get("functions", ())),
    )
    return web.json_response(
        {
            "success": True,
            "call_id": record.id,
            "status": record.status.value,
            "created_at": iso(record.created_at),
        },
        status=201,
    )


async def list_calls(request: web.Request) -> web.Response:
    limit = _int_query(request, "limit", 20, 1, 100)
    offset = _int_query(request, "offset", 0, 0, 2**31 - 1)
    raw_status = request.query.get("status")
    status_filter: CallStatus | None = None
    if raw_status is not None:
        try:
            status_filter = CallStatus(raw_status)
        except ValueError:
            allowed = ", ".join(s.value for s in CallStatus)
            raise ApiError(400, f"status must be one of {allowed}") from None
    records, total = await request.app[MANAGER].list_calls(
        limit=limit, offset=offset, status=status_filter
    )
    return web.json_response(
        {"calls": [r.to_json() for r in records], "total": total, "limit": limit, "offset": offset}
    )


async def get_call(request: web.Request) -> web.Response:
    record: CallRecord = await request.app[MANAGER].get(request.match_info["call_id"])
    return web.json_response(record.to_json())


async def end_call(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    call_id = request.match_info["call_id"]
    await manager.get(call_id)  # 404 for an unknown id, 409 below for an ended one
    await manager.end(call_id)
    return web.json_response({"success": True, "call_id": call_id, "status": "ending"})


async def inject(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    call_id = request.match_info["call_id"]
    await manager.get(call_id)
    body = await _json_body(request, _INJECT_VALIDATOR)
    await manager.inject(call_id, body["message"], body.get("role", "system"))
    return web.json_response({"success": True, "call_id": call_id, "status": "injected"})


async def call_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the call's events as they happen, until it ends."""
    manager, live = request.app[MANAGER], request.app[LIVE]
    call_id = request.match_info["call_id"]
    record = await manager.get(call_id)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    snapshot = {"event": "call.state", "call_id": call_id, "data": record.to_json()}
    await response.write(_sse(snapshot))
    if not record.status.active:
        return response
    queue = live.subscribe(call_id)
    try:
        while (payload := await queue.get()) is not None:
            await response.write(_sse(payload))
    finally:
        live.unsubscribe(call_id, queue)
    return response


def _sse(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['event']}\ndata: {json.dumps(payload)}\n\n".encode()


async def not_found(request: web.Request) -> web.Response:
    raise ApiError(404, "not found")


def create_app(
    manager: CallManager, metrics_: Metrics, *, token: str | None, info: dict[str, Any]
) -> web.Application:
    live = LiveEvents()
    manager.subscribe(live.on_call_event)
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=openapi.MAX_BODY_BYTES
    )
    app[MANAGER] = manager
    app[METRICS] = metrics_
    app[TOKEN] = token or ""
    app[INFO] = info
    app[LIVE] = live
    r = app.router
    r.add_get("/health", health)
    r.add_get("/status", status)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi_document)
    r.add_post("/api/calls", create_call)
    r.add_get("/api/calls", list_calls)
    r.add_get("/api/calls/{call_id}", get_call)
    r.add_delete("/api/calls/{call_id}", end_call)
    r.add_post("/api/calls/{call_id}/inject", inject)
    r.add_get("/api/calls/{call_id}/events", call_events)
    r.add_post("/call", create_call)
    r.add_post("/calls/{call_id}/inject", inject)
    return app
