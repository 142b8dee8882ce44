"""Turn public face anti-spoofing sets, kept as bare git mirrors, into fas folder trees.

    python experiments/real_faces/convert.py <replay|nuaa|oulu|casia|msu> --mirror <bare repo> --output <tree>

- `replay`: Idiap Replay-Attack as frames (github sejong-sas/face-anti-spoofing,
  `frames/replay_attack/<split>/<split>__<real|attack>__<real|fixed|hand>__<video>/frame_NNNNN.jpg`) ->
  `<train|val|test>/<live|print|phone|tablet>/<clientNNN>/<video>[__<fixed|hand>]__frame_NNNNN.jpg`
  (devel -> val; print = printed photo, mobile = iPhone replay -> phone, highdef = iPad replay -> tablet).
  Everything before `__frame_` names one video; NNNNN is the frame's index in the original video.
- `nuaa`: NUAA Photograph Imposter database (github imironica/liveness, `db/ClientRaw|ImposterRaw/<id>/*.jpg`)
  -> `<train|test>/<live|print>/<id>/<file>` with the official split of `db/{client,imposter}_{train,test}_raw.txt`
  when those lists cover every image (entries of images not in the mirror are counted and ignored), else
  `<live|print>/<id>/<file>` unsplit.
- `oulu`: OULU-NPU as one 224x224 face crop per video (github lintsao/FaceAntiSpoofing-ICME,
  `dataset_224/pr_depth_map/Oulu_NPU/<Train|Dev|Test>_files/crop_frame/crop_face/cropped_<p>_<s>_<u>_<t>.jpg`
  for phone, session, user and type; the `*_depth.jpg` pseudo-depth maps are left out) ->
  `<train|val|test>/<live|print|replay>/user<NN>/<p>_<s>_<u>_<t>.jpg` (Dev -> val; type 1 live, 2-3 print,
  4-5 replay on a screen). The images are face crops: read the tree with `face_crops=true`
  (`configs/source/folder.yaml`).
- `casia`: CASIA-FASD as one full frame per video (github face-antispoofing/Evaluation,
  `CASIA_dataset/<training set|testing set>/<real|attack>/averaged_frame_<type> (<subject>).avi.png`, the first
  subject's files without ` (<subject>)`) -> `<train|test>/<live|print|tablet>/<split><NN>/<split><NN>_<type>.png`
  (types 1, 2, HR_1 live; 3, 4, HR_2 warped and 5, 6, HR_3 cut printed photos -> print; 7, 8, HR_4 iPad replay ->
  tablet). CASIA numbers the people of its train and test parts separately, so the subject carries its part.
- `msu`: MSU-MFSD as one full frame per video (the same repository, `MSU_dataset/<training set|testing set>/
  <real|attack>/averaged_frame_<real|attack>_client<NNN>_<android|laptop>_SD_[<attack>_]scene01.mp4.png`) ->
  `<train|test>/<live|print|tablet|phone>/client<NNN>/<camera>_<attack or real>.png` (printed_photo -> print,
  ipad_video -> tablet, iphone_video -> phone).

Blobs are read with `git cat-file --batch` from the mirror's HEAD, never from the network, and written as
plain files (no re-encoding) into `<output>.tmp`, which is renamed into place at the end. The output holds a
hidden `.fas-convert.json` (settings and counts): a second run with the same settings does nothing, another
one replaces the tree, and a non-empty output without that file is refused. Every image is decoded once
with OpenCV (`--no-check` skips this); one that does not decode is left out and listed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

DATASETS = ("replay", "nuaa", "oulu", "casia", "msu")
THINNED = ("replay", "nuaa")  # the sets with several images a video (or subject and session) that --every thins
MARKER = ".fas-convert.json"
VERSION = 1
REPLAY_ROOT = "frames/replay_attack"
REPLAY_SPLITS = {"train": "train", "devel": "val", "test": "test"}
REPLAY_ATTACKS = {"print": "print", "mobile": "phone", "highdef": "tablet"}
REPLAY_FOLDER = re.compile(
    r"(?P<split>train|devel|test)__(?P<label>real|attack)__(?P<support>real|fixed|hand)__(?P<video>\w+)"
)
REPLAY_VIDEO = re.compile(r"(?:attack_(?P<attack>print|mobile|highdef)_)?(?P<client>client\d{3})_session\d{2}_\w+")
FRAME = re.compile(r"frame_(\d{5})\.jpg")
NUAA_ROOT = "db"
NUAA_CLASSES = {"ClientRaw": "live", "ImposterRaw": "print"}
NUAA_FOLDERS = {label: folder for folder, label in NUAA_CLASSES.items()}
NUAA_LISTS = {"live": "client", "print": "imposter"}
NUAA_SPLITS = ("train", "test")
SUBJECT = re.compile(r"\w+")
OULU_ROOT = "dataset_224/pr_depth_map/Oulu_NPU"
OULU_SPLITS = {"Train_files": "train", "Dev_files": "val", "Test_files": "test"}
OULU_TYPES = {"1": "live", "2": "print", "3": "print", "4": "replay", "5": "replay"}
OULU_CROP = re.compile(r"cropped_(?P<phone>[1-6])_(?P<session>[1-3])_(?P<user>\d{2})_(?P<type>[1-5])\.jpg")
EVALUATION_SPLITS = {"training set": "train", "testing set": "test"}
CASIA_ROOT = "CASIA_dataset"
CASIA_TYPES = {
    **dict.fromkeys(("1", "2", "HR_1"), "live"),
    **dict.fromkeys(("3", "4", "HR_2", "5", "6", "HR_3"), "print"),  # warped and cut printed photos
    **dict.fromkeys(("7", "8", "HR_4"), "tablet"),  # a video replayed on an iPad
}
CASIA_FRAME = re.compile(r"averaged_frame_(?P<type>HR_[1-4]|[1-8])(?: \((?P<subject>\d+)\))?\.avi\.png")
MSU_ROOT = "MSU_dataset"
MSU_TYPES = {"": "live", "printed_photo": "print", "ipad_video": "tablet", "iphone_video": "phone"}
MSU_FRAME = re.compile(
    r"averaged_frame_(?P<label>real|attack)_(?P<client>client\d{3})_(?P<camera>android|laptop)_SD_"
    r"(?:(?P<attack>printed_photo|ipad_video|iphone_video)_)?scene01\.mp4\.png"
)


class ConvertError(RuntimeError):
    """A problem with the mirror or the output that the user must fix; the message says which."""


@dataclass(frozen=True)
class Item:
    """One image to copy: its blob in the mirror, its path there, and its path in the output tree."""

    blob: str
    source: str
    target: str
    video: str = ""

    @property
    def split_label_subject(self) -> tuple[str, str, str]:
        parts = self.target.split("/")
        return ("all", *parts[:2]) if len(parts) == 3 else (parts[0], parts[1], parts[2])


@dataclass
class Plan:
    """The images to copy, and what the mirror held that is not among them (for the report)."""

    items: list[Item]
    notes: dict[str, int | str] = field(default_factory=dict)


# --- the bare git mirror -------------------------------------------------------------------------


def git(mirror: Path, *args: str) -> bytes:
    result = subprocess.run(["git", "-C", str(mirror), *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise ConvertError(f"git {' '.join(args)} in {mirror}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def head_commit(mirror: Path) -> str:
    return git(mirror, "rev-parse", "--verify", "HEAD^{commit}").decode().strip()


def list_files(mirror: Path, commit: str, prefix: str) -> dict[str, str]:
    """path -> blob id of every regular file under `prefix` at `commit` (links and submodules left out)."""
    files = {}
    for entry in git(mirror, "ls-tree", "-r", "-z", "--full-tree", commit, "--", prefix).split(b"\0"):
        if entry:
            meta, path = entry.decode().split("\t", 1)
            mode, kind, blob = meta.split()
            if kind == "blob" and mode in ("100644", "100755"):
                files[path] = blob
    return files


class Blobs:
    """Reads blobs one at a time through one `git cat-file --batch` process."""

    def __init__(self, mirror: Path) -> None:
        command = ["git", "-C", str(mirror), "cat-file", "--batch"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read(self, blob: str) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{blob}\n".encode())
        self.process.stdin.flush()
        header = self.process.stdout.readline().decode().split()
        if len(header) != 3:
            raise ConvertError(f"blob {blob} is not in the mirror ({' '.join(header[1:]) or 'no answer'})")
        data = self.process.stdout.read(int(header[2]))
        self.process.stdout.read(1)  # the newline after the content
        return data

    def __enter__(self) -> Blobs:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()


# --- Replay-Attack -------------------------------------------------------------------------------


def replay_video(folder: str, split_folder: str) -> tuple[str, str, str, str]:
    """(split, label, client, video id) of a frame folder such as `train__attack__hand__attack_print_client001_...`."""
    match = REPLAY_FOLDER.fullmatch(folder)
    video = REPLAY_VIDEO.fullmatch(match["video"]) if match else None
    if match is None or video is None or match["split"] != split_folder:
        raise ConvertError(f"{REPLAY_ROOT}/{split_folder}/{folder}: not a Replay-Attack frame folder name")
    if (match["label"] == "attack") != bool(video["attack"]) or (match["label"] == "real") != (
        match["support"] == "real"
    ):
        raise ConvertError(f"{REPLAY_ROOT}/{split_folder}/{folder}: its label and its video name disagree")
    label = REPLAY_ATTACKS[video["attack"]] if video["attack"] else "live"
    # attack names repeat between fixed/ and hand/ (the same attack filmed twice): keep the support in the id
    video_id = match["video"] if label == "live" else f"{match['video']}__{match['support']}"
    return REPLAY_SPLITS[match["split"]], label, video["client"], video_id


def replay_plan(files: dict[str, str], every: int) -> Plan:
    videos: dict[str, list[tuple[int, str, str]]] = {}
    skipped = 0
    for path, blob in files.items():
        parts = path.split("/")
        if not path.lower().endswith((".jpg", ".jpeg")):
            skipped += 1
            continue
        frame = FRAME.fullmatch(parts[-1])
        if len(parts) != 5 or frame is None:
            raise ConvertError(f"{path}: not <split>/<video folder>/frame_NNNNN.jpg under {REPLAY_ROOT}")
        videos.setdefault("/".join(parts[2:4]), []).append((int(frame[1]), path, blob))
    items = []
    for key, frames in sorted(videos.items()):
        split_folder, folder = key.split("/")
        split, label, client, video = replay_video(folder, split_folder)
        for number, path, blob in sorted(frames)[::every]:
            items.append(Item(blob, path, f"{split}/{label}/{client}/{video}__frame_{number:05d}.jpg", video))
    return Plan(items, {"videos": len(videos), "non-image files skipped": skipped})


# --- NUAA ----------------------------------------------------------------------------------------


def natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_lists(files: dict[str, str], blobs: Blobs) -> dict[tuple[str, str], set[str]]:
    """(label, split) -> the `<id>/<file>` entries of db/<client|imposter>_<split>_raw.txt, for the lists present."""
    lists = {}
    for label, prefix in NUAA_LISTS.items():
        for split in NUAA_SPLITS:
            path = f"{NUAA_ROOT}/{prefix}_{split}_raw.txt"
            if path in files:
                text = blobs.read(files[path]).decode("utf-8", errors="replace")
                lists[label, split] = {line.strip().replace("\\", "/") for line in text.splitlines() if line.strip()}
    return lists


def official_split(
    images: dict[tuple[str, str], str], lists: dict[tuple[str, str], set[str]]
) -> tuple[dict[tuple[str, str], str] | None, int]:
    """The split of each (label, `<id>/<file>`) when the four lists are there, disjoint and cover every image;
    else None. Also the number of listed entries whose image is not in the mirror."""
    listed = {(label, entry) for (label, _), entries in lists.items() for entry in entries}
    absent = len(listed - images.keys())
    if len(lists) != len(NUAA_LISTS) * len(NUAA_SPLITS):
        return None, absent
    split_of = {}
    for (label, split), entries in lists.items():
        for entry in entries:
            if split_of.setdefault((label, entry), split) != split:
                return None, absent  # listed in both train and test
    if not images.keys() <= split_of.keys():
        return None, absent
    return {key: split_of[key] for key in images}, absent


def nuaa_plan(files: dict[str, str], blobs: Blobs, every: int) -> Plan:
    images: dict[tuple[str, str], str] = {}
    skipped = 0
    for path, blob in files.items():
        parts = path.split("/")
        if len(parts) != 4 or parts[1] not in NUAA_CLASSES:
            continue  # the lists, the readme
        if not parts[3].lower().endswith((".jpg", ".jpeg")):
            skipped += 1  # Thumbs.db
            continue
        if not SUBJECT.fullmatch(parts[2]):
            raise ConvertError(f"{path}: the subject folder name is not a plain name")
        images[NUAA_CLASSES[parts[1]], f"{parts[2]}/{parts[3]}"] = blob
    splits, absent = official_split(images, read_lists(files, blobs))
    groups: dict[tuple[str, str, str], list[str]] = {}
    for label, entry in images:
        subject = entry.split("/")[0]
        groups.setdefault((splits[label, entry] if splits else "", label, subject), []).append(entry)
    items = []
    for (split, label, _), entries in sorted(groups.items()):
        for entry in sorted(entries, key=natural_key)[::every]:
            target = f"{split}/{label}/{entry}" if split else f"{label}/{entry}"
            items.append(Item(images[label, entry], f"{NUAA_ROOT}/{NUAA_FOLDERS[label]}/{entry}", target))
    protocol = "official train/test lists" if splits else "unsplit (the lists do not cover the images)"
    return Plan(
        items, {"split": protocol, "listed images not in the mirror": absent, "non-image files skipped": skipped}
    )


# --- OULU-NPU, CASIA-FASD, MSU-MFSD: one image per video ------------------------------------------


def oulu_plan(files: dict[str, str]) -> Plan:
    """One face crop per video; `<phone>_<session>_<user>_<type>` names the video (OULU's protocols 1-4 select
    by phone, session and type, so the names keep all four)."""
    items, depth_maps, others = [], 0, 0
    for path, blob in sorted(files.items()):
        parts = path.split("/")
        if path.endswith("_depth.jpg"):
            depth_maps += 1
            continue
        crop = OULU_CROP.fullmatch(parts[-1])
        if len(parts) != 7 or parts[3] not in OULU_SPLITS or parts[4:6] != ["crop_frame", "crop_face"] or not crop:
            if parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                expected = "<Train|Dev|Test>_files/crop_frame/crop_face/cropped_<p>_<s>_<u>_<t>.jpg"
                raise ConvertError(f"{path}: not {expected}")
            others += 1
            continue
        video = f"{crop['phone']}_{crop['session']}_{crop['user']}_{crop['type']}"
        label, user = OULU_TYPES[crop["type"]], f"user{crop['user']}"
        items.append(Item(blob, path, f"{OULU_SPLITS[parts[3]]}/{label}/{user}/{video}.jpg", video))
    return Plan(items, {"depth maps left out": depth_maps, "other files skipped": others, "face crops": "yes"})


def evaluation_frames(
    files: dict[str, str], root: str, pattern: re.Pattern[str]
) -> Iterable[tuple[str, str, str, re.Match]]:
    """(path, blob, split, name match) of each frame of face-antispoofing/Evaluation's `<root>/<part>/<label>/`."""
    for path, blob in sorted(files.items()):
        parts = path.split("/")
        frame = pattern.fullmatch(parts[-1]) if len(parts) == 4 else None
        if frame is None or parts[1] not in EVALUATION_SPLITS or parts[2] not in ("real", "attack"):
            raise ConvertError(f"{path}: not <training set|testing set>/<real|attack>/averaged_frame_... under {root}")
        yield path, blob, EVALUATION_SPLITS[parts[1]], frame


def casia_plan(files: dict[str, str]) -> Plan:
    items = []
    for path, blob, split, frame in evaluation_frames(files, CASIA_ROOT, CASIA_FRAME):
        label = CASIA_TYPES[frame["type"]]
        if (label == "live") != (path.split("/")[2] == "real"):
            raise ConvertError(f"{path}: video type {frame['type']} is not a {path.split('/')[2]} video of CASIA-FASD")
        subject = f"{split}{int(frame['subject'] or 1):02d}"  # the first subject's files carry no number
        video = f"{subject}_{frame['type']}"
        items.append(Item(blob, path, f"{split}/{label}/{subject}/{video}.png", video))
    return Plan(items, {"subjects": "numbered per part (train01-20, test01-30: different people)"})


def msu_plan(files: dict[str, str]) -> Plan:
    items = []
    for path, blob, split, frame in evaluation_frames(files, MSU_ROOT, MSU_FRAME):
        if (frame["label"] == "real") != (frame["attack"] is None) or frame["label"] != path.split("/")[2]:
            raise ConvertError(f"{path}: its folder, its label and its attack name disagree")
        label = MSU_TYPES[frame["attack"] or ""]
        video = f"{frame['camera']}_{frame['attack'] or 'real'}"
        items.append(Item(blob, path, f"{split}/{label}/{frame['client']}/{video}.png", f"{frame['client']}_{video}"))
    return Plan(items, {})


# --- writing the tree ----------------------------------------------------------------------------


def check_image(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image that decodes, else None."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else (image.shape[1], image.shape[0])


def write_items(items: Iterable[Item], blobs: Blobs, root: Path, check: bool) -> tuple[list[Item], dict[str, int]]:
    """Copy the items' blobs under `root`; returns the items written and the image sizes seen."""
    written, sizes, failed = [], Counter(), []
    for item in items:
        data = blobs.read(item.blob)
        size = check_image(data) if check else (0, 0)
        if size is None:
            failed.append(item.source)
            continue
        sizes[f"{size[0]}x{size[1]}" if check else "unchecked"] += 1
        target = root / item.target
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(item)
    for source in failed:
        print(f"warning: {source} does not decode; left out", file=sys.stderr)
    return written, {**dict(sizes), "undecodable (left out)": len(failed)}


def count(items: Iterable[Item]) -> list[dict[str, int | str]]:
    """Images, subjects and videos per split and label folder."""
    images: Counter[tuple[str, str]] = Counter()
    subjects: dict[tuple[str, str], set[str]] = {}
    videos: dict[tuple[str, str], set[str]] = {}
    for item in items:
        split, label, subject = item.split_label_subject
        images[split, label] += 1
        subjects.setdefault((split, label), set()).add(subject)
        if item.video:
            videos.setdefault((split, label), set()).add(item.video)
    labels = ("live", "print", "replay", "phone", "tablet")
    order = {name: i for i, name in enumerate(("train", "val", "test", "all", *labels))}
    rows = []
    for split, label in sorted(images, key=lambda key: (order.get(key[0], 9), order.get(key[1], 9), key)):
        row: dict[str, int | str] = {"split": split, "label": label, "images": images[split, label]}
        row["subjects"] = len(subjects[split, label])
        if (split, label) in videos:
            row["videos"] = len(videos[split, label])
        rows.append(row)
    return rows


def print_counts(rows: list[dict[str, int | str]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(" ".join(f"{column:>8}" for column in columns))
    for row in rows:
        print(" ".join(f"{row.get(column, ''):>8}" for column in columns))
    print(f"{'total':>8} {'':>8} {sum(int(row['images']) for row in rows):>8}")


# --- the output folder ---------------------------------------------------------------------------


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_ours_or_empty(folder: Path) -> bool:
    """Absent, an empty folder, or a folder holding this converter's marker (a link is never ours)."""
    if not folder.exists() and not folder.is_symlink():
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    return not any(folder.iterdir()) or read_marker(folder) is not None


def fresh_tmp(output: Path) -> Path:
    """An empty `<output>.tmp` marked as ours (a left-over one of an interrupted run is removed)."""
    tmp = output.with_name(output.name + ".tmp")
    if not is_ours_or_empty(tmp):
        raise ConvertError(f"{tmp} exists and was not made by this converter; move it away")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / MARKER).write_text(json.dumps({"complete": False}))
    return tmp


def move_into_place(tmp: Path, output: Path) -> None:
    """Swap the finished `<output>.tmp` in; a previous tree of ours goes by way of `<output>.old`."""
    old = output.with_name(output.name + ".old")
    if not is_ours_or_empty(old):
        raise ConvertError(f"{old} exists and was not made by this converter; move it away")
    if old.exists():
        shutil.rmtree(old)
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    if old.exists():
        shutil.rmtree(old)


# --- the command ---------------------------------------------------------------------------------


def build(
    dataset: str, mirror: Path, commit: str, root: Path, every: int, check: bool
) -> tuple[Plan, list[Item], dict[str, int]]:
    """Write the tree of `dataset` at `commit` under `root`: the plan, the images written, the sizes seen."""
    with Blobs(mirror) as blobs:
        if dataset == "replay":
            plan = replay_plan(list_files(mirror, commit, REPLAY_ROOT), every)
        elif dataset == "nuaa":
            plan = nuaa_plan(list_files(mirror, commit, NUAA_ROOT), blobs, every)
        elif dataset == "oulu":
            plan = oulu_plan(list_files(mirror, commit, OULU_ROOT))
        else:
            prefix, make_plan = (CASIA_ROOT, casia_plan) if dataset == "casia" else (MSU_ROOT, msu_plan)
            plan = make_plan(list_files(mirror, commit, prefix))
        if not plan.items:
            raise ConvertError(f"{mirror}: no {dataset} images found at {commit}")
        return (plan, *write_items(plan.items, blobs, root, check))


def convert(dataset: str, mirror: Path, output: Path, every: int, check: bool = True) -> dict:
    """Convert `dataset` from `mirror` into `output` (see the module docstring); returns the marker written."""
    if every < 1:
        raise ConvertError("--every must be 1 or more")
    if every != 1 and dataset not in THINNED:
        raise ConvertError(f"--every thins replay's frames and nuaa's photos; {dataset} has one image a video")
    if not is_ours_or_empty(output):
        raise ConvertError(f"{output} is not empty and was not made by this converter ({MARKER} missing); refusing")
    commit = head_commit(mirror)
    settings = {"version": VERSION, "dataset": dataset, "commit": commit, "every": every, "check": check}
    previous = read_marker(output) if output.exists() else None
    if previous is not None and previous.get("complete") and previous.get("settings") == settings:
        print(f"{output} is up to date (same mirror commit and settings); nothing to do")
        return previous
    started = time.monotonic()
    tmp = fresh_tmp(output)
    try:
        plan, written, sizes = build(dataset, mirror, commit, tmp, every, check)
    except ConvertError:
        shutil.rmtree(tmp)
        raise
    marker = {"complete": True, "settings": settings, "mirror": str(mirror), "counts": count(written)}
    marker |= {"notes": plan.notes, "image sizes": sizes, "seconds": round(time.monotonic() - started, 1)}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    move_into_place(tmp, output)
    return marker


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--mirror", type=Path, required=True, help="the bare git mirror of the dataset")
    parser.add_argument("--output", type=Path, required=True, help="the folder tree to write")
    parser.add_argument(
        "--every", type=int, default=1, help="keep every N-th frame (replay) or photo (nuaa); 1 for the others"
    )
    parser.add_argument("--no-check", dest="check", action="store_false", help="do not decode the images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        marker = convert(args.dataset, args.mirror, args.output.absolute(), args.every, args.check)
    except ConvertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_counts(marker["counts"])
    for key, value in {**marker["notes"], **marker["image sizes"]}.items():
        print(f"{key}: {value}")
    settings = marker["settings"]
    print(f"{args.output}: {settings['dataset']} at {settings['commit'][:12]}, written in {marker['seconds']} s")
    return 0


if __name__ == "__main__":
    cv2.setNumThreads(1)  # one core: the conversion is I/O and one decode per image
    sys.exit(main())
