"""The resumable JSON-lines output of a batch run: one record per captioned image.

Records are appended as they come, each line flushed. A rerun reads what is already there
and captions only the rest; a line cut off by a kill is dropped (its image is captioned
again). Under torchrun each rank appends to its own part file (``out.rank3.jsonl``), merged
into the output in input order when the run ends — or by the next run, if this one was cut
short. Error records are never written, so a rerun retries those images.

One run writes an output at a time: the run (its rank 0) holds an exclusive lock on the
output file from before it reads what is done until its last record, and a second run on the
same output is refused in one line (two at once wrote every record they shared twice). The
kernel drops the lock with the process, so a run killed at any moment leaves the output free
to resume.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Iterator, Optional

from .. import distributed
from ..distributed import DistInfo
from ..errors import CaptionerError, MissingDependencyError


class OutputBusyError(CaptionerError, RuntimeError):
    """An output file another process is writing (it holds the file's lock)."""


def lock_output(output: Path) -> IO:
    """``output`` opened for appending (created if new) with an exclusive lock, held until the
    handle is closed; ``OutputBusyError`` when another process holds it. POSIX ``flock``: where
    the platform has no ``fcntl``, or the file system refuses locks, the run is refused rather
    than left to write unlocked."""
    try:
        import fcntl
    except ImportError:
        raise MissingDependencyError(
            f"--output {output}: keeping a second run from writing the same output needs POSIX file locks (fcntl), "
            "which this platform lacks; caption without --output and redirect the printed lines"
        ) from None
    handle = open(output, "a", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputBusyError(f"{output} is being written by another captioner run; wait for it to finish, "
                              "or choose another --output") from None
    except OSError as e:  # a file system without locks (some network mounts)
        handle.close()
        raise OutputBusyError(f"{output}: cannot be locked ({e.strerror or e}); write the output to a local "
                              "file system") from None
    return handle


def records(path: Path) -> Iterator[tuple[str, dict, str]]:
    """(name, record, line) for each captioned record of a JSON-lines output — the name is
    the image, or a shard sample's key; lines that do not parse (a cut-off last line) and
    error records are skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "caption" in record:
                yield record.get("key", record.get("image")), record, line.rstrip("\n")


def part_files(output: Path) -> list[Path]:
    """The per-rank part files of ``output`` (``preds.rank0.jsonl`` …) that torchrun ranks write."""
    prefix, suffix = f"{output.stem}.rank", output.suffix
    return sorted(
        path
        for path in output.parent.glob(f"{prefix}*{suffix}")
        if path.name[len(prefix) : len(path.name) - len(suffix)].isdigit()
    )


def merge_parts(output: Path, position: dict[str, int], field: str) -> None:
    """Drop a cut-off last line of ``output``, append the records of its part files (each
    image or key once, in input order: ordered by ``position`` of their ``field``, the image
    or the shard, and part-file order within a shard) and delete them.

    Appending, not rewriting: a merge that is cut short leaves the part files in place, and the
    next run drops the cut-off line and merges again without duplicating what already landed.
    """
    drop_cut_off_line(output)
    parts = part_files(output)
    if not parts:
        return
    landed = {name for name, _, _ in records(output)}
    new: dict[str, tuple[int, str]] = {}
    for part in parts:
        for name, record, line in records(part):
            if name not in landed and name not in new:
                new[name] = (position.get(record.get(field), len(position)), line)
    with open(output, "a", encoding="utf-8") as f:
        for _, line in sorted(new.values(), key=lambda item: item[0]):  # stable: a shard's records keep their order
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    for part in parts:
        part.unlink()


def drop_cut_off_line(output: Path) -> None:
    """Truncate a JSON-lines file back to its last complete line.

    An interrupted run can leave a last line without its newline; appending after it would
    glue the next record onto it, losing both. Its image is captioned again instead.
    """
    if not output.is_file():
        return
    with open(output, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - (1 << 16))
            f.seek(start)
            newline = f.read(position - start).rfind(b"\n")
            if newline >= 0:
                if start + newline + 1 < end:
                    f.truncate(start + newline + 1)
                return
            position = start
        f.truncate(0)


class Ledger:
    """One run's view of its output: what is ``done`` already, where this process appends
    (the output, or under torchrun its rank's part file), and the merge at the end.

    ``position``/``field`` order the merge: each name's place in the input (images, or shards
    for shard samples) and the record field that holds it."""

    def __init__(self, output: Optional[Path], position: dict[str, int], field: str, info: DistInfo):
        self.output, self.position, self.field, self.info = output, position, field, info
        self.done: set[str] = set()
        self.sink_path: Optional[Path] = None
        self._lock: Optional[IO] = None
        if output is None:
            return
        busy = None
        if info.is_main:
            output.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._lock = lock_output(output)
            except OutputBusyError as e:
                busy = e
        if distributed.broadcast_flag(busy is not None, info):  # every rank stops, with rank 0's reason
            raise busy or OutputBusyError(f"{output} is being written by another captioner run")
        if info.is_main:  # what an interrupted run left: a cut-off line, part files of its ranks
            merge_parts(output, position, field)
        distributed.barrier(info)
        self.done = {name for name, _, _ in records(output)}
        distributed.barrier(info)  # every rank has read the same files before any rank appends to them
        self.sink_path = output.with_name(f"{output.stem}.rank{info.rank}{output.suffix}") if info.enabled else output

    def write(self, records_: Iterator) -> Iterator:
        """Pass ``records_`` (``CaptionRecord``) through, appending the captioned ones to the sink."""
        if self.sink_path is None:
            yield from records_
            return
        with open(self.sink_path, "a", encoding="utf-8") as sink:
            for record in records_:
                if record.error is None:  # errors are not written, so a rerun retries those images
                    print(record.to_json(), file=sink, flush=True)
                yield record

    def finish(self) -> None:
        """After this process's last record: every rank's part merged into the output, and the
        output's lock released."""
        if self.output is None:
            return
        distributed.barrier(self.info)  # every rank has written its part
        if self.info.is_main:
            merge_parts(self.output, self.position, self.field)
        self.close()

    def close(self) -> None:
        """Release the output's lock (a run that stops early: the next one resumes)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
