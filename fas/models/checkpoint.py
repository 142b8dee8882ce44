"""Reading weights from our Lightning checkpoints and the published MiniFASNet files.

All of them reduce to a backbone state_dict: prefixes `module.` (Silent-Face, DataParallel),
`model.` (suri-liveness) and `backbone.` (ours) are stripped; Fourier-head keys (`FTGenerator.*`,
`ft_head.*`) are dropped. A mismatch is reported as one line that names the architecture the file
actually holds and the config that fits it.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fas.errors import ModelFileError

log = logging.getLogger(__name__)

PREFIXES = ("module.", "model.", "backbone.")
FT_HEAD_PREFIXES = ("FTGenerator.", "ft_head.")
RENAMED_CLASSIFIER = "logits."  # suri-liveness's training scripts call MiniFASNet's `prob` layer `logits`
CLASSIFIER_PREFIXES = ("prob.", "classifier.")  # the final Linear of MiniFASNet / MobileNetV4
UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch names the object a refused pickle asks for
UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", re.DOTALL)  # after torch's advice
NOT_A_CHECKPOINT = (
    "not a PyTorch checkpoint, or a truncated or corrupt one; copy or download it again, or check the path"
)


class CheckpointMismatchError(ModelFileError):
    """The checkpoint holds another architecture, input size or number of classes than the config."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load any checkpoint or weights file onto the CPU without running code from it.

    Every file, our own Lightning `.ckpt` included, is read with `torch.load(weights_only=True)`:
    tensors, dicts, lists, strings and numbers, which is all fas writes into its checkpoints. A pickle
    that needs anything else (a class, a function: what a malicious `__reduce__` uses) is refused in
    one line that names the file and the object it asked for; so is a file that is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: checkpoint not found; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" from the safe unpickler
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = UNSAFE_GLOBAL.search(str(error))
        if needed:
            raise CheckpointMismatchError(
                f"{path}: refused, it asks to load the Python object {needed.group(1)}, and unpickling objects can "
                "run code hidden in the file; fas loads only tensors and plain values. If you trust its origin, "
                "save its weights alone (the state_dict) from the code that made it"
            ) from None
        reason = UNPICKLER_REASON.search(str(error))
        detail = reason.group(1).strip() if reason else first_line(error)
        raise CheckpointMismatchError(f"{path}: {NOT_A_CHECKPOINT} ({detail})") from None
    except Exception as error:  # a cut or corrupt zip archive, an empty file, ...
        raise CheckpointMismatchError(f"{path}: {NOT_A_CHECKPOINT} ({first_line(error)})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(
            f"{path}: holds a {type(checkpoint).__name__}, not a dict of weights; fas reads state_dicts and checkpoints"
        )
    return checkpoint


def first_line(error: BaseException) -> str:
    """The gist of a library error: its first non-empty line, without the advice that follows."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text.split(". This is")[0].split(". If you")[0]


def backbone_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The backbone weights of any supported checkpoint layout: wrapper prefixes stripped (also stacked,
    as hairymax's `module.model.`), Fourier-head keys dropped, suri-liveness's training name of the
    classifier (`logits`) mapped to the original's (`prob`)."""
    state = checkpoint.get("state_dict") or checkpoint.get("model_state_dict") or checkpoint
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        if key.startswith(FT_HEAD_PREFIXES):
            continue
        if key.startswith(RENAMED_CLASSIFIER):
            key = "prob." + key[len(RENAMED_CLASSIFIER) :]
        cleaned[key] = value
    return cleaned


def describe_state_dict(state: dict[str, Tensor]) -> dict[str, Any]:
    """Guess backbone name, input size and class count from MiniFASNet / MobileNetV4 weights."""
    if "conv_6_dw.conv.weight" in state and "conv_3.model.1.conv.conv.weight" in state and "prob.weight" in state:
        se = any(".se_module." in key for key in state)
        version = "v1" if state["conv_3.model.1.conv.conv.weight"].shape[0] == 26 else "v2"
        kernel = state["conv_6_dw.conv.weight"].shape[-1]
        return {
            "backbone": f"minifasnet_{version}{'se' if se else ''}",
            "input_size": 16 * kernel,
            "num_classes": state["prob.weight"].shape[0],
        }
    if "classifier.weight" in state and "stage4.0.weight" in state:
        return {"backbone": "mobilenetv4", "input_size": None, "num_classes": state["classifier.weight"].shape[0]}
    return {"backbone": "unknown", "input_size": None, "num_classes": None}


def check_fits(backbone: nn.Module, state: dict[str, Tensor], expected_name: str, path: str | Path) -> None:
    """Raise CheckpointMismatchError unless every backbone key matches in name and shape."""
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(mismatch_message(path, state, expected_name, missing, unexpected, wrong_shape))


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, expected_name: str, reinit_classifier: bool = False
) -> list[str]:
    """Load any supported checkpoint into `backbone` after checking it fits; returns the backbone keys whose
    values came from the file.

    With `reinit_classifier`, the final classifier keeps its fresh initialisation (fine-tuning to
    another class count); without it, a classifier of another shape is refused with that hint.
    """
    state = backbone_state_dict(read_checkpoint(path))
    own = backbone.state_dict()
    classifier = [k for k in own if k.startswith(CLASSIFIER_PREFIXES)]
    if reinit_classifier:
        shapes = {k: tuple(state[k].shape) for k in classifier if k in state}
        state.update({k: own[k] for k in classifier})
        log.info(
            "pretrained %s: classifier re-initialised (file: %s; model: %s)",
            path,
            shapes,
            {k: tuple(own[k].shape) for k in classifier},
        )
    else:
        reshaped = [k for k in classifier if k in state and state[k].shape != own[k].shape]
        others = [k for k in own if k not in reshaped and (k not in state or state[k].shape != own[k].shape)]
        if reshaped and not others:
            raise CheckpointMismatchError(
                f"{path} has a classifier for {state[reshaped[0]].shape[0]} classes, the model has "
                f"{own[reshaped[0]].shape[0]}; add pretrained_reinit_classifier=true to fine-tune it with a new "
                "classifier, or choose a class_scheme with as many classes"
            )
    check_fits(backbone, state, expected_name, path)
    backbone.load_state_dict(state)
    return [k for k in own if not (reinit_classifier and k in classifier)]


def check_resume_checkpoint(module: nn.Module, path: str | Path, expected_name: str) -> dict[str, Any]:
    """Before `trainer.fit(ckpt_path=...)`: the Lightning checkpoint must hold this very model. Returns it."""
    checkpoint = read_checkpoint(path)
    if "state_dict" not in checkpoint:
        raise CheckpointMismatchError(
            f"{path} is not a Lightning checkpoint of fas; to start from published weights use pretrained={path}"
        )
    check_fits(module.backbone, backbone_state_dict(checkpoint), expected_name, path)
    has_head = any(key.startswith("ft_head.") for key in checkpoint["state_dict"])
    if has_head != (module.ft_head is not None):
        setting = "model.ft_weight=0.5 (or the weight it was trained with)" if has_head else "model.ft_weight=0"
        raise CheckpointMismatchError(
            f"{path} was trained {'with' if has_head else 'without'} the Fourier head; resume it with {setting}"
        )
    return checkpoint


def mismatch_message(
    path: str | Path,
    state: dict[str, Tensor],
    expected_name: str,
    missing: list[str],
    unexpected: list[str],
    wrong_shape: list[str],
) -> str:
    found = describe_state_dict(state)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys of another shape (e.g. {wrong_shape[0]})")
    fix = [f"model={found['backbone']}"] if found["backbone"] not in ("unknown", expected_name) else []
    if found["input_size"]:
        fix.append(f"convention.input_size={found['input_size']}")
    if found["num_classes"]:
        fix.append(f"a class_scheme with {found['num_classes']} classes")
    hint = f"; it holds {found['backbone']}, so use " + ", ".join(fix) if fix else ""
    return f"{path} does not fit backbone {expected_name}: {', '.join(problems)}{hint}"
