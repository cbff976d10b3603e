"""promtool, from Debian's prometheus package (.ci/run installs it): checks rules, their unit tests and metrics."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian's package; .ci/run installs it)")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=120)
