"""Files replaced durably: a reader, or a restart after a crash, sees the old file or the new."""

from __future__ import annotations

from pathlib import Path

import pytest

from bund.parties import durable


def test_replace_file_puts_the_new_bytes_in_place_and_leaves_nothing_beside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "progress.json"
    durable.replace_file(path, b"{}")
    durable.replace_file(path, b'{"stage": 2}')
    assert path.read_bytes() == b'{"stage": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]


def test_a_write_that_fails_before_its_sync_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename comes only after the sync: a failed write never replaces the old file."""
    path = tmp_path / "bucket.bin"
    durable.replace_file(path, b"old records")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        durable.replace_file(path, b"new records")
    assert path.read_bytes() == b"old records"
