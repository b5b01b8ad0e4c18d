"""Command line: ``sip4ai`` runs the appliance; ``sip4ai check-config`` validates the config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sip4ai import __version__, log
from sip4ai.config import Config, Secret, load
from sip4ai.errors import ConfigError


EXIT_CONFIG = 2

DESCRIPTION = """\
sip4ai bridges SIP telephone calls to realtime voice AI providers.

Without SIP credentials it runs the HTTP API only. With them it registers to the PBX and
answers calls (mode "inbound", the default) or places them (mode "outbound").
"""

EPILOG = """\
environment variables:
  SIP_USERNAME, SIP_PASSWORD, SIP_DOMAIN, SIP_SERVER   SIP account (required for telephony)
  SIP_AUTH_ID, SIP_OUTBOUND_PROXY                      optional SIP account settings
  SIP_TRANSPORT                                        udp (default), tcp or tls
  OPENAI_API_KEY, ELEVEN_LABS_API_KEY, GEMINI_API_KEY (or GOOGLE_API_KEY),
  DEEPGRAM_API_KEY, CARTESIA_API_KEY (or CARTESIA_KEY)  AI provider keys
  CONFIG_FILE        config file (default: config.json)
  API_PORT           HTTP API port (default 8080, 0 disables the API)
  AUDIO_FILE         play this WAV file instead of an AI (fallback mode)
  DEBUG_FORCE_PORT   force one RTP port (debugging)
  SIP4AI_API_TOKEN   require this bearer token on the API (all but /health)

exit status: 0 success, 1 runtime failure, 2 configuration error
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sip4ai",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sip4ai {__version__}")
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="config file (overrides CONFIG_FILE)"
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default from config, else INFO)",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "check-config"),
        help="run (default) or check-config: validate and print the effective config",
    )
    return parser


def _public(value: Any) -> Any:
    """The config as JSON-ready data with every secret masked."""
    if isinstance(value, Secret):
        return "********"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _public(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    return value


def describe(config: Config) -> dict[str, Any]:
    data: dict[str, Any] = _public(config)
    data["effective_mode"] = (
        f"{config.mode} (SIP {config.sip.transport})" if config.sip.enabled else "api-only"
    )
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load(args.config, os.environ)
    except ConfigError as exc:
        print(f"sip4ai: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        json.dump(describe(config), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    log.setup(args.log_level or config.log_level)
    from sip4ai.app import serve

    try:
        asyncio.run(serve(config))
    except OSError as exc:
        logging.getLogger("sip4ai").error("! cannot start: %s", exc)
        return 1
    return 0
