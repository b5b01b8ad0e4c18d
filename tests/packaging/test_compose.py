"""testbed/docker-compose.yml: valid for `docker-compose config` (Debian's docker-compose
works without a Docker engine), has the promised services, mounts files that exist, and the
sip4ai config it mounts passes `sip4ai check-config` with the compose environment."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.helpers import REPO, clean_env, require_tools, run_checked


pytestmark = pytest.mark.component

COMPOSE = REPO / "testbed" / "docker-compose.yml"
DOCKERFILE = REPO / "testbed" / "docker" / "Dockerfile"
SERVICES = {"kamailio", "sip4ai", "mock-openai", "sipp", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config` output: the file as Compose resolved it (absolute paths)."""
    require_tools("docker-compose", apt="docker-compose")
    result = run_checked(["docker-compose", "-f", str(COMPOSE), "config"])
    assert result.returncode == 0, result.stderr
    yaml = pytest.importorskip("yaml")
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_config_has_the_testbed_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["sipp"]["profiles"] == ["tools"], "SIPp runs on demand"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's bind mounts (docker-compose 1.x prints the short form,
    Compose v2 the long one)."""
    result: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            result[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            result[target] = source
    return result


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source in mounts(service).values():
            assert Path(source).exists(), f"{name}: {source}"


def test_referenced_testbed_files_exist() -> None:
    text = COMPOSE.read_text()
    for path in ("kamailio/kamailio.cfg", "mocks/mock_openai.py", "sipp/uac_invite_rtp.xml"):
        assert (REPO / "testbed" / path).is_file(), path
    assert "testbed.mocks.mock_openai" in text
    assert "/testbed/kamailio/kamailio.cfg" in text
    for source in re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE):
        for item in source.split():
            assert (REPO / item).exists(), f"Dockerfile COPY {item}"


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port}"


def test_sip4ai_config_passes_check_config(compose: dict[str, Any], tmp_path: Path) -> None:
    service = compose["services"]["sip4ai"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    environment["CONFIG_FILE"] = mounts(service)[environment["CONFIG_FILE"]]
    environment["SIP4AI_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "sip4ai", "check-config"],
        env=clean_env(**environment),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"effective_mode": "inbound (SIP udp)"' in result.stdout
    assert "ws://mock-openai:8765/v1/realtime" in result.stdout
