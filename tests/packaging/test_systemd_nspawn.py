"""The real binary, installed by install.sh, under a real systemd (252, Debian 12) booted with
systemd-nspawn: Type=notify start, /health, watchdog restart, Restart=on-failure, clean stop,
upgrade in place, uninstall. The container's /tmp is noexec, like hardened hosts.

The tests in this module run in file order against one container (module-scoped fixtures);
each leaves the service running for the next. Timings are printed (pytest -s) at the end.
The first run builds the Debian root (about 40 s, cached; see nspawn.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sip4ai import __version__
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from tests.packaging import sipcall
from tests.packaging.helpers import (
    CONFIG_EXAMPLE,
    ENV_EXAMPLE,
    INSTALL_SH,
    UNIT_FILE,
    ReleaseServer,
    binary_under_test,
    require_tools,
    write_sha256sums,
)
from tests.packaging.nspawn import Container, rootfs


pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

UNIT = "sip4ai.service"
ASSET = "sip4ai-linux-x86_64"
TIMINGS: dict[str, float] = {}


def timed(name: str, started: float) -> float:
    TIMINGS[name] = round(time.monotonic() - started, 2)
    return TIMINGS[name]


@pytest.fixture(scope="module")
def release_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReleaseServer]:
    started = time.monotonic()
    binary = binary_under_test()
    timed("binary (build if stale)", started)
    directory = tmp_path_factory.mktemp("release")
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout
    asset = "sip4ai-linux-arm64" if arch.strip() == "aarch64" else ASSET
    shutil.copy2(binary, directory / asset)
    shutil.copy2(UNIT_FILE, directory / "sip4ai.service")
    shutil.copy2(ENV_EXAMPLE, directory / "sip4ai.env")
    shutil.copy2(CONFIG_EXAMPLE, directory / "config.json")
    shutil.copy2(INSTALL_SH, directory / "install.sh")
    write_sha256sums(
        directory, [asset, "sip4ai.service", "sip4ai.env", "config.json", "install.sh"]
    )
    with ReleaseServer(directory) as server:
        yield server


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    root, build_s = rootfs()
    TIMINGS["debootstrap (0 = cached)"] = round(build_s, 1)
    box = Container(root, tmp_path_factory.mktemp("nspawn") / "console.log")
    box.start()
    TIMINGS["container boot"] = round(box.boot_s, 2)
    try:
        yield box
    finally:
        started = time.monotonic()
        box.stop()
        timed("container halt", started)
        print("\nnspawn timings (s):", json.dumps(TIMINGS, indent=1))


@pytest.fixture(scope="module")
def api_port() -> int:
    """The container shares the host's network, so its API port must be free on the host."""
    return free_port(udp=False)


def install_command(server: ReleaseServer, *args: str) -> str:
    extra = f" -s -- {' '.join(args)}" if args else ""
    return f"curl -fsSL {server.url}/install.sh | SIP4AI_BASE_URL={server.url} bash{extra}"


def show(box: Container, prop: str) -> str:
    return box.out(f"systemctl show {UNIT} -p {prop} --value")


def python_child(box: Container, main_pid: str) -> str:
    """The one-file bootloader's child, which runs Python."""
    return box.out(f"cat /proc/{main_pid}/task/{main_pid}/children").split()[0]


def reset_start_limit(box: Container) -> None:
    """Each test restarts the unit several times; StartLimitBurst=5 in 300 s counts them all."""
    box.out(f"systemctl reset-failed {UNIT}")


def wait_until(box: Container, condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``condition`` held; AssertionError with the unit's state if never."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    state = box.run(f"systemctl status {UNIT} --no-pager; journalctl -u {UNIT} -n 30", check=False)
    raise AssertionError(f"not within {timeout_s} s:\n{state.stdout}")


def health(box: Container, port: int) -> str:
    return box.run(f"curl -fsS --max-time 3 http://127.0.0.1:{port}/health", check=False).stdout


def test_install_starts_the_service_after_ready(
    container: Container, release_server: ReleaseServer, api_port: int
) -> None:
    box = container
    # An env file from "before": the installer must keep it (and it moves the API port).
    box.out(
        "install -d -m 0750 /etc/sip4ai && "
        f"printf 'API_PORT={api_port}\\n' > /etc/sip4ai/sip4ai.env && "
        "chmod 0600 /etc/sip4ai/sip4ai.env"
    )
    started = time.monotonic()
    result = box.run(install_command(release_server), timeout_s=120)
    took = timed("install (curl | bash -> active)", started)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "keeping existing /etc/sip4ai/sip4ai.env" in result.stdout
    assert f"{UNIT} is active" in result.stdout
    assert took < 30
    # `systemctl restart` of a Type=notify unit returns only after READY=1.
    assert show(box, "ActiveState") == "active"
    assert show(box, "SubState") == "running"
    assert show(box, "StatusText").startswith("API only")
    assert show(box, "NRestarts") == "0"
    assert box.out(f"systemctl is-enabled {UNIT}") == "enabled"
    assert json.loads(health(box, api_port)) == {"status": "ok"}
    metrics = box.out(f"curl -fsS http://127.0.0.1:{api_port}/metrics")
    assert "sip4ai_build_info" in metrics


def test_runs_hardened_as_the_service_user(container: Container) -> None:
    box = container
    main = show(box, "MainPID")
    child = python_child(box, main)
    assert box.out(f"stat -c %U /proc/{child}") == "sip4ai"
    status = box.out(f"grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/{child}/status")
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status
    environ = box.out(f"tr '\\0' '\\n' < /proc/{child}/environ")
    assert "TMPDIR=/var/cache/sip4ai" in environ
    assert "STATE_DIRECTORY=/var/lib/sip4ai" in environ
    assert box.out("ls -d /var/cache/sip4ai/_MEI* | wc -l") == "1"
    assert "sip4ai.sqlite3" in box.out("ls /var/lib/sip4ai").split()
    assert box.out("stat -c %U:%a /var/lib/sip4ai /var/cache/sip4ai") == "sip4ai:750\nsip4ai:750"
    assert box.out("findmnt -no OPTIONS /tmp").count("noexec") == 1
    # In the service's mount namespace (ProtectSystem=strict) /etc is read-only even for root,
    # while the StateDirectory stays writable.
    write_etc = box.run(f"nsenter -t {child} -m touch /etc/sip4ai-probe", check=False)
    assert "Read-only file system" in write_etc.stderr, write_etc.stderr
    box.out(f"nsenter -t {child} -m touch /var/lib/sip4ai/probe && rm /var/lib/sip4ai/probe")


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """On the host's loopback, which the container shares."""
    require_tools("kamailio", "sipp", "tcpdump", apt="kamailio sip-tester tcpdump")
    with Kamailio(tmp_path_factory.mktemp("kamailio")) as kam:
        yield kam


def test_hardened_service_registers_and_answers_a_call(
    container: Container, kamailio: Kamailio, api_port: int, tmp_path: Path
) -> None:
    """The SIP stack under the unit's sandbox (address families, syscall filter, no caps,
    ProtectProc...): register, answer a SIPp call, stream the AUDIO_FILE to the caller."""
    box = container
    wav = sipcall.write_tone_wav(tmp_path / "tone.wav")
    box.write_file("/etc/sip4ai/tone.wav", wav, 0o640)
    box.out("chgrp sip4ai /etc/sip4ai/tone.wav")
    env = {
        "API_PORT": str(api_port),
        "SIP_USERNAME": "aibot",
        "SIP_PASSWORD": kamailio.users["aibot"],
        "SIP_DOMAIN": "127.0.0.1",
        "SIP_SERVER": kamailio.address,
        "SIP_LISTEN": f"127.0.0.1:{free_port()}",
        "AUDIO_FILE": "/etc/sip4ai/tone.wav",
    }
    text = "".join(f"{key}={value}\n" for key, value in env.items())
    box.write_file("/etc/sip4ai/sip4ai.env", text.encode(), 0o600)
    box.out(f"systemctl restart {UNIT}")
    assert "via baresip" in show(box, "StatusText")
    assert kamailio.wait_registered("aibot", 10.0)

    started = time.monotonic()
    result = sipcall.call(tmp_path, kamailio.address)
    timed("SIP call through the hardened service (3 s hold)", started)
    sipcall.assert_call_carried_the_audio_file(result)
    metrics = box.out(f"curl -fsS http://127.0.0.1:{api_port}/metrics")
    assert sipcall.metric_value(metrics, "sip4ai_sip_registered") == 1.0
    completed = sipcall.metric_value(metrics, "sip4ai_calls_total", status="completed")
    assert completed == 1.0, metrics
    assert show(box, "NRestarts") == "0"


def test_watchdog_restarts_a_stopped_service(container: Container, api_port: int) -> None:
    box = container
    reset_start_limit(box)
    box.out(
        f"mkdir -p /etc/systemd/system/{UNIT}.d && printf '[Service]\\nWatchdogSec=4s\\n"
        f"RestartSec=1s\\n' > /etc/systemd/system/{UNIT}.d/test.conf && "
        f"systemctl daemon-reload && systemctl restart {UNIT}"
    )
    assert show(box, "WatchdogUSec") == "4s"
    restarts = int(show(box, "NRestarts"))
    main = show(box, "MainPID")
    box.out(f"kill -STOP {python_child(box, main)}")
    started = time.monotonic()
    wait_until(
        box,
        lambda: (
            int(show(box, "NRestarts")) > restarts
            and show(box, "ActiveState") == "active"
            and show(box, "MainPID") != main
        ),
        30.0,
    )
    timed("watchdog: SIGSTOP -> restarted and active", started)
    journal = box.out(f"journalctl -u {UNIT} --no-pager -o cat")
    assert "Watchdog timeout" in journal
    assert "Failed with result 'watchdog'" in journal
    assert json.loads(health(box, api_port)) == {"status": "ok"}


@pytest.mark.parametrize(
    ("target", "signal_name"),
    [("python", "SEGV"), ("bootloader", "KILL")],
    ids=["python-child-segv", "bootloader-kill"],
)
def test_restart_on_failure_after_a_crash(
    container: Container, api_port: int, target: str, signal_name: str
) -> None:
    box = container
    reset_start_limit(box)
    restarts = int(show(box, "NRestarts"))
    main = show(box, "MainPID")
    victim = python_child(box, main) if target == "python" else main
    box.out(f"kill -{signal_name} {victim}")
    started = time.monotonic()
    wait_until(
        box,
        lambda: int(show(box, "NRestarts")) > restarts and show(box, "ActiveState") == "active",
        30.0,
    )
    timed(f"crash ({target} SIG{signal_name}) -> active", started)
    journal = box.out(f"journalctl -u {UNIT} --no-pager -o cat")
    number = {"SEGV": 11, "KILL": 9}[signal_name]
    assert f"status={number}/{signal_name}" in journal
    # A SIGKILLed bootloader leaves its unpack dir behind; ExecStartPre removes it.
    assert box.out("ls -d /var/cache/sip4ai/_MEI* | wc -l") == "1"
    assert json.loads(health(box, api_port)) == {"status": "ok"}


def test_systemctl_stop_is_clean(container: Container) -> None:
    box = container
    box.out(f"rm -rf /etc/systemd/system/{UNIT}.d && systemctl daemon-reload")
    box.out(f"systemctl restart {UNIT}")
    started = time.monotonic()
    box.out(f"systemctl stop {UNIT}")
    took = timed("systemctl stop", started)
    assert took < 10
    assert show(box, "ActiveState") == "inactive"
    assert show(box, "Result") == "success"
    assert show(box, "ExecMainStatus") == "0"
    assert box.out("ls -d /var/cache/sip4ai/_MEI* 2>/dev/null | wc -l") == "0"
    journal = box.out(f"journalctl -u {UNIT} --no-pager -o cat -n 20")
    assert "x sip4ai stopped" in journal


def test_second_install_upgrades_in_place(
    container: Container, release_server: ReleaseServer, api_port: int
) -> None:
    box = container
    reset_start_limit(box)
    box.out(f"systemctl start {UNIT}")
    main = show(box, "MainPID")
    inode = box.out("stat -c %i /usr/local/bin/sip4ai")
    box.out('sed -i \'s/"log_level": "INFO"/"log_level": "DEBUG"/\' /etc/sip4ai/config.json')
    config = box.out("sha256sum /etc/sip4ai/config.json /etc/sip4ai/sip4ai.env")
    started = time.monotonic()
    result = box.run(install_command(release_server), timeout_s=120)
    timed("upgrade (second install)", started)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "upgraded sip4ai" in result.stdout
    assert box.out("stat -c %i /usr/local/bin/sip4ai") != inode, "binary replaced atomically"
    assert box.out("sha256sum /etc/sip4ai/config.json /etc/sip4ai/sip4ai.env") == config
    assert show(box, "ActiveState") == "active"
    assert show(box, "MainPID") != main, "restarted on the new binary"
    assert json.loads(health(box, api_port)) == {"status": "ok"}
    assert box.out("grep -c '^sip4ai:' /etc/passwd") == "1"


def test_uninstall_removes_the_unit_and_purge_the_rest(
    container: Container, release_server: ReleaseServer, api_port: int
) -> None:
    box = container
    result = box.run(install_command(release_server, "--uninstall"), timeout_s=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert box.run(f"systemctl cat {UNIT}", check=False).returncode != 0
    assert box.run(f"test -e /etc/systemd/system/{UNIT}", check=False).returncode != 0
    assert box.run("test -e /usr/local/bin/sip4ai", check=False).returncode != 0
    assert (
        box.run(
            "test -e /etc/systemd/system/multi-user.target.wants/" + UNIT, check=False
        ).returncode
        != 0
    )
    assert health(box, api_port) == "", "service still answering after uninstall"
    assert {"config.json", "sip4ai.env"} <= set(box.out("ls /etc/sip4ai").split())
    assert "sip4ai.sqlite3" in box.out("ls /var/lib/sip4ai").split()
    assert box.out("id -un sip4ai") == "sip4ai"

    result = box.run(install_command(release_server, "--purge"), timeout_s=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert box.run("id sip4ai", check=False).returncode != 0
    assert box.run("test -e /etc/sip4ai || test -e /var/lib/sip4ai", check=False).returncode != 0


def test_install_without_systemd_prints_next_steps(
    release_server: ReleaseServer, tmp_path: Path
) -> None:
    """Same root, not booted (bash is PID 1, no /run/systemd/system): files, user, advice."""
    root, _ = rootfs()
    started = time.monotonic()
    result = subprocess.run(
        [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--ephemeral",
            "--quiet",
            "--console=pipe",
            f"--directory={root}",
            "/bin/bash",
            "-c",
            install_command(release_server)
            + " && id -un sip4ai && TMPDIR=/var/cache/sip4ai /usr/local/bin/sip4ai --version",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    timed("install without systemd (nspawn, no boot)", started)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "systemd is not running here" in result.stdout
    assert "runuser -u sip4ai" in result.stdout
    assert result.stdout.rstrip().endswith(f"sip4ai\nsip4ai {__version__}"), result.stdout
