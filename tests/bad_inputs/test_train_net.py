"""tools/train_net.py with bad inputs: GPU counts (checked before any worker starts), config
files, keys and values, datasets, weights, and DETECTRON2_DATASETS unset."""
import pytest
import torch

from .harness import Case, case_problems
from .in_process import run_in_process
from .inputs import TINY_FCCLIP, TINY_TRAIN


def _case(id, names, *opts, flags=(), config=TINY_TRAIN, **kw):
    return Case(id=id, tool="train_net.py",
                args=["--config-file", config, "--num-gpus", "0", *flags, "OUTPUT_DIR", "{tmp}/out", *opts],
                names=names, absent=["{tmp}/out"], **kw)


def _more_gpus_than_here() -> int:
    return (torch.cuda.device_count() if torch.cuda.is_available() else 0) + 7


CHEAP = [
    Case(id="num-gpus-more-than-present", tool="train_net.py",
         args=["--config-file", TINY_TRAIN, "--num-gpus", str(_more_gpus_than_here()), "OUTPUT_DIR", "{tmp}/out"],
         names=[f"--num-gpus {_more_gpus_than_here()}", "GPU"], absent=["{tmp}/out"]),
    _case("num-gpus-negative", ["--num-gpus -1"], flags=["--num-gpus", "-1"]),
    _case("config-missing", ["{tmp}/none.yaml"], config="{tmp}/none.yaml"),
    _case("config-key-unknown", ["SOLVER.BASE_LRR"], "SOLVER.BASE_LRR", "0.1"),
    _case("config-value-type", ["SOLVER.MAX_ITER", "'many'"], "SOLVER.MAX_ITER", "many"),
    _case("dataset-not-registered", ["'my_dataset'", "registered datasets"], "DATASETS.TEST", "('my_dataset',)"),
    _case("num-classes-mismatch", ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "retclip_synthetic_train"],
          "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"),
    _case("eval-weights-missing", ["{tmp}/model_final.pth"], "MODEL.WEIGHTS", "{tmp}/model_final.pth",
          flags=["--eval-only"]),
]

SLOW = [
    # the ADE20k config is fine; the dataset root is not set, and the error says so
    Case(id="detectron2-datasets-unset", tool="train_net.py",
         args=["--config-file", TINY_FCCLIP, "--num-gpus", "0", "--eval-only", "OUTPUT_DIR", "{tmp}/out",
               "DATASETS.TRAIN", "()", "DATASETS.TEST", "('openvocab_ade20k_panoptic_val',)"],
         names=["openvocab_ade20k_panoptic_val", "DETECTRON2_DATASETS, which is unset"],
         env={"DETECTRON2_DATASETS": ""}, protect=["{tmp}/in"]),
]


@pytest.mark.parametrize("case", CHEAP, ids=lambda c: c.id)
def test_train_net_mistake_before_any_worker(case, tmp_path):
    _, problems = case_problems(case, tmp_path, runner=run_in_process)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=lambda c: c.id)
def test_train_net_dataset_root(case, tmp_path):
    _, problems = case_problems(case, tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_train_net_gpu_count_as_a_real_process(tmp_path):
    _, problems = case_problems(CHEAP[0], tmp_path)
    assert not problems, "\n".join(problems)
