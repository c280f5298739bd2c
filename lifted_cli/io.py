"""Atomic file writes: a temporary file in the destination folder, then ``os.replace``.

An interrupted run never leaves half a file: the destination either keeps its old content or gets
the complete new one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path, write, mode="w"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf/nan: "inf", "nan"
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    _atomic(path, lambda f: json.dump(_jsonable(obj), f, indent=2, sort_keys=False))


def write_csv(path, rows: list[dict]) -> None:
    def write(f):
        fields = list(rows[0].keys()) if rows else []
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    _atomic(path, write)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_torch(path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f), mode="wb")


def save_image(path, image) -> None:
    """``image``: PIL image, written as PNG."""
    _atomic(path, lambda f: image.save(f, format="PNG"), mode="wb")
