"""The package's static checks run with the suite, so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_mypy_strict_on_the_package() -> None:
    done = run("mypy", "--strict", "tcelery_req_handler")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean() -> None:
    done = run("ruff", "check", "tcelery_req_handler", "tests", "example")
    assert done.returncode == 0, done.stdout + done.stderr


def test_public_api_is_explicit_and_typed() -> None:
    import tcelery_req_handler as package

    assert (ROOT / "tcelery_req_handler" / "py.typed").exists()
    assert all(hasattr(package, name) for name in package.__all__)
    assert len(set(package.__all__)) == len(package.__all__)
