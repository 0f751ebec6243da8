"""Bad inputs for tools/build_database.py and tools/inspect_database.py (issue 14): each refused
with exit code 2 and a message naming the file, key or holder, leaving what is on disk as it was.

Databases are built once in-process (tiny CLIP, ground-truth masks of the synthetic train split)
and copied per case, so most cases stop before any model loads.
"""
import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from retclip.database_builder import build_database_builder, build_source
from retclip.retrieval import FeatureDatabase
from retclip.retrieval.shards import decode_shard, encode_shard
from retclip.testing.database import TINY_BUILD_CONFIG, tiny_build_cfg, tiny_build_opts
from retclip.testing.locks import dead_pid, lock_held_elsewhere
from tests.bad_inputs.harness import Case, check_case
from tests.database_builder.conftest import tiny_clip_file  # noqa: F401  (fixture)

CONFIG = str(TINY_BUILD_CONFIG)
HOST = socket.gethostname()


def _opts(out, clip_file, **extra):
    return tiny_build_opts(out, clip_file, max_images=4, **extra)


def _build_in_process(out, clip_file, **extra):
    cfg = tiny_build_cfg(_opts(out, clip_file, **extra))
    return build_database_builder(cfg, progress=False).build(build_source(cfg))


@pytest.fixture(scope="module")
def dbs(tmp_path_factory, tiny_clip_file):  # noqa: F811
    """A complete database ("full") and one stopped after 2 of 4 chunks ("partial")."""
    root = tmp_path_factory.mktemp("dbs")
    assert _build_in_process(root / "full", tiny_clip_file)["images"]["ok"] == 4
    _build_in_process(root / "partial", tiny_clip_file, **{"DATABASE_BUILD.MAX_SHARDS_PER_RUN": 2})
    return {"full": root / "full", "partial": root / "partial", "clip": tiny_clip_file}


def _copy(dbs, name, tmp):
    shutil.copytree(dbs[name], tmp / "db")
    return FeatureDatabase.open(tmp / "db")


def _poison_first_shard(tmp):
    """Rows 1 and 2 of the first shard become NaN; the manifest's hash follows (a bad writer)."""
    db = FeatureDatabase.open(tmp / "db")
    path = db.path / "shards" / f"{db.shard_names[0]}.safetensors"
    s = decode_shard(path, path.read_bytes())
    feats = s.features.copy()
    feats[1:3] = np.nan
    data = encode_shard(feats, s.labels, s.image_ids, s.boxes, s.mask_areas, s.scores)
    path.write_bytes(data)
    manifest = json.loads((db.path / "manifest.json").read_text())
    manifest["shards"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (db.path / "manifest.json").write_text(json.dumps(manifest))


def _truncate_last_shard(tmp):
    db = FeatureDatabase.open(tmp / "db")
    path = db.path / "shards" / f"{db.shard_names[-1]}.safetensors"
    path.write_bytes(path.read_bytes()[:200])


def _build_case(id, extra, names, prepare, **kw):
    return dict(id=id, tool="build_database.py", extra=extra, names=names, prepare=prepare, **kw)


def _resume(key, value):
    return _build_case(f"resume_{key.rsplit('.', 1)[1].lower()}", {key: value},
                       [key, "(first run)", "{tmp}/db"], "partial")


BUILD_CASES = [
    _resume("DATABASE_BUILD.SHARD_SIZE", 2),
    _resume("DATABASE_BUILD.DTYPE", "float16"),
    _resume("DATABASE_BUILD.GROUNDING_DINO.MODEL", "IDEA-Research/grounding-dino-tiny"),
    _resume("DATABASE_BUILD.GROUNDING_DINO.BOX_THRESHOLD", 0.3),
    _resume("DATABASE_BUILD.PROPOSALS", "GroundingDinoSamProposals"),
    _build_case("lock_from_other_host", {}, ["node-7.cluster", "pid 4242", "delete {tmp}/db/LOCK"],
                "foreign_lock"),
    _build_case("into_merged_database", {}, ["records no build settings", "{tmp}/db"], "merged"),
]


def _prepare_build(case, dbs):
    def prepare(tmp):
        if case["prepare"] == "merged":
            a = FeatureDatabase.open(dbs["full"])
            a.remove_classes([a.class_names[0]], tmp / "db")
        else:
            _copy(dbs, "full" if case["prepare"] == "foreign_lock" else "partial", tmp)
        if case["prepare"] == "foreign_lock":
            (tmp / "db" / "LOCK").write_text(json.dumps({"host": "node-7.cluster", "pid": 4242}))
    return prepare


@pytest.mark.parametrize("case", BUILD_CASES, ids=[c["id"] for c in BUILD_CASES])
def test_build_database_bad_inputs(case, dbs, tmp_path):
    check_case(Case(
        id=case["id"], tool="build_database.py",
        args=["--config-file", CONFIG, *_opts(tmp_path / "db", dbs["clip"], **case["extra"])],
        names=case["names"], protect=["{tmp}/db"], prepare=_prepare_build(case, dbs),
    ), tmp_path)


def test_second_builder_refused_while_another_process_writes(dbs, tmp_path):
    with lock_held_elsewhere(tmp_path / "db") as holder:
        check_case(Case(
            id="concurrent_builder", tool="build_database.py",
            args=["--config-file", CONFIG, *_opts(tmp_path / "db", dbs["clip"])],
            names=[f"host {HOST} pid {holder.pid}"], protect=["{tmp}/db"],
        ), tmp_path)


@pytest.mark.slow
def test_lock_of_dead_builder_is_taken_over(dbs, tmp_path):
    """The old outcome of a stale LOCK would be a refusal forever; it is taken over and logged."""
    pid = dead_pid()

    def prepare(tmp):
        _copy(dbs, "partial", tmp)
        (tmp / "db" / "LOCK").write_text(json.dumps({"host": HOST, "pid": pid}))

    check_case(Case(
        id="dead_lock", tool="build_database.py", code=0,
        args=["--config-file", CONFIG, *_opts(tmp_path / "db", dbs["clip"])],
        names=[f"taking over the lock left by pid {pid}"], prepare=prepare,
        absent=["{tmp}/db/LOCK"],
    ), tmp_path)
    done = FeatureDatabase.open(tmp_path / "db")
    assert done.content_hash() == FeatureDatabase.open(dbs["full"]).content_hash()


def _inspect_cases():
    def full(tmp, dbs):
        _copy(dbs, "full", tmp)

    def poisoned(tmp, dbs):
        full(tmp, dbs)
        _poison_first_shard(tmp)

    def truncated(tmp, dbs):
        full(tmp, dbs)
        _truncate_last_shard(tmp)

    def two(tmp, dbs):
        truncated(tmp, dbs)
        shutil.copytree(dbs["full"], tmp / "other")

    def taken(tmp, dbs):
        full(tmp, dbs)
        (tmp / "out").mkdir()
        (tmp / "out" / "notes.txt").write_text("mine")

    def stray(tmp, dbs):
        _copy(dbs, "partial", tmp)

    shard0, last = "part000000-000000", "part000003-000000"
    return [
        ("verify_nan_rows", ["inspect", "{tmp}/db", "--verify"], [shard0, "NaN", "rows [1, 2]"],
         poisoned, ["{tmp}/db"], []),
        ("verify_truncated", ["inspect", "{tmp}/db", "--verify"], [last, "truncated"], truncated,
         ["{tmp}/db"], []),
        ("verify_unlisted_shard", ["inspect", "{tmp}/db", "--verify"],
         ["not in the manifest", "inspect_database.py repair {tmp}/db"], stray, ["{tmp}/db"], []),
        ("merge_corrupt_halfway", ["merge", "{tmp}/other", "{tmp}/db", "--output", "{tmp}/out"],
         [last], two, ["{tmp}/db", "{tmp}/other"], ["{tmp}/out", "{tmp}/.out.staging-*"]),
        ("merge_into_existing", ["merge", "{tmp}/db", "{tmp}/db", "--output", "{tmp}/out"],
         ["{tmp}/out", "exists"], taken, ["{tmp}/db", "{tmp}/out"], []),
        ("remove_into_existing",
         ["remove", "{tmp}/db", "--classes", "sky", "--output", "{tmp}/out"],
         ["{tmp}/out", "exists"], taken, ["{tmp}/db", "{tmp}/out"], []),
        ("remove_nan_rows", ["remove", "{tmp}/db", "--classes", "sky", "--output", "{tmp}/out"],
         [shard0, "rows [1, 2]"], poisoned, ["{tmp}/db"], ["{tmp}/out"]),
        ("repair_incomplete_build", ["repair", "{tmp}/db"], ["incomplete", "2 of 4 chunks"], stray,
         ["{tmp}/db"], []),
        ("repair_not_a_database", ["repair", "{tmp}"], ["no feature database", "manifest.json"],
         None, ["{tmp}"], []),
    ]


INSPECT_CASES = _inspect_cases()


@pytest.mark.parametrize("case", INSPECT_CASES, ids=[c[0] for c in INSPECT_CASES])
def test_inspect_database_bad_inputs(case, dbs, tmp_path):
    id, args, names, prepare, protect, absent = case
    check_case(Case(
        id=id, tool="inspect_database.py", args=args, names=names, protect=protect,
        absent=[a for a in absent if "*" not in a],
        prepare=(lambda tmp: prepare(tmp, dbs)) if prepare else None,
    ), tmp_path)
    for pattern in (a for a in absent if "*" in a):
        assert not list(tmp_path.glob(Path(pattern).name)), f"{id}: {pattern} left behind"


def test_add_refused_while_another_process_writes(dbs, tmp_path):
    _copy(dbs, "full", tmp_path)
    with lock_held_elsewhere(tmp_path / "db") as holder:
        check_case(Case(
            id="add_while_locked", tool="inspect_database.py",
            args=["add", "{tmp}/db", CONFIG, *_opts(tmp_path / "x", dbs["clip"])],
            names=[f"pid {holder.pid}"], protect=["{tmp}/db"], absent=["{tmp}/db.add"],
        ), tmp_path)


def test_verify_and_repair_pass_on_sound_databases(dbs, tmp_path):
    """The refusals above are not blanket ones: a sound database verifies; an interrupted but
    complete build is repaired into the uninterrupted build's manifest."""
    _copy(dbs, "full", tmp_path)
    proc = check_case(Case(id="verify_ok", tool="inspect_database.py", code=0,
                           args=["inspect", "{tmp}/db", "--verify"], names=["verified"]), tmp_path)
    assert "BAD" not in proc.stdout
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    (tmp_path / "db" / "manifest.json").write_text(json.dumps({**manifest, "shards": []}))
    check_case(Case(id="repair_ok", tool="inspect_database.py", code=0,
                    args=["repair", "{tmp}/db"], names=["4 shards"]), tmp_path)
    assert FeatureDatabase.open(tmp_path / "db").content_hash() == FeatureDatabase.open(
        dbs["full"]).content_hash()
