"""Database folder safety: one writer (lock naming its holder; dead holders taken over), merge
and remove published whole or not at all, non-finite rows refused at load, files that respect the
umask."""
import json
import logging
import os
import socket

import numpy as np
import pytest

from retclip.retrieval.database import CorruptShardError, FeatureDatabase
from retclip.retrieval.fingerprint import EncoderFingerprint
from retclip.retrieval.safedir import (
    LOCK_NAME,
    DatabaseLock,
    DatabaseLockedError,
    exchange_directories,
    holder_problem,
)
from retclip.retrieval.shards import decode_shard, encode_shard
from retclip.testing.locks import dead_pid, lock_held_elsewhere

FP = EncoderFingerprint("retclip-tiny-convnext", "random", 16)
VOCAB = ["cat", "dog", "sofa"]


def _db(path, n=12, seed=0):
    db = FeatureDatabase.create(path, FP, VOCAB)
    rng = np.random.default_rng(seed)
    db.append(rng.standard_normal((n, 16)), rng.integers(0, 3, n), [f"i{k}" for k in range(n)])
    return db


def test_second_writer_refused_naming_host_and_pid(tmp_path):
    folder = tmp_path / "db"
    with lock_held_elsewhere(folder) as holder:
        with pytest.raises(DatabaseLockedError) as err:
            DatabaseLock(folder).acquire()
        assert f"host {socket.gethostname()} pid {holder.pid}" in str(err.value)
        assert holder_problem(folder) == str(err.value)  # the no-write pre-check agrees
    # The holder was SIGKILLed: its LOCK file stays, naming a dead pid.
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid
    assert holder_problem(folder) is None


def test_lock_of_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    folder = tmp_path / "db"
    folder.mkdir()
    pid = dead_pid()
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    with caplog.at_level(logging.WARNING, logger="retclip.retrieval.safedir"):
        with DatabaseLock(folder):
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {pid}" in caplog.text
    assert not (folder / LOCK_NAME).exists()  # released


def test_lock_from_another_host_is_refused_with_how_to_clear(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"host": "node-17.cluster", "pid": 1}))
    with pytest.raises(DatabaseLockedError) as err:
        DatabaseLock(folder).acquire()
    message = str(err.value)
    assert "node-17.cluster pid 1" in message and f"delete {folder / LOCK_NAME}" in message
    assert json.loads((folder / LOCK_NAME).read_text())["host"] == "node-17.cluster"


def test_nested_claims_in_one_process(tmp_path):
    outer = DatabaseLock(tmp_path / "db").acquire()
    inner = DatabaseLock(tmp_path / "db").acquire()  # a tool, then its builder
    inner.release()
    assert (tmp_path / "db" / LOCK_NAME).exists()
    outer.release()
    assert not (tmp_path / "db" / LOCK_NAME).exists()


def test_merge_with_corrupt_shard_leaves_nothing(tmp_path):
    a, b = _db(tmp_path / "a"), _db(tmp_path / "b", seed=1)
    b.append(np.ones((3, 16)), np.zeros(3, np.int64), ["x"] * 3)
    shard = tmp_path / "b" / "shards" / f"{b.shard_names[-1]}.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(CorruptShardError, match=b.shard_names[-1]):
        a.merge(b, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no output, no staging
    with pytest.raises(CorruptShardError):
        b.remove_classes(["cat"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_merge_and_remove_refuse_an_existing_output(tmp_path):
    a, b = _db(tmp_path / "a"), _db(tmp_path / "b", seed=1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        a.merge(b, tmp_path / "taken")
    with pytest.raises(FileExistsError):
        a.remove_classes(["cat"], tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    m = a.merge(b, tmp_path / "m")  # and a fresh folder works, with every row
    assert len(m) == len(a) + len(b) and m.path == tmp_path / "m"


def _poison(db, rows):
    """Rewrite the first shard with NaN in ``rows`` (as a disk fault or a buggy writer would)."""
    name = db.shard_names[0]
    path = db.path / "shards" / f"{name}.safetensors"
    s = decode_shard(path, path.read_bytes())
    feats = s.features.copy()
    feats[rows, 3] = np.nan
    path.write_bytes(encode_shard(feats, s.labels, s.image_ids, s.boxes, s.mask_areas, s.scores))
    return name


def test_non_finite_rows_refused_at_load_naming_shard_and_rows(tmp_path):
    from safetensors.numpy import load_file

    db = _db(tmp_path / "db")
    name = _poison(db, [2, 9])
    stored = load_file(str(db.path / "shards" / f"{name}.safetensors"))["features"]
    expected = np.flatnonzero(np.isnan(stored).any(axis=1)).tolist()  # read independently
    assert expected == [2, 9]
    with pytest.raises(CorruptShardError, match=rf"{name}.*NaN or infinite.*rows \[2, 9\]"):
        db.read_shard(name, verify=False)
    with pytest.raises(CorruptShardError, match=name):
        db.load_all()
    problems = db.verify()
    assert len(problems) == 1 and name in problems[0]


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        db = _db(tmp_path / "db")
        a = _db(tmp_path / "a", seed=2)
        merged = db.merge(a, tmp_path / "m")
    finally:
        os.umask(old)
    for folder in (db.path, merged.path):
        for path in [folder / "manifest.json", *(folder / "shards").iterdir()]:
            assert path.stat().st_mode & 0o777 == 0o664, path


def test_exchange_directories(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "v").write_text("2")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "v").write_text("1")
    exchange_directories(tmp_path / "new", tmp_path / "old")
    assert (tmp_path / "old" / "v").read_text() == "2"
    assert (tmp_path / "new" / "v").read_text() == "1"
