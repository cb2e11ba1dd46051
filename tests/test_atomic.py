"""Atomic writes: the destination holds the old version or the new one, never a part, and no temp is left."""

import pytest

from reasonloop.atomic import replace_folder, write_text_atomic
from reasonloop.errors import UserError


def test_write_text_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_write_text_failure_names_the_file(tmp_path, monkeypatch):
    import os

    def refuse(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    path = tmp_path / "kept.jsonl"
    with pytest.raises(UserError, match=r"kept.jsonl: could not write samples .*; earlier files are kept"):
        write_text_atomic(path, "x", what="samples", kept="earlier files are kept")
    with pytest.raises(OSError):
        write_text_atomic(path, "x")
    assert list(tmp_path.iterdir()) == []


def test_replace_folder_swaps_whole_folders(tmp_path):
    out = tmp_path / "model"
    with replace_folder(out) as tmp:
        (tmp / "a").write_text("1")
    with replace_folder(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .old, no temp


def test_replace_folder_keeps_the_old_one_on_error(tmp_path):
    out = tmp_path / "checkpoint"
    with replace_folder(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(UserError, match=r"checkpoint: could not write the checkpoint \(disk full\); old kept"):
        with replace_folder(out, what="the checkpoint", kept="old kept") as tmp:
            (tmp / "b").write_text("2")
            raise OSError(28, "disk full")
    with pytest.raises(ValueError):  # not a write error: passed through as it is
        with replace_folder(out, what="the checkpoint", kept="old kept"):
            raise ValueError("bug")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_replace_folder_first_wins(tmp_path):
    out = tmp_path / "tiny"
    with replace_folder(out, first_wins=True) as tmp:
        (tmp / "first").write_text("1")
    with replace_folder(out, first_wins=True) as tmp:
        (tmp / "second").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
