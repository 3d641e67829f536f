"""The processes a benchmark runs against: the offline model server and one daphne.

Everything is a real child process started with this repository's Python; every child is
stopped (SIGTERM, then SIGKILL) when the stack closes, including on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Every child ever started, so that an interrupted run still stops them all.
_CHILDREN: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: only this child, by its id."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop_all() -> None:
    for proc in list(_CHILDREN):
        stop_process(proc, timeout=5)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own session (Ctrl-C reaches only us; we stop it ourselves)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _CHILDREN.append(proc)
    return proc


def run_checked(argv: list[str], env: dict[str, str], what: str) -> str:
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; log:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; log:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def peak_rss(pid: int) -> int | None:
    """Peak resident set size in bytes (Linux VmHWM), or None where /proc has no such line."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Usage:
    """CPU seconds (user + system, all threads) and memory of one process over a window."""

    cpu_s: float
    wall_s: float
    rss_end: int
    rss_peak: int

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "cpu_pct_of_one_core": round(self.cpu_pct, 1),
            "rss_end_mib": round(self.rss_end / 2**20, 1),
            "rss_peak_mib": round(self.rss_peak / 2**20, 1),
        }


class Meter:
    """Measures one process from `start()` to `stop()`; samples RSS where VmHWM is missing."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)
        self.cpu0 = 0.0
        self.t0 = 0.0
        self.rss_max = 0

    def _cpu(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self.cpu0 = self._cpu()
        self.t0 = time.monotonic()
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.rss_max = max(self.rss_max, self.proc.memory_info().rss)

    def stop(self) -> Usage:
        self.sample()
        rss = self.proc.memory_info().rss
        peak = peak_rss(self.pid) or self.rss_max
        return Usage(self._cpu() - self.cpu0, time.monotonic() - self.t0, rss, max(peak, rss))


@dataclass
class Settings:
    """How to run the app: database, channel layer and the environment for every child."""

    data_dir: Path
    log_dir: Path
    postgres: bool = False
    redis: bool = False
    pg_url: str = "postgres://postgres@127.0.0.1:5432/glassbox_bench"
    redis_url: str = "redis://127.0.0.1:6379/1"
    extra_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False  # run daphne under cProfile (stats in the log folder)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "glassbox.sqlite3"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GLASSBOX_") and k not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update(
            DJANGO_SETTINGS_MODULE="chat.settings",
            PYTHONUNBUFFERED="1",
            GLASSBOX_DATA_DIR=str(self.data_dir),
            GLASSBOX_PROVIDER="offline",
            # The default (32,000) would cut the 50,000-token message of the wire-bytes check.
            GLASSBOX_MAX_TOKENS="200000",
        )
        if self.postgres:
            env["DATABASE_URL"] = self.pg_url
        if self.redis:
            env["REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        env.update(overrides)
        return env


class Stack:
    """One offline model server and one daphne process pointed at it."""

    def __init__(self, settings: Settings, name: str, *, rate: float, env: dict[str, str]) -> None:
        self.settings = settings
        self.name = name
        self.rate = rate
        self.extra_env = env
        self.model_port = free_port()
        self.web_port = free_port()
        self.model: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.model_log = settings.log_dir / f"{name}.offline_server.log"
        self.web_log = settings.log_dir / f"{name}.daphne.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def model_url(self) -> str:
        return f"http://127.0.0.1:{self.model_port}/v1"

    def start(self) -> Stack:
        env = self.settings.env(GLASSBOX_BASE_URL=self.model_url, **self.extra_env)
        self.model = spawn(
            [PYTHON, "-m", "agents.offline_server", "--host", "127.0.0.1"]
            + ["--port", str(self.model_port), "--rate", str(self.rate)],
            env,
            self.model_log,
        )
        wait_http(f"http://127.0.0.1:{self.model_port}/health", self.model, self.model_log)
        profile: list[str] = []
        if self.settings.profile:
            stats = self.settings.log_dir / f"{self.name}.daphne.prof"
            profile = ["-m", "cProfile", "-o", str(stats)]
        self.web = spawn(
            [PYTHON, *profile, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.web_port)]
            + ["chat.asgi:application"],
            env,
            self.web_log,
        )
        wait_http(f"{self.base_url}/login/", self.web, self.web_log)
        return self

    def alive(self) -> dict[str, bool]:
        return {
            "daphne": self.web is not None and self.web.poll() is None,
            "offline_server": self.model is not None and self.model.poll() is None,
        }

    def stop(self) -> None:
        for proc in (self.web, self.model):
            if proc is not None:
                stop_process(proc)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_problems(self) -> list[str]:
        """Tracebacks, errors and warnings the children logged (evidence for the report)."""
        found: list[str] = []
        for path in (self.web_log, self.model_log):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                if any(word in line for word in ("Traceback", "ERROR", "WARNING", "Error")):
                    found.append(f"{path.name}: {line[:300]}")
        return found
