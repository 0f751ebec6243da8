"""Expected-metric checker, markdown tables / heatmaps, and the input checks of the Table 1 and 4
reproduction scripts."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from retclip.sweep.expected import check_sweep, check_table, load_expected, main
from retclip.sweep.report import pq_heatmaps, sweep_markdown, table_markdown

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "configs" / "expected"


def _write_metrics(root, row, pq, ap, miou):
    os.makedirs(root / row, exist_ok=True)
    payload = {"panoptic_seg": {"PQ": pq}, "segm": {"AP": ap}, "sem_seg": {"mIoU": miou}}
    (root / row / "metrics_eval.json").write_text(json.dumps(payload))


def test_committed_expected_files_load_and_hold_the_known_numbers():
    specs = {n: load_expected(str(EXPECTED / f"table{n}.json")) for n in (1, 2, 3, 4)}
    rows = {r["name"]: r for r in specs[1]["rows"]}
    # FC-CLIP README numbers of the released checkpoints (fcclip-facts.md section 8).
    assert rows["fcclip_convnext_large_ade20k"]["expected"] == {
        "PQ": 26.8,
        "mAP": 16.8,
        "mIoU": 34.1,
    }
    assert rows["fcclip_convnext_large_ade20k"]["paper"] == {"PQ": 26.4, "mAP": 16.8, "mIoU": 34.0}
    assert rows["fcclip_r50x64_ade20k"]["expected"] == {"PQ": 22.8, "mAP": 13.6, "mIoU": 28.4}
    assert rows["retclip_convnext_large_ade20k"]["paper"] == {"PQ": 30.9, "mAP": 19.3, "mIoU": 44.0}
    # Every Table 1 row has its config, and the Table 4 grid file lists the expected points.
    for name in rows:
        assert (REPO / "configs" / "retclip" / f"{name}.yaml").is_file(), name
    import yaml

    grid = yaml.safe_load((REPO / "configs" / "sweep" / "table4.yaml").read_text())["points"]
    assert sorted(map(tuple, grid)) == sorted(
        (p["alpha"], p["beta"], p["gamma"]) for p in specs[4]["points"]
    )
    assert len(grid) == 14 and max(p["paper_PQ"] for p in specs[4]["points"]) == 30.9


def test_table_check_statuses_and_exit_codes(tmp_path):
    spec = load_expected(str(EXPECTED / "table1.json"))
    _write_metrics(
        tmp_path, "fcclip_convnext_large_ade20k", 26.6, 16.9, 33.5
    )  # all within tolerance
    _write_metrics(tmp_path, "fcclip_r50x64_ade20k", 21.0, 13.6, 28.4)  # PQ 1.8 below: outside 0.5
    status = {(c.row, c.metric): c.status for c in check_table(spec, str(tmp_path))}
    assert status[("fcclip_convnext_large_ade20k", "PQ")] == "ok"
    assert status[("fcclip_convnext_large_ade20k", "mIoU")] == "ok"  # |33.5 - 34.1| = 0.6 <= 0.7
    assert status[("fcclip_r50x64_ade20k", "PQ")] == "FAIL"
    assert status[("fcclip_r50x64_ade20k", "mAP")] == "ok"
    assert status[("retclip_convnext_large_ade20k", "PQ")] == "missing"
    assert main([str(EXPECTED / "table1.json"), str(tmp_path)]) == 1
    _write_metrics(tmp_path, "fcclip_r50x64_ade20k", 22.9, 13.6, 28.4)
    assert (
        main([str(EXPECTED / "table1.json"), str(tmp_path)]) == 0
    )  # rest missing: partial but fine
    assert main([str(EXPECTED / "table1.json"), str(tmp_path / "nothing")]) == 2


def test_sweep_check_and_report(tmp_path):
    spec = load_expected(str(EXPECTED / "table4.json"))
    rows = []
    for p in spec["points"]:
        pq = p["paper_PQ"] + (3.0 if p["gamma"] == 1.0 else -1.0)
        rows.append(
            {
                "alpha": p["alpha"],
                "beta": p["beta"],
                "gamma": p["gamma"],
                "mode": "arithmetic",
                "PQ": pq,
                "mAP": 10.0,
                "mIoU": 20.0,
                "PQ_seen": 30.0,
                "PQ_unseen": 20.0,
            }
        )
    checks = {c.row: c for c in check_sweep(spec, rows)}
    assert checks["a=0.4 b=0.7 g=1.0"].status == "FAIL"  # 3.0 above the paper's 25.4
    assert checks["a=0.4 b=0.7 g=0.3"].status == "ok"
    assert (
        checks["best point"].got == pytest.approx(29.9) and checks["best point"].status == "FAIL"
    )  # 1.0 < best
    text = sweep_markdown(rows, spec, note="synthetic")
    assert "| 0.4 | 0.7 | 0.3 | **0.299** | 0.309 |" in text  # ours bold (best), paper's beside it
    assert text.count("**0.") == 1
    paths = pq_heatmaps(rows, str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["pq_alpha_gamma.png", "pq_beta_gamma.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_table_markdown_layout(tmp_path):
    spec = load_expected(str(EXPECTED / "table1.json"))
    _write_metrics(tmp_path, "fcclip_convnext_large_ade20k", 26.79, 16.82, 34.07)
    text = table_markdown(spec, str(tmp_path))
    assert (
        "| Method | Backbone | Database | PQ | mAP | mIoU | PQ (paper) | mAP (paper) | mIoU (paper) |"
        in text
    )
    assert (
        "| FC-CLIP | CLIP-ConvNeXt-large | N/A | 0.268 | 0.168 | 0.341 | 0.264 | 0.168 | 0.340 |"
        in text
    )
    assert "| RetCLIP | CLIP-RN50x64 | ADE20k | - | - | - | 0.271 | 0.151 | 0.369 |" in text


def _run(script, env_extra, *args):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DETECTRON2_DATASETS", "RETCLIP_DATABASES", "ROWS")
    }
    env.update(env_extra)
    return subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args], env=env, capture_output=True, text=True
    )


def test_reproduce_scripts_check_their_inputs(tmp_path):
    r = _run("reproduce_table1.sh", {}, "--check")
    assert r.returncode == 2 and "DETECTRON2_DATASETS is not set" in r.stderr
    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images" / "validation").mkdir(parents=True)
    (ade / "ade20k_panoptic_val").mkdir()
    (ade / "ade20k_panoptic_val.json").write_text("{}")
    weights = tmp_path / "fcclip_cocopan.pth"
    weights.write_bytes(b"0")
    base = {"DETECTRON2_DATASETS": str(tmp_path), "FCCLIP_CONVNEXT_WEIGHTS": str(weights)}
    r = _run("reproduce_table1.sh", {**base, "ROWS": "fcclip_convnext_large_ade20k"}, "--check")
    assert r.returncode == 0 and "ready to run Table 1 (fcclip_convnext_large_ade20k" in r.stdout
    r = _run("reproduce_table1.sh", {**base, "ROWS": "retclip_convnext_large_ade20k"}, "--check")
    assert r.returncode == 2 and "RETCLIP_DATABASES is not set" in r.stderr
    r = _run("reproduce_table1.sh", {**base, "ROWS": "fcclip_r50x64_ade20k"}, "--check")
    assert r.returncode == 2 and "FCCLIP_R50X64_WEIGHTS is not set" in r.stderr
    r = _run("reproduce_table1.sh", {**base, "ROWS": "no_such_row"}, "--check")
    assert r.returncode == 2 and "unknown row 'no_such_row'" in r.stderr
    dbs = tmp_path / "dbs"
    r = _run("reproduce_table4.sh", {**base, "RETCLIP_DATABASES": str(dbs)}, "--check")
    assert r.returncode == 2 and "ade20k_train_convnext_large_d_320" in r.stderr
    for name in ("ade20k_train_convnext_large_d_320", "openimages_convnext_large_d_320"):
        (dbs / name).mkdir(parents=True)
        (dbs / name / "manifest.json").write_text("{}")
    r = _run("reproduce_table4.sh", {**base, "RETCLIP_DATABASES": str(dbs)}, "--check")
    assert r.returncode == 0 and "ready to run Table 4" in r.stdout
    r = _run(
        "reproduce_table4.sh",
        {**base, "RETCLIP_DATABASES": str(dbs), "CACHE_DTYPE": "int8"},
        "--check",
    )
    assert r.returncode == 2 and "CACHE_DTYPE" in r.stderr
