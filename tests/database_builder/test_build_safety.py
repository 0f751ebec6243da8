"""A build folder cannot be mixed or doubled: changed settings on resume are refused by key, a
second writer is refused by host and pid, and `repair` lists the shards of an interrupted build."""
import json
import socket

import pytest
from retclip.database_builder import build_database_builder, build_source
from retclip.database_builder.manage import repair_database
from retclip.database_builder.settings import build_settings, preflight
from retclip.retrieval import FeatureDatabase
from retclip.retrieval.safedir import DatabaseLockedError
from retclip.testing.database import tiny_build_cfg, tiny_build_opts
from retclip.testing.locks import lock_held_elsewhere
from tests.bad_inputs.harness import tree_digest



def _cfg(out, clip_file, **extra):
    cfg = tiny_build_cfg(tiny_build_opts(out, clip_file, max_images=4, **extra))
    cfg.freeze()
    return cfg


def _build(cfg):
    return build_database_builder(cfg, progress=False).build(build_source(cfg))


@pytest.fixture(scope="module")
def partial(tmp_path_factory, tiny_clip_file):
    """A build of 4 one-image chunks stopped after 2 (MAX_SHARDS_PER_RUN)."""
    out = tmp_path_factory.mktemp("partial") / "db"
    assert _build(_cfg(out, tiny_clip_file, **{"DATABASE_BUILD.MAX_SHARDS_PER_RUN": 2})) is None
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {"DATABASE_BUILD.SHARD_SIZE": 2},
        {"DATABASE_BUILD.DTYPE": "float16"},
        {"DATABASE_BUILD.GROUNDING_DINO.MODEL": "IDEA-Research/grounding-dino-tiny",
         "DATABASE_BUILD.GROUNDING_DINO.BOX_THRESHOLD": 0.5},
        {"INPUT.MIN_SIZE_TEST": 128},
        {"DATABASE_BUILD.SOURCE.MAX_IMAGES": 6},
    ],
    ids=["shard_size", "dtype", "gdino_model_and_threshold", "clip_resize", "source"],
)
def test_resume_with_changed_settings_is_refused_by_key(partial, tiny_clip_file, changes):
    before = tree_digest(partial)
    first = build_settings(_cfg(partial, tiny_clip_file))
    with pytest.raises(ValueError) as err:
        preflight(_cfg(partial, tiny_clip_file, **changes))
    for key, new in changes.items():
        change = f"{key}: {first[key]!r} (first run) -> {type(first[key])(new)!r} (now)"
        assert change in str(err.value)
    assert str(err.value).count("(first run)") == len(changes)  # only the changed keys
    assert tree_digest(partial) == before


def test_builder_itself_refuses_a_changed_shard_size(partial, tiny_clip_file):
    before = tree_digest(partial)
    with pytest.raises(ValueError, match=r"DATABASE_BUILD.SHARD_SIZE: 1 \(first run\) -> 3"):
        _build(_cfg(partial, tiny_clip_file, **{"DATABASE_BUILD.SHARD_SIZE": 3}))
    assert tree_digest(partial) == before


def test_run_only_keys_may_change(partial, tiny_clip_file):
    preflight(_cfg(partial, tiny_clip_file, **{
        "DATABASE_BUILD.BATCH_SIZE": 2, "DATABASE_BUILD.MAX_SHARDS_PER_RUN": 5,
        "DATABASE_BUILD.SHARD_DELAY_S": 0.1,
    }))
    recorded = FeatureDatabase.open(partial).manifest["build_args"]["settings"]
    assert recorded["DATABASE_BUILD.GROUNDING_DINO.MODEL"] == "IDEA-Research/grounding-dino-base"
    assert "DATABASE_BUILD.BATCH_SIZE" not in recorded


def test_second_builder_is_refused_naming_the_holder(tmp_path, tiny_clip_file):
    out = tmp_path / "db"
    with lock_held_elsewhere(out) as holder:
        cfg = _cfg(out, tiny_clip_file)
        holder_name = f"host {socket.gethostname()} pid {holder.pid}"
        with pytest.raises(DatabaseLockedError, match=holder_name):
            preflight(cfg)
        with pytest.raises(DatabaseLockedError, match=f"pid {holder.pid}"):
            _build(cfg)
        assert [p.name for p in out.iterdir()] == ["LOCK"]  # nothing written


def test_repair_lists_the_shards_of_an_interrupted_build(tmp_path, partial, tiny_clip_file):
    out = tmp_path / "db"
    assert _build(_cfg(out, tiny_clip_file))["images"]["ok"] == 4
    complete = FeatureDatabase.open(out)
    manifest = complete.manifest
    # The state of a build killed after its last shard, before the manifest listed them.
    (out / "manifest.json").write_text(
        json.dumps({**manifest, "shards": [], "class_counts": [0] * len(manifest["vocabulary"])})
    )
    (out / "shards" / ".part000001-000000.safetensors.9.tmp").write_bytes(b"cut")
    assert len(FeatureDatabase.open(out)) == 0
    repaired = repair_database(str(out))
    assert repaired.content_hash() == complete.content_hash()
    assert repaired.manifest["class_counts"] == manifest["class_counts"]
    assert not list((out / "shards").glob(".*.tmp")) and not (out / "LOCK").exists()
    # A build that stopped early is not passed off as complete.
    before = tree_digest(partial)
    with pytest.raises(ValueError, match="incomplete: 2 of 4 chunks have no shard"):
        repair_database(str(partial))
    assert tree_digest(partial) == before
