"""tools/build_database.py with bad inputs: GPU counts, flags it does not have, config files,
keys and values; and (slow) a CPU build with --num-gpus 0 that goes past an unreadable image and
lists it at the end with a non-zero exit."""
from pathlib import Path

import pytest
import torch

from .harness import Case, check_case
from .in_process import run_in_process
from .inputs import TINY_DB, truncated_jpeg

SOURCE = ["DATABASE_BUILD.SOURCE.DATASET", "retclip_synthetic_train", "DATABASE_BUILD.SOURCE.MAX_IMAGES", "4"]


def _case(id, names, *opts, flags=(), config=TINY_DB, gpus="0", **kw):
    return Case(id=id, tool="build_database.py",
                args=["--config-file", config, "--num-gpus", gpus, *flags,
                      "DATABASE_BUILD.OUTPUT_DIR", "{tmp}/db", *SOURCE, *opts],
                names=names, absent=["{tmp}/db"], **kw)


CHEAP = [
    _case("num-gpus-negative", ["--num-gpus -2"], gpus="-2"),
    _case("eval-only-flag", ["--eval-only", "always resumes"], flags=["--eval-only"]),
    _case("config-missing", ["{tmp}/none.yaml"], config="{tmp}/none.yaml"),
    _case("config-key-unknown", ["DATABASE_BUILD.SHARDSIZE"], "DATABASE_BUILD.SHARDSIZE", "4"),
    _case("config-value-type", ["DATABASE_BUILD.SHARD_SIZE", "'big'"], "DATABASE_BUILD.SHARD_SIZE", "big"),
]
if torch.cuda.is_available():  # without CUDA, --num-gpus N starts N CPU processes (documented)
    CHEAP.append(_case("num-gpus-more-than-present", ["--num-gpus"], gpus=str(torch.cuda.device_count() + 7)))


def _synthetic_with_a_broken_image(tmp: Path) -> None:
    """The synthetic train split under tmp/synth, its first image cut in half."""
    from detectron2.data import DatasetCatalog

    from retclip.data.synthetic_datasets import register_synthetic_datasets

    register_synthetic_datasets(str(tmp / "synth"))
    try:
        records = sorted(DatasetCatalog.get("retclip_synthetic_train"), key=lambda r: r["image_id"])
        first = Path(records[0]["file_name"])
        truncated_jpeg(tmp / "broken.jpg")
        first.write_bytes((tmp / "broken.jpg").read_bytes())
        (tmp / "first.txt").write_text(str(first))
    finally:
        register_synthetic_datasets()


SLOW = [
    Case(id="num-gpus-0-builds-past-a-broken-image", tool="build_database.py",
         args=["--config-file", TINY_DB, "--num-gpus", "0", "DATABASE_BUILD.OUTPUT_DIR", "{tmp}/db", *SOURCE],
         names=["the database is built", "1 image(s) could not be read", "cannot be decoded", '"vectors"'],
         env={"RETCLIP_SYNTHETIC_DIR": "{tmp}/synth"}, prepare=_synthetic_with_a_broken_image,
         protect=["{tmp}/synth"]),
]


@pytest.mark.parametrize("case", CHEAP, ids=lambda c: c.id)
def test_build_database_mistake_before_any_worker(case, tmp_path):
    check_case(case, tmp_path, runner=run_in_process)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=lambda c: c.id)
def test_build_database_cpu_build(case, tmp_path):
    proc = check_case(case, tmp_path)
    assert (tmp_path / "first.txt").read_text() in proc.stdout + proc.stderr
