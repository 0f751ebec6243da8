"""No code from data: YAML payloads in configs, pickled weights and wrong checkpoints, per tool.

A YAML tag ``!!python/object/apply:os.system`` used to run in every tool (detectron2 falls back
to ``yaml.unsafe_load``), and a ``.pkl`` given as MODEL.WEIGHTS was unpickled. Each case here
runs the tool in a subprocess and checks exit code 2, that the message names the file (or the
key and both shapes), that the payload left no trace and that nothing on disk changed.
"""
import pickle
from pathlib import Path

import pytest

from .harness import REPO, Case, case_problems

TINY = str(REPO / "configs" / "tests" / "tiny_fcclip_synthetic.yaml")
PWNED = "{tmp}/pwned"


def _payload_yaml(tmp: Path, name: str = "evil.yaml", base: str = "") -> None:
    """A config whose MODEL.WEIGHTS value is built by calling os.system (safe_load refuses it)."""
    (tmp / "in").mkdir(exist_ok=True)
    lines = [f"_BASE_: {base}"] if base else []
    lines += ["MODEL:", f"  WEIGHTS: !!python/object/apply:os.system [\"touch {tmp}/pwned\"]"]
    (tmp / "in" / name).write_text("\n".join(lines) + "\n")


def _payload_in_base(tmp: Path) -> None:
    """A clean leaf whose _BASE_ (resolved beside the leaf) carries the payload."""
    _payload_yaml(tmp, "base.yaml")
    (tmp / "in" / "leaf.yaml").write_text("_BASE_: base.yaml\n")


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _pickled_payload(name: str):
    def prepare(tmp: Path) -> None:
        (tmp / "in").mkdir(exist_ok=True)
        with open(tmp / "in" / name, "wb") as f:
            pickle.dump({"model": _Payload(str(tmp / "pwned"))}, f)

    return prepare


def _image(tmp: Path) -> None:
    from PIL import Image

    (tmp / "in").mkdir(exist_ok=True)
    Image.new("RGB", (32, 24), (120, 30, 200)).save(tmp / "in" / "img.png")


def _both(*prepares):
    def prepare(tmp: Path) -> None:
        for p in prepares:
            p(tmp)

    return prepare


EVIL = "{tmp}/in/evil.yaml"
YAML_NAMES = [EVIL, "python/object/apply:os.system", "safe YAML"]


def _yaml_case(tool: str, args, prepare=_payload_yaml) -> Case:
    return Case(id=f"yaml-payload-{tool}", tool=tool, args=args, names=YAML_NAMES, prepare=prepare,
                protect=["{tmp}/in"], absent=[PWNED])


YAML_CASES = [
    _yaml_case("train_net.py", ["--config-file", EVIL, "--num-gpus", "0", "--eval-only",
                                "OUTPUT_DIR", "{tmp}/out"]),
    _yaml_case("demo.py", ["--config-file", EVIL, "--input", "{tmp}/in/img.png", "--vocabulary",
                           "cat, dog", "--output", "{tmp}/out"], _both(_payload_yaml, _image)),
    _yaml_case("build_database.py", ["--config-file", EVIL, "--num-gpus", "0"]),
    _yaml_case("inspect_database.py", ["add", "{tmp}/db", EVIL]),
    _yaml_case("sweep_ensemble.py", ["--cache", "{tmp}/cache", "--output-dir", "{tmp}/sweep",
                                     "--alpha", "0.4", "--beta", "0.7", "--gamma", "0.2",
                                     "--config-file", EVIL]),
    Case(id="yaml-payload-in-a-base-file", tool="train_net.py",
         args=["--config-file", "{tmp}/in/leaf.yaml", "--num-gpus", "0", "--eval-only"],
         names=["{tmp}/in/base.yaml", "python/object/apply:os.system"], prepare=_payload_in_base,
         protect=["{tmp}/in"], absent=[PWNED]),
]

def _eval_only_weights(id: str, name: str, names) -> Case:
    """train_net.py --eval-only with MODEL.WEIGHTS {tmp}/in/<name> holding a pickle payload."""
    return Case(id=id, tool="train_net.py",
                args=["--config-file", TINY, "--num-gpus", "0", "--eval-only", "OUTPUT_DIR",
                      "{tmp}/out", "MODEL.WEIGHTS", "{tmp}/in/" + name],
                names=["{tmp}/in/" + name, *names], prepare=_pickled_payload(name),
                protect=["{tmp}/in"], absent=[PWNED, "{tmp}/out/metrics_eval.json"])


WEIGHT_CASES = [
    _eval_only_weights("pkl-weights-train-net-eval-only", "model_final.pkl",
                       ["tools/convert_checkpoint.py --allow-pickle"]),
    _eval_only_weights("pickle-payload-in-a-pth", "model_final.pth", ["weights_only"]),
    Case(id="pkl-weights-demo", tool="demo.py",
         args=["--config-file", TINY, "--input", "{tmp}/in/img.png", "--vocabulary", "cat, dog",
               "--output", "{tmp}/out", "MODEL.WEIGHTS", "{tmp}/in/model_final.pkl"],
         names=["{tmp}/in/model_final.pkl", "convert_checkpoint.py"],
         prepare=_both(_pickled_payload("model_final.pkl"), _image), protect=["{tmp}/in"],
         absent=[PWNED, "{tmp}/out"]),
    Case(id="convert-checkpoint-needs-allow-pickle", tool="convert_checkpoint.py",
         args=["{tmp}/in/model_final.pkl", "{tmp}/out.pth"],
         names=["{tmp}/in/model_final.pkl", "--allow-pickle"],
         prepare=_pickled_payload("model_final.pkl"), protect=["{tmp}/in"],
         absent=[PWNED, "{tmp}/out.pth"]),
    # --allow-pickle says the user trusts the file; a file that calls anything but numpy's
    # array reconstruction is refused all the same, naming what it asked for
    Case(id="convert-checkpoint-refuses-a-payload-even-allowed", tool="convert_checkpoint.py",
         args=["--allow-pickle", "{tmp}/in/model_final.pkl", "{tmp}/out.pth"],
         names=["{tmp}/in/model_final.pkl", "posix.system"],
         prepare=_pickled_payload("model_final.pkl"), protect=["{tmp}/in"],
         absent=[PWNED, "{tmp}/out.pth"]),
]


def _wrong_shape_checkpoint(tmp: Path) -> None:
    """The tiny model's own weights with one tensor of another shape (11 queries, not 10)."""
    import torch
    from detectron2.modeling import build_model

    from retclip.config import load_config

    cfg = load_config(TINY, ["MODEL.DEVICE", "cpu"])
    state = build_model(cfg).state_dict()
    key = "sem_seg_head.predictor.query_embed.weight"
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    (tmp / "in").mkdir(exist_ok=True)
    torch.save({"model": state, "iteration": 3}, tmp / "in" / "wrong_shape.pth")


WRONG_SHAPE = Case(
    id="wrong-shape-checkpoint-train-net-eval-only", tool="train_net.py",
    args=["--config-file", TINY, "--num-gpus", "0", "--eval-only", "OUTPUT_DIR", "{tmp}/out",
          "MODEL.WEIGHTS", "{tmp}/in/wrong_shape.pth"],
    names=["{tmp}/in/wrong_shape.pth", "sem_seg_head.predictor.query_embed.weight", "(11, 32)",
           "(10, 32)"],
    prepare=_wrong_shape_checkpoint, protect=["{tmp}/in"],
    absent=["{tmp}/out/metrics_eval.json", "{tmp}/out/inference"],
)


@pytest.mark.parametrize("case", YAML_CASES, ids=lambda c: c.id)
def test_yaml_payload_is_refused_naming_the_file(case, tmp_path):
    _, problems = case_problems(case, tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("case", WEIGHT_CASES, ids=lambda c: c.id)
def test_pickled_weights_are_refused(case, tmp_path):
    _, problems = case_problems(case, tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_wrong_shape_checkpoint_fails_before_any_metric(tmp_path):
    _, problems = case_problems(WRONG_SHAPE, tmp_path)
    assert not problems, "\n".join(problems)
    assert not list((tmp_path / "out").glob("metrics*.json"))
