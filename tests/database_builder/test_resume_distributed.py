"""Resumption (in-process stop/restart; SIGKILL of the real tool) and the 2-process gloo build,
each compared with an uninterrupted single-process build of the same ground-truth-mask database."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from retclip.database_builder import build_database_builder, build_source
from retclip.retrieval import FeatureDatabase
from retclip.testing.database import TINY_BUILD_CONFIG, tiny_build_cfg, tiny_build_opts

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "build_database.py"
CONFIG = TINY_BUILD_CONFIG


def _opts(out, clip_file, **extra):
    return tiny_build_opts(out, clip_file, max_images=8, **extra)


_cfg = tiny_build_cfg


def _content(path):
    """Every stored value of every shard, in shard order, bytes for arrays; source paths by file
    name (a subprocess build reads the synthetic images from its own folder)."""
    db = FeatureDatabase.open(path)
    out = []
    for name in db.shard_names:
        shard = db.read_shard(name)
        arrays = (shard.features, shard.labels, shard.boxes, shard.mask_areas, shard.scores)
        sources = [os.path.basename(p) for p in shard.sources] if shard.sources else None
        out.append((name, [a.tobytes() for a in arrays], shard.image_ids, sources, shard.mask_rles))
    return out


def _rows(path):
    data = FeatureDatabase.open(path).load_all()
    return sorted(zip(data.image_ids, data.labels.tolist(), map(tuple, data.features.tolist())))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_clip_file):
    """Uninterrupted in-process build of 8 images of the synthetic train split, 8 shards."""
    out = tmp_path_factory.mktemp("ref") / "db"
    builder = build_database_builder(_cfg(_opts(out, tiny_clip_file)), progress=False)
    report = builder.build(build_source(_cfg(_opts(out, tiny_clip_file))))
    assert report["images"]["ok"] == 8 and report["forwards"] == {"clip.image": 8}
    return FeatureDatabase.open(out)


def test_stop_and_resume_in_process(tmp_path, tiny_clip_file, reference):
    out = tmp_path / "db"
    cfg = _cfg(_opts(out, tiny_clip_file, **{"DATABASE_BUILD.MAX_SHARDS_PER_RUN": 3}))
    builder = build_database_builder(cfg, progress=False)
    assert builder.build(build_source(cfg)) is None  # stopped after 3 of 8 shards
    assert sorted(p.name for p in (out / "shards").glob("*.safetensors")) == [
        f"part{c:06d}-000000.safetensors" for c in range(3)
    ]
    (out / "shards" / ".part000003-000000.safetensors.x.tmp").write_bytes(
        b"half a shard"
    )  # a killed write
    assert builder.build(build_source(cfg)) is None
    report = builder.build(build_source(cfg))
    assert report is not None and report["images"]["ok"] == 8
    assert not list((out / "shards").glob(".*.tmp"))  # the killed write's leftover is removed
    db = FeatureDatabase.open(out)
    assert db.content_hash() == reference.content_hash()  # same shards, byte for byte
    assert db.manifest["class_counts"] == reference.manifest["class_counts"]


def _run_tool(out, clip_file, synth_dir, *extra_args, **extra_opts):
    env = dict(os.environ, RETCLIP_SYNTHETIC_DIR=str(synth_dir), HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        str(TOOL),
        "--config-file",
        str(CONFIG),
        *extra_args,
        *_opts(out, clip_file, **extra_opts),
    ]
    return subprocess.Popen(
        cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def tool_reference(tmp_path_factory, tiny_clip_file):
    """Uninterrupted run of the tool itself in a subprocess: the byte-for-byte baseline for the
    killed and locked runs (an in-process build may use another torch thread count, which moves
    float sums by an ulp)."""
    root = tmp_path_factory.mktemp("tool_ref")
    proc = _run_tool(root / "db", tiny_clip_file, root / "synth")
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    return FeatureDatabase.open(root / "db")


def _assert_same_rows_as_in_process(out, reference):
    """Same ids and labels as the in-process build, features equal to float rounding."""
    got, ref = _rows(out), _rows(reference.path)
    assert [r[:2] for r in got] == [r[:2] for r in ref]
    np.testing.assert_allclose(
        np.array([r[2] for r in got]), np.array([r[2] for r in ref]), atol=1e-6
    )


def _kill_after_new_shards(proc, shard_dir, n_new, timeout=240):
    start_count = len(list(shard_dir.glob("*.safetensors"))) if shard_dir.exists() else 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        count = len(list(shard_dir.glob("*.safetensors"))) if shard_dir.exists() else 0
        if count >= start_count + n_new:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return count
        if proc.poll() is not None:
            raise AssertionError(f"build ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no shard appeared in time")


@pytest.mark.slow
def test_sigkill_twice_then_finish_is_identical(
    tmp_path, tiny_clip_file, reference, tool_reference
):
    out, synth = tmp_path / "db", tmp_path / "synth"
    shard_dir = out / "shards"
    first = _kill_after_new_shards(
        _run_tool(out, tiny_clip_file, synth, **{"DATABASE_BUILD.SHARD_DELAY_S": 0.3}), shard_dir, 2
    )
    second = _kill_after_new_shards(
        _run_tool(out, tiny_clip_file, synth, **{"DATABASE_BUILD.SHARD_DELAY_S": 0.3}), shard_dir, 2
    )
    assert 2 <= first < second < 8
    proc = _run_tool(out, tiny_clip_file, synth)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    db = FeatureDatabase.open(out)
    assert len(db.shard_names) == 8
    assert _content(out) == _content(tool_reference.path)  # same shards, value for value
    _assert_same_rows_as_in_process(out, reference)


@pytest.mark.slow
def test_two_gloo_processes_equal_single_process(tmp_path, tiny_clip_file, reference, monkeypatch):
    """launch_build on a CPU machine spawns 2 processes joined by gloo (detectron2 v0.6's launch
    needs CUDA for more than one process); each rank builds its chunks, rank 0 the manifest."""
    from retclip.database_builder import launch_build, run_build

    out = tmp_path / "db"
    monkeypatch.setenv("RETCLIP_SYNTHETIC_DIR", str(tmp_path / "synth"))
    launch_build(run_build, 2, args=(str(CONFIG), _opts(out, tiny_clip_file), False))
    _assert_same_rows_as_in_process(out, reference)
    db = FeatureDatabase.open(out)
    assert db.manifest["class_counts"] == reference.manifest["class_counts"]
    # rank r wrote chunks r, r + 2, ...; rank 0 listed all of them
    assert db.shard_names == [f"part{c:06d}-000000" for c in range(8)]
    assert (out / "build" / "report.json").is_file()


@pytest.mark.slow
def test_second_builder_at_once_is_refused_and_the_first_finishes(
    tmp_path, tiny_clip_file, reference, tool_reference
):
    """Two builders into one folder used to interleave chunks (duplicated rows); now the second
    is refused, naming the first's host and pid, and the first builds the reference database."""
    import socket

    out, synth = tmp_path / "db", tmp_path / "synth"
    first = _run_tool(out, tiny_clip_file, synth, **{"DATABASE_BUILD.SHARD_DELAY_S": 12.0})
    deadline = time.time() + 300
    while not (out / "LOCK").exists():
        assert first.poll() is None and time.time() < deadline, "first builder took no lock"
        time.sleep(0.1)
    second = _run_tool(out, tiny_clip_file, synth)
    log, _ = second.communicate(timeout=300)
    assert first.poll() is None, "the first builder ended before the second started"
    assert second.returncode == 2, log
    assert f"host {socket.gethostname()} pid {first.pid}" in log
    log, _ = first.communicate(timeout=600)
    assert first.returncode == 0, log
    assert _content(out) == _content(tool_reference.path)
    _assert_same_rows_as_in_process(out, reference)
    assert not (out / "LOCK").exists()
