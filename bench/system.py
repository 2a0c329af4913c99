"""The machine and the software under test: install ``ab``, describe CPU/RAM and versions."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

import psutil  # type: ignore[import-untyped]

APT_PACKAGES = {"ab": "apache2-utils"}


def ensure_tools() -> None:
    """Install missing command-line tools with apt-get (a fresh machine has no ``ab``)."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"missing {', '.join(missing)} and no apt-get to install it")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    subprocess.run([*sudo, apt, "update"], check=True, env=env, timeout=600,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, apt, "install", "-y", *missing], check=True, env=env, timeout=600,
                   stdout=subprocess.DEVNULL)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _rabbitmq_version() -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return "unknown"
    with contextlib.suppress(Exception):
        out = subprocess.run([ctl, "version"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[-1]
    return "unknown"


def _ab_version() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["ab", "-V"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].replace("This is ApacheBench, ", "").strip()
    return "unknown"


def describe() -> dict[str, Any]:
    """Machine and versions, for the report's header and the JSON."""
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}",
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "python": sys.version.split()[0],
            **{pkg: _version(pkg) for pkg in ("tcelery-req-handler", "tornado", "celery",
                                              "kombu", "pika", "flower", "redis")},
            "rabbitmq": _rabbitmq_version(),
            "ab": _ab_version(),
        },
    }
