"""Fine-tuning that keeps what the pretrained weights knew: frozen stages and per-stage learning rates
(`LivenessModule`), L2-SP and WiSE-FT (`PretrainedAnchor`): the run's tested and exported checkpoint is the
interpolation of the weights the fit started from and the fine-tuned ones, its threshold re-chosen on
validation data."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from fas.convention import ClassScheme, InputConvention
from fas.errors import ConfigError
from fas.finetune import PretrainedAnchor, interpolate
from fas.losses import distillation_loss
from fas.models import BACKBONES, build_backbone
from fas.module import LivenessModule
from fas.train import train

from conftest import TINY_RUN, compose_train


def test_interpolate_mixes_float_tensors_and_keeps_the_rest() -> None:
    start = {"w": torch.zeros(2, 3), "count": torch.tensor(4), "head": torch.zeros(3)}
    tuned = {"w": torch.ones(2, 3), "count": torch.tensor(9), "head": torch.ones(2), "new": torch.ones(1)}
    mixed = interpolate(start, tuned, 0.25)
    assert torch.equal(mixed["w"], torch.full((2, 3), 0.25))
    assert mixed["count"].item() == 9 and torch.equal(mixed["head"], torch.ones(2)) and "new" in mixed
    with pytest.raises(ConfigError, match=r"finetune.interpolation=1.5: give a weight in \[0, 1\]"):
        PretrainedAnchor(1.5)
    with pytest.raises(ConfigError, match=r"finetune.l2sp=-1: give a weight >= 0"):
        PretrainedAnchor(l2sp=-1)


def fit_start(short_fit: Path) -> str:
    """The short run's tested checkpoint: the pretrained weights of the fine-tunes below."""
    return json.loads((short_fit / "report" / "metrics.json").read_text())["models"][0]["path"]


def finetune_of(start: str, tiny_data: Path) -> list[str]:
    return [*TINY_RUN, f"data.root={tiny_data}", "convention.input_size=64", "optimizer=adamw", f"pretrained={start}"]


def tiny_module(**finetune) -> LivenessModule:
    return LivenessModule(
        "minifasnet_v2se",
        InputConvention(input_size=32).to_dict(),
        ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1}).to_dict(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        **finetune,
    )


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a training step outside a Trainer
def test_frozen_stages_keep_weights_and_statistics_and_later_stages_learn_slower() -> None:
    module = tiny_module(frozen_stages=2, stage_lr_decay=0.5)
    optimizer = module.configure_optimizers()["optimizer"]
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    backbone = module.backbone
    assert id(backbone.conv1.conv.weight) not in lr_of and id(backbone.conv_3.model[0].conv.conv.weight) not in lr_of
    assert lr_of[id(backbone.conv_34.conv.conv.weight)] == pytest.approx(0.1 * 0.5**2)  # stage 2 of 0..4
    assert lr_of[id(backbone.conv_5.model[0].conv.conv.weight)] == pytest.approx(0.1 * 0.5)
    assert lr_of[id(backbone.prob.weight)] == pytest.approx(0.1)
    assert lr_of[id(next(module.ft_head.parameters()))] == pytest.approx(0.1)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if k.startswith(("conv1.", "conv_3."))}
    module.train()
    assert not backbone.conv1.bn.training and backbone.conv_34.conv.bn.training
    images = torch.rand(4, 3, 32, 32)
    loss = module.training_step({"image": images, "target": torch.tensor([0, 1, 0, 1])}, 1)
    loss.backward()
    optimizer.step()
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # weights and running statistics
    assert backbone.conv_34.conv.conv.weight.grad is not None and backbone.conv1.conv.weight.grad is None
    with pytest.raises(ConfigError, match=r"finetune.frozen_stages=5: give 0 to 4 \(the backbone has 5 stages"):
        tiny_module(frozen_stages=5)
    with pytest.raises(ConfigError, match=r"finetune.stage_lr_decay=0: give a factor in \(0, 1\]"):
        tiny_module(stage_lr_decay=0)


def test_l2sp_pulls_the_pretrained_weights_toward_their_start_and_leaves_new_ones_alone() -> None:
    module = tiny_module()
    module.pretrained_keys = {k for k in module.state_dict() if k.startswith("backbone.") and "prob" not in k}
    anchor = PretrainedAnchor(l2sp=0.5)
    anchor.on_fit_start(None, module)
    weight, head, new = module.backbone.conv_23.conv.conv.weight, module.backbone.prob.weight, module.ft_head
    start = weight.detach().clone()
    with torch.no_grad():
        weight.add_(2.0)
        head.add_(2.0)
    for parameter in module.parameters():
        parameter.grad = torch.zeros_like(parameter)
    anchor.on_before_optimizer_step(None, module, None)
    torch.testing.assert_close(weight.grad, 0.5 * (weight.detach() - start))
    torch.testing.assert_close(weight.grad, torch.full_like(weight, 1.0))
    assert not head.grad.any() and not any(p.grad.any() for p in new.parameters())
    assert "backbone.prob.weight" not in anchor.start and not any(k.startswith("ft_head.") for k in anchor.start)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a training step outside a Trainer
def test_distillation_pulls_the_outputs_toward_the_pretrained_model() -> None:
    module = tiny_module(distillation=0.5, distillation_temperature=2.0)
    images, targets = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ConfigError, match=r"finetune.distillation .* no pretrained= weights were given"):
        PretrainedAnchor().on_fit_start(None, module)
    module.pretrained_keys = {k for k in module.state_dict() if k.startswith("backbone.") and "prob" not in k}
    with pytest.raises(ConfigError, match="the classifier was started afresh"):
        PretrainedAnchor().on_fit_start(None, module)
    module.pretrained_keys = {k for k in module.state_dict() if k.startswith("backbone.")}
    PretrainedAnchor().on_fit_start(None, module)
    assert not any(k.startswith("teacher") for k in module.state_dict())  # checkpoints do not carry it
    module.eval()  # no dropout, BatchNorm statistics: the student computes what the teacher does
    torch.testing.assert_close(module.teacher(images), module(images))
    batch = {"image": images, "target": targets}
    cross_entropy = torch.nn.functional.cross_entropy(module(images), targets)
    fourier = module.training_step(batch, 0) - 0.5 * cross_entropy  # ft_weight 0.5: what the loss is without LwF
    with torch.no_grad():
        teacher_logits = module(images)
        generator = torch.Generator().manual_seed(0)  # the fine-tune moved the embedding the classifier reads
        module.backbone.bn.bias.copy_(3 * torch.randn(module.backbone.bn.bias.shape, generator=generator))
        student_logits = module(images)
    expected = distillation_loss(student_logits, teacher_logits, 2.0)
    assert expected.item() > 0.1
    without = 0.5 * torch.nn.functional.cross_entropy(student_logits, targets) + fourier
    torch.testing.assert_close(module.training_step(batch, 0), without + 0.5 * expected)
    with pytest.raises(ConfigError, match=r"finetune.distillation=-1: give a weight >= 0"):
        tiny_module(distillation=-1)


def test_a_finetune_tests_and_records_the_interpolated_weights(
    short_fit: Path, tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    start = fit_start(short_fit)
    overrides = [
        *finetune_of(start, tiny_data),
        "finetune.interpolation=0.5",
        "finetune.frozen_stages=1",
        "finetune.l2sp=0.01",
        "finetune.distillation=0.5",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "seed=3",
    ]
    with caplog.at_level(logging.INFO, logger="fas.loggers"):
        train(compose_train(overrides, tmp_path))
    # Each epoch's speed is in the log (fas.loggers.EpochLog), not only on a terminal's progress bar.
    trained, validated = (
        re.search(rf"Epoch 0: {what} ([\d,]+) images in [\d.]+ s \([\d.]+ images/s\)", caplog.text)
        for what in ("trained on", "validated")
    )
    assert trained and validated and int(trained[1]) > int(validated[1]) > 0
    (metrics_csv,) = tmp_path.glob("csv/*/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    distillation = [float(row["train/loss_distillation"]) for row in rows if row.get("train/loss_distillation")]
    assert distillation and all(value >= 0 for value in distillation) and max(distillation) > 0
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    report, metrics = payload["models"][0], payload["metrics"]
    # The tested weights sit halfway between the start and the fine-tuned ones, so they moved half as far.
    assert metrics["finetune/moved_fine_tuned"] > 0
    assert metrics["finetune/moved_interpolated"] == pytest.approx(metrics["finetune/moved_fine_tuned"] / 2, rel=1e-5)
    assert "interpolated weights" in payload["moved_from_pretrained"]
    assert Path(report["path"]).name == "interpolated.ckpt"
    interpolated = torch.load(report["path"], map_location="cpu", weights_only=True)
    (tuned_path,) = (p for p in (tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    tuned = torch.load(tuned_path, map_location="cpu", weights_only=True)["state_dict"]
    pretrained = torch.load(start, map_location="cpu", weights_only=True)["state_dict"]
    key = "backbone.conv_23.conv.conv.weight"
    assert not torch.equal(tuned[key], pretrained[key])
    torch.testing.assert_close(interpolated["state_dict"][key], (pretrained[key] + tuned[key]) / 2)
    for key in ("backbone.conv1.conv.weight", "backbone.conv2_dw.bn.running_mean"):  # the frozen first stage
        assert torch.equal(tuned[key], pretrained[key])
    assert interpolated["fas_threshold"]["split"] == "val" and interpolated["fas_threshold"]["value"] is not None
    assert report["threshold_choice"]["value"] == pytest.approx(interpolated["fas_threshold"]["value"])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_parameter_is_in_exactly_one_stage(name: str) -> None:
    backbone = build_backbone(name, input_size=64, num_classes=2)
    in_stages = [id(p) for names in backbone.stages for n in names for p in getattr(backbone, n).parameters()]
    assert sorted(in_stages) == sorted(id(p) for p in backbone.parameters())


def test_the_largest_interpolation_that_keeps_the_start_within_tolerance_is_chosen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fas.finetune import choose_interpolation

    keep = {0.2: 0.999, 0.3: 0.996, 0.4: 0.9949, 0.5: 0.990, 1.0: 0.6}
    assert choose_interpolation(keep, start_auroc=1.0, tolerance=0.005) == 0.3  # 0.9949 < 1 - 0.005: not kept
    assert choose_interpolation(keep, start_auroc=0.9986, tolerance=0.005) == 0.4
    assert choose_interpolation(keep, start_auroc=0.5, tolerance=0.0) == 1.0
    with caplog.at_level(logging.WARNING, logger="fas.finetune"):
        assert choose_interpolation({0.5: 0.9, 0.7: 0.8}, start_auroc=0.99, tolerance=0.005) == 0.5
    assert "the smallest, 0.50, is kept" in caplog.text
    assert choose_interpolation({0.5: None, 0.7: None}, start_auroc=None, tolerance=0.005) == 0.7


def test_several_interpolations_need_keep_data() -> None:
    anchor = PretrainedAnchor(interpolation=[0.5, 0.25])
    assert anchor.candidates == [0.25, 0.5] and anchor.active
    with pytest.raises(ConfigError, match=r"needs data that stands for what the model must keep"):
        anchor.on_fit_start(None, None)
    with pytest.raises(ConfigError, match="or a list of them"):
        PretrainedAnchor(interpolation=[0.5, 1.5])


def test_a_finetune_chooses_its_interpolation_on_the_data_it_must_keep(
    short_fit: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """The keep data's ROC-AUC is measured for the start and each candidate; the tested checkpoint is the largest
    candidate within keep_tolerance of the start, and evaluate.py finds the same ROC-AUC for it on that data."""
    from fas.evaluate import evaluate

    from conftest import compose_config

    overrides = [
        *finetune_of(fit_start(short_fit), tiny_data),
        "finetune.interpolation=[0.25,0.5,1.0]",
        "+source@finetune.keep=celeba_spoof",
        f"finetune.keep.root={tiny_data}",
        "finetune.keep_tolerance=0.01",
        "trainer.max_epochs=1",
        "seed=3",
    ]
    train(compose_train(overrides, tmp_path / "run"))
    payload = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    metrics = payload["metrics"]
    keep = {a: metrics[f"finetune/keep_auroc_a{a:.2f}"] for a in (0.0, 0.25, 0.5, 1.0)}
    chosen = metrics["finetune/interpolation"]
    kept = [a for a in (0.25, 0.5, 1.0) if keep[a] >= keep[0.0] - 0.01]
    assert chosen == (max(kept) if kept else 0.25), keep  # none kept: the smallest, with a warning
    assert "finetune.keep" in payload["finetune_keep"]
    tested = payload["models"][0]["path"]
    assert Path(tested).name == "interpolated.ckpt" if chosen < 1 else Path(tested).name.startswith("epoch_")
    cfg = compose_config(
        "evaluate",
        [f"ckpt_path={tested}", "data=celeba_spoof", f"data.root={tiny_data}", "data.num_workers=0"],
        tmp_path / "eval",
    )
    evaluated = json.loads(evaluate(cfg).metrics.read_text())["models"][0]["metrics"]["auroc"]
    assert evaluated == pytest.approx(keep[chosen], abs=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_frozen_batchnorm_keeps_every_statistic_while_the_convolutions_learn() -> None:
    module = tiny_module(frozen_batchnorm=True)
    optimizer = module.configure_optimizers()["optimizer"]
    backbone = module.backbone
    norms = {k: v.clone() for k, v in backbone.state_dict().items() if ".bn." in k or k.startswith("bn.")}
    assert any(k.endswith("running_mean") for k in norms) and any(k.startswith("bn.") for k in norms)
    conv = backbone.conv_34.conv.conv.weight.clone()
    module.train()
    assert not backbone.conv_34.conv.bn.training and not backbone.bn.training and backbone.training
    loss = module.training_step({"image": torch.rand(4, 3, 32, 32), "target": torch.tensor([0, 1, 0, 1])}, 1)
    loss.backward()
    optimizer.step()
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in norms.items())  # statistics, scale and shift
    assert not torch.equal(backbone.conv_34.conv.conv.weight, conv)
