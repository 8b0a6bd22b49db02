"""Atomic writes: an output appears whole or not at all, and a killed writer's leftovers are cleaned."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_scripts.io import atomic_path, remove_stale_temporaries

REPO = Path(__file__).resolve().parent.parent

KILLED_WRITER = """
import os, signal, sys
from workflow_scripts.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "weights.bin").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_replacing_a_directory_leaves_only_the_new_version(tmp_path):
    target = tmp_path / "adapter"
    for content in (b"old", b"new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_bytes(content)
    assert (target / "weights.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_failed_block_leaves_the_old_output_and_no_temporary(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("step failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_a_sigkilled_writer_leaves_no_output_and_its_temporary_is_removed_next_time(tmp_path):
    target = tmp_path / "adapter"
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO)
    assert result.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".adapter.")]
    assert len(leftovers) == 1  # what a power loss leaves: a hidden sibling, never the output itself
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (target / "weights.bin").read_bytes() == b"whole"


def test_only_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path):
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        siblings = {
            "dead": tmp_path / f".adapter.{host}.{dead_pid()}.abc_1",
            "live": tmp_path / f".adapter.{host}.{live.pid}.abc_2",
            "self": tmp_path / f".adapter.{host}.{os.getpid()}.abc_3",
            "other_host": tmp_path / f".adapter.other-node.{dead_pid()}.abc_4",
            "unparsable": tmp_path / ".adapter.abc_5",
            "other_target": tmp_path / f".merged.{host}.{dead_pid()}.abc_6",
        }
        for path in siblings.values():
            (path / "adapter").mkdir(parents=True)
        removed = remove_stale_temporaries(tmp_path / "adapter")
    finally:
        live.kill()
        live.wait()
    assert removed == [siblings["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for k, p in siblings.items() if k != "dead")


def test_a_durable_write_flushes_every_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        synced.append((Path(os.readlink(f"/proc/self/fd/{descriptor}")), len(renamed)))
        real_fsync(descriptor)

    def recording_replace(source, destination):
        renamed.append(Path(destination))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "checkpoint"
    with atomic_path(target, durable=True) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "weights.safetensors").write_bytes(b"w" * 10)
        (tmp / "sub" / "state.json").write_text("{}")
    before_rename = {path.name for path, renames in synced if renames == 0}
    assert before_rename == {"checkpoint", "sub", "weights.safetensors", "state.json"}
    assert (tmp_path, 1) in synced  # the parent folder, after the rename
    assert renamed == [target] and (target / "sub" / "state.json").read_text() == "{}"

    synced.clear()
    with atomic_path(tmp_path / "plain.json") as tmp:
        tmp.write_text("{}")
    assert synced == []  # only durable writes pay for fsync
