"""The trainer on CPU with micro models: recipe pieces (schedule, parameter groups, augmentation, data order),
exact resume after a crash, modality blanking, and clear errors for bad dataset folders."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from sigma_ros.training.augment import IGNORE_INDEX, OFFICIAL_SCALES, augment, scale_choices
from sigma_ros.training.config import TrainConfig
from sigma_ros.training.data import DatasetError, EpochBatches
from sigma_ros.training.optim import param_groups, warmup_poly_factor
from sigma_ros.training.trainer import Trainer

H, W = 48, 64


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from sigma_ros.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=12, n_test=3, height=H, width=W, seed=7)


def _cfg(data, out, **kw) -> TrainConfig:
    """A micro run on the CPU, also on a GPU machine: these tests compare exact weights and the CPU's messages."""
    base = dict(data=str(data), out=str(out), variant="micro", batch_size=2, crop=(H, W), lr=1e-3, warmup_steps=2,
                log_every=2, progress=False, tensorboard=False, workers=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _quiet(_msg):
    pass


# ---------------------------------------------------------------------------------------------------------------
# recipe pieces
# ---------------------------------------------------------------------------------------------------------------
def test_warmup_poly_schedule():
    total, warm = 100, 10
    f = [warmup_poly_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up reaching the peak
    assert f[10] == pytest.approx((1 - 10 / 100) ** 0.9) and f[50] == pytest.approx(0.5 ** 0.9)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # then monotone decay
    assert warmup_poly_factor(total, total, warm) == 0.0
    assert warmup_poly_factor(0, 10, 0) == 1.0


def test_official_param_groups_leave_out_6_4M_parameters_of_sigma_t():
    from sigma_ros.model import SigmaConfig, build_sigma

    model = build_sigma(SigmaConfig.tiny(num_classes=9))
    total = sum(p.numel() for p in model.parameters())
    assert total == 48_287_360
    groups, info = param_groups(model, 0.01, official=True)
    assert info["left_out_params"] == 6_407_808 and info["left_out_tensors"] == 195  # anatomy §7.3
    leaves = {n.rsplit(".", 1)[-1] for n in info["left_out_names"]}
    assert leaves == {"x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds", "A_log_1", "A_log_2",
                      "D_1", "D_2", "scale1", "scale2"}
    # default: everything is optimised; SSM A/D, biases, norms and 1-D parameters are not decayed
    groups, info = param_groups(model, 0.01)
    assert info["optimised_params"] == total and info["left_out_params"] == 0
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert not any(n.endswith(("bias", "A_logs", "Ds", "A_log_1", "D_1", "scale1")) for n in names)
    assert not any(".norm" in n for n in names)
    assert "backbone.vssm.layers.0.blocks.0.op.x_proj_weight" in names
    assert "decode_head.output.weight" in names


def test_augment_keeps_image_and_label_aligned():
    # the label is a function of the image content, so any misalignment after flip/scale/crop shows up
    h, w = 40, 60
    label = torch.from_numpy((np.arange(w)[None, :] // 10 + 3 * (np.arange(h)[:, None] // 20)) % 6)
    rgb = label[None].float().repeat(3, 1, 1)
    x = -rgb.clone()
    for seed in range(12):
        r, xx, lab = augment(rgb, x, label, np.random.default_rng(seed), crop=(32, 48), scales=OFFICIAL_SCALES)
        assert r.shape == (3, 32, 48) and xx.shape == (3, 32, 48) and lab.shape == (32, 48)
        valid = lab != IGNORE_INDEX
        pad = ~valid
        assert torch.all(r[:, pad] == 0) and torch.all(xx[:, pad] == 0)  # pad: 0 in normalised space
        # away from class borders (where bilinear mixes values) the image value equals the label
        lab_f = lab.float()[None, None]
        lo = -torch.nn.functional.max_pool2d(-lab_f, 3, 1, 1)[0, 0]
        hi = torch.nn.functional.max_pool2d(lab_f, 3, 1, 1)[0, 0]
        interior = valid & (lo == hi)
        assert interior.sum() > 0.3 * valid.sum()
        torch.testing.assert_close(r[0][interior], lab[interior].float(), rtol=0, atol=1e-5)
        torch.testing.assert_close(xx[0][interior], -lab[interior].float(), rtol=0, atol=1e-5)


def test_augment_is_a_function_of_the_seed():
    rgb, x = torch.randn(3, 30, 40), torch.randn(3, 30, 40)
    lab = torch.randint(0, 5, (30, 40))
    a = augment(rgb, x, lab, np.random.default_rng([1, 2, 3]), crop=(32, 32))
    b = augment(rgb, x, lab, np.random.default_rng([1, 2, 3]), crop=(32, 32))
    c = augment(rgb, x, lab, np.random.default_rng([1, 2, 4]), crop=(32, 32))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert scale_choices((0.5, 1.75), 0.25) == OFFICIAL_SCALES
    assert scale_choices((0.5, 1.75), 0) is None


def test_epoch_batches_resume_and_ddp_split():
    full = EpochBatches(10, 3, seed=5)
    stream = iter(full)
    first = [next(stream) for _ in range(7)]  # 3 batches per epoch (drop_last): crosses two epoch boundaries
    assert [b[0][0] for b in first] == [0, 0, 0, 1, 1, 1, 2]
    assert len({i for _, i in sum(first[:3], [])}) == 9  # no repeats inside an epoch
    later = EpochBatches(10, 3, seed=5, start=4)
    assert [next(iter(later)) for _ in range(1)][0] == first[4]
    it = iter(later)
    assert [next(it) for _ in range(3)] == first[4:7]
    # two DDP ranks see disjoint halves of each epoch
    r0, r1 = iter(EpochBatches(10, 2, 5, world_size=2, rank=0)), iter(EpochBatches(10, 2, 5, world_size=2, rank=1))
    s0 = {i for _ in range(2) for _, i in next(r0)}
    s1 = {i for _ in range(2) for _, i in next(r1)}
    assert not s0 & s1 and len(s0 | s1) == 8
    with pytest.raises(DatasetError, match="too few"):
        EpochBatches(3, 4, 0)


# ---------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------
def test_resumed_run_equals_uninterrupted_run(syn, tmp_path):
    kw = dict(max_steps=7, eval_every=4, save_every=3, accum_steps=2)
    a = Trainer(_cfg(syn, tmp_path / "a", **kw), log=_quiet).run()

    class Crash(Exception):
        pass

    def crash(trainer, step):
        if step == 5:  # after the save at step 3 and the eval at step 4 (which saves too: new best)
            raise Crash

    with pytest.raises(Crash):
        Trainer(_cfg(syn, tmp_path / "b", **kw), hooks=[crash], log=_quiet).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_cfg(syn, tmp_path / "b", **kw), log=_quiet).run()
    msgs = []
    b = Trainer(_cfg(syn, tmp_path / "b", **kw), resume=True, log=msgs.append).run()
    assert any("resumed" in m and "step 4" in m for m in msgs)

    sa = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 7
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=0, atol=1e-6, msg=k)
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        torch.testing.assert_close(pa["exp_avg_sq"], pb["exp_avg_sq"], rtol=0, atol=1e-9)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert a.best_miou == pytest.approx(b.best_miou)
    # the metrics CSV of the resumed run has no rows from after the crash twice
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "metrics.csv"))]
    assert steps == sorted(set(steps)) == [2, 4, 6, 7]


def test_run_outputs_load_in_the_node_path(syn, tmp_path):
    from sigma_ros.data.datasets import open_dataset
    from sigma_ros.data.synthetic import SYNTHETIC_CLASS_NAMES
    from sigma_ros.model import load_checkpoint
    from sigma_ros.segmenter import Segmenter

    out = tmp_path / "run"
    s = Trainer(_cfg(syn, out, max_steps=4, eval_every=2, tensorboard=True), log=_quiet).run()
    for f in ("last.pt", "best.pt", "state.pt", "config.yaml", "metrics.csv", "curves.png", "summary.txt"):
        assert (out / f).is_file(), f
    assert list((out / "tb").glob("events.out.tfevents.*"))
    ck = load_checkpoint(out / "last.pt")
    assert ck.class_names == SYNTHETIC_CLASS_NAMES and ck.preprocessing == "rgb"
    assert ck.extra["modality"] == "thermal" and ck.extra["step"] == 4 and ck.extra["crop"] == [H, W]
    assert ck.config.variant == "micro" and len(ck.palette) == len(SYNTHETIC_CLASS_NAMES)
    seg = Segmenter.from_checkpoint(out / "best.pt", device="cpu")
    item = open_dataset(syn, "test")[0]
    assert seg(item["rgb"], item["x"]).labels.shape == (H, W)
    assert s.steps == 4 and math.isfinite(s.final_loss) and s.best_miou is not None
    assert "best mIoU" in (out / "summary.txt").read_text()
    _check_node_config(out / "node_config.yaml", SYNTHETIC_CLASS_NAMES, ck.palette)


def _check_node_config(path, names, palette):
    """node_config.yaml is a valid params file for the node and a class config (as config/*.yaml are)."""
    import yaml

    from sigma_ros.classes import load_class_config
    from sigma_ros.ros import params as node_params

    cc = load_class_config(path)
    assert cc.class_names == list(names) and cc.modality == "thermal" and cc.preprocessing == "rgb"
    np.testing.assert_array_equal(cc.palette, palette)
    values = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    flat = node_params.defaults()
    flat.update({k: v for k, v in values.items() if k in node_params.SPECS})
    flat.update({f"sync.{k}": v for k, v in values["sync"].items()})
    flat["checkpoint"] = str(path.parent / "best.pt")
    assert node_params.validate(flat).modality == "thermal"
    try:
        import rclpy
        from rclpy.node import Node
    except ImportError:
        return
    context = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
    try:
        node = Node("sigma_segmentation", context=context, automatically_declare_parameters_from_overrides=True)
        assert list(node.get_parameter("class_names").value) == list(names)
        assert list(node.get_parameter("palette").value) == palette.reshape(-1).tolist()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_blank_x_zeroes_the_thermal_input_and_is_recorded(syn, tmp_path):
    from sigma_ros.model import load_checkpoint
    from sigma_ros.training.data import TrainSet, open_split

    ds = TrainSet(open_split(syn, "train"), crop=(H, W), blank="x", num_classes=8)
    rgb, x, _ = ds[(0, 0)]
    assert torch.all(x == 0) and rgb.abs().sum() > 0
    Trainer(_cfg(syn, tmp_path / "bx", max_steps=2, eval_split=None, blank="x"), log=_quiet).run()
    assert load_checkpoint(tmp_path / "bx" / "last.pt").extra["blank"] == "x"


def test_official_param_groups_flag_leaves_ssm_parameters_untouched(syn, tmp_path):
    from sigma_ros.model import SigmaConfig, build_sigma, load_checkpoint

    Trainer(_cfg(syn, tmp_path / "off", max_steps=2, eval_split=None, official_param_groups=True,
                 seed=11), log=_quiet).run()
    trained = load_checkpoint(tmp_path / "off" / "last.pt").model.state_dict()
    torch.manual_seed(11)
    init = build_sigma(SigmaConfig.micro(num_classes=8)).state_dict()  # same seed, same init
    for k in ("decode_head.layers_up.1.blocks.0.scale1", "backbone.vssm.layers.0.blocks.0.op.A_logs"):
        torch.testing.assert_close(trained[k], init[k], rtol=0, atol=0)
    assert not torch.equal(trained["decode_head.output.weight"], init["decode_head.output.weight"])


# ---------------------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------------------
def test_bad_dataset_folders_give_clear_errors(syn, tmp_path):
    import shutil

    from PIL import Image

    with pytest.raises(DatasetError, match="does not exist"):
        Trainer(_cfg(tmp_path / "missing", tmp_path / "o1", max_steps=1), log=_quiet).run()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        Trainer(_cfg(empty, tmp_path / "o2", max_steps=1), log=_quiet).run()
    nolabel = tmp_path / "nolabel"
    shutil.copytree(syn, nolabel)
    shutil.rmtree(nolabel / "Label")
    with pytest.raises(DatasetError, match="label"):
        Trainer(_cfg(nolabel, tmp_path / "o3", max_steps=1), log=_quiet).run()
    bad = tmp_path / "badlabel"
    shutil.copytree(syn, bad)
    name = (bad / "train.txt").read_text().split()[0]
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(bad / "Label" / f"{name}.png")
    with pytest.raises(DatasetError, match=r"label value 40 >= num_classes 8"):
        Trainer(_cfg(bad, tmp_path / "o4", max_steps=8, batch_size=12, eval_split=None), log=_quiet).run()
    with pytest.raises(DatasetError, match="too few"):
        Trainer(_cfg(syn, tmp_path / "o5", max_steps=1, batch_size=64), log=_quiet).run()


def test_cli_reports_errors_and_validates_options(syn, tmp_path, capsys):
    from sigma_ros.cli import main

    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset error" in capsys.readouterr().err
    assert main(["train", "--data", str(syn), "--out", str(tmp_path / "o"), "--crop", "16x16"]) == 2
    assert "too small" in capsys.readouterr().err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    assert main(["train", "--data", str(syn), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "learning_rate" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# initialisation: fine-tuning from a checkpoint, ImageNet encoder weights
# ---------------------------------------------------------------------------------------------------------------
def test_init_checkpoint_keeps_weights_and_reinitialises_a_different_head(syn, micro_checkpoint, tmp_path):
    from sigma_ros.model import load_checkpoint

    src = load_checkpoint(micro_checkpoint)  # 5 classes, the synthetic data has 8
    t = Trainer(_cfg(syn, tmp_path / "ft", max_steps=1, init_checkpoint=str(micro_checkpoint)), log=_quiet)
    t.setup()
    own, ref = t.model.state_dict(), src.model.state_dict()
    assert own["decode_head.output.weight"].shape[0] == 8
    for k, v in ref.items():
        if k != "decode_head.output.weight":
            torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    assert t.cfg.preprocessing == "rgb"


def test_pretrained_vmamba_weights_reach_the_encoder(syn, tmp_path):
    import re

    from sigma_ros.model import SigmaConfig, build_sigma

    torch.manual_seed(123)
    donor = build_sigma(SigmaConfig.micro(num_classes=8)).backbone.vssm.state_dict()
    renamed = {}
    for k, v in donor.items():  # back to VMamba v0 names (anatomy §7.2)
        k = re.sub(r"^patch_embed\.0\.", "patch_embed.proj.", k)
        k = re.sub(r"^patch_embed\.2\.", "patch_embed.norm.", k)
        k = re.sub(r"(blocks\.\d+)\.norm\.", r"\1.ln_1.", k)
        k = k.replace(".op.", ".self_attention.")
        renamed[k] = v
    renamed["head.weight"] = torch.zeros(1000, 256)
    path = tmp_path / "vssm_micro.pth"
    torch.save({"model": renamed}, path)
    msgs = []
    t = Trainer(_cfg(syn, tmp_path / "pt", max_steps=1, pretrained=str(path)), log=msgs.append)
    t.setup()
    enc = t.model.backbone.vssm.state_dict()
    for k in ("patch_embed.0.weight", "layers.0.blocks.0.op.A_logs", "layers.0.blocks.0.norm.weight"):
        torch.testing.assert_close(enc[k], donor[k], rtol=0, atol=0)
    assert any("ImageNet init" in m for m in msgs)
    with pytest.raises(ValueError, match="not found"):
        Trainer(_cfg(syn, tmp_path / "pt2", max_steps=1, pretrained=str(tmp_path / "nope.pth")), log=_quiet).setup()


def test_checkpointing_recomputes_branches_with_the_same_gradients():
    """Checkpointed blocks recompute their residual branches without stashing RNG state: stochastic depth draws its
    masks outside them, so with drop paths on, loss and every gradient equal those of the plain model."""
    from sigma_ros.model import SigmaConfig, build_sigma
    from sigma_ros.training.step import enable_activation_checkpointing

    def grads(checkpointing):
        torch.manual_seed(0)
        model = build_sigma(SigmaConfig.micro(num_classes=3, drop_path_rate=0.5)).train()
        if checkpointing:
            assert enable_activation_checkpointing(model, "all") == 4 + 4 + 4 + 3
        torch.manual_seed(1)
        out = model(torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48))
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    out, ref = grads(False)
    out_ck, got = grads(True)
    assert torch.equal(out, out_ck)
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_high_res_checkpointing_covers_the_first_stage_blocks_only():
    from sigma_ros.model import SigmaConfig, build_sigma
    from sigma_ros.training.step import enable_activation_checkpointing

    model = build_sigma(SigmaConfig.tiny())
    assert enable_activation_checkpointing(model, "high-res") == 2 + 1 + 1 + 4  # encoder, 2 fusions, decoder
    chosen = {n for n, m in model.named_modules() if getattr(m, "_sigma_checkpointed", False)}
    assert chosen == {"backbone.vssm.layers.0.blocks.0", "backbone.vssm.layers.0.blocks.1", "backbone.cross_mamba.0",
                      "backbone.channel_attn_mamba.0", *(f"decode_head.layers_up.3.blocks.{i}" for i in range(4))}
    with pytest.raises(ValueError, match="high-res"):
        enable_activation_checkpointing(model, "some")
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(data="d", out="o", activation_checkpointing="some").validate()
    assert TrainConfig(activation_checkpointing=True).checkpointing == "all"
    assert TrainConfig(activation_checkpointing="high-res").checkpointing == "high-res"
    assert TrainConfig().checkpointing is None


def test_compiled_training_matches_eager_gradients():
    """The model as the trainer compiles it is one graph (fullgraph: the scans are custom ops with a registered
    backward), and the loss's gradients equal the eager model's. aot_eager: the graphs Inductor would get, without
    its code generation (minutes on a CPU)."""
    import copy

    from sigma_ros.model import SigmaConfig, build_sigma
    from sigma_ros.ops.selective_scan import resolve_backend

    resolve_backend("cpu")  # as compile_for_training does before any tracing
    torch.manual_seed(0)
    eager = build_sigma(SigmaConfig.micro(drop_path_rate=0.0, decoder_drop_path_rate=0.0)).train()
    rgb, x = torch.randn(2, 3, H, W), torch.randn(2, 3, H, W)

    def grads(model, fn):
        fn(rgb, x).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    g0 = grads(eager, eager)
    plain = copy.deepcopy(eager)
    g1 = grads(plain, torch.compile(plain, backend="aot_eager", fullgraph=True))
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_compile_gives_way_to_activation_checkpointing(syn, tmp_path):
    msgs = []
    trainer = Trainer(_cfg(syn, tmp_path / "run", compile=True, activation_checkpointing="high-res", max_steps=1),
                      log=msgs.append)
    trainer.setup()
    assert not trainer.compiled and trainer.ddp is trainer.model
    assert any("torch.compile is off" in m for m in msgs)
    assert any("activation checkpointing (high-res): 4 blocks" in m for m in msgs)  # micro: one block of each kind


def test_triton_scans_on_the_cpu_say_they_do_not_apply(syn, tmp_path):
    msgs = []
    trainer = Trainer(_cfg(syn, tmp_path / "run", triton_scans=True, scan_bf16=None, max_steps=1), log=msgs.append)
    trainer.setup()
    assert any("--triton-scans applies on a GPU only" in m for m in msgs)
    assert not trainer.triton_scans and not trainer.scan_bf16  # the GPU defaults resolve off on the CPU


def test_activation_checkpointing_trains_the_same_weights(syn, tmp_path):
    kw = dict(max_steps=2, eval_split=None, seed=5)
    Trainer(_cfg(syn, tmp_path / "plain", **kw), log=_quiet).run()
    msgs = []
    Trainer(_cfg(syn, tmp_path / "ckpt", activation_checkpointing=True, **kw), log=msgs.append).run()
    assert any("activation checkpointing" in m for m in msgs)
    a = torch.load(tmp_path / "plain" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_cuda_graphs_apply_only_where_they_are_safe(syn, tmp_path):
    """CUDA graphs need torch.compile, a GPU, one process and no gradient accumulation; elsewhere the trainer
    says so and trains without them."""
    msgs = []
    trainer = Trainer(_cfg(syn, tmp_path / "a", compile=False, cuda_graphs=True, max_steps=1), log=msgs.append)
    trainer.setup()
    assert not trainer.cuda_graphs and any("--cuda-graphs needs torch.compile" in m for m in msgs)
    msgs.clear()
    trainer = Trainer(_cfg(syn, tmp_path / "b", compile=True, cuda_graphs=True, max_steps=1), log=msgs.append)
    trainer.setup()
    assert trainer.compiled and not trainer.cuda_graphs
    assert any("--cuda-graphs needs a GPU" in m for m in msgs)


def test_cuda_graphs_from_the_command_line():
    import argparse

    from sigma_ros.tools.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--data", "d", "--cuda-graphs"])).cuda_graphs is True
    assert config_from_args(parser.parse_args(["--data", "d"])).cuda_graphs is False
