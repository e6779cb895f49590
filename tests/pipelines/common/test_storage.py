"""pipelines.common.storage: atomic writes, listing, image names, URIs."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from pipelines.common.storage import (
    is_image_name,
    is_tmp,
    join_path,
    list_files,
    read_uri,
    resolve_path,
    tmp_path,
    write_atomic,
)


def test_write_atomic_creates_parents_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_write_atomic_inside_a_resolved_filesystem(tmp_path):
    fs, root = resolve_path(tmp_path)
    path = write_atomic(join_path(root, "x.txt"), "hello", fs=fs)
    assert read_uri(path) == b"hello"


class _MoveFails:
    """The local filesystem, except that the final rename fails (a full disk, a lost connection)."""

    def __init__(self) -> None:
        self.inner = pafs.LocalFileSystem()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def move(self, src: str, dst: str) -> None:
        raise OSError("disk full")


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(str(target), "new", fs=_MoveFails())
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_temporaries_are_recognised():
    path = tmp_path("/data/out/results.json")
    assert path.startswith("/data/out/.results.json.tmp-")
    assert is_tmp(path.rsplit("/", 1)[1]) and not is_tmp("results.json")


def test_image_names_are_matched_case_insensitively():
    assert is_image_name("cam1/0001.PNG") and is_image_name("x.jpeg") and is_image_name("a.webp")
    assert not is_image_name("notes.txt") and not is_image_name("jpg")


def test_listing_a_missing_folder_is_empty_and_recursion_finds_nested_files(tmp_path):
    fs, root = resolve_path(tmp_path)
    assert list_files(fs, join_path(root, "missing"), recursive=True) == []
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.png").write_bytes(b"x")
    (tmp_path / "g.png").write_bytes(b"y")
    assert [i.base_name for i in list_files(fs, root, recursive=False)] == ["g.png"]
    assert sorted(i.base_name for i in list_files(fs, root, recursive=True)) == ["f.png", "g.png"]


def test_uris_keep_their_filesystem_and_missing_files_name_the_uri(tmp_path):
    fs, path = resolve_path(f"file://{tmp_path}/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.bin: no such file"):
        read_uri(tmp_path / "nope.bin")
