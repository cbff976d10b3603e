"""The shape of the code: import-linter's contracts in pyproject.toml hold (entry points -> services -> models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import PROJECT_ROOT


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
