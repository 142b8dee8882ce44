"""GPU training throughput of MiniFASNetV2SE + FT head at 128 px from the packed cache (issue #7).

    python experiments/gpu_train_throughput/benchmark.py                  # all parts, ~15 min on an H100 machine
    python experiments/gpu_train_throughput/benchmark.py --parts model    # or loader, e2e, train_py, comma-separated

Measurements at each batch size and loader worker count; comparing them names the bottleneck:

- end to end: the objects `fas.train.train` builds from `data=celeba_spoof_packed convention.input_size=128
  model=minifasnet_v2se trainer=gpu` (bf16-mixed, channels_last) under the Lightning Trainer, validation and
  checkpoints off; training images/s of the epochs after the first, first batch fetched to last step done;
  as configured, and with `cv2.setNumThreads(0)` in the workers and `pin_memory`;
- loader alone: the same datamodule's train DataLoader iterated with nothing consuming the batches (no
  workers: in a fresh process with one torch thread, i.e. one worker's rate);
- model alone: the module's `training_step` (forward, batched FT target, loss), backward and SGD step on a
  batch already on the GPU (bf16 / fp32, channels_last on / off, cudnn.benchmark), and the same step when
  the batch comes from host memory each step (pageable as the datamodule gives it, pinned, or uint8);
- one real `python train.py ...` run with this file's ThroughputMeter added as a callback.

Data: a synthetic CelebA-Spoof tree (`--source-subjects` x 64 images) replicated with hard links up to
`--train-images` (the loader and the step cost the same whatever the pixels), prepared at 128 px.
Each measurement replaces its row in results.json; results.md is rewritten from it, keeping its
hand-written "## Reading" section.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fas.convention import InputConvention
from fas.data.prepare import prepare
from fas.data.synthetic import SyntheticConfig, generate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SIZE = 128
warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step called without a Trainer


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ThroughputMeter(L.Callback):
    """Training images/s per epoch: from the epoch's start (loader iterator, first batch) to its last
    optimizer step (CUDA-synchronised; validation excluded), and within the epoch after `skip` batches."""

    def __init__(self, skip: int = 10, output: str | None = None) -> None:
        self.skip, self.output = skip, output
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync()
        self.start, self.images, self.inner_start, self.inner_images = time.perf_counter(), 0, 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, i: int) -> None:
        self.images += len(batch["image"])
        self.inner_images += len(batch["image"]) if i >= self.skip else 0
        if i == self.skip - 1:
            sync()
            self.inner_start = time.perf_counter()
        if i == trainer.num_training_batches - 1:
            sync()
            end = time.perf_counter()
            inner = self.inner_images / (end - self.inner_start) if self.inner_images else float("nan")
            self.epochs.append(
                {"images": self.images, "seconds": end - self.start, "img_per_s": self.images / (end - self.start)}
                | {"inner_img_per_s": inner}
            )
            print(f"epoch {trainer.current_epoch}: {self.epochs[-1]}", flush=True)

    def summary(self) -> dict[str, Any]:
        steady = self.epochs[1:] or self.epochs  # the first epoch starts the workers and warms up cuDNN
        inner = [e["inner_img_per_s"] for e in steady]
        return {
            "img_per_s": sum(e["images"] for e in steady) / sum(e["seconds"] for e in steady),
            "inner_img_per_s": sorted(inner)[len(inner) // 2],
            "epochs": self.epochs,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output:
            Path(self.output).write_text(json.dumps(self.summary(), indent=2))


def make_cache(work: Path, source_subjects: int, train_images: int) -> Path:
    """A synthetic tree, its train images hard-linked round-robin up to `train_images`, prepared at 128 px."""
    source = generate(work / "source", SyntheticConfig(source_subjects, 2, 64), workers=os.cpu_count() or 1)
    root, cache = work / f"tree_{train_images}", work / f"cache_{train_images}"
    if not (root / "metas/intra_test/train_label.json").is_file():
        for split, count in (("test", None), ("train", train_images)):
            labels = json.loads((source / f"metas/intra_test/{split}_label.json").read_text())
            keys = sorted(labels)
            out = {}
            for index in range(count or len(keys)):
                key = keys[index % len(keys)]
                new_key = key.replace(f"Data/{split}/", f"Data/{split}/{index // len(keys)}_")
                for suffix in (".jpg", "_BB.txt"):
                    destination = (root / new_key).with_name(Path(new_key).stem + suffix)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.hardlink_to((source / key).with_name(Path(key).stem + suffix))
                out[new_key] = labels[key]
            (root / "metas/intra_test").mkdir(parents=True, exist_ok=True)
            (root / f"metas/intra_test/{split}_label.json").write_text(json.dumps(out))
    prepare(
        root,
        cache,
        InputConvention(input_size=SIZE, crop_scale=2.7, crop_mode="shift"),
        workers=os.cpu_count(),
        progress=False,
    )
    return cache


def config(cache: Path, batch: int, workers: int, trainer: str, work: Path) -> DictConfig:
    overrides = [
        "data=celeba_spoof_packed",
        f"data.cache={cache}",
        f"convention.input_size={SIZE}",
        "model=minifasnet_v2se",
        f"trainer={trainer}",
        f"data.batch_size={batch}",
        f"data.num_workers={workers}",
        f"paths.root_dir={REPO}",
        f"paths.output_dir={work / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def build(cfg: DictConfig, **model_overrides: Any) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Datamodule and module as `fas.train.train` builds them."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(
        cfg.model,
        convention=datamodule.convention.to_dict(),
        class_scheme=datamodule.class_scheme.to_dict(),
        **model_overrides,
    )
    return datamodule, module


def sequential_cv2(_: int = 0) -> None:
    """OpenCV without its thread pool (0; 1 can deadlock in a worker forked from a process that used the pool)."""
    cv2.setNumThreads(0)


def with_options(loader: DataLoader, options: dict[str, Any]) -> DataLoader:
    """The datamodule's loader, or the same one with sequential OpenCV in its workers and/or pinned batches."""
    if not options:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=loader.sampler,
        num_workers=loader.num_workers,
        persistent_workers=loader.num_workers > 0,
        drop_last=loader.drop_last,
        worker_init_fn=sequential_cv2 if options.get("cv2_threads") == 0 else None,
        pin_memory=options.get("pin_memory", False),
    )


def end_to_end(cfg: DictConfig, epochs: int, options: dict[str, Any]) -> dict[str, Any]:
    datamodule, module = build(cfg)
    datamodule_loader = datamodule.train_dataloader
    datamodule.train_dataloader = lambda: with_options(datamodule_loader(), options)
    meter = ThroughputMeter()
    trainer = instantiate(
        cfg.trainer,
        callbacks=[meter],
        logger=False,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return meter.summary()


def loader_only(cfg: DictConfig, images: int, options: dict[str, Any]) -> float:
    """Images/s of the train DataLoader alone, after its first 2 x workers batches, across epochs.
    With no workers, batches are made in a fresh process with one torch thread, as in a worker."""
    if cfg.data.num_workers == 0 and multiprocessing.current_process().name == "MainProcess":
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(loader_only, cfg, images, options).result()
    datamodule, _ = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = with_options(datamodule.train_dataloader(), options)
    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    if loader.num_workers == 0:
        torch.set_num_threads(1)
        cv2.setNumThreads(options.get("cv2_threads", cv2_threads))
    warmup, seen, start, epoch, batches = 2 * max(1, loader.num_workers), 0, 0.0, 0, 0
    while seen < images:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            batches += 1
            if batches == warmup:
                start = time.perf_counter()
            elif batches > warmup:
                seen += len(batch["image"])
                if seen >= images:
                    break
        epoch += 1
    rate = seen / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    cv2.setNumThreads(cv2_threads)
    del loader
    gc.collect()
    return rate


def model_only(cfg: DictConfig, batch: int, variant: dict[str, Any], steps: int) -> float:
    """Images/s of training_step + backward + SGD step; `variant`: precision, channels_last, input, cudnn_benchmark."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = variant.get("cudnn_benchmark", False)
    _, module = build(cfg, channels_last=variant["channels_last"])
    module.to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    uint8 = variant["input"] == "uint8"
    host = (
        torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8) if uint8 else torch.rand(batch, 3, SIZE, SIZE)
    )
    images = {"gpu": lambda: host.to(device), "pinned": host.pin_memory}.get(variant["input"], lambda: host)()
    target = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        x = images.to(device, non_blocking=True)
        x = x.float().div_(255) if uint8 else x
        with torch.autocast(device.type, torch.bfloat16, enabled=variant["precision"] == "bf16-mixed"):
            loss = module.training_step({"image": x, "target": target}, 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    torch.backends.cudnn.benchmark = False
    return steps * batch / (time.perf_counter() - start)


MODEL_VARIANTS = [
    {"precision": "bf16-mixed", "channels_last": True, "input": "gpu"},
    {"precision": "bf16-mixed", "channels_last": False, "input": "gpu"},
    {"precision": "32-true", "channels_last": True, "input": "gpu"},
    {"precision": "32-true", "channels_last": False, "input": "gpu"},
    {"precision": "bf16-mixed", "channels_last": True, "input": "gpu", "cudnn_benchmark": True},
    {"precision": "bf16-mixed", "channels_last": True, "input": "pageable"},
    {"precision": "bf16-mixed", "channels_last": True, "input": "pinned"},
    {"precision": "bf16-mixed", "channels_last": True, "input": "uint8"},
]


def train_py(cache: Path, batch: int, workers: int, epochs: int, trainer: str, work: Path) -> dict[str, Any]:
    """One real `python train.py` run (validation, checkpoints, test and report included), timed by the meter."""
    output = work / "train_py_throughput.json"
    command = [
        *("train.py", "data=celeba_spoof_packed", f"data.cache={cache}", f"convention.input_size={SIZE}"),
        *("model=minifasnet_v2se", f"trainer={trainer}", f"data.batch_size={batch}", f"data.num_workers={workers}"),
        *(f"trainer.max_epochs={epochs}", f"hydra.run.dir={work / 'train_py_run'}"),
        *("+callbacks.throughput._target_=benchmark.ThroughputMeter", f"+callbacks.throughput.output={output}"),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True)
    (work / "train_py.log").write_text(done.stdout + done.stderr)
    result = json.loads(output.read_text()) if done.returncode == 0 else {}
    return {"command": "python " + " ".join(command), "returncode": done.returncode, **result} | {
        "wall_seconds": time.perf_counter() - start
    }


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"gpu": gpu, "torch": torch.__version__, "lightning": L.__version__, "cpus": os.cpu_count()} | {
        "python": platform.python_version(),
        "cudnn": torch.backends.cudnn.version(),
    }


READING = "## Reading"
MEASURED = {"img_per_s", "inner_img_per_s", "epochs", "error", "command", "returncode", "wall_seconds"}


def timed(results: dict[str, Any], part: str, key: dict[str, Any], run: Callable[[], Any]) -> None:
    """Run one measurement, replace the row of the same settings in results.json, rewrite results.md."""
    try:
        value = run()
    except Exception as error:  # keep the other measurements of a long run
        value = {"error": f"{type(error).__name__}: {error}"}
    row = key | (value if isinstance(value, dict) else {"img_per_s": value})
    rows = results.setdefault(part, [])
    rows[:] = [r for r in rows if {k: v for k, v in r.items() if k not in MEASURED} != key] + [row]
    print(time.strftime("%H:%M:%S"), part, {k: v for k, v in row.items() if k != "epochs"}, flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="model,loader,e2e,train_py")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--workers", default="4,8,12", help="loader workers of the end-to-end runs")
    parser.add_argument("--loader-workers", default="0,4,8,12", help="of the loader-alone runs")
    parser.add_argument("--source-subjects", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--loader-images", type=int, default=40960)
    parser.add_argument("--single-images", type=int, default=4096, help="loader images timed with no workers")
    parser.add_argument("--model-steps", type=int, default=30)
    parser.add_argument("--trainer", default="gpu", help="trainer config (cpu_bf16 for a smoke test without a GPU)")
    parser.add_argument("--work", type=Path, default=REPO / "data" / "gpu_train_throughput")
    args = parser.parse_args()
    parts, batches = args.parts.split(","), [int(v) for v in args.batch_sizes.split(",")]
    workers, loader_workers = ([int(v) for v in text.split(",")] for text in (args.workers, args.loader_workers))
    arguments = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "work")
    results = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").is_file() else {}
    command = f"python experiments/gpu_train_throughput/benchmark.py {arguments}"
    results["commands"] = [c for c in results.get("commands", []) if c != command] + [command]
    start = time.perf_counter()
    cache = make_cache(args.work, args.source_subjects, args.train_images)
    results |= {"machine": machine(), "data_seconds": time.perf_counter() - start}
    cfg = config(cache, batches[0], 0, args.trainer, args.work)
    for batch in batches if "model" in parts else []:
        for variant in MODEL_VARIANTS:
            run = partial(model_only, cfg, batch, variant, args.model_steps)
            timed(results, "model_only", {"batch": batch, **variant}, run)
    for batch in batches if "loader" in parts else []:
        sequential = [(n, {"cv2_threads": 0}) for n in sorted({min(loader_workers), max(loader_workers)})]
        for count, options in [(n, {}) for n in loader_workers] + sequential:
            cfg = config(cache, batch, count, args.trainer, args.work)
            run = partial(loader_only, cfg, args.loader_images if count else args.single_images, options)
            timed(results, "loader_only", {"batch": batch, "workers": count, **options}, run)
    extra = [{"cv2_threads": 0}, {"cv2_threads": 0, "pin_memory": True}]
    for batch in batches if "e2e" in parts else []:
        for count, options in [(n, {}) for n in workers] + [(max(workers), o) for o in extra]:
            cfg = config(cache, batch, count, args.trainer, args.work)
            run = partial(end_to_end, cfg, args.epochs, options)
            timed(results, "end_to_end", {"batch": batch, "workers": count, **options}, run)
    if "train_py" in parts:
        run = partial(train_py, cache, batches[-1], workers[-1], args.epochs, args.trainer, args.work)
        timed(results, "train_py", {"batch": batches[-1], "workers": workers[-1]}, run)


def rate(row: dict[str, Any], key: str = "img_per_s") -> str:
    return f"{row[key]:,.0f}" if isinstance(row.get(key), float) else str(row.get("error", "-"))


def write_markdown(results: dict[str, Any]) -> None:
    m = results["machine"]
    lines = [
        "# GPU training throughput: MiniFASNetV2SE + FT head, 128 px, packed cache",
        "",
        " and ".join(f"`{c}`" for c in results["commands"]),
        "",
        f"on {m['gpu']}, {m['cpus']} CPU cores, torch {m['torch']}, "
        f"Lightning {m['lightning']}, cuDNN {m['cudnn']}, Python {m['python']}. Training images/s.",
        "",
    ]
    models = results.get("model_only", [])
    if models:
        lines += ["## Model alone", "", "| batch | precision | channels_last | input | cudnn.benchmark | img/s |"]
        lines.append("|---|---|---|---|---|---|")
        for r in models:
            flags = f"{r['precision']} | {r['channels_last']} | {r['input']} | {r.get('cudnn_benchmark', False)}"
            lines.append(f"| {r['batch']} | {flags} | {rate(r)} |")
        lines.append("")
    loaders = results.get("loader_only", [])
    if loaders:
        lines += [
            "## Loader alone",
            "",
            "| batch | workers | cv2.setNumThreads in workers | img/s |",
            "|---|---|---|---|",
        ]
        for r in loaders:
            lines.append(f"| {r['batch']} | {r['workers']} | {r.get('cv2_threads', 'default')} | {rate(r)} |")
        lines.append("")
    model = {(r["batch"], r["input"]): rate(r) for r in models if not r.get("cudnn_benchmark")}
    loader = {(r["batch"], r["workers"], r.get("cv2_threads")): rate(r) for r in loaders}
    if results.get("end_to_end"):
        lines += ["## End to end (Lightning, bf16-mixed, channels_last; the epochs after the first)", ""]
        lines.append(
            "| batch | workers | loader options | img/s, whole epochs | img/s, within epochs | loader alone | model |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for r in results["end_to_end"]:
            b, w, cv2_threads, pinned = r["batch"], r["workers"], r.get("cv2_threads"), r.get("pin_memory", False)
            options = ", ".join(
                [*(["sequential cv2"] if cv2_threads == 0 else []), *(["pin_memory"] if pinned else [])]
            )
            alone = [loader.get((b, w, cv2_threads), "-"), model.get((b, "pinned" if pinned else "pageable"), "-")]
            cells = [str(b), str(w), options or "as configured", rate(r), rate(r, "inner_img_per_s"), *alone]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Model: the same step with the batch copied from pageable (or pinned) host memory each step.", ""]
    for r in results.get("train_py", []):
        lines += ["## `train.py` itself", "", f"`{r.get('command', '')}`", ""]
        lines += [
            f"exit {r.get('returncode')}: {rate(r)} img/s (whole epochs after the first), "
            f"{r.get('wall_seconds', 0):.0f} s in all",
            "",
        ]
    previous = (HERE / "results.md").read_text() if (HERE / "results.md").is_file() else ""
    reading = previous[previous.index(READING) :] if READING in previous else ""  # hand-written, kept
    (HERE / "results.md").write_text("\n".join(lines) + reading)


if __name__ == "__main__":
    main()
