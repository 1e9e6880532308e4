"""Files written complete or not at all (nnunet_ext.io), and the tables' number format."""

import json
import math
import os

import pytest

from nnunet_ext.io import csv_writer, format_number, json_writer, write_all, write_file, write_json, write_text


def test_json_and_text_replace_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "r.json"                # parent folders are created
    write_json({"a": math.inf, "b": [1, 2]}, path)
    assert path.read_text().endswith("\n") and json.loads(path.read_text()) == {"a": math.inf, "b": [1, 2]}
    write_text("| a |\n", tmp_path / "t.md")
    assert (tmp_path / "t.md").read_text() == "| a |\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask    # as open() would have made it


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_json({"old": 1}, path)

    def broken(f):
        f.write("{")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file(path, broken)
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]      # no temp file left


def test_several_files_all_or_none(tmp_path):
    (tmp_path / "b.csv").mkdir()
    items = [(tmp_path / "a.json", json_writer({"x": 1})), (tmp_path / "b.csv", csv_writer([{"x": 1}], ["x"]))]
    with pytest.raises(IsADirectoryError):
        write_all(items)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]
    (tmp_path / "b.csv").rmdir()
    write_all(items)
    assert (tmp_path / "b.csv").read_bytes() == b"x\r\n1\r\n" and json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_binary(tmp_path):
    write_file(tmp_path / "x.png", lambda f: f.write(b"\x89PNG"), binary=True)
    assert (tmp_path / "x.png").read_bytes() == b"\x89PNG"


@pytest.mark.parametrize("x, nd, shown", [(None, 4, "-"), (math.nan, 2, "nan"), (math.inf, 2, "inf"),
                                          (0.12345, 4, "0.1235"), (2.0, 0, "2")])
def test_format_number(x, nd, shown):
    assert format_number(x, nd) == shown
