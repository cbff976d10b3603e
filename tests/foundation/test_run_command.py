"""The run command, from a fresh copy of the project with nothing configured."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import PROJECT_ROOT, ManagedProcess, free_port, wait_for

PROJECT_VARIABLES = {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG", "DATA_DIR", "EMAIL_URL", "VIRTUAL_ENV"}


def fresh_copy(destination: Path) -> Path:
    """Copy what a clone would contain: tracked files plus new files that are not ignored."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return 0


def processes_running_in(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def worker_main_process(directory: Path) -> int | None:
    """The celery worker started by the run command (not its pool children)."""
    for pid in processes_running_in(directory):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"worker" in command and b"keep-running" not in b" ".join(command) and b"keep-running" in parent_command:
            return pid
    return None


@pytest.mark.slow
def test_the_run_command_brings_up_web_worker_and_beat_from_a_fresh_clone_and_stops_them(tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in PROJECT_VARIABLES}
    env["WEB_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"

    run = ManagedProcess(["bin/run"], env, label="run", cwd=clone).start()
    try:
        wait_for(lambda: http_status(f"{base}/accounts/login/") == 200 or not run.alive(), 600, 1, "the login page")
        assert run.alive(), run.output()
        assert http_status(f"{base}/admin/login/") == 200

        def worker_pongs() -> bool:
            ping = subprocess.run(
                [str(clone / ".venv/bin/celery"), "-A", "config", "inspect", "ping", "--timeout", "3"],
                cwd=clone,
                env={**env, "DEBUG": "1"},
                capture_output=True,
                text=True,
            )
            return "pong" in ping.stdout

        wait_for(worker_pongs, 60, 1, "the worker to answer inspect ping")
        wait_for(lambda: "beat: Starting..." in run.output(), 30, 0.5, "beat to start")

        # The README's commands work as written beside it, on the same embedded defaults.
        seeded = subprocess.run(["bin/manage", "seed_demo"], cwd=clone, env=env, capture_output=True, text=True)
        assert seeded.returncode == 0, seeded.stderr
        assert "Created customer 'demo' with password" in seeded.stdout
        stats = subprocess.run(["bin/manage", "queue_stats"], cwd=clone, env=env, capture_output=True, text=True)
        assert stats.returncode == 0, stats.stderr
        assert "default" in stats.stdout and "worker(s) online" in stats.stdout

        # A worker that dies (here: killed outright) is started again; web and beat go on.
        dead = wait_for(lambda: worker_main_process(clone), 10, 0.2, "the worker's process")
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: "keep-running: .venv/bin/celery exited" in run.output(), 30, 0.5, "the restart notice")
        wait_for(lambda: worker_main_process(clone) not in (None, dead), 30, 0.5, "a new worker")
        wait_for(worker_pongs, 60, 1, "the new worker to answer inspect ping")
        assert run.alive() and http_status(f"{base}/accounts/login/") == 200

        # Ctrl-C in a terminal sends SIGINT to the whole foreground process group.
        os.killpg(run.pid, signal.SIGINT)
        assert run.popen is not None
        run.popen.wait(timeout=60)
        wait_for(lambda: not processes_running_in(clone), 30, 0.5, "every process of the run command to exit")
    finally:
        run.kill_group()

    output = run.output()
    assert f"Web:       {base}/" in output
    assert f"Database:  SQLite at {clone / 'var' / 'db.sqlite3'}" in output
    assert "Broker:    embedded file broker" in output
    assert "Created superuser 'admin' with password" in output
