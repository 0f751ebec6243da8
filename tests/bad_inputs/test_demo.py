"""tools/demo.py with bad inputs: vocabulary, images, folders, config, device, output names.

Cheap cases stop before any model is built; the ``slow`` ones build the tiny model on CPU
(without MODEL.DEVICE: the CPU fallback is part of what they check).
"""
from pathlib import Path

import pytest

from .harness import Case, case_problems
from .in_process import run_in_process
from .inputs import (
    NO_DATASETS,
    TINY_FCCLIP,
    TINY_RETCLIP,
    bad_image_folder,
    gray16,
    rgb,
    tiny_database,
    truncated_jpeg,
)


def _args(*, inputs=("{tmp}/in/good.png",), vocabulary="cat, dog", config=TINY_FCCLIP, extra=(), opts=()):
    return ["--config-file", config, "--input", *inputs, "--vocabulary", vocabulary,
            "--output", "{tmp}/out", *extra, *NO_DATASETS, *opts]


def _good(tmp: Path) -> None:
    rgb(tmp / "in" / "good.png")


def _case(id, names, *, prepare=_good, code=2, absent=("{tmp}/out",), **kw):
    return Case(id=id, tool="demo.py", args=_args(**kw), names=names, code=code, prepare=prepare,
                protect=["{tmp}/in"], absent=list(absent))


CHEAP = [
    _case("vocabulary-file-typo", ["my_clases.txt", "does not exist"], vocabulary="my_clases.txt"),
    _case("vocabulary-path-typo", ["lists/classes", "does not exist"], vocabulary="lists/classes"),
    _case("vocabulary-case-duplicate", ["'Cat'", "twice"], vocabulary="cat, Cat"),
    _case("vocabulary-synonym-duplicate", ["'kitty'", "twice"], vocabulary="cat;kitty, kitty"),
    _case("vocabulary-empty", ["no class"], vocabulary=" , ;"),
    _case("top-neighbours-negative", ["--top-neighbours", "-1"], extra=["--top-neighbours", "-1"]),
    _case("input-missing", ["{tmp}/in/nope.jpg"], inputs=["{tmp}/in/nope.jpg"]),
    _case("input-folder-without-images", ["{tmp}/in/empty", "no images"], inputs=["{tmp}/in/empty"],
          prepare=lambda t: (t / "in" / "empty").mkdir(parents=True)),
    _case("config-missing", ["{tmp}/nothere.yaml"], config="{tmp}/nothere.yaml"),
    _case("config-key-unknown", ["MODEL.FOO"], opts=["MODEL.FOO", "1"]),
    _case("config-value-type", ["MODEL.RETCLIP.TOP_K", "'abc'"], opts=["MODEL.RETCLIP.TOP_K", "abc"]),
    _case("config-odd-overrides", ["MODEL.WEIGHTS", "no value"], opts=["MODEL.WEIGHTS"]),
    _case("weights-missing", ["{tmp}/none.pth"], opts=["MODEL.WEIGHTS", "{tmp}/none.pth"]),
    _case("database-missing", ["--database", "{tmp}/nodb"], extra=["--database", "{tmp}/nodb"]),
    _case("database-needs-retclip-config", ["RetCLIP", "FCCLIP"], extra=["--database", "{tmp}/in"]),
    _case("output-is-a-file", ["--output", "{tmp}/in/good.png"], absent=(),
          extra=["--output", "{tmp}/in/good.png"]),
]


def _yaml_with_unknown_key(tmp: Path) -> None:
    _good(tmp)
    (tmp / "in" / "cfg.yaml").write_text(f"_BASE_: {TINY_FCCLIP}\nMODEL:\n  RETCLIP:\n    TOPK: 3\n")


def _yaml_broken(tmp: Path) -> None:
    _good(tmp)
    (tmp / "in" / "broken.yaml").write_text("MODEL: [\n  WEIGHTS: x\n")


CHEAP += [
    _case("config-file-unknown-key", ["{tmp}/in/cfg.yaml", "MODEL.RETCLIP.TOPK"], prepare=_yaml_with_unknown_key,
          config="{tmp}/in/cfg.yaml"),
    _case("config-file-not-yaml", ["{tmp}/in/broken.yaml", "not valid YAML"], prepare=_yaml_broken,
          config="{tmp}/in/broken.yaml"),
]


def _one_truncated(tmp: Path) -> None:
    truncated_jpeg(tmp / "in" / "photo.jpg")


def _bad_folder(tmp: Path) -> None:
    bad_image_folder(tmp / "in")


def _same_names_and_16bit(tmp: Path) -> None:
    rgb(tmp / "in" / "a" / "x.jpg", seed=1)
    rgb(tmp / "in" / "b" / "x.jpg", seed=2)
    gray16(tmp / "in" / "b" / "depth16.png")


SLOW = [
    _case("truncated-jpeg", ["{tmp}/in/photo.jpg", "cannot be decoded", "1 of 1 images"],
          prepare=_one_truncated, inputs=["{tmp}/in/photo.jpg"], absent=["{tmp}/out/photo_panoptic.png"]),
    # the folder goes on past its bad files and lists each at the end; the good one is written
    _case("folder-with-bad-images",
          ["4 of 5 images", "{tmp}/in/truncated.jpg", "{tmp}/in/empty.png", "{tmp}/in/notes.jpg",
           "{tmp}/in/wide.png", "4000x8", "good_panoptic.png"],
          prepare=_bad_folder, inputs=["{tmp}/in"],
          absent=[f"{{tmp}}/out/{n}_panoptic.png" for n in ("truncated", "empty", "notes", "wide")]),
    # not a mistake: two x.jpg in different folders keep their relative paths; a 16-bit PNG reads
    _case("same-names-and-16-bit-on-cpu",
          ["{tmp}/out/a/x_panoptic.png", "{tmp}/out/b/x_panoptic.png", "{tmp}/out/b/depth16_panoptic.png",
           "running on CPU"],
          code=0, absent=(), prepare=_same_names_and_16bit, inputs=["{tmp}/in/a/x.jpg", "{tmp}/in/b"]),
    Case(id="vocabulary-file-duplicate", tool="demo.py",
         args=_args(config=TINY_RETCLIP, vocabulary="{tmp}/in/classes.txt", extra=["--database", "{tmp}/db"]),
         names=["'Wall'", "twice"], prepare=lambda t: (_good(t), tiny_database(t / "db"),
                                                         (t / "in" / "classes.txt").write_text("wall\nWall\n")),
         protect=["{tmp}/in", "{tmp}/db"], absent=["{tmp}/out"]),
]


@pytest.mark.parametrize("case", CHEAP, ids=lambda c: c.id)
def test_demo_mistake_before_the_model(case, tmp_path):
    _, problems = case_problems(case, tmp_path, runner=run_in_process)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=lambda c: c.id)
def test_demo_images_and_outputs(case, tmp_path):
    _, problems = case_problems(case, tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_demo_cheap_case_as_a_real_process(tmp_path):
    """The in-process runner answers as the real command does (one case, as a subprocess)."""
    _, problems = case_problems(CHEAP[0], tmp_path)
    assert not problems, "\n".join(problems)
