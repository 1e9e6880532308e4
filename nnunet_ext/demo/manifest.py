"""What the demo wrote, and one demo at a time.

The demo deletes only what it wrote itself. :class:`Manifest` (``nnunet_ext_demo_manifest.json`` in
``$nnUNet_results``) lists, per dataset, the dataset's folders in ``nnUNet_preprocessed`` and
``nnUNet_results`` and the entries in them that the demo's steps created (recorded as each step
adds them), with the spacing and the nnunet-ext version that made them::

    {
      "schema": "nnunet-ext/demo-manifest/1",
      "datasets": {
        "Dataset987_NNExtDemo": {
          "spacing_mm": 4.0, "nnunet_ext_version": "0.1.0",
          "preprocessed": {"path": str, "created": bool, "entries": [str]},
          "results": {"path": str, "created": bool, "entries": [str]}
        }
      }
    }

``created``: the folder did not exist before the demo, so the demo removes it once it is empty.
A file or folder a user put there is not an entry and is never removed.

:func:`demo_lock` holds an exclusive ``fcntl.flock`` on ``nnunet_ext_demo.lock`` beside the
manifest for the whole run (the kernel releases it when the process ends, however it ends); a
second demo on the same folders refuses at once, naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

from nnunet_ext.io import write_json

MANIFEST_NAME = "nnunet_ext_demo_manifest.json"
LOCK_NAME = "nnunet_ext_demo.lock"
SCHEMA = "nnunet-ext/demo-manifest/1"
#: the two roots whose dataset folders the manifest tracks
ROOTS = ("preprocessed", "results")


class DemoError(Exception):
    """A demo step cannot go on; the message names the cause and the fix."""


class Manifest:
    """The demo's record of what it wrote (see the module docstring); saved after every change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {"schema": SCHEMA, "datasets": {}}
        except (OSError, ValueError) as e:
            raise DemoError(f"cannot read the demo's manifest '{self.path}' ({e}); move it away (the demo then "
                            f"treats the folders it lists as not its own)") from None
        if data.get("schema") != SCHEMA or not isinstance(data.get("datasets"), dict):
            raise DemoError(f"'{self.path}' is not a demo manifest ({SCHEMA}); move it away")
        self.data = data

    def folder(self, dataset: str, root: str, path: Path) -> dict | None:
        """The record of ``dataset``'s folder ``path`` in ``root``, None when the demo has none."""
        rec = self.data["datasets"].get(dataset, {}).get(root)
        return rec if rec is not None and rec["path"] == str(path) else None

    def claim(self, dataset: str, root: str, path: Path, created: bool, entries=()) -> dict:
        """Record ``path`` as ``dataset``'s folder in ``root`` (``created``: made by the demo)."""
        rec = {"path": str(path), "created": created, "entries": sorted(set(entries))}
        self.data["datasets"].setdefault(dataset, {})[root] = rec
        self.save()
        return rec

    def add_entries(self, dataset: str, root: str, names) -> None:
        """Names the demo's steps created in ``dataset``'s folder in ``root``."""
        rec = self.data["datasets"][dataset][root]
        new = set(names) - set(rec["entries"])
        if new:
            rec["entries"] = sorted(set(rec["entries"]) | new)
            self.save()

    def remove_entries(self, dataset: str, root: str, names) -> None:
        rec = self.data["datasets"][dataset][root]
        rec["entries"] = sorted(set(rec["entries"]) - set(names))
        self.save()

    def set_settings(self, dataset: str, spacing_mm: float) -> None:
        from nnunet_ext import __version__

        d = self.data["datasets"].setdefault(dataset, {})
        if (d.get("spacing_mm"), d.get("nnunet_ext_version")) != (spacing_mm, __version__):
            d.update(spacing_mm=spacing_mm, nnunet_ext_version=__version__)
            self.save()

    def save(self) -> None:
        write_json(self.data, self.path)


@contextlib.contextmanager
def demo_lock(folder: Path) -> Iterator[Path]:
    """Hold ``folder/nnunet_ext_demo.lock`` exclusively for the ``with`` block; raise
    :class:`DemoError` at once, naming the holder's process, when another demo holds it."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read())
                who = f"pid {holder['pid']}, started {holder['started']}"
            except (ValueError, KeyError, TypeError):
                who = "pid unknown"
            raise DemoError(f"another demo is running on these folders ({who}; lock '{path}'); wait for it to "
                            f"finish, or run this one in another folder (other nnUNet_raw/_preprocessed/_results)"
                            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        yield path
    finally:
        f.close()  # closing the last descriptor releases the lock
