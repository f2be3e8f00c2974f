"""onnxruntime latencies measured in a process of their own, under onnxruntime's default threading.

Why a child process: onnxruntime's default lets idle intra-op threads spin for the next run, and every session
owns such a pool, so sessions timed one after another in one process steal each other's cores (and torch's):
measured at N = 4096, batch 1, the dense layer read 4.3 ms beside three spinning sessions against 1.6 ms with
spinning off. Turning spinning off (the bench's earlier set-up) charges a thread wake-up to every parallel node
instead, which a many-node graph pays hundreds of times a call (ACDC-12: 1.8 ms against 0.9 ms spinning, alone).
A deployment runs one model with the defaults, so here every session shares one global pool of spinning threads
(``set_global_thread_pool_sizes``), which must be set before the first session of a process — hence a fresh
process, which also keeps the pool away from the parent's torch timings.

Protocol: the parent writes one JSON object to the child's stdin: ``{"files": {name: path}, "n": N, "batches":
[...], "rounds": {batch: R}, "threads": T, "seed": S}``; the child's last line of output is ``{batch: {name:
[seconds per round]}}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

CHILD_TIMEOUT_S = 1800


def ort_samples(files: Mapping[str, str], n: int, batches: Sequence[int], rounds: Mapping[int, int], threads: int,
                seed: int = 0) -> dict[int, dict[str, list[float]]]:
    """Seconds per call of each ONNX file (input ``input_0`` of shape (batch, n), fp32) for each batch, every
    file interleaved in shuffled rounds (:func:`surgeon.bench.inference.interleaved_samples`), timed in a child
    process with ``threads`` intra-op threads shared by every session."""
    spec = {"files": dict(files), "n": n, "batches": list(batches), "rounds": {str(b): r for b, r in rounds.items()},
            "threads": threads, "seed": seed}
    # the child imports this very package, wherever it was imported from here (an install or a source tree)
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "surgeon.bench.ort_timing"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the onnxruntime timing process ran past {CHILD_TIMEOUT_S} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the onnxruntime timing process failed (exit status {done.returncode}): {last}")
    # the result is the last line: anything a library printed before it is not ours to parse
    return {int(batch): cells for batch, cells in json.loads(lines[-1]).items()}


def _time_in_this_process(spec: dict) -> dict[str, dict[str, list[float]]]:
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    from surgeon.bench.inference import interleaved_samples

    ort_state.set_global_thread_pool_sizes(spec["threads"], 1)
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.log_severity_level = 3
    sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                for name, path in spec["files"].items()}
    inputs = np.random.default_rng(spec["seed"])
    out = {}
    for batch in spec["batches"]:
        feed = {"input_0": inputs.standard_normal((batch, spec["n"]), dtype=np.float32)}
        calls = {name: (lambda s=session, f=feed: s.run(None, f)) for name, session in sessions.items()}
        out[str(batch)] = interleaved_samples(calls, spec["rounds"][str(batch)], seed=spec["seed"])
    return out


if __name__ == "__main__":
    result = _time_in_this_process(json.load(sys.stdin))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
