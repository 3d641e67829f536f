"""Run model-written Python in a throwaway, locked-down process (the `run_python` tool).

`run_python(code)` starts a fresh interpreter that cannot reach the network, cannot see the
app's environment, processes or private files, cannot change anything on the host's disk, and
is bounded in CPU time, wall time, memory, processes, file size and output. When this machine
cannot provide that isolation the tool *fails closed*: `isolation_problem()` says why and
`run_python` raises `SandboxUnavailable` instead of running the code with less protection.

How a run is built, layer by layer (Linux only; the worker must run as root, see below):

1. A small boot helper (this very file, run as ``python -I -S sandbox.py CONFIG``, so no site
   packages and no environment variables are involved) starts in its own session with an
   empty environment. Nothing from the worker leaks through ``os.environ``.
2. The helper reads the code from stdin and calls ``unshare(2)`` for new network, PID, mount,
   IPC and UTS namespaces, then forks the namespace's init (PID 1). When init exits, the
   kernel kills every process left in the namespace, so nothing outlives a run, not even a
   grandchild that called ``setsid()`` to leave our process group. Helper and init die with
   their parent (``PR_SET_PDEATHSIG``), so a worker killed mid-run (a Celery hard time limit)
   takes its sandbox down too.
3. In the new network namespace the only interface is a loopback that is down: no TCP/UDP to
   anywhere (the host's 127.0.0.1 included) and no DNS.
4. In the new mount namespace init mounts a size-capped tmpfs on /tmp (also bound onto
   /var/tmp and /dev/shm) as the working directory, a fresh /proc that shows only the
   sandbox's own processes, and remounts the root filesystem read-only. The code cannot leave
   files on the host or fill its disk, and the tmpfs disappears with the namespace: the "temp
   dir" is gone when the run ends, with no cleanup step that could be skipped.
5. Init forks the program (PID 2), which sets rlimits (CPU, address space, processes, file
   size, open files, no core dumps), drops to a fresh unprivileged uid/gid chosen at random
   from `SANDBOX_UID_RANGE` (no supplementary groups), sets ``no_new_privs`` so setuid binaries
   cannot give privileges back, and execs ``python -I -S main.py``. Init drops to the same uid
   and waits for it; being PID 2 gives the program ordinary signal semantics (PID 1 ignores
   signals it has no handler for), so the CPU limit arrives as a recognisable SIGXCPU.
6. The worker side enforces the wall-clock limit (the helper kills init, which makes the
   kernel kill and reap the whole namespace; killing the process group is the fallback), reads
   stdout/stderr incrementally keeping only the first `output_bytes` of each (the rest is
   drained and discarded so the program still runs to completion), and gets the exit status
   and CPU time from init over a private status pipe, so a setup failure can never be
   mistaken for the user's program failing.

Why a per-run uid rather than ``nobody``: RLIMIT_NPROC counts every process of a uid across
the system, so with a shared uid one run's fork bomb would stop other runs (and any daemon
running as ``nobody``) from starting processes. A fresh uid also owns no files anywhere.

Tradeoffs and what this does *not* do:

- The worker must be root (or hold CAP_SYS_ADMIN, CAP_SETUID and CAP_SETGID) to create the
  namespaces and switch uid. Only the boot helper and init's setup run with privileges, and
  never model code: privileges are dropped before the exec, and init drops them too.
- This is process isolation on a shared kernel, not a VM: a kernel bug is the boundary and
  there is no seccomp filter. For hostile multi-tenant use, run the workers under gVisor or
  in a microVM as well.
- The host filesystem is visible read-only, so anything world-readable is readable. The app's
  data directory (``var/``, holding the SQLite database) must be mode 0700 and secrets files
  0600, owned by the app's user; secrets must not live in world-readable files.
- RLIMIT_AS bounds each process, not the run: the worst case is ``max_processes *
  memory_bytes`` (plus `disk_bytes` of tmpfs). A cgroup would bound the total but needs a
  delegated cgroup v2 subtree that containers often do not have.
- Only the standard library is importable (``-S``), and the interpreter is the first one the
  unprivileged uid can execute (a pyenv install under /root is not; /usr/bin/python3 is).
- RLIMIT_NPROC counts threads, so `max_processes` also caps threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import resource
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

# Fresh uid (and gid of the same number) per run; far above any uid a distribution allocates.
SANDBOX_UID_RANGE = range(2_000_000_000, 2_001_000_000)

_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# The whole environment the boot helper and the program see: nothing inherited.
_CHILD_ENV = {"PATH": _SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/tmp"}
_BOOT_SCRIPT = os.path.abspath(__file__)
_WORK_DIR = "/tmp"
_SCRIPT_NAME = "main.py"
_MAX_OPEN_FILES = 64
# A tmpfs costs memory per inode as well as per byte: cap both.
_MAX_INODES = 16_384
_READ_CHUNK = 64 * 1024
# Enough of stderr's end to find the exception line even when stderr was truncated.
_STDERR_TAIL_BYTES = 8 * 1024
_STATUS_MAX_BYTES = 64 * 1024
# How long to wait for pipes to close after killing the group before giving up on them.
_KILL_GRACE_S = 2.0
_TRACEBACK_HEADER = "Traceback (most recent call last):"

# Linux ABI constants that the os module does not export on Python 3.11.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38

# What the availability probe runs inside a real sandbox: it must come back "ok".
_PROBE_CODE = """\
import os, socket
if os.getuid() == 0 or os.getgid() == 0:
    raise SystemExit("still running as root")
names = sorted(name for _, name in socket.if_nameindex())
if names != ["lo"]:
    raise SystemExit(f"network interfaces visible: {names}")
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1).close()
except OSError:
    pass
else:
    raise SystemExit("loopback is reachable")
print("ok")
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run; the defaults suit a chat tool call."""

    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_bytes: int = 512 * 1024 * 1024
    # Processes *and threads* of the run, the program itself included.
    max_processes: int = 32
    # Kept per stream (stdout and stderr each); the rest is discarded.
    output_bytes: int = 64 * 1024
    # Largest single file the program may write.
    file_bytes: int = 16 * 1024 * 1024
    # Size of the working tmpfs (shared by /tmp, /var/tmp and /dev/shm).
    disk_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What a run produced.

    `exit_code` is the program's exit status (negative: killed by that signal), or None when
    the wall-clock limit killed it. `exception` is the last line of the traceback on an error
    exit (``"ZeroDivisionError: division by zero"``), or a sentence saying which limit stopped
    the program. `timed_out` covers both the CPU and the wall-clock limit.
    """

    stdout: str
    stderr: str
    exception: str | None
    exit_code: int | None
    timed_out: bool
    truncated: bool
    duration_s: float


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate model code, so the tool refuses to run it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def isolation_problem() -> str | None:
    """Why this machine cannot sandbox code, or None if it can (probed once, then cached).

    The probe runs a real sandboxed program that checks it is unprivileged and offline, so a
    None here means the full stack of namespaces, mounts and uid switch worked.
    """
    return _probe().problem


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` as ``main.py`` in a fresh sandbox and report what happened.

    Raises `SandboxUnavailable` when isolation is unavailable or a sandbox could not be set
    up; the program's own failures (exceptions, limits) are reported in the result instead.
    """
    probe = _probe()
    if probe.problem is not None or probe.python is None:
        raise SandboxUnavailable(probe.problem or "no usable Python interpreter")
    try:
        return _execute(code, limits or SandboxLimits(), probe.python)
    except _SetupError as exc:
        raise SandboxUnavailable(str(exc)) from exc


@dataclass(frozen=True)
class _Probe:
    problem: str | None
    python: str | None


class _SetupError(Exception):
    """The sandbox could not be set up, so the program never started; `stage` says where."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


_PROBE_LIMITS = SandboxLimits(cpu_seconds=5, wall_seconds=10.0, max_processes=8)


@functools.cache
def _probe() -> _Probe:
    if not sys.platform.startswith("linux"):
        return _Probe(f"the sandbox needs Linux namespaces; this is {sys.platform}", None)
    if os.geteuid() != 0:
        return _Probe(
            "the sandbox needs root (CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID) to create "
            "namespaces and switch to an unprivileged uid; this worker runs as uid "
            f"{os.geteuid()}",
            None,
        )
    failures: list[str] = []
    for python in _interpreter_candidates():
        try:
            result = _execute(_PROBE_CODE, _PROBE_LIMITS, python)
        except _SetupError as exc:
            if exc.stage != "exec":
                # Namespaces or mounts failed: another interpreter will not help.
                return _Probe(str(exc), None)
            failures.append(str(exc))
            continue
        if result.stdout.strip() == "ok":
            return _Probe(None, python)
        detail = result.exception or result.stderr.strip()[-300:] or f"exit {result.exit_code}"
        failures.append(f"isolation self-test failed with {python}: {detail}")
    return _Probe("; ".join(failures) or "no Python interpreter found", None)


def _interpreter_candidates() -> list[str]:
    """Interpreters to try, ours first; the unprivileged uid must be able to execute one."""
    found = [os.path.realpath(sys.executable)]
    base = getattr(sys, "_base_executable", None)
    if isinstance(base, str):
        found.append(os.path.realpath(base))
    system = shutil.which("python3", path=_SAFE_PATH)
    if system:
        found.append(os.path.realpath(system))
    return list(dict.fromkeys(found))


class _Capture:
    """Keeps the first `limit` bytes of a stream and optionally its last `tail` bytes.

    Memory stays bounded however much the program prints: the middle is counted, not kept.
    """

    def __init__(self, limit: int, tail: int = 0) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.limit = limit
        self.tail_limit = tail
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = max(self.limit - len(self.head), 0)
        self.head += chunk[:room]
        self.dropped += max(len(chunk) - room, 0)
        if self.tail_limit:
            self.tail += chunk
            del self.tail[: -self.tail_limit]

    def text(self) -> str:
        return self.head.decode("utf-8", "replace")


def _execute(code: str, limits: SandboxLimits, python: str) -> SandboxResult:
    """Run `code` in a sandbox using `python`; raises `_SetupError` if the sandbox failed."""
    started = time.monotonic()
    config = {
        "uid": _fresh_uid(),
        "python": python,
        "limits": asdict(limits),
        "parent_pid": os.getpid(),
    }
    status_r, status_w = os.pipe()
    try:
        config["status_fd"] = status_w
        with subprocess.Popen(
            [sys.executable, "-I", "-S", _BOOT_SCRIPT, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_CHILD_ENV,
            cwd="/",
            start_new_session=True,
            pass_fds=(status_w,),
        ) as proc:
            os.close(status_w)
            status_w = -1
            try:
                return _supervise(proc, status_r, code, limits, started)
            finally:
                # Kill stragglers before Popen reaps the helper: its zombie keeps the process
                # group id reserved, so this cannot hit an unrelated group that reused it.
                _kill_group(proc)
    finally:
        os.close(status_r)
        if status_w != -1:
            os.close(status_w)


def _fresh_uid() -> int:
    return SANDBOX_UID_RANGE.start + secrets.randbelow(len(SANDBOX_UID_RANGE))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _supervise(
    proc: subprocess.Popen[bytes],
    status_r: int,
    code: str,
    limits: SandboxLimits,
    started: float,
) -> SandboxResult:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        # The helper reads all of stdin before doing anything else, so this cannot deadlock.
        proc.stdin.write(code.encode("utf-8", "replace"))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # The helper died early; its status report (or its absence) says why.
    stdout = _Capture(limits.output_bytes)
    stderr = _Capture(limits.output_bytes, tail=_STDERR_TAIL_BYTES)
    status = _Capture(_STATUS_MAX_BYTES)
    captures = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr, status_r: status}
    wall_timed_out = _pump(proc, captures, started + limits.wall_seconds)
    returncode, cpu_s = _read_status(bytes(status.head))
    stderr_text = stderr.text()
    if wall_timed_out:
        exit_code = None
        exception: str | None = (
            f"TimeoutError: wall-clock limit of {limits.wall_seconds:g} s exceeded"
        )
        timed_out = True
    else:
        exit_code = returncode
        # SIGXCPU comes only from the soft CPU limit; a SIGKILL after the program has used
        # that much CPU is the hard limit (a program ignoring SIGXCPU). rusage can read a
        # little below the kernel's own accounting, hence the comparison with the soft limit.
        timed_out = returncode == -signal.SIGXCPU or (
            returncode == -signal.SIGKILL and cpu_s >= limits.cpu_seconds
        )
        exception = _describe_failure(exit_code, timed_out, limits, stderr_text, bytes(stderr.tail))
    return SandboxResult(
        stdout=stdout.text(),
        stderr=stderr_text,
        exception=exception,
        exit_code=exit_code,
        timed_out=timed_out,
        truncated=bool(stdout.dropped or stderr.dropped),
        duration_s=time.monotonic() - started,
    )


def _pump(proc: subprocess.Popen[bytes], captures: dict[int, _Capture], deadline: float) -> bool:
    """Read every pipe until all close, stopping the run at `deadline`. True if it had to.

    At the deadline the helper is asked to kill the namespace's init (and waits until the
    kernel has torn the namespace down); if the pipes are still open after a grace period, the
    whole process group is killed; after another, we stop waiting.
    """
    escalations = [_terminate_helper, _kill_group]
    stopped = False
    with selectors.DefaultSelector() as selector:
        for fd in captures:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not escalations:
                    break
                escalations.pop(0)(proc)
                stopped = True
                deadline = time.monotonic() + _KILL_GRACE_S
                continue
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ_CHUNK)
                if chunk:
                    captures[key.fd].feed(chunk)
                else:
                    selector.unregister(key.fd)
    return stopped


def _terminate_helper(proc: subprocess.Popen[bytes]) -> None:
    # os.kill, not proc.send_signal: the latter would reap the helper, freeing its pid (and so
    # the process group id) for reuse before the final killpg.
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)


def _read_status(raw: bytes) -> tuple[int | None, float]:
    """The program's return code and CPU seconds, as init reported them.

    Raises `_SetupError` if the helper or init reported a setup failure. (None, 0.0) when
    there is no report because the run was killed at the wall-clock limit.
    """
    returncode: int | None = None
    cpu_s = 0.0
    for line in raw.decode("utf-8", "replace").splitlines():
        message = json.loads(line)
        if "error" in message:
            raise _SetupError(message["stage"], message["error"])
        returncode = int(message["returncode"])
        cpu_s = float(message["cpu_s"])
    return returncode, cpu_s


def _describe_failure(
    exit_code: int | None,
    cpu_timed_out: bool,
    limits: SandboxLimits,
    stderr_head: str,
    stderr_tail: bytes,
) -> str | None:
    if cpu_timed_out:
        return f"TimeoutError: CPU time limit of {limits.cpu_seconds} s exceeded"
    if exit_code is None or exit_code == 0:
        return None
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:  # Real-time signals have no names.
            return f"killed by signal {-exit_code}"
    tail = stderr_tail.decode("utf-8", "replace")
    if _TRACEBACK_HEADER not in stderr_head and _TRACEBACK_HEADER not in tail:
        return None  # e.g. sys.exit(3): the exit code says it all.
    # The exception line is the last unindented line after the last traceback header.
    after = tail.rsplit(_TRACEBACK_HEADER, 1)[-1]
    lines = [line for line in after.splitlines() if line.strip() and not line[0].isspace()]
    return lines[-1] if lines else None


# ---------------------------------------------------------------------------------------
# The boot helper: runs as root in its own process (``python -I -S sandbox.py CONFIG``).
# ---------------------------------------------------------------------------------------


def _boot(config_json: str) -> NoReturn:
    """Create the namespaces and start their init; relay the worker's wall-clock kill."""
    config: dict[str, Any] = json.loads(config_json)
    status_fd: int = config["status_fd"]
    # The program must not inherit the status pipe: it could forge a report.
    os.set_inheritable(status_fd, False)
    try:
        # If the worker dies (a Celery hard time limit, say), take the run down with it; the
        # check after catches a worker that died before the setting took effect.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != config["parent_pid"]:
            os._exit(1)
        code = sys.stdin.buffer.read()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _libc_check(
            _libc().unshare(
                _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS
            ),
            "cannot create network, PID and mount namespaces (unshare)",
        )
        # Init watches this pipe to learn whether the helper died before init could arm its
        # own parent-death signal: the write end closes when the helper exits.
        lifeline_r, lifeline_w = os.pipe()
        # Hold SIGTERM until the handler knows which child to kill.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        init_pid = os.fork()
    except BaseException as exc:
        _report(status_fd, {"stage": "namespaces", "error": f"sandbox setup failed: {exc}"})
        os._exit(1)
    if init_pid == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(lifeline_w)
        _guarded(status_fd, lambda: _run_init(config, code, status_fd, lifeline_r))
    os.close(lifeline_r)

    def kill_namespace(signum: int, frame: object) -> None:
        # The worker's wall-clock limit. When init dies the kernel kills and reaps everything
        # in its namespace before waitpid below returns, so once this helper has exited the
        # worker can rely on nothing being left. Init cannot have been reaped yet, so its pid
        # cannot have been reused.
        os.kill(init_pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, kill_namespace)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.waitpid(init_pid, 0)
    os._exit(0)


def _run_init(config: dict[str, Any], code: bytes, status_fd: int, lifeline: int) -> NoReturn:
    """PID 1 of the sandbox: build its filesystem, start the program, report how it ended.

    The program is PID 2 rather than PID 1 so that it gets ordinary signal semantics (PID 1
    ignores signals it has no handler for, SIGXCPU and SIGALRM included).
    """
    uid: int = config["uid"]
    _prepare_filesystem(uid, config["limits"]["disk_bytes"], code)
    program_pid = os.fork()
    if program_pid == 0:
        _guarded(status_fd, lambda: _exec_program(config))
    # Nothing left here needs privileges, so shed them: the program shares this namespace.
    _drop_privileges(uid)
    # Die with the helper (set after the uid change, which clears the setting), and die now
    # if it is already gone: a readable lifeline means its write end has closed.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([lifeline], [], [], 0)[0]:
        os._exit(1)
    _, wait_status, usage = os.wait4(program_pid, 0)
    _report(
        status_fd,
        {
            "returncode": os.waitstatus_to_exitcode(wait_status),
            "cpu_s": usage.ru_utime + usage.ru_stime,
        },
    )
    # Init exiting makes the kernel kill whatever the program left running.
    os._exit(0)


def _prepare_filesystem(uid: int, disk_bytes: int, code: bytes) -> None:
    """Private mounts: a fresh tmpfs for scratch space, a fresh /proc, everything else read-only."""
    # Our mounts must not propagate back to the host's mount namespace.
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount(
        "tmpfs",
        _WORK_DIR,
        "tmpfs",
        _MS_NOSUID | _MS_NODEV,
        f"size={disk_bytes},nr_inodes={_MAX_INODES},mode=0700,uid={uid},gid={uid}",
    )
    for shared_tmp in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(shared_tmp):
            _mount(_WORK_DIR, shared_tmp, None, _MS_BIND)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount(None, "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)

    script = os.path.join(_WORK_DIR, _SCRIPT_NAME)
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(code)
    os.chown(script, uid, uid)


def _exec_program(config: dict[str, Any]) -> NoReturn:
    """PID 2: limits, then the unprivileged uid, then the interpreter on main.py."""
    uid: int = config["uid"]
    limits: dict[str, int] = config["limits"]
    os.chdir(_WORK_DIR)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    cpu = limits["cpu_seconds"]
    for limit, soft, hard in (
        # SIGXCPU at the soft limit says "CPU limit" unambiguously; SIGKILL a second later
        # stops a program that ignores SIGXCPU.
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"]),
        # Init runs as the same uid and counts against the limit too.
        (resource.RLIMIT_NPROC, limits["max_processes"] + 1, limits["max_processes"] + 1),
        (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES, _MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(limit, (soft, hard))
    _drop_privileges(uid)
    python: str = config["python"]
    try:
        os.execve(python, [python, "-I", "-S", _SCRIPT_NAME], _CHILD_ENV)
    except OSError as exc:
        raise _SetupError("exec", f"cannot run {python} as uid {uid}: {exc.strerror}") from exc


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise _SetupError("privileges", f"could not switch to uid {uid}")
    # No setuid binary (su, mount, ping) can give privileges back.
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def _guarded(status_fd: int, step: Callable[[], NoReturn]) -> NoReturn:
    """Run a forked child's `step`; report a failure, and never return to the parent's code."""
    try:
        step()
    except _SetupError as exc:
        _report(status_fd, {"stage": exc.stage, "error": str(exc)})
    except BaseException as exc:
        _report(status_fd, {"stage": "setup", "error": f"sandbox setup failed: {exc}"})
    finally:
        os._exit(125)


def _prctl(option: int, value: int) -> None:
    _libc_check(_libc().prctl(option, value, 0, 0, 0), f"prctl({option}, {value})")


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    return libc


def _libc_check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def encode(value: str | None) -> bytes | None:
        return value.encode() if value is not None else None

    result = _libc().mount(encode(source), encode(target), encode(fstype), flags, encode(data))
    _libc_check(result, f"mount {fstype or source or ''} on {target}")


def _report(status_fd: int, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(status_fd, json.dumps(message).encode() + b"\n")


if __name__ == "__main__":
    _boot(sys.argv[1])
