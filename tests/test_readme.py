"""The README's own examples run as written: its testing-kit example is a passing test file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_block(marker: str) -> str:
    """The code block right after ``<!-- marker -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no <!-- {marker} --> code block"
    return found.group(1)


def test_the_readme_testing_example_passes_as_written(tmp_path: Path) -> None:
    (tmp_path / "test_shop.py").write_text(readme_block("testing-example") + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout, done.stdout[-3000:]


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    assert readme_block("test-command") == "make test"
    assert "README" in (ROOT / ".ci" / "run").read_text()
