"""scripts/reproduce_table{2,3}.sh: input checks, the printed table, and one real tiny row."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {2: REPO / "scripts" / "reproduce_table2.sh", 3: REPO / "scripts" / "reproduce_table3.sh"}


def run(args, env, **kwargs):
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DETECTRON2_DATASETS",
            "RETCLIP_DATABASES",
            "SAM_CHECKPOINT",
            "GROUNDING_DINO_MODEL",
        )
    }
    return subprocess.run(
        ["bash", *args], env={**base, **env}, capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture
def inputs(tmp_path):
    """The file layout the scripts look for (empty stand-ins: only their presence is checked)."""
    ade = tmp_path / "datasets" / "ADEChallengeData2016"
    (ade / "images" / "validation").mkdir(parents=True)
    (ade / "ade20k_panoptic_val").mkdir()
    (ade / "ade20k_panoptic_val.json").write_text("{}")
    for name in ("ade20k_train_vit_b16", "ade20k_train_vit_l14"):
        (tmp_path / "dbs" / name).mkdir(parents=True)
        (tmp_path / "dbs" / name / "manifest.json").write_text("{}")
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"")
    return {
        "DETECTRON2_DATASETS": str(tmp_path / "datasets"),
        "RETCLIP_DATABASES": str(tmp_path / "dbs"),
        "SAM_CHECKPOINT": str(tmp_path / "sam_vit_b_01ec64.pth"),
    }


@pytest.mark.parametrize("table", [2, 3])
def test_check_passes_with_every_input(table, inputs):
    result = run([str(SCRIPTS[table]), "--check"], inputs)
    assert result.returncode == 0, result.stderr
    assert f"ready to run Table {table}" in result.stdout


@pytest.mark.parametrize("table", [2, 3])
@pytest.mark.parametrize(
    "drop,message",
    [
        ("DETECTRON2_DATASETS", "DETECTRON2_DATASETS is not set"),
        ("RETCLIP_DATABASES", "RETCLIP_DATABASES is not set"),
        ("SAM_CHECKPOINT", "SAM_CHECKPOINT is not set"),
    ],
)
def test_missing_input_is_refused_by_name(table, inputs, drop, message):
    env = {k: v for k, v in inputs.items() if k != drop}
    result = run([str(SCRIPTS[table]), "--check"], env)
    assert result.returncode == 2 and message in result.stderr


def test_missing_files_are_named(inputs, tmp_path):
    os.remove(Path(inputs["RETCLIP_DATABASES"]) / "ade20k_train_vit_l14" / "manifest.json")
    result = run([str(SCRIPTS[2]), "--check"], inputs)
    assert result.returncode == 2 and "ade20k_train_vit_l14" in result.stderr
    result = run(
        [str(SCRIPTS[3]), "--check"], {**inputs, "GROUNDING_DINO_MODEL": str(tmp_path / "no_gdino")}
    )
    assert result.returncode == 2 and "no_gdino" in result.stderr
    result = run(
        [str(SCRIPTS[2]), "--check"], {**inputs, "SAM_CHECKPOINT": str(tmp_path / "nope.pth")}
    )
    assert result.returncode == 2 and "nope.pth" in result.stderr


def test_every_config_named_by_the_scripts_exists_and_sets_its_row():
    for script in SCRIPTS.values():
        configs = [
            line.split("|")[2]
            for line in script.read_text().splitlines()
            if line.strip().startswith('"') and ".yaml|" in line
        ]
        assert len(configs) == 6
        for name in configs:
            cfg = yaml.safe_load((REPO / "configs" / "training_free" / name).read_text())
            tf = cfg["MODEL"]["TRAINING_FREE"]
            assert tf["MODE"] in name and ("b16" in name) == (tf["CLIP_MODEL_NAME"] == "ViT-B-16")
            expected = {
                "gt": "ground_truth",
                "sam_grid": "sam_grid",
                "gdino_sam": "grounding_dino_sam",
            }
            assert tf["PROPOSALS"] == next(
                v for k, v in expected.items() if name.endswith(f"_{k}.yaml")
            )


def test_table_prints_metrics_as_fractions(tmp_path):
    out = tmp_path / "row"
    out.mkdir()
    metrics = {"panoptic_seg": {"PQ": 12.7}, "segm": {"AP": 7.5}, "sem_seg": {"mIoU": 17.3}}
    (out / "metrics_eval.json").write_text(json.dumps(metrics))
    rows = [
        f"RetCLIP|CLIP-ViT-base|{out}|0.127|0.075|0.173",
        f"CLIP|CLIP-ViT-base|{tmp_path / 'none'}|0.090|0.055|0.123",
    ]
    script = f'source "{SCRIPTS[2]}"; tf_table "T" "{rows[0]}" "{rows[1]}"'
    result = run(["-c", script], {"PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].split()[:5] == ["RetCLIP", "CLIP-ViT-base", "0.127", "0.075", "0.173"]
    assert lines[-1].split()[2:5] == ["-", "-", "-"]  # a row without metrics shows dashes


@pytest.mark.slow
def test_one_real_row_runs_train_net_eval_only(inputs, tmp_path):
    """tf_run_row on the tiny config: tools/train_net.py --eval-only end to end on CPU."""
    out = tmp_path / "tiny_row"
    row = "../tests/tiny_training_free_gt.yaml"
    script = f'source "{SCRIPTS[2]}"; tf_check_common; tf_run_row {row} "{out}"'
    env = {
        **inputs,
        "PYTHON": sys.executable,
        "NUM_GPUS": "0",
        "RETCLIP_SYNTHETIC_DIR": str(tmp_path / "synthetic"),
        "HF_HUB_OFFLINE": "1",
    }
    result = run(["-c", script], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics_eval.json").read_text())
    assert {"panoptic_seg", "segm", "sem_seg"} <= set(metrics)
