"""tools/train_net.py and retclip.engine: argument handling, config checks, optimizer groups,
gradient clipping, metrics files; end-to-end training/resume/eval-only on the tiny model (slow)."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser
from torch import nn

import retclip
from retclip.engine import build_optimizer, build_param_groups, check_config, format_metrics, resolve_device, write_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny_fcclip_synthetic.yaml")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.backbone_frozen = nn.Linear(4, 4)
        self.backbone_frozen.requires_grad_(False)
        self.head = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.query = nn.Embedding(5, 4)
        self.level_embed = nn.Parameter(torch.zeros(3, 4))
        self.tied = self.head  # shared module: its parameters must appear once


@pytest.fixture
def propagate():
    """detectron2's setup_logger stops 'retclip' records from reaching caplog's root handler."""
    logger = logging.getLogger("retclip")
    old = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = old


def _cfg():
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    return cfg


def test_param_groups_follow_fcclip_rules():
    model = _Toy()
    groups = build_param_groups(
        model, base_lr=1e-4, weight_decay=0.05, weight_decay_norm=0.0, weight_decay_embed=0.0, backbone_multiplier=0.1
    )
    by_param = {id(g["params"][0]): (g["lr"], g["weight_decay"]) for g in groups}
    assert len(groups) == len(by_param)  # one group per tensor, no duplicates
    expected = {
        id(model.backbone[0].weight): (1e-5, 0.05),
        id(model.backbone[1].weight): (1e-5, 0.0),
        id(model.head.weight): (1e-4, 0.05),
        id(model.head.bias): (1e-4, 0.05),
        id(model.norm.weight): (1e-4, 0.0),
        id(model.gn.bias): (1e-4, 0.0),
        id(model.query.weight): (1e-4, 0.0),
        id(model.level_embed): (1e-4, 0.05),  # a Parameter, not an Embedding
    }
    for pid, (lr, wd) in expected.items():
        assert by_param[pid][0] == pytest.approx(lr) and by_param[pid][1] == wd
    assert id(model.backbone_frozen.weight) not in by_param  # frozen parameters are skipped
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(groups) == n_trainable


def test_full_model_gradient_clipping_clips_the_global_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    cfg = _cfg()
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    opt = build_optimizer(cfg, model)
    model(torch.randn(8, 4)).pow(2).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.detach().clone() for p in model.parameters()]
    total = torch.sqrt(sum((g**2).sum() for g in grads))
    assert total > 0.01
    opt.step()
    for b, g, p in zip(before, grads, model.parameters()):
        torch.testing.assert_close(b - p.detach(), g * (0.01 / total), rtol=1e-4, atol=1e-7)


def test_adamw_is_default_and_unknown_optimizer_rejected():
    cfg = _cfg()
    assert isinstance(build_optimizer(cfg, _Toy()), torch.optim.AdamW)
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="LAMB"):
        build_optimizer(cfg, _Toy())


def test_light_parser_matches_detectron2_flags():
    """tools/ parse detectron2's launcher flags without importing detectron2 (fast --help)."""
    from retclip.utils.launch_args import launcher_argument_parser

    ours, theirs = launcher_argument_parser(), default_argument_parser()
    key = lambda p: sorted((a.dest, tuple(a.option_strings), a.default, a.nargs) for a in p._actions)  # noqa: E731
    assert key(ours) == key(theirs)
    argv = ["--config-file", "x.yaml", "--num-gpus", "0", "--resume", "MODEL.WEIGHTS", "w.pth"]
    assert vars(ours.parse_args(argv)) == vars(theirs.parse_args(argv))


def test_argument_parser_accepts_detectron2_flags():
    args = default_argument_parser().parse_args(
        ["--config-file", "x.yaml", "--num-gpus", "0", "--num-machines", "2", "--machine-rank", "1",
         "--dist-url", "tcp://127.0.0.1:1234", "--resume", "--eval-only", "MODEL.WEIGHTS", "w.pth"]
    )
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (0, 2, 1)
    assert args.resume and args.eval_only and args.opts == ["MODEL.WEIGHTS", "w.pth"]


def test_unregistered_dataset_error_lists_registered():
    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("no_such_dataset",)
    cfg.DATASETS.TEST = ()
    with pytest.raises(KeyError) as e:
        check_config(cfg)
    assert "no_such_dataset" in str(e.value) and "openvocab_ade20k_panoptic_val" in str(e.value)


def test_num_classes_mismatch_names_both():
    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("retclip_synthetic_train",)
    cfg.DATASETS.TEST = ("retclip_synthetic_test",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 133
    with pytest.raises(ValueError) as e:
        check_config(cfg)
    assert "133" in str(e.value) and "retclip_synthetic_train" in str(e.value) and "7 classes" in str(e.value)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    check_config(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_amp_is_ignored_on_cpu_with_a_warning(caplog, propagate):
    cfg = _cfg()
    cfg.SOLVER.AMP.ENABLED = True
    with caplog.at_level(logging.WARNING, logger="retclip.utils.device"):
        resolve_device(cfg)
    assert not cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu"
    assert any("AMP" in r.getMessage() for r in caplog.records)


def test_metrics_are_written_atomically_and_formatted(tmp_path):
    res = {"panoptic_seg": {"PQ": 12.5, "PQ_seen": 20.0, "PQ_unseen": float("nan")}, "segm": {"AP": 3.0},
           "sem_seg": {"mIoU": 40.0, "mIoU_seen": 50.0, "mIoU_unseen": 30.0}}
    path = tmp_path / "out" / "metrics_0000010.json"
    write_metrics(res, str(path))
    assert json.loads(path.read_text())["segm"]["AP"] == 3.0
    assert not list((tmp_path / "out").glob("*.tmp"))
    line = format_metrics(res)
    assert "PQ 12.50 (seen 20.00, unseen -)" in line and "mAP 3.00" in line and "mIoU 40.00" in line


# ---------------------------------------------------------------- end to end on the tiny model


def _load_train_net():
    import importlib.util

    spec = importlib.util.spec_from_file_location("retclip_tools_train_net", os.path.join(ROOT, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(out_dir, *extra, resume=False, eval_only=False):
    argv = ["--config-file", TINY, "--num-gpus", "0"]
    argv += ["--resume"] if resume else []
    argv += ["--eval-only"] if eval_only else []
    opts = ["OUTPUT_DIR", str(out_dir), "INPUT.IMAGE_SIZE", "64", "SOLVER.IMS_PER_BATCH", "1",
            "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0"]
    return default_argument_parser().parse_args(argv + opts + list(extra))


class _Interrupt(RuntimeError):
    pass


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin contention on shared CPU cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.slow
def test_training_lowers_the_loss_on_fixed_data(one_thread):
    from detectron2.data import DatasetCatalog
    from retclip.data import build_dataset_mapper
    from retclip.engine import Trainer

    torch.manual_seed(0)
    from retclip.config_file import load_config

    cfg = load_config(TINY, freeze=False)
    cfg.INPUT.IMAGE_SIZE = 64
    cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 1.0
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.BASE_LR = 1e-3
    resolve_device(cfg)
    model = Trainer.build_model(cfg)
    model.train()
    opt = build_optimizer(cfg, model)
    # CLIP is frozen and left out of the optimizer.
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    clip = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    assert clip and not any(p.requires_grad or id(p) in in_opt for p in clip)
    assert len(in_opt) == sum(1 for p in model.parameters() if p.requires_grad)
    mapper = build_dataset_mapper(cfg)
    batch = [mapper(d) for d in DatasetCatalog.get("retclip_synthetic_train")[:2]]
    losses = []
    for _ in range(8):
        loss = sum(model(batch).values())
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert min(losses[-3:]) < 0.9 * losses[0], losses


@pytest.mark.slow
def test_resume_continues_and_eval_only_reproduces_final_metrics(tmp_path, one_thread):
    from detectron2.engine import HookBase
    from retclip.engine import Trainer
    from retclip.engine import resume_or_load as resume_fn

    train_net = _load_train_net()
    out = tmp_path / "run"

    class StopAt2(HookBase):
        def before_step(self):
            if self.trainer.iter == 2:
                raise _Interrupt("simulated kill")

    # 1) --resume on an empty folder starts fresh and says so; the run dies before iteration 2.
    cfg = train_net.setup(_args(out, resume=True))
    trainer = Trainer(cfg)
    trainer.register_hooks([StopAt2()])
    resume_fn(trainer, resume=True)
    assert "--resume: no checkpoint in" in (out / "log.txt").read_text()
    assert trainer.start_iter == 0
    with pytest.raises(_Interrupt):
        trainer.train()
    assert (out / "model_0000001.pth").is_file() and not (out / "model_final.pth").exists()
    saved = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=True)
    del trainer

    # 2) --resume picks up model_0000001 at iteration 2 with its optimizer and scheduler state.
    cfg = train_net.setup(_args(out, resume=True))
    trainer = Trainer(cfg)
    resume_fn(trainer, resume=True)
    assert trainer.start_iter == 2
    opt_state = trainer.optimizer.state_dict()["state"]
    assert opt_state, "optimizer state was not restored"
    for k, v in saved["trainer"]["_trainer"]["optimizer"]["state"].items():
        torch.testing.assert_close(opt_state[k]["exp_avg"], v["exp_avg"])
        assert float(opt_state[k]["step"]) == float(v["step"]) == 2.0
    assert trainer.scheduler.state_dict() == saved["trainer"]["hooks"]["LRScheduler"]
    assert trainer.scheduler.last_epoch == 2
    trainer.train()
    final = json.loads((out / "metrics_0000004.json").read_text())
    for task in ("panoptic_seg", "segm", "sem_seg"):
        assert task in final
    assert "PQ_seen" in final["panoptic_seg"] and "mIoU_unseen" in final["sem_seg"]

    # 3) --eval-only with the final weights reproduces the final evaluation exactly.
    train_net.run(_args(out, "MODEL.WEIGHTS", str(out / "model_final.pth"), eval_only=True))
    # Same text = same floats to the last bit (repr round-trips), NaN entries included.
    assert (out / "metrics_eval.json").read_text() == (out / "metrics_0000004.json").read_text()


@pytest.mark.slow
def test_eval_only_with_score_cache_dir_writes_a_readable_cache(tmp_path, one_thread):
    from retclip.sweep.cache import ScoreCache

    train_net = _load_train_net()
    out, cache = tmp_path / "run", tmp_path / "cache"
    results = train_net.run(_args(
        out, "MODEL.META_ARCHITECTURE", "RetCLIP", "MODEL.ENSEMBLE.MODE", "geometric",
        "TEST.SCORE_CACHE_DIR", str(cache), eval_only=True,
    ))
    assert "panoptic_seg" in results
    reader = ScoreCache(str(cache / "retclip_synthetic_test"))
    from detectron2.data import DatasetCatalog

    expected = {r["image_id"] for r in DatasetCatalog.get("retclip_synthetic_test")}
    entries = list(reader)
    assert {e.info["image_id"] for e in entries} == expected and not reader.missing_image_ids
    assert entries[0].tensors["in_vocab_logits"].shape[-1] == 9  # 8 test classes + void
