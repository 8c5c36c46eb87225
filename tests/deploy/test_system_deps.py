"""scripts/system-deps.sh, what `make deps` and `make deps-test` run: quiet when everything is
there, apt-get for root, and for any other user one line with the exact command to run.

The script runs with a PATH of stubs: the commands it looks for, an `id` that says who the user
is, and an `apt-get` that records its arguments instead of installing anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from shared.settings import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "system-deps.sh"


def stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(
    tmp_path: Path,
    present: list[str],
    *groups: str,
    uid: int = 1000,
    libraries: tuple[str, ...] = ("libgomp.so.1",),
    missing_tools: tuple[str, ...] = (),
    apt_get: str = "",
    dpkg: str = "exit 0",
) -> tuple[int, str, str]:
    directory = tmp_path / "bin"
    directory.mkdir()
    # The shared libraries present, in a multiarch directory like Debian's.
    libdir = tmp_path / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    for library in libraries:
        (libdir / library).write_bytes(b"")
    bash = shutil.which("bash")
    assert bash, "bash is needed to run the script"
    for command in present:
        stub(directory / command, "exit 0")
    # kubectl (the test group's, in the tools directory): there unless the test says not.
    tools = tmp_path / "tools"
    tools.mkdir()
    if "kubectl" not in missing_tools:
        stub(tools / "kubectl", "exit 0")
    stub(directory / "dpkg", dpkg)
    for command in ("mktemp", "mkdir", "cp", "rm", "touch"):  # unpacking uses them; stubs too
        real = shutil.which(command)
        assert real is not None
        (directory / command).symlink_to(real)
    stub(directory / "id", f"echo {uid}")
    stub(directory / "apt-get", f'echo "$@" >> {tmp_path / "apt-calls"}\n{apt_get}')
    done = subprocess.run(
        [bash, str(SCRIPT), *groups],
        env={
            "PATH": str(directory),
            "HOME": str(tmp_path),
            "SYSTEM_DEPS_LIBDIRS": str(tmp_path / "lib"),
            "SYSTEM_DEPS_TOOLS": str(tools),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def apt_calls(tmp_path: Path) -> list[str]:
    record = tmp_path / "apt-calls"
    return record.read_text().splitlines() if record.exists() else []


def test_a_user_who_is_not_root_gets_the_command_to_run(tmp_path: Path) -> None:
    status, _, err = run(tmp_path, ["redis-server"], "run", "test")
    assert status == 1
    assert err.strip().splitlines() == [
        "missing: prometheus chromium; run: sudo apt-get install -y --no-install-recommends "
        "prometheus chromium"
    ]
    assert apt_calls(tmp_path) == []


def test_root_installs_what_is_missing(tmp_path: Path) -> None:
    status, out, err = run(tmp_path, ["redis-server", "chromium"], "test", uid=0)
    assert status == 0, err
    assert "installing Debian packages: prometheus" in out
    assert apt_calls(tmp_path) == [
        "update -qq",
        "install -y -qq --no-install-recommends prometheus",
    ]


def test_nothing_to_do_when_everything_is_there(tmp_path: Path) -> None:
    present = ["redis-server", "promtool", "prometheus", "chromium", "wrk"]
    status, out, err = run(tmp_path, present, "run", "test", "bench", uid=0)
    assert (status, out, err) == (0, "", "")
    assert apt_calls(tmp_path) == []


def test_the_demo_needs_only_redis(tmp_path: Path) -> None:
    status, _, err = run(tmp_path, [], "run")
    assert status == 1
    assert err.startswith("missing: redis-server;")


def test_an_unknown_group_is_refused(tmp_path: Path) -> None:
    status, _, err = run(tmp_path, [], "everything")
    assert status == 2
    assert "unknown group everything" in err


def test_a_missing_library_is_named_by_its_package(tmp_path: Path) -> None:
    # LightGBM's wheel links to the system's OpenMP runtime instead of bundling one.
    status, _, err = run(tmp_path, ["redis-server"], "run", libraries=())
    assert status == 1
    assert err.strip() == (
        "missing: libgomp1; run: sudo apt-get install -y --no-install-recommends libgomp1"
    )


def test_kubectl_is_unpacked_from_debians_package_not_installed(tmp_path: Path) -> None:
    # apt-get download leaves the package in the working directory; dpkg -x unpacks it.
    download = 'case "$1" in download) touch kubernetes-client_1.20_amd64.deb ;; esac'
    unpack = 'mkdir -p "$3/usr/bin" && echo kubectl > "$3/usr/bin/kubectl"'
    present = ["redis-server", "promtool", "prometheus", "chromium"]
    status, out, err = run(
        tmp_path,
        present,
        "test",
        uid=0,
        missing_tools=("kubectl",),
        apt_get=download,
        dpkg=unpack,
    )
    assert status == 0, err
    assert "unpacking Debian's kubernetes-client" in out
    assert apt_calls(tmp_path) == ["download -qq kubernetes-client"]
    assert (tmp_path / "tools" / "kubectl").read_text() == "kubectl\n"
