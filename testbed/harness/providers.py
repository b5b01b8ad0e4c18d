"""Each provider's mock as a process, and the sip4ai config that points the provider at it.

Every mock in testbed/mocks has the same command line (``--port 0 --any-key --script FILE``),
prints ``LISTENING ws://127.0.0.1:PORT`` and serves its provider's real URL paths on that
port, so e2e tests and benchmarks can run the same call against any provider.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.harness.paths import TESTBED_DIR


PROVIDERS = ("openai", "elevenlabs", "gemini", "deepgram", "cartesia")
REPO = TESTBED_DIR.parent
GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@dataclass(frozen=True)
class MockedProvider:
    """A running mock: the config sections and environment that make sip4ai use it."""

    name: str
    base: str
    """``ws://127.0.0.1:PORT``."""
    log: Path

    @property
    def http_base(self) -> str:
        return "http" + self.base.removeprefix("ws")

    def config(self, greeting: str | None = None) -> dict[str, Any]:
        """sip4ai config: ``provider`` and the sections that point at this mock."""
        base = self.base
        sections: dict[str, dict[str, Any]] = {
            "openai": {"openai": {"base_url": f"{base}/v1/realtime"}},
            "elevenlabs": {
                "elevenlabs": {
                    "base_url": f"{base}/v1/convai/conversation",
                    "agent_id": "agent-e2e",
                }
            },
            "gemini": {"gemini": {"base_url": f"{base}{GEMINI_PATH}"}},
            "deepgram": {"deepgram": {"base_url": f"{base}/v1/agent/converse"}},
            "cartesia": {
                "cartesia": {
                    "base_url": f"{base}/tts/websocket",
                    "llm_base_url": f"{self.http_base}/v1",
                    "voice_id": "e2e-voice",
                },
                "deepgram": {"stt_base_url": f"{base}/v1/listen"},
            },
        }
        config = sections[self.name]
        if greeting is not None:
            key = "first_message" if self.name == "elevenlabs" else "greeting"
            config[self.name][key] = greeting
        return config


ENV: Mapping[str, Mapping[str, str]] = {
    "openai": {"OPENAI_API_KEY": "sk-e2e"},
    "elevenlabs": {},
    "gemini": {"GEMINI_API_KEY": "gemini-e2e"},
    "deepgram": {"DEEPGRAM_API_KEY": "dg-e2e"},
    "cartesia": {
        "CARTESIA_API_KEY": "cartesia-e2e",
        "DEEPGRAM_API_KEY": "dg-e2e",
        "OPENAI_API_KEY": "sk-e2e",
    },
}
"""Keys each provider needs (the mocks run with ``--any-key``)."""


def merge(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge config dicts one level deep (sections are combined, not replaced)."""
    merged: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


@contextmanager
def provider_mock(
    run_dir: Path, name: str, script: Mapping[str, Any] | None = None, *args: str
) -> Iterator[MockedProvider]:
    """Run ``name``'s mock with ``script`` (the OpenAI mock's script shape) until the block ends."""
    command = [sys.executable, "-m", f"testbed.mocks.mock_{name}", "--port", "0", "--any-key"]
    if script is not None:
        path = run_dir / f"{name}-script.json"
        path.write_text(json.dumps(script))
        command += ["--script", str(path)]
    log_path = run_dir / f"mock_{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([*command, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"mock_{name} did not start: {line!r} (see {log_path})")
        yield MockedProvider(name, line.split(" ", 1)[1], log_path)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
