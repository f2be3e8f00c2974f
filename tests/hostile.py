"""Harness of the hostile-input tests: run the installed ``surgeon`` entry point on inputs built on the fly and
check the promise for bad input (exit code, one stderr line, no traceback, nothing left behind, input untouched,
no payload ran).

Starting the CLI costs seconds (torch loads), which 40+ cases on 2 cores cannot afford. A *zygote* process
imports the CLI once, then forks one child per case; each child runs the real console script (``runpy`` on
the file next to ``sys.executable``) with its own argv, working directory, umask and stdout/stderr files, and
exits with the script's exit code. Cases that need a fresh interpreter (a signal during the imports) start the
entry point as a plain subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch


def entry_point() -> list[str]:
    """The installed console script (next to the interpreter), else the module it runs."""
    script = Path(sys.executable).parent / "surgeon"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "surgeon_launcher"]


# Quiet, single-threaded children: several cases run at once on two shared cores.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SURGEON_DEBUG": "0", "COLUMNS": "160",
             "PYTHONWARNINGS": "ignore::DeprecationWarning"}

_ZYGOTE = r'''
import json, os, runpy, sys, traceback
command = json.loads(sys.argv[1])
import surgeon.cli.app  # noqa: F401 - the expensive part, done once before any fork
import torch._dynamo  # noqa: F401 - imported by the first call of a torch custom op (the structured layers)
import typer._adapters  # noqa: F401 - imported by typer's first parse
assert len(os.listdir("/proc/self/task")) == 1, "no threads may run when forking"


def child(case):
    code = 1
    try:
        os.chdir(case["cwd"])
        os.umask(case["umask"])
        os.environ.update(case["env"])
        if case.get("pidfile"):
            with open(case["pidfile"] + ".part", "w") as handle:
                handle.write(str(os.getpid()))
            os.rename(case["pidfile"] + ".part", case["pidfile"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            handle = os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.argv = [command[-1], *case["argv"]]
        try:
            if len(command) == 1:
                runpy.run_path(command[0], run_name="__main__")
            else:
                runpy.run_module(command[-1], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                sys.stderr.write(exc.code + "\n")
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in sys.stdin:
    batch = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pids = {}
    for index, case in enumerate(batch):
        pid = os.fork()
        if pid == 0:
            child(case)
        pids[pid] = index
    codes = [None] * len(batch)
    while pids:
        pid, status = os.wait()
        codes[pids.pop(pid)] = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps(codes) + "\n")
    sys.stdout.flush()
'''


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class Zygote:
    """One pre-imported CLI process that forks a child per command; batches run concurrently."""

    def __init__(self, scratch: Path) -> None:
        command = entry_point()
        if len(command) > 1:
            command = [command[0], command[-1]]  # a module for runpy.run_module
        self.scratch = scratch
        self._lock = threading.Lock()
        self._count = 0
        self._proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE, json.dumps(command)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, **CHILD_ENV})

    def run_many(self, calls: list[dict]) -> list[Result]:
        """``calls``: dicts with ``argv``, ``cwd`` and optional ``umask``, ``env``, ``stdout`` (a path, e.g. a
        FIFO) and ``pidfile`` (where the child writes its pid, to be signalled); they run at the same time."""
        with self._lock:
            cases = []
            for call in calls:
                self._count += 1
                stem = self.scratch / f"call{self._count}"
                cases.append({"argv": [str(a) for a in call["argv"]], "cwd": str(call["cwd"]),
                              "umask": call.get("umask", 0o022), "env": {**CHILD_ENV, **call.get("env", {})},
                              "stdout": str(call.get("stdout", f"{stem}.out")), "stderr": f"{stem}.err",
                              "pidfile": str(call.get("pidfile", ""))})
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(cases) + "\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
            if not reply:
                raise RuntimeError("the zygote process died")
            codes = json.loads(reply)
        return [Result(code, "" if "stdout" in call else Path(case["stdout"]).read_text(errors="replace"),
                       Path(case["stderr"]).read_text(errors="replace"))
                for code, case, call in zip(codes, cases, calls)]

    def run(self, argv: list, cwd: Path, **options) -> Result:
        return self.run_many([{"argv": argv, "cwd": cwd, **options}])[0]

    def interrupt(self, argv: list, cwd: Path, moment, signum: int, **options) -> Result:
        """Run ``argv`` and send it ``signum`` as soon as ``moment()`` is true (polled every 2 ms)."""
        pidfile = self.scratch / f"pid{self._count + 1}-{time.monotonic_ns()}"
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(
            self.run(argv, cwd, pidfile=pidfile, **options)))
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while not (pidfile.exists() and moment()):
                if not worker.is_alive() or time.monotonic() > deadline:
                    raise AssertionError("the command ended (or hung) before the moment to interrupt it")
                time.sleep(0.002)
            os.kill(int(pidfile.read_text()), signum)
        finally:
            worker.join(timeout=120)
        return outcome[0]

    def close(self) -> None:
        self._proc.kill()  # it holds no state worth a clean shutdown (which takes seconds with torch loaded)
        self._proc.wait(timeout=30)
        if self._proc.stdin is not None:
            self._proc.stdin.close()


# --- what a case must leave as it found it -------------------------------------------------------------------


def folder_state(folder: Path) -> dict[str, str]:
    """Everything under ``folder`` (hidden temporaries and empty folders included) -> its sha256 (or "folder")."""
    return {str(p.relative_to(folder)): "folder" if p.is_dir() and not p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def assert_clean_failure(result: Result, code: int, *needles: str) -> None:
    """Exit ``code``, exactly one ``error:`` line on stderr naming the problem, no traceback anywhere."""
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(result.stderr_lines) == 1, result.stderr
    assert result.stderr_lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle.lower() in result.stderr.lower(), (needle, result.stderr)


# --- hostile files ----------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates ``marker``. A case passes only if the marker never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def payload_pickle(marker: Path) -> bytes:
    """A legacy (non-zip) pickle whose loading runs the payload."""
    return pickle.dumps(Payload(marker), protocol=2)


def payload_torch_file(path: Path, marker: Path) -> None:
    """A zip-format ``torch.save`` whose loading runs the payload (as a whole-module pickle would)."""
    torch.save({"model": Payload(marker)}, path)


def safetensors_bytes(header: dict, data: bytes, *, header_length: int | None = None) -> bytes:
    """A safetensors file from a header dict (possibly forged) and a data section."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    length = len(raw) if header_length is None else header_length
    return struct.pack("<Q", length) + raw + data


def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def tampered(blob: bytes, edit) -> bytes:
    """``blob`` (a safetensors file) with ``edit(header)`` applied to its JSON header, data unchanged."""
    header, data = split_safetensors(blob)
    edit(header)
    return safetensors_bytes(header, data)
