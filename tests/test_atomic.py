"""``mammoxai.io.atomic``: a reader finds the old file or the whole new one, and a failed write leaves no trace."""

from __future__ import annotations

import pytest

from mammoxai.io.atomic import atomic_write, atomic_write_bytes


def test_the_new_content_replaces_the_file_only_when_the_block_ends(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    with atomic_write(path) as stream:
        stream.write(b"new weights")
        assert path.read_bytes() == b"old"  # a reader during the write still sees the old file

    assert path.read_bytes() == b"new weights"
    assert [entry.name for entry in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_that_fails_midway_keeps_the_old_file_and_removes_the_temporary(tmp_path, durable):
    path = tmp_path / "datastore_v2.json"
    path.write_bytes(b'{"objects": {}}')

    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path, durable=durable) as stream:
            stream.write(b'{"obj')
            raise OSError("disk full")

    assert path.read_bytes() == b'{"objects": {}}'
    assert [entry.name for entry in tmp_path.iterdir()] == ["datastore_v2.json"]


def test_bytes_create_a_file_that_did_not_exist(tmp_path):
    atomic_write_bytes(tmp_path / "label.json", b"{}")

    assert (tmp_path / "label.json").read_bytes() == b"{}"
