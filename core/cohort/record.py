"""The cohort's run record: one JSON line per study segmented (or failed), the summary table, and resume.

``<out-dir>/run-record.jsonl`` (one process) or ``run-record.<i>-of-<n>.jsonl`` (process ``i`` of ``n``:
processes never write the same file, also across nodes on a shared file system). Each line::

    {"study": "image_5", "status": "done", "engine": "propagation", "device": "CPU", "seconds": 0.8,
     "voxels": 123456, "ml": 1543.2, "warnings": [], "error": null, "out": "image_5.nii.gz",
     "settings": "3f1c...", "shots": 3, "finished_at": "2026-..."}

``settings`` is a hash of everything that decides the mask (engine or model, label, the supports' files and
slices, the study's file): a rerun skips a study whose mask exists and whose last successful line has the
same hash; any change (another model, other supports, a study file replaced) segments it again. Lines are
appended and flushed one at a time; a line cut short by a crash is ignored when reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_NAME = "run-record.jsonl"
RECORD_GLOB = "run-record*.jsonl"
#: the fields every line has, in this order (the issue's contract), then the others
FIELDS = ("study", "engine", "device", "seconds", "voxels", "ml", "warnings", "error")


def record_path(out_dir: str | os.PathLike[str], index: int = 0, count: int = 1) -> Path:
    """This process's record file in ``out_dir``."""
    name = RECORD_NAME if count <= 1 else f"run-record.{index}-of-{count}.jsonl"
    return Path(out_dir) / name


def fingerprint(path: str | os.PathLike[str] | None) -> dict | None:
    """What identifies an input's content cheaply: its resolved path, size and modification time (for a
    folder: its files' count, total size and newest time). None for a missing path."""
    if path is None:
        return None
    p = Path(path)
    try:
        if p.is_dir():
            count = size = newest = 0
            for folder, _dirs, files in os.walk(p):
                for name in files:
                    st = (Path(folder) / name).stat()
                    count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
            return {"path": str(p.resolve()), "files": count, "bytes": size, "mtime_ns": newest}
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(p), "missing": True}


def settings_hash(settings: Mapping) -> str:
    """A short stable hash of a JSON-able settings dict (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class RecordWriter:
    """Appends lines to one record file, each flushed to disk before the next study is reported."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, entry: Mapping) -> None:
        ordered = {key: entry.get(key) for key in FIELDS}
        ordered.update({k: v for k, v in entry.items() if k not in ordered})
        line = json.dumps(ordered, default=str, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_records(out_dir: str | os.PathLike[str]) -> list[dict]:
    """Every line of every record file in ``out_dir`` (all processes), oldest first within a file."""
    entries: list[dict] = []
    folder = Path(out_dir)
    if not folder.is_dir():
        return entries
    for path in sorted(folder.glob(RECORD_GLOB)):
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            log.warning("run record %s not readable: %s", path, exc)
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning("run record %s line %d is cut short or damaged: ignored", path, number)
                continue
            if isinstance(entry, dict) and entry.get("study"):
                entries.append(entry)
    entries.sort(key=lambda e: str(e.get("finished_at") or ""))
    return entries


def finished(out_dir: str | os.PathLike[str], entries: Iterable[Mapping] | None = None) -> dict[str, str]:
    """``{study id: settings hash}`` of the studies whose last successful run's mask is still there."""
    folder = Path(out_dir)
    done: dict[str, str] = {}
    for entry in read_records(folder) if entries is None else entries:
        if entry.get("status") == "done" and entry.get("out") and (folder / str(entry["out"])).is_file():
            done[str(entry["study"])] = str(entry.get("settings") or "")
    return done


def latest_by_study(entries: Iterable[Mapping]) -> dict[str, Mapping]:
    """The newest line of each study."""
    latest: dict[str, Mapping] = {}
    for entry in entries:
        latest[str(entry["study"])] = entry
    return latest


def summary_table(entries: Iterable[Mapping], skipped: Iterable[str] = ()) -> str:
    """A Markdown table of the studies (their newest line) and a totals line."""
    latest = latest_by_study(entries)
    skipped = [s for s in skipped if s not in latest]
    lines = [
        "| study | status | engine | device | seconds | voxels | ml | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sid, e in latest.items():
        note = e.get("error") or "; ".join(e.get("warnings") or [])
        note = " ".join(str(note).split()).replace("|", "/")
        seconds = "" if e.get("seconds") is None else f"{float(e['seconds']):.1f}"
        ml = "" if e.get("ml") is None else f"{float(e['ml']):.1f}"
        voxels = "" if e.get("voxels") is None else str(e["voxels"])
        lines.append(
            f"| {sid} | {e.get('status', '')} | {e.get('engine') or ''} | {e.get('device') or ''} | "
            f"{seconds} | {voxels} | {ml} | {note[:120]} |"
        )
    for sid in skipped:
        lines.append(f"| {sid} | done before (skipped) |  |  |  |  |  | |")
    done = sum(1 for e in latest.values() if e.get("status") == "done")
    failed = sum(1 for e in latest.values() if e.get("status") == "failed")
    seconds = sum(float(e.get("seconds") or 0.0) for e in latest.values())
    lines.append("")
    lines.append(
        f"{done} segmented, {failed} failed, {len(skipped)} done before (skipped); "
        f"{seconds:.1f} s of segmentation"
    )
    return "\n".join(lines)
