"""packaging/systemd/sip4ai.service: the settings the product relies on, `systemd-analyze
verify` silence, and the `systemd-analyze security` exposure score.

Both analyses work without systemd as PID 1, against a throwaway root holding the stock units
and the ExecStart binaries (a stand-in executable here: verify only checks it exists).
`systemd-analyze verify` exits 0 even for unknown keys and unparsable values, so any output
at all fails the test.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.packaging.helpers import UNIT_FILE, require_tools, run_checked


pytestmark = pytest.mark.component

MAX_EXPOSURE = 2.0
STOCK_UNITS = Path("/lib/systemd/system")


def unit_settings(text: str) -> dict[str, list[tuple[str, str]]]:
    """Section -> [(key, value)] in file order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def test_unit_has_the_settings_the_product_needs() -> None:
    unit = unit_settings(UNIT_FILE.read_text())
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "all",  # one-file: notifications come from the bootloader's child
        "Restart": "on-failure",
        "User": "sip4ai",
        "Group": "sip4ai",
        "ExecStart": "/usr/local/bin/sip4ai",
        "EnvironmentFile": "/etc/sip4ai/sip4ai.env",
        "StateDirectory": "sip4ai",
        "CacheDirectory": "sip4ai",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert values(service, key) == [value], key
    assert values(service, "WatchdogSec"), "WatchdogSec missing"
    environment = values(service, "Environment")
    assert "CONFIG_FILE=/etc/sip4ai/config.json" in environment
    assert "TMPDIR=%C/sip4ai" in environment
    (pre,) = values(service, "ExecStartPre")
    assert "rm -rf %C/sip4ai/_MEI*" in pre, "stale one-file unpack dirs must be removed"
    assert values(unit["Install"], "WantedBy") == ["multi-user.target"]


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze --root`: stock units, /bin/sh, a stand-in sip4ai binary."""
    require_tools("systemd-analyze", apt="systemd")
    root = tmp_path / "root"
    (root / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(STOCK_UNITS, root / "lib" / "systemd" / "system", symlinks=True)
    (root / "bin").mkdir()
    shutil.copy2("/bin/sh", root / "bin" / "sh")
    binary = root / "usr" / "local" / "bin" / "sip4ai"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    return root


def verify(root: Path, unit_text: str) -> str:
    (root / "etc" / "systemd" / "system" / "sip4ai.service").write_text(unit_text)
    result = run_checked(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            f"--root={root}",
            "/etc/systemd/system/sip4ai.service",
        ]
    )
    return (result.stdout + result.stderr).strip()


def test_systemd_analyze_verify_prints_nothing(fake_root: Path) -> None:
    assert verify(fake_root, UNIT_FILE.read_text()) == ""


def test_verify_output_check_catches_a_typo(fake_root: Path) -> None:
    """The control for the test above: a misspelt key still exits 0, but prints."""
    broken = UNIT_FILE.read_text().replace("ProtectSystem=", "ProtecSystem=")
    assert "Unknown key" in verify(fake_root, broken)


def test_security_exposure_is_at_most_2(fake_root: Path) -> None:
    (fake_root / "etc" / "systemd" / "system" / "sip4ai.service").write_text(UNIT_FILE.read_text())
    result = run_checked(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={fake_root}",
            f"--threshold={round(MAX_EXPOSURE * 10)}",  # x10: 20 means 2.0
            "sip4ai.service",
        ]
    )
    match = re.search(r"Overall exposure level for sip4ai\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stderr
