"""The HTTP API's OpenAPI 3.1 document, and the request schemas the handlers validate with.

The handlers validate request bodies against the very schemas published here, so the document
cannot drift from what the API accepts.
"""

from __future__ import annotations

from typing import Any

from sip4ai import __version__
from sip4ai.config import PROVIDERS


E164 = "^\\+[1-9][0-9]{1,14}$"
HTTP_URL = "^https?://[^\\s]+$"
CALL_STATUSES = ["initiating", "ringing", "in_progress", "completed", "failed"]
ERROR_CODES = [
    "BAD_REQUEST",
    "INVALID_JSON",
    "VALIDATION_ERROR",
    "UNAUTHORIZED",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "SIP_UNAVAILABLE",
    "AI_UNAVAILABLE",
    "INTERNAL_ERROR",
]
MAX_BODY_BYTES = 64 * 1024

FUNCTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,63}$"},
        "description": {"type": "string", "maxLength": 2000},
        "type": {"type": "string", "enum": ["webhook", "transfer"]},
        "webhook": {"type": "string", "pattern": HTTP_URL, "maxLength": 2048},
        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
        "parameters": {"type": "object"},
        "hold_audio_url": {"type": "string", "pattern": HTTP_URL, "maxLength": 2048},
        "target": {"type": "string", "minLength": 1, "maxLength": 256},
        "timeout_s": {"type": "number", "minimum": 0.1, "maximum": 120},
    },
}

CREATE_CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["target", "task"],
    "additionalProperties": False,
    "properties": {
        "target": {"type": "string", "pattern": E164, "description": "E.164 number to call"},
        "task": {"type": "string", "minLength": 1, "maxLength": 8000},
        "instructions": {"type": "string", "maxLength": 16000},
        "provider": {"type": "string", "enum": list(PROVIDERS)},
        "caller_id": {"type": "string", "pattern": "^[+A-Za-z0-9._-]{1,64}$"},
        "max_duration_seconds": {"type": "integer", "minimum": 10, "maximum": 14400},
        "event_webhook": {"type": "string", "pattern": HTTP_URL, "maxLength": 2048},
        "functions": {"type": "array", "maxItems": 64, "items": FUNCTION_SCHEMA},
    },
}

INJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "additionalProperties": False,
    "properties": {
        "message": {"type": "string", "minLength": 1, "maxLength": 16000},
        "role": {"type": "string", "enum": ["system", "user"], "default": "system"},
    },
}

_ERROR = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "string", "enum": ERROR_CODES},
    },
}

_TRANSCRIPT_ENTRY = {
    "type": "object",
    "required": ["speaker", "text", "timestamp"],
    "properties": {
        "speaker": {"type": "string", "enum": ["ai", "user"]},
        "text": {"type": "string"},
        "timestamp": {"type": "number"},
    },
}

_CALL = {
    "type": "object",
    "required": [
        "id",
        "status",
        "direction",
        "target",
        "provider",
        "duration",
        "transcript",
        "created_at",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": CALL_STATUSES},
        "direction": {"type": "string", "enum": ["inbound", "outbound"]},
        "target": {"type": "string"},
        "provider": {"type": "string"},
        "duration": {"type": ["integer", "null"]},
        "transcript": {"type": "array", "items": {"$ref": "#/components/schemas/TranscriptEntry"}},
        "created_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "end_reason": {"type": ["string", "null"]},
        "providers": {
            "type": "array",
            "description": "Who served the call, in order (more than one after a failover).",
            "items": {"$ref": "#/components/schemas/ProviderSegment"},
        },
    },
}

_PROVIDER_SEGMENT = {
    "type": "object",
    "required": ["provider", "started", "ended", "end_reason"],
    "properties": {
        "provider": {
            "type": "string",
            "description": "A provider name, or audio_file / apology when none was left.",
        },
        "started": {"type": "number", "description": "Seconds since the call was answered."},
        "ended": {"type": ["number", "null"], "description": "null: until the call ended."},
        "end_reason": {"type": ["string", "null"], "description": "Why it stopped serving."},
    },
}


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid request",
        401: "Missing or wrong bearer token",
        404: "Not found",
        409: "The call is not active",
        413: "Body too large",
        415: "Body is not JSON",
        503: "SIP or the AI provider is not configured",
    }
    return {str(code): _json("Error", text[code]) for code in codes}


_CALL_ID = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}

_CREATE = {
    "summary": "Create an outbound call",
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateCall"}}},
    },
    "responses": {
        "201": _json("CallCreated", "The call was created and is being dialled"),
        **_errors(400, 401, 413, 415, 503),
    },
}

_INJECT = {
    "summary": "Inject context into an active call",
    "parameters": [_CALL_ID],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Inject"}}},
    },
    "responses": {
        "200": _json("Injected", "Delivered to the AI"),
        **_errors(400, 401, 404, 409, 413, 415),
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document served at GET /openapi.json."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "sip4ai HTTP API", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "TranscriptEntry": _TRANSCRIPT_ENTRY,
                "ProviderSegment": _PROVIDER_SEGMENT,
                "Call": _CALL,
                "CreateCall": CREATE_CALL_SCHEMA,
                "Inject": INJECT_SCHEMA,
                "CallCreated": {
                    "type": "object",
                    "required": ["success", "call_id", "status", "created_at"],
                    "properties": {
                        "success": {"type": "boolean"},
                        "call_id": {"type": "string", "format": "uuid"},
                        "status": {"type": "string", "enum": CALL_STATUSES},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "CallList": {
                    "type": "object",
                    "required": ["calls", "total", "limit", "offset"],
                    "properties": {
                        "calls": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                        "total": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "offset": {"type": "integer"},
                    },
                },
                "Injected": {
                    "type": "object",
                    "required": ["success", "call_id", "status"],
                    "properties": {
                        "success": {"type": "boolean"},
                        "call_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["injected"]},
                    },
                },
                "Ending": {
                    "type": "object",
                    "required": ["success", "call_id", "status"],
                    "properties": {
                        "success": {"type": "boolean"},
                        "call_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["ending"]},
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["sip_registered", "active_calls", "calls", "uptime"],
                    "properties": {
                        "sip_registered": {"type": "boolean"},
                        "active_calls": {"type": "integer"},
                        "calls": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "status", "duration"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "status": {"type": "string", "enum": CALL_STATUSES},
                                    "duration": {"type": "integer"},
                                },
                            },
                        },
                        "uptime": {"type": "string", "pattern": "^([0-9]+h)?([0-9]+m)?[0-9]+s$"},
                        "sip_engine": {"type": "string"},
                        "sip_engine_limits": {
                            "type": "object",
                            "description": "Hard limits of the SIP backend (empty: none)",
                            "properties": {
                                "max_calls_per_process": {"type": "integer"},
                                "platforms": {"type": "string"},
                                "tls": {"type": "string"},
                            },
                        },
                        "mode": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {
                "get": {
                    "summary": "Health check (never needs a token)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Running",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {
                                            "status": {"type": "string", "enum": ["ok"]}
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/status": {
                "get": {
                    "summary": "System status",
                    "responses": {"200": _json("Status", "Status"), **_errors(401)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401),
                    },
                }
            },
            "/api/calls": {
                "post": _CREATE,
                "get": {
                    "summary": "List calls, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 100,
                                "default": 20,
                            },
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": CALL_STATUSES},
                        },
                    ],
                    "responses": {"200": _json("CallList", "A page of calls"), **_errors(400, 401)},
                },
            },
            "/api/calls/{call_id}": {
                "get": {
                    "summary": "Retrieve a call",
                    "parameters": [_CALL_ID],
                    "responses": {"200": _json("Call", "The call"), **_errors(401, 404)},
                },
                "delete": {
                    "summary": "End a call (the AI says a brief goodbye first)",
                    "parameters": [_CALL_ID],
                    "responses": {"200": _json("Ending", "Ending"), **_errors(401, 404, 409)},
                },
            },
            "/api/calls/{call_id}/inject": {"post": _INJECT},
            "/api/calls/{call_id}/events": {
                "get": {
                    "summary": "Live call events (Server-Sent Events) until the call ends",
                    "parameters": [_CALL_ID],
                    "responses": {
                        "200": {
                            "description": "A text/event-stream: call.state, then the call's "
                            "events (same payloads as the webhooks)",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 404),
                    },
                }
            },
            "/call": {"post": {**_CREATE, "summary": "Create an outbound call (short form)"}},
            "/calls/{call_id}/inject": {"post": {**_INJECT, "summary": "Inject (short form)"}},
        },
    }
