"""A SQLite file that cannot be written (a read-only mount, a full disk) makes
writes a 503 that says why, and /health a 503; once it is fixed the service
recovers by itself, without a restart. Real gunicorn on a real SQLite file, on
a small tmpfs the test mounts: that needs root, so elsewhere these tests are
skipped with the reason, except under CI=true, where they fail."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import gunicorn, migrate
from live import free_port


def mount_problem() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    return None


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of its own, unmounted at the end."""
    reason = mount_problem()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the recovery tests must run)")
    if reason:
        pytest.skip(reason)
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def killed_while_reading(database: Path) -> None:
    """A process that opens the database, reads, and is killed, leaving its
    WAL and WAL index files behind, as a crashed worker does."""
    reader = (
        "import os, signal, sqlite3;"
        f"sqlite3.connect({str(database)!r}).execute('SELECT count(*) FROM contact');"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", reader], check=False)
    assert database.with_name(f"{database.name}-shm").exists()


def write(base_url: str, n: int) -> requests.Response:
    return requests.post(
        f"{base_url}/identify",
        json={"email": f"new{n}@shop.com", "phoneNumber": f"55500{n:03d}"},
        timeout=30,
    )


def assert_recovers(base_url: str, first: int) -> None:
    """Within 10 s writes succeed again, 8 in a row (each pooled connection
    that met the fault may fail once more, then it is discarded; with worker
    threads a process may hold several)."""
    deadline = time.monotonic() + 10
    n, in_a_row = first, 0
    while in_a_row < 8:
        assert time.monotonic() < deadline, "writes kept failing after the fix"
        in_a_row = in_a_row + 1 if write(base_url, n).status_code == 200 else 0
        n += 1
    assert requests.get(f"{base_url}/health", timeout=10).status_code == 200


def test_a_read_only_database_file_is_reported_and_recovered_from(
    disk: Path,
) -> None:
    """The file system holding the database is read-only when the service
    starts, with the WAL a killed process left behind, so the service's
    connections open the file read-only. Writes are a 503 saying so, /health
    too; once it is writable again, writes succeed with no restart (before,
    every write stayed a 503: the pool kept the read-only connections)."""
    url = f"sqlite:///{disk / 'contacts.db'}"
    migrate(url)
    killed_while_reading(disk / "contacts.db")
    remount(disk, "ro")
    with gunicorn(url, free_port(), workers=2, health=503) as base_url:
        failed = [write(base_url, n) for n in range(4)]
        health = requests.get(f"{base_url}/health", timeout=10)
        remount(disk, "rw")
        assert_recovers(base_url, 100)

    assert [r.status_code for r in failed] == [503] * 4
    for response in [*failed, health]:
        assert "read-only" in response.json()["detail"], response.json()
    assert health.status_code == 503


def test_a_full_disk_is_reported_and_recovered_from(disk: Path) -> None:
    """The disk holding the database fills up while the service runs. Writes
    fail with a 503 saying the disk is full (one that fits in the pages the
    WAL file already has may still succeed), /health says so too; once space
    is freed, writes succeed with no restart."""
    url = f"sqlite:///{disk / 'contacts.db'}"
    migrate(url)
    filler = disk / "filler"
    with gunicorn(url, free_port(), workers=2) as base_url:
        assert write(base_url, 0).status_code == 200
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True
        )
        failed = [write(base_url, n) for n in range(1, 9)]
        health = requests.get(f"{base_url}/health", timeout=10)
        filler.unlink()
        assert_recovers(base_url, 100)

    refused = [r for r in failed if r.status_code != 200]
    assert refused, "every write succeeded on a full disk"
    assert {r.status_code for r in refused} == {503}
    for response in [*refused, health]:
        assert "disk is full" in response.json()["detail"], response.json()
    assert health.status_code == 503
