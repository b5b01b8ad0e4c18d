"""The OpenAPI document matches the handlers, and 300+ generated requests never get a 5xx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from sip4ai import openapi
from sip4ai.api import create_app
from sip4ai.manager import CallManager
from sip4ai.metrics import Metrics
from sip4ai.store import CallStore
from tests.component.apifixtures import api_stack


pytestmark = pytest.mark.component

EXAMPLES_PER_OPERATION = 25
MIN_CASES = 300


class ServerThread:
    """The real API stack (SQLite store, CallManager, fake SIP engine) on a loopback port."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-under-test", daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with api_stack(self.tmp_path) as stack:
            runner = web.AppRunner(stack.app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "API server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path) as s:
        yield s


def test_document_lists_exactly_the_routes(server: ServerThread) -> None:
    doc = requests.get(f"http://127.0.0.1:{server.port}/openapi.json", timeout=5).json()
    assert doc == openapi.document()
    documented = {(m.upper(), path) for path, methods in doc["paths"].items() for m in methods}
    served = {
        (method, path)
        for method, path in _routes_of_real_app()
        if method not in ("HEAD", "OPTIONS") and path != "/openapi.json"
    }
    assert served == documented


def _routes_of_real_app() -> set[tuple[str, str]]:
    manager = CallManager(
        store=CallStore(Path("/nonexistent")),
        metrics=Metrics(),
        engine=None,
        default_provider="openai",
    )
    app = create_app(manager, manager.metrics, token=None, info={})
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }


def _check_documented(method: str, path: str, response: requests.Response) -> str | None:
    """None when the status is documented for the operation and the JSON body matches its schema."""
    doc = openapi.document()
    responses = doc["paths"][path][method.lower()]["responses"]
    spec = responses.get(str(response.status_code))
    if spec is None:
        return f"{method} {path}: undocumented status {response.status_code}"
    content = spec.get("content", {})
    if "application/json" in content:
        schema = {**doc, **content["application/json"]["schema"]}
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(response.json())
        )
        if error is not None:
            return f"{method} {path} {response.status_code}: {error.message}"
    return None


def _exercise(
    operation: Any, mode: GenerationMode, base_url: str, session: requests.Session
) -> tuple[int, list[str]]:
    """Send EXAMPLES_PER_OPERATION generated requests; return (count, problems found)."""
    count = 0
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        nonlocal count
        case = data.draw(operation.as_strategy(generation_mode=mode))
        response = case.call(base_url=base_url, session=session)
        count += 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}")
        problem = _check_documented(operation.method, operation.path, response)
        if problem is not None:
            failures.append(problem)

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation with no parameters and no body: nothing can be invalid.
        assert mode is GenerationMode.NEGATIVE and count == 0
    return count, failures


def test_generated_requests_never_get_5xx(server: ServerThread) -> None:
    base_url = f"http://127.0.0.1:{server.port}"
    schema = schemathesis.openapi.from_dict(openapi.document())
    session = requests.Session()
    cases = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # our own document is valid
        for mode in GenerationMode:
            count, errors = _exercise(operation, mode, base_url, session)
            cases += count
            failures += errors
    assert not failures, failures[:10]
    print(f"{cases} generated requests, none answered 5xx or off-schema")
    assert cases >= MIN_CASES
