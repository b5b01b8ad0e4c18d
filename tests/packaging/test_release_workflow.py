""".github/workflows/release.yml: builds the four platforms of the product docs under the
asset names install.sh downloads, smoke tests each binary, publishes SHA256SUMS with them;
its shell steps pass shellcheck (what actionlint would run on them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.helpers import INSTALL_SH, REPO, SPEC, require_tools, run_checked


pytestmark = pytest.mark.component

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
PLATFORMS = {
    "sip4ai-linux-x86_64",
    "sip4ai-linux-arm64",
    "sip4ai-macos-x86_64",
    "sip4ai-macos-arm64",
}


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def matrix_assets(job: dict[str, Any]) -> set[str]:
    return {entry["asset"] for entry in job["strategy"]["matrix"]["include"]}


def steps_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("env", "")) for step in job["steps"])


def test_builds_every_documented_platform(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    built = matrix_assets(jobs["build-linux"]) | matrix_assets(jobs["build-macos"])
    assert built == PLATFORMS
    assert jobs["build-linux"]["container"] == "python:3.11-slim-bookworm"  # glibc 2.36 floor


def test_asset_names_are_what_install_sh_downloads() -> None:
    script = INSTALL_SH.read_text()
    assert 'ASSET="sip4ai-$OS_TAG-$ARCH"' in script
    assert {"linux", "macos"} <= set(re.findall(r'OS_TAG="(\w+)"', script))
    assert {"x86_64", "arm64"} <= set(re.findall(r'ARCH="(\w+)"', script))


def test_each_build_uses_the_spec_and_smoke_tests_the_binary(workflow: dict[str, Any]) -> None:
    spec = SPEC.relative_to(REPO).as_posix()
    for name in ("build-linux", "build-macos"):
        text = steps_text(workflow["jobs"][name])
        assert f"pyinstaller --noconfirm --clean --distpath dist --workpath build {spec}" in text
        assert "--version" in text and "check-config" in text
        assert "tests/packaging/test_binary.py" in text
        assert "SIP4AI_BINARY" in text
    assert "pyinstaller==6.22.3" in workflow["env"]["PYINSTALLER"]


def test_publishes_checksums_next_to_the_binaries(workflow: dict[str, Any]) -> None:
    publish = workflow["jobs"]["publish"]
    assert set(publish["needs"]) == {"build-linux", "build-macos"}
    assert publish["permissions"] == {"contents": "write"}
    text = steps_text(publish)
    assert (
        "sha256sum sip4ai-* install.sh sip4ai.service sip4ai.env config.json > SHA256SUMS" in text
    )
    assert "gh release create" in text and "release/*" in text
    # install.sh's default base URL is stamped to the release it is published with.
    assert "s|^DEFAULT_BASE_URL=.*|" in text
    assert re.search(r"^DEFAULT_BASE_URL=", INSTALL_SH.read_text(), flags=re.MULTILINE)


def test_run_steps_pass_shellcheck(workflow: dict[str, Any], tmp_path: Path) -> None:
    require_tools("shellcheck", apt="shellcheck")
    for job_name, job in workflow["jobs"].items():
        for index, step in enumerate(job["steps"]):
            if "run" not in step:
                continue
            # GitHub expressions are substituted before the shell sees the script.
            script = re.sub(r"\$\{\{[^}]*\}\}", "placeholder", step["run"])
            path = tmp_path / f"{job_name}-{index}.sh"
            path.write_text("#!/bin/bash\nset -e\n" + script)
            result = run_checked(["shellcheck", "--shell=bash", str(path)])
            assert result.returncode == 0, f"{job_name} step {index}:\n{result.stdout}"
