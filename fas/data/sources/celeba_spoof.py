"""Reader of the CelebA-Spoof layout: label JSON -> `Sample` records, `_BB.txt` -> face box.

Layout: `<root>/Data/{train,test}/<subject>/{live,spoof}/<id>.{jpg,png}` with `<id>_BB.txt` beside each
image, labels in `<root>/metas/intra_test/{train,test}_label.json` as `{"Data/train/...jpg": [44 ints]}`.
The cross-test protocols keep the same label files under `metas/protocol1/` and
`metas/protocol2/test_on_{high,middle,low}_quality_device/`: pass that folder as `protocol`.
`_BB.txt` boxes stay in their 224x224 frame (`Sample.box_frame`); the crop scales them to the image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fas.data.crop import BB_FRAME, Box
from fas.data.sample import BadSample, DatasetError, Sample, SampleError, bb_path, read_box_file
from fas.data.sources import Source
from fas.data.synthetic import SyntheticConfig, generate
from fas.download import sha256_of

log = logging.getLogger(__name__)

LABEL_LENGTH = 44
SPOOF_TYPE, ILLUMINATION, ENVIRONMENT, LIVE_OR_SPOOF = 40, 41, 42, 43
SOURCE_NAME = "celeba_spoof"
DEFAULT_PROTOCOL = "intra_test"
BB_FRAME_SIZE = (BB_FRAME, BB_FRAME)


def label_file(root: Path, split: str, protocol: str = DEFAULT_PROTOCOL) -> Path:
    """`metas/<protocol>/<split>_label.json`; protocol is e.g. `intra_test` or `protocol1`."""
    return Path(root) / "metas" / protocol / f"{split}_label.json"


def available_protocols(root: Path) -> list[str]:
    """Protocol folders under `metas/` that hold a train label file, e.g. `protocol2/test_on_low_quality_device`."""
    metas = Path(root) / "metas"
    return sorted(str(p.parent.relative_to(metas)) for p in metas.rglob("train_label.json")) if metas.is_dir() else []


def read_bb(path: Path) -> Box:
    """Parse `x y w h score` (224 frame). Raises SampleError with the reason when it is unusable."""
    x, y, w, h = read_box_file(path)
    if x >= 224 or y >= 224 or x + w <= 0 or y + h <= 0:
        raise SampleError(path, f"box x={x} y={y} w={w} h={h} lies outside the 224x224 frame")
    return (x, y, w, h)


def load_labels(path: Path) -> dict[str, list[int]]:
    """Read a CelebA-Spoof label JSON and check every entry has 44 integers."""
    if not path.is_file():
        raise DatasetError(
            f"{path}: label file not found. Point data.root at a CelebA-Spoof copy "
            "(the folder that holds Data/ and metas/), or use data=synthetic."
        )
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}: expected an object mapping image paths to 44-integer label lists")
    for key, vector in labels.items():
        if not isinstance(vector, list) or len(vector) != LABEL_LENGTH:
            raise DatasetError(f"{path}: entry {key!r} must be a list of {LABEL_LENGTH} integers")
    return labels


def subject_of(key: str) -> str:
    """`Data/train/4930/live/000001.jpg` -> `4930`."""
    parts = Path(key).parts
    return parts[2] if len(parts) >= 5 else parts[0]


def iter_labels(path: Path, lookahead: int = 1 << 16) -> Iterator[tuple[str, list[int]]]:
    """Stream the (key, 44-integer vector) entries of a label JSON in file order, holding ~100 KB of it.

    For preparation, whose memory must not grow with the dataset; `load_labels` is the fast
    whole-file reader. Entries are checked as `load_labels` checks them.
    """
    if not path.is_file():
        load_labels(path)  # raises the missing-file error
    decoder = json.JSONDecoder()
    with Path(path).open(encoding="utf-8") as file:
        text, pos, at_end = "", 0, False

        def token(expected: str | None = None) -> str:
            """Skip whitespace, keeping `lookahead` characters buffered; return (and pass) one character."""
            nonlocal text, pos, at_end
            if len(text) - pos < lookahead and not at_end:
                more = file.read(lookahead)
                text, pos, at_end = text[pos:] + more, 0, not more
            while pos < len(text) and text[pos].isspace():
                pos += 1
            char = text[pos : pos + 1]
            if expected is not None and (not char or char not in expected):
                raise DatasetError(f"{path}: not valid JSON (expected {expected!r} at entry {count + 1})")
            return char

        def value() -> Any:
            """Decode one JSON value, reading on while it is cut by the end of the buffer."""
            nonlocal text, pos, at_end
            token()
            while True:
                try:
                    parsed, pos = decoder.raw_decode(text, pos)
                    return parsed
                except json.JSONDecodeError as error:
                    more = "" if at_end else file.read(lookahead)
                    if not more:
                        raise DatasetError(f"{path}: not valid JSON ({error.msg} at entry {count + 1})") from None
                    text += more

        count = 0
        token("{")
        pos += 1
        if token() == "}":
            return
        while True:
            key = value()
            token(":")
            pos += 1
            vector = value()
            if not isinstance(key, str) or not isinstance(vector, list) or len(vector) != LABEL_LENGTH:
                raise DatasetError(f"{path}: entry {key!r} must be a list of {LABEL_LENGTH} integers")
            yield key, vector
            count += 1
            if token(",}") == "}":
                return
            pos += 1


def protocol_label_file(root: Path, split: str, protocol: str = DEFAULT_PROTOCOL) -> Path:
    """The label file of a split under a protocol; a missing protocol names the ones that exist."""
    path = label_file(root, split, protocol)
    found = available_protocols(root)
    if not path.is_file() and found and protocol not in found:
        raise DatasetError(
            f"{path}: no '{protocol}' protocol in {Path(root) / 'metas'}; "
            f"set data.protocol to one of: {', '.join(found)}"
        )
    return path


def read_split(root: Path, split: str, protocol: str = DEFAULT_PROTOCOL) -> tuple[list[Sample], list[BadSample]]:
    """Every labelled sample of a split, plus the ones that cannot be used (missing image or `_BB.txt`) and why."""
    samples: list[Sample] = []
    bad: list[BadSample] = []
    for record in iter_split(Path(root), split, protocol):
        (samples if isinstance(record, Sample) else bad).append(record)
    return samples, bad


def iter_split(
    root: Path, split: str, protocol: str = DEFAULT_PROTOCOL, source: str = SOURCE_NAME
) -> Iterator[Sample | BadSample]:
    """The records of a split in label-file order, streamed (prepare's memory does not grow with the dataset)."""
    for key, vector in iter_labels(protocol_label_file(root, split, protocol)):
        yield record_of(root, split, key, vector, source)


def record_of(root: Path, split: str, key: str, vector: list[int], source: str = SOURCE_NAME) -> Sample | BadSample:
    spoof_type = int(vector[SPOOF_TYPE])
    image_path = root / key
    if not image_path.is_file():
        return BadSample(image_path, "image file missing", key, split, spoof_type)
    try:
        box = read_bb(bb_path(image_path))
    except SampleError as error:
        return BadSample(error.path, error.reason, key, split, spoof_type)
    return Sample(
        path=image_path,
        frame=None,
        box=box,
        spoof_type=spoof_type,
        subject=subject_of(key),
        split=split,
        source=source,
        key=key,
        box_frame=BB_FRAME_SIZE,
        illumination=int(vector[ILLUMINATION]),
        environment=int(vector[ENVIRONMENT]),
    )


class CelebASpoofSource(Source):
    """CelebA-Spoof (or any folder in its layout, such as the generated `data=synthetic`) as a data source.

    `synthetic` (the settings of `fas.data.synthetic.SyntheticConfig`) generates the embedded dataset
    under `root` first. `cache` names a packed crop cache made by `python -m fas.data.prepare` to read
    the crops from instead of the images.
    """

    kind = "celeba_spoof"

    def __init__(
        self,
        root: str | None,
        protocol: str = DEFAULT_PROTOCOL,
        weight: float = 1.0,
        cache: str | None = None,
        synthetic: dict[str, Any] | None = None,
        name: str = SOURCE_NAME,
    ) -> None:
        if root is None and cache is None:
            raise DatasetError(
                "Neither data.root nor data.cache is set: pass data.cache=<folder made by python -m "
                "fas.data.prepare>, or data=celeba_spoof data.root=/path/to/CelebA_Spoof"
            )
        super().__init__(name, Path(root) if root is not None else None, weight, Path(cache) if cache else None)
        self.protocol = protocol
        self.synthetic = synthetic

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def prepare(self) -> None:
        """Generate the embedded dataset (once), or check the folder exists."""
        if self.synthetic is not None:
            generate(self.root, SyntheticConfig(**self.synthetic))
        elif self.root is None:
            raise DatasetError("data.root is not set: point it at your CelebA-Spoof copy")
        elif self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"{self.root}: the root is a file, not a folder; point it at your CelebA-Spoof copy")
        elif not self.root.is_dir():
            raise DatasetError(f"{self.root}: the root does not exist; point it at your CelebA-Spoof copy")

    def settings(self) -> dict[str, Any]:
        """What a packed cache of this source must have been made with."""
        return {"kind": self.kind, "protocol": self.protocol}

    def records(self, splits: Sequence[str] | None = None) -> Iterator[Sample | BadSample]:
        for split in splits or self.splits:
            yield from iter_split(self.root, split, self.protocol, self.name)

    def fingerprint(self, splits: Sequence[str] | None = None) -> dict[str, str]:
        """The sha256 of each split's label file: a cache made from other labels is not this source's."""
        label_files = {split: protocol_label_file(self.root, split, self.protocol) for split in splits or self.splits}
        return {split: sha256_of(path) for split, path in label_files.items()}
