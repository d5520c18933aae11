"""METEOR and SPICE through the Java tools shipped with pycocoevalcap.

Nothing is started at import time.  :func:`java_metrics_status` says whether a
metric can run (``java`` on PATH, pycocoevalcap installed, for SPICE the
Stanford CoreNLP 3.6.0 jars that SPICE downloads on first use -- which fails
offline, so they are required to be present already).  The tools are run with
a wall-clock timeout; a failure raises :class:`JavaMetricError` with a short
reason, which :func:`captioner.metrics.evaluate_captions` turns into a
"skipped" entry.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np

from ._inputs import check_pair
from ..errors import CaptionerError

__all__ = ["JavaMetricError", "java_metrics_status", "meteor_score", "spice_score"]

DEFAULT_TIMEOUT = 300.0


class JavaMetricError(CaptionerError, RuntimeError):
    """A Java-based metric could not be computed."""


def _pycoco_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    return Path(locs[0]) if locs else None


def java_metrics_status() -> dict[str, str | None]:
    """``{"METEOR": None | reason, "SPICE": None | reason}`` (``None`` = available)."""
    if shutil.which("java") is None:
        r = "java executable not found on PATH"
        return {"METEOR": r, "SPICE": r}
    base = _pycoco_dir()
    if base is None:
        r = "pycocoevalcap is not installed (pip install 'captioner[java-metrics]')"
        return {"METEOR": r, "SPICE": r}
    out: dict[str, str | None] = {}
    meteor = base / "meteor" / "meteor-1.5.jar"
    if not meteor.is_file():
        out["METEOR"] = f"{meteor} missing"
    elif not (base / "meteor" / "data" / "paraphrase-en.gz").is_file():
        out["METEOR"] = "METEOR paraphrase table (meteor/data/paraphrase-en.gz) missing"
    else:
        out["METEOR"] = None
    spice = base / "spice" / "spice-1.0.jar"
    lib = base / "spice" / "lib"
    if not spice.is_file():
        out["SPICE"] = f"{spice} missing"
    elif not (lib / "stanford-corenlp-3.6.0.jar").is_file() or not (lib / "stanford-corenlp-3.6.0-models.jar").is_file():
        out["SPICE"] = (
            "Stanford CoreNLP 3.6.0 jars not in pycocoevalcap/spice/lib (SPICE downloads them on first use, "
            "which needs internet; run pycocoevalcap.spice.get_stanford_models once online)"
        )
    else:
        out["SPICE"] = None
    return out


def _require(metric: str) -> Path:
    reason = java_metrics_status()[metric]
    if reason is not None:
        raise JavaMetricError(reason)
    base = _pycoco_dir()
    assert base is not None
    return base


# --------------------------------------------------------------------------
# METEOR 1.5 (-stdio protocol, as used by coco-caption)
# --------------------------------------------------------------------------
def _reader(stream, q: "queue.Queue[str | None]") -> None:
    for line in iter(stream.readline, b""):
        q.put(line.decode("utf-8", "replace"))
    q.put(None)


def meteor_score(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[float, np.ndarray]:
    """METEOR like pycocoevalcap's ``Meteor().compute_score`` (tokenized inputs).

    Returns ``(corpus score, per-image array in the order of references)``.
    """
    base = _require("METEOR")
    ids, cands, refs = check_pair(candidates, references)
    cmd = ["java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(
        cmd, cwd=base / "meteor", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    q: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    deadline = _Deadline(timeout)

    def send(lines: list[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        t = threading.Thread(target=_write, args=(proc.stdin, data), daemon=True)
        t.start()

    def recv(count: int) -> list[str]:
        out = []
        for _ in range(count):
            try:
                line = q.get(timeout=deadline.left())
            except queue.Empty:
                raise JavaMetricError(f"METEOR timed out after {timeout:.0f}s") from None
            if line is None:
                raise JavaMetricError(f"METEOR process exited early (code {proc.poll()})")
            out.append(line.strip())
        return out

    try:
        score_lines = []
        for k in ids:
            hyp = cands[k].replace("|||", "").replace("  ", " ")
            score_lines.append(" ||| ".join(("SCORE", " ||| ".join(refs[k]), hyp)))
        send(score_lines)
        stats = recv(len(ids))
        send(["EVAL ||| " + " ||| ".join(stats)])
        res = recv(len(ids) + 1)
        try:
            per = np.array([float(x) for x in res[:-1]], dtype=np.float64)
            total = float(res[-1])
        except ValueError as e:
            raise JavaMetricError(f"unexpected METEOR output: {e}") from None
        return total, per
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.kill()
        proc.wait()


def _write(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


class _Deadline:
    def __init__(self, seconds: float):
        import time

        self._time = time.monotonic
        self._end = self._time() + seconds

    def left(self) -> float:
        return max(0.001, self._end - self._time())


# --------------------------------------------------------------------------
# SPICE 1.0
# --------------------------------------------------------------------------
def spice_score(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[float, np.ndarray]:
    """SPICE F-score like pycocoevalcap's ``Spice().compute_score`` (tokenized inputs).

    Returns ``(mean score, per-image array in the order of references)``.
    """
    base = _require("SPICE")
    ids, cands, refs = check_pair(candidates, references)
    data = [
        {
            "image_id": i,
            "test": cands[k],
            "refs": refs[k],
        }
        for i, k in enumerate(ids)
    ]
    with tempfile.TemporaryDirectory(prefix="captioner-spice-") as tmp:
        inp = os.path.join(tmp, "in.json")
        out = os.path.join(tmp, "out.json")
        with open(inp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        cmd = ["java", "-jar", "-Xmx8G", "spice-1.0.jar", inp, "-out", out, "-subset", "-silent"]
        try:
            subprocess.run(
                cmd, cwd=base / "spice", timeout=timeout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except subprocess.TimeoutExpired:
            raise JavaMetricError(f"SPICE timed out after {timeout:.0f}s") from None
        except subprocess.CalledProcessError as e:
            tail = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise JavaMetricError(f"SPICE failed (exit {e.returncode}): {tail[0][:200]}") from None
        with open(out, encoding="utf-8") as f:
            results = json.load(f)
    by_id = {}
    for item in results:
        try:
            by_id[int(item["image_id"])] = float(item["scores"]["All"]["f"])
        except (TypeError, ValueError, KeyError):
            by_id[int(item["image_id"])] = float("nan")
    per = np.array([by_id.get(i, float("nan")) for i in range(len(ids))], dtype=np.float64)
    return float(np.mean(per)) if len(per) else 0.0, per
