"""Writing result files, for the whole package: every file is written complete or not at all.

A file is first written to a temporary file beside its target and then renamed onto it
(:func:`os.replace`, atomic on one file system), so a reader never sees half a file and a failure
leaves the old file, if any, in place. :func:`write_all` extends this to several files: each is
renamed into place only once all of them are written, so a failure changes none of them.

Also here: :func:`format_number`, the number format of the markdown tables the commands print.

Imports nothing of ours, so every layer may use it.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

#: writes a file's content to the open file object it is given
Writer = Callable[[Any], Any]


def write_all(items: Sequence[tuple[str | os.PathLike, Writer]], binary: bool = False) -> None:
    """Write each ``(path, write)`` via ``write(file)`` to a temporary file beside ``path``; only when
    all are written are they renamed into place. Parent folders are created; a target that is a
    folder raises :class:`IsADirectoryError` before anything is written."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in items:
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="")) as f:
                write(f)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_file(path: str | os.PathLike, writer: Writer, binary: bool = False) -> None:
    """Write one file via ``writer(file)`` (see :func:`write_all`)."""
    write_all([(path, writer)], binary)


def json_writer(obj: Any) -> Writer:
    """Writes ``obj`` as indented JSON and a final newline (NaN / +inf as ``NaN`` / ``Infinity``,
    as nnU-Net's ``summary.json`` does; Python's ``json`` and pandas read them)."""
    return lambda f: (json.dump(obj, f, indent=2), f.write("\n"))


def csv_writer(rows: Iterable[dict], columns: Sequence[str]) -> Writer:
    """Writes a header of ``columns`` and one line per row (a dict keyed by the columns)."""
    def write_rows(f) -> None:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return write_rows


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as JSON (:func:`json_writer`)."""
    write_file(path, json_writer(obj))


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` as it is."""
    write_file(path, lambda f: f.write(text))


def format_number(x: float | None, nd: int = 4) -> str:
    """``x`` with ``nd`` decimals for the tables; ``nan``, ``inf`` as such and None as ``-``."""
    if x is None:
        return "-"
    return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{nd}f}")
