"""install.sh in a throwaway root (DESTDIR), against a release served on 127.0.0.1.

The release holds a stand-in binary (a shell script answering --version and check-config),
so these tests take seconds; tests/packaging/test_systemd_nspawn.py runs the real binary
under real systemd. Platform detection is steered with PATH shims for uname, getconf, ldd
and sw_vers. Every refusal must leave the root exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.packaging.helpers import (
    CONFIG_EXAMPLE,
    ENV_EXAMPLE,
    INSTALL_SH,
    UNIT_FILE,
    ReleaseServer,
    require_tools,
    run_checked,
    tree_snapshot,
    write_sha256sums,
)


pytestmark = pytest.mark.component

ASSETS = ("sip4ai-linux-x86_64", "sip4ai-linux-arm64", "sip4ai-macos-x86_64", "sip4ai-macos-arm64")
FAKE_BINARY = """#!/bin/sh
# stand-in for the one-file binary
case "${1:-}" in
  --version) echo "sip4ai @VERSION@"; exit @VERSION_RC@ ;;
  check-config)
    if [ -n "${FAKE_LOG:-}" ]; then env > "$FAKE_LOG"; fi
    if grep -q REJECT "$CONFIG_FILE"; then
      echo "sip4ai: configuration error: mode: REJECT (from $CONFIG_FILE)" >&2; exit 2
    fi
    echo '{"effective_mode": "api-only"}'; exit 0 ;;
esac
exit 0
"""


def make_release(directory: Path, version: str, *, runs: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    body = FAKE_BINARY.replace("@VERSION@", version).replace("@VERSION_RC@", "0" if runs else "1")
    for asset in ASSETS:
        (directory / asset).write_text(body + f"# {asset}\n")
    shutil.copy2(UNIT_FILE, directory / "sip4ai.service")
    shutil.copy2(ENV_EXAMPLE, directory / "sip4ai.env")
    shutil.copy2(CONFIG_EXAMPLE, directory / "config.json")
    shutil.copy2(INSTALL_SH, directory / "install.sh")
    names = [*ASSETS, "sip4ai.service", "sip4ai.env", "config.json", "install.sh"]
    write_sha256sums(directory, names)
    return directory


def make_root(root: Path) -> Path:
    """A target root with the account files useradd --root needs."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o600)
    return root


@dataclass(frozen=True)
class Platform:
    os: str = "Linux"
    arch: str = "x86_64"
    glibc: str | None = "2.36"
    musl: bool = False
    macos: str = "15.1"


def write_shims(directory: Path, platform: Platform) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    glibc = f'echo "glibc {platform.glibc}"' if platform.glibc else "exit 1"
    ldd = 'echo "musl libc (x86_64)" >&2; exit 1' if platform.musl else 'exec /usr/bin/ldd "$@"'
    shims = {
        "uname": f"""case "$1" in -s) echo {platform.os} ;; -m) echo {platform.arch} ;;
                     *) exec /bin/uname "$@" ;; esac""",
        "getconf": f'[ "$1" = GNU_LIBC_VERSION ] || exec /usr/bin/getconf "$@"; {glibc}',
        "ldd": f'[ "$1" = --version ] || exec /usr/bin/ldd "$@"; {ldd}',
        "sw_vers": f'[ "$1" = -productVersion ] && echo {platform.macos}',
        "sysctl": "echo 0",
    }
    for name, body in shims.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return directory


@dataclass
class Installer:
    """Runs install.sh with DESTDIR=root against ``server``."""

    root: Path
    server: ReleaseServer
    shim_dir: Path
    platform: Platform = field(default_factory=Platform)
    base_url: str | None = None

    def run(
        self, *args: str, script: bytes | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        write_shims(self.shim_dir, self.platform)
        environ = {
            "PATH": f"{self.shim_dir}:{os.environ['PATH']}",
            "HOME": str(self.root.parent),
            "DESTDIR": str(self.root),
            "SIP4AI_BASE_URL": self.base_url or self.server.url,
            **(env or {}),
        }
        # Like `curl ... | bash -s -- ARGS`: the script arrives on standard input.
        return subprocess.run(
            ["bash", "-s", "--", *args],
            input=(script if script is not None else INSTALL_SH.read_bytes()).decode(),
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return make_release(tmp_path / "release", "1.0.0")


@pytest.fixture
def server(release: Path) -> Iterator[ReleaseServer]:
    with ReleaseServer(release) as srv:
        yield srv


@pytest.fixture
def installer(tmp_path: Path, server: ReleaseServer) -> Installer:
    require_tools("useradd", "sha256sum", "curl")
    return Installer(make_root(tmp_path / "root"), server, tmp_path / "shims")


def sip4ai_gid(root: Path) -> int:
    for line in (root / "etc" / "group").read_text().splitlines():
        name, _, gid, _ = line.split(":")
        if name == "sip4ai":
            return int(gid)
    raise AssertionError("no sip4ai group")


# ----- static checks -----


def test_shellcheck_clean() -> None:
    require_tools("shellcheck", apt="shellcheck")
    result = run_checked(["shellcheck", "--shell=bash", str(INSTALL_SH)])
    assert result.returncode == 0, result.stdout


def test_everything_runs_from_main_on_the_last_line() -> None:
    lines = [line for line in INSTALL_SH.read_text().splitlines() if line.strip()]
    assert lines[-1] == 'main "$@"'


# ----- install, upgrade -----


def test_fresh_install(installer: Installer, release: Path) -> None:
    out = installer.ok()
    root = installer.root
    binary = root / "usr/local/bin/sip4ai"
    assert binary.read_bytes() == (release / "sip4ai-linux-x86_64").read_bytes()
    assert binary.stat().st_mode & 0o777 == 0o755
    assert (root / "etc/systemd/system/sip4ai.service").read_bytes() == UNIT_FILE.read_bytes()
    etc = root / "etc/sip4ai"
    assert (etc / "config.json").read_bytes() == CONFIG_EXAMPLE.read_bytes()
    assert (etc / "sip4ai.env").read_bytes() == ENV_EXAMPLE.read_bytes()
    gid = sip4ai_gid(root)
    etc_dir = etc.stat()
    assert (etc_dir.st_mode & 0o777, etc_dir.st_uid, etc_dir.st_gid) == (0o750, 0, gid)
    config, env_file = (etc / "config.json").stat(), (etc / "sip4ai.env").stat()
    assert (config.st_mode & 0o777, config.st_uid, config.st_gid) == (0o640, 0, gid)
    assert (env_file.st_mode & 0o777, env_file.st_uid, env_file.st_gid) == (0o600, 0, 0)
    (user,) = [
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("sip4ai:")
    ]
    assert int(user[2]) < 1000, "a system user"
    assert (int(user[3]), user[5], user[6]) == (gid, "/var/lib/sip4ai", "/usr/sbin/nologin")
    assert not (root / "usr/local/bin/.sip4ai.new").exists()
    assert "installed sip4ai 1.0.0" in out
    assert "DESTDIR set: not touching systemd" in out


def test_second_run_upgrades_in_place_and_keeps_config(
    installer: Installer, tmp_path: Path
) -> None:
    installer.ok()
    etc = installer.root / "etc/sip4ai"
    (etc / "config.json").write_text('{"mode": "inbound", "api_port": 9999}\n')
    fake_log = tmp_path / "check-config.env"
    (etc / "sip4ai.env").write_text(
        f'# edited\nSIP_USERNAME=aibot\nSIP_PASSWORD="pw with spaces"\nFAKE_LOG={fake_log}\n'
    )
    kept = {name: (etc / name).read_bytes() for name in ("config.json", "sip4ai.env")}
    make_release(installer.server.directory, "2.0.0")

    out = installer.ok()
    assert "upgraded sip4ai 1.0.0 -> sip4ai 2.0.0" in out
    assert "keeping existing /etc/sip4ai/config.json" in out
    binary = installer.root / "usr/local/bin/sip4ai"
    assert "sip4ai 2.0.0" in binary.read_text()
    assert {name: (etc / name).read_bytes() for name in kept} == kept
    assert (installer.root / "etc/passwd").read_text().count("\nsip4ai:") == 1
    # The new binary checked the existing config, with the env file's settings.
    seen = fake_log.read_text().splitlines()
    assert "SIP_PASSWORD=pw with spaces" in seen
    assert f"CONFIG_FILE={etc / 'config.json'}" in seen


# ----- refusals: nothing changes -----


@dataclass(frozen=True)
class Refusal:
    message: str
    platform: Platform = Platform()
    tamper: str = ""


REFUSALS = {
    "arch-riscv64": Refusal("unsupported architecture: riscv64", Platform(arch="riscv64")),
    "arch-armv7l": Refusal("unsupported architecture: armv7l", Platform(arch="armv7l")),
    "os-freebsd": Refusal("unsupported operating system: FreeBSD", Platform(os="FreeBSD")),
    "glibc-2.35": Refusal("glibc 2.35 is too old", Platform(glibc="2.35")),
    "glibc-2.31": Refusal("glibc 2.31 is too old", Platform(glibc="2.31")),
    "musl": Refusal("musl libc", Platform(glibc=None, musl=True)),
    "macos-14": Refusal("macOS 14.6 is too old", Platform(os="Darwin", macos="14.6")),
    "checksum-mismatch": Refusal("checksum verification failed", tamper="tamper"),
    "cut-binary": Refusal("checksum verification failed", tamper="cut"),
    "connection-dropped": Refusal("download failed", tamper="short-body"),
    "no-checksum-entry": Refusal("no entry for sip4ai-linux-x86_64", tamper="drop-sum"),
    "not-found": Refusal("download failed", tamper="404"),
    "binary-does-not-run": Refusal("does not run on this host", tamper="broken"),
    "config-rejected": Refusal("rejects the configuration", tamper="reject-config"),
}


def apply_tamper(installer: Installer, kind: str) -> None:
    release = installer.server.directory
    binary = release / "sip4ai-linux-x86_64"
    if kind == "tamper":
        binary.write_text(binary.read_text().replace("2.0.0", "6.6.6"))
    elif kind == "cut":
        binary.write_bytes(binary.read_bytes()[:100])
    elif kind == "short-body":
        installer.server.short_body.add(binary.name)
    elif kind == "drop-sum":
        sums = release / "SHA256SUMS"
        sums.write_text(
            "".join(ln for ln in sums.read_text().splitlines(True) if binary.name not in ln)
        )
    elif kind == "404":
        installer.base_url = installer.server.url + "/no-such-release"
    elif kind == "broken":
        make_release(release, "2.0.0", runs=False)
    elif kind == "reject-config":
        (installer.root / "etc/sip4ai/config.json").write_text('{"mode": "REJECT"}\n')


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refuses_cleanly_and_changes_nothing(installer: Installer, case: Refusal) -> None:
    installer.ok()  # an installed 1.0.0: a refused upgrade must leave it untouched
    make_release(installer.server.directory, "2.0.0")
    apply_tamper(installer, case.tamper)
    installer.platform = case.platform
    before = tree_snapshot(installer.root)
    result = installer.run()
    assert result.returncode != 0, result.stdout
    assert case.message in result.stderr, result.stderr
    assert tree_snapshot(installer.root) == before


def test_refused_first_install_leaves_no_directories(installer: Installer) -> None:
    make_release(installer.server.directory, "1.0.0", runs=False)
    before = tree_snapshot(installer.root)
    result = installer.run()
    assert result.returncode != 0
    assert "does not run on this host" in result.stderr
    assert tree_snapshot(installer.root) == before


def test_truncated_script_runs_nothing(installer: Installer) -> None:
    """`curl | bash` cut short by the network: no prefix of the script does anything."""
    script = INSTALL_SH.read_bytes()
    before = tree_snapshot(installer.root)
    line_ends = [i + 1 for i, byte in enumerate(script) if byte == ord("\n")]
    last_line = script.rstrip(b"\n").rfind(b"\n") + 1  # just before `main "$@"`
    cuts = sorted({*line_ends[:: max(1, len(line_ends) // 40)], last_line, len(script) // 2})
    for cut in cuts:
        result = installer.run(script=script[:cut])
        assert installer.server.requests == [], f"cut at {cut} downloaded something"
        assert tree_snapshot(installer.root) == before, f"cut at {cut} changed the root"
        assert "==>" not in result.stdout, f"cut at {cut} ran: {result.stdout}"


# ----- uninstall -----


def test_uninstall_keeps_config_data_and_user(installer: Installer) -> None:
    installer.ok()
    data = installer.root / "var/lib/sip4ai/sip4ai.sqlite3"
    data.parent.mkdir(parents=True)
    data.write_text("calls")
    out = installer.ok("--uninstall")
    assert not (installer.root / "usr/local/bin/sip4ai").exists()
    assert not (installer.root / "etc/systemd/system/sip4ai.service").exists()
    assert not (installer.root / "var/cache/sip4ai").exists()
    assert (installer.root / "etc/sip4ai/config.json").exists()
    assert (installer.root / "etc/sip4ai/sip4ai.env").exists()
    assert data.read_text() == "calls"
    assert "sip4ai:" in (installer.root / "etc/passwd").read_text()
    assert "kept /etc/sip4ai" in out
    # Reinstalling picks the kept config up again.
    assert "keeping existing /etc/sip4ai/config.json" in installer.ok()


def test_purge_removes_config_data_and_user(installer: Installer) -> None:
    installer.ok()
    (installer.root / "var/lib/sip4ai").mkdir(parents=True)
    installer.ok("--uninstall", "--purge")
    for path in ("usr/local/bin/sip4ai", "etc/sip4ai", "var/lib/sip4ai", "var/cache/sip4ai"):
        assert not (installer.root / path).exists(), path
    assert "sip4ai" not in (installer.root / "etc/passwd").read_text()
    assert "sip4ai" not in (installer.root / "etc/group").read_text()


def test_unknown_option_is_refused(installer: Installer) -> None:
    before = tree_snapshot(installer.root)
    result = installer.run("--frobnicate")
    assert result.returncode != 0
    assert "unknown option: --frobnicate" in result.stderr
    assert "usage:" in result.stderr
    assert tree_snapshot(installer.root) == before


# ----- other platforms -----


@pytest.mark.parametrize(
    ("platform", "asset"),
    [
        (Platform(os="Linux", arch="aarch64"), "sip4ai-linux-arm64"),
        (Platform(os="Darwin", arch="arm64", macos="15.1"), "sip4ai-macos-arm64"),
        (Platform(os="Darwin", arch="x86_64", macos="26.0"), "sip4ai-macos-x86_64"),
    ],
)
def test_picks_the_binary_for_the_platform(
    installer: Installer, release: Path, platform: Platform, asset: str
) -> None:
    installer.platform = platform
    out = installer.ok()
    binary = installer.root / "usr/local/bin/sip4ai"
    assert binary.read_bytes() == (release / asset).read_bytes()
    if platform.os == "Darwin":
        assert not (installer.root / "etc/sip4ai").exists(), "macOS: the binary only"
        assert not (installer.root / "etc/systemd").exists()
        assert "sip4ai.service" not in installer.server.requests
        assert "OPENAI_API_KEY=... sip4ai" in out


def test_detects_this_host_without_shims(installer: Installer, tmp_path: Path) -> None:
    """No shims: the real uname/getconf of this Linux machine (x86_64 or arm64, glibc)."""
    result = subprocess.run(
        ["bash", str(INSTALL_SH)],
        env={
            "PATH": os.environ["PATH"],
            "DESTDIR": str(installer.root),
            "SIP4AI_BASE_URL": installer.server.url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "==> platform: Linux" in result.stdout, result.stdout + result.stderr
