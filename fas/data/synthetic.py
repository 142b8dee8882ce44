"""A small procedural face anti-spoofing dataset in the exact CelebA-Spoof layout, and its folder-format twin.

Every subject has a fixed procedural identity (skin, face shape, hair, eyes, clothes). A live image
is one capture of the subject in an indoor or outdoor scene. A spoof is a capture of that subject
shown through a medium and re-captured in another scene:

- prints (photo, poster, A4): reduced gamut and a paper tint, rotated halftone screens of medium-
  dependent pitch, paper grain, gloss glare on photos, paper borders;
- screens (PC, pad, phone): gamma and white-point shift, an RGB sub-pixel stripe grid that turns
  into moire when re-sampled, glare, a dark bezel;
- masks (face mask, 3D mask): a printed or smooth plastic face over a live body.

Cue strengths are drawn per image, from obvious to faint, and every image goes through the same
camera model (defocus, sensor noise, JPEG), so texture and frequency cues separate the classes
but not trivially. Each image is generated from its own seed, so the dataset is deterministic
whatever the number of worker processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from fas.data.crop import BB_FRAME

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2
MARKER = "synthetic.json"
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies

# Share of each spoof type among the spoof images (CelebA-Spoof types; 4 and 10 are masks).
SPOOF_TYPE_WEIGHTS = {1: 0.16, 2: 0.14, 3: 0.16, 7: 0.16, 8: 0.14, 9: 0.16, 4: 0.04, 10: 0.04}
PRINT_TYPES, SCREEN_TYPES = (1, 2, 3), (7, 8, 9)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of the generated dataset. Subjects of train and test are disjoint, as in CelebA-Spoof."""

    train_subjects: int = 24
    test_subjects: int = 8
    images_per_subject: int = 40
    live_fraction: float = 0.35
    seed: int = 0


@dataclass(frozen=True)
class Identity:
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    face_aspect: float
    hair_volume: float
    eye_spacing: float
    attributes: list[int]


def identity_of(seed: int, subject: int) -> Identity:
    rng = np.random.default_rng([seed, subject, 7])
    tone = rng.uniform(0.25, 1.0)
    skin = np.array([90 + 120 * tone, 110 + 110 * tone, 150 + 95 * tone]) * rng.uniform(0.9, 1.05, 3)
    hair = rng.choice([[20, 20, 25], [30, 50, 90], [60, 120, 190], [150, 150, 155], [20, 40, 60]])
    return Identity(
        skin=np.clip(skin, 0, 255),
        hair=np.array(hair, float) * rng.uniform(0.8, 1.2),
        iris=rng.uniform(20, 140, 3),
        shirt=rng.uniform(20, 235, 3),
        face_aspect=rng.uniform(1.15, 1.45),
        hair_volume=rng.uniform(0.1, 0.45),
        eye_spacing=rng.uniform(0.33, 0.45),
        attributes=[int(v) for v in rng.integers(0, 2, 40)],
    )


# --------------------------------------------------------------------------- scenes and faces


def background(rng: np.random.Generator, height: int, width: int, outdoor: bool) -> np.ndarray:
    """A smooth indoor wall with furniture edges, or sky over vegetation, with blurred clutter."""
    yy = np.linspace(0, 1, height)[:, None, None]
    if outdoor:
        top, bottom = rng.uniform([170, 120, 60], [255, 210, 150]), rng.uniform([30, 70, 30], [110, 160, 120])
    else:
        top, bottom = rng.uniform([120, 140, 150], [230, 235, 245]), rng.uniform([60, 70, 80], [170, 180, 200])
    image = top * (1 - yy) + bottom * yy + np.zeros((height, width, 3))
    for _ in range(rng.integers(3, 9)):
        color = rng.uniform(20, 235, 3)
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        if outdoor:
            cv2.circle(image, (int(x0), int(y0)), int(rng.integers(8, width // 4)), color.tolist(), -1)
        else:
            x1, y1 = x0 + rng.integers(10, width // 2), y0 + rng.integers(10, height // 2)
            cv2.rectangle(image, (int(x0), int(y0)), (int(x1), int(y1)), color.tolist(), -1)
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(2.0, 6.0))


def draw_person(
    rng: np.random.Generator, image: np.ndarray, who: Identity, plastic: bool = False
) -> tuple[float, float, float, float]:
    """Draw head, hair and shoulders; return the face box (x, y, w, h). Natural skin gets micro-texture."""
    height, width = image.shape[:2]
    face_w = rng.uniform(0.2, 0.3) * width
    face_h = face_w * who.face_aspect
    cx = rng.uniform(0.35, 0.65) * width
    cy = rng.uniform(0.35, 0.5) * height
    tilt = rng.uniform(-12, 12)
    shirt = (who.shirt * rng.uniform(0.85, 1.15)).tolist()
    cv2.ellipse(
        image, (int(cx), int(cy + face_h * 1.5)), (int(face_w * 1.3), int(face_h * 0.9)), 0, 180, 360, shirt, -1
    )
    cv2.rectangle(
        image,
        (int(cx - face_w * 0.2), int(cy)),
        (int(cx + face_w * 0.2), int(cy + face_h)),
        (who.skin * 0.85).tolist(),
        -1,
    )
    hair_axes = (int(face_w * (0.55 + who.hair_volume / 2)), int(face_h * (0.55 + who.hair_volume / 3)))
    cv2.ellipse(image, (int(cx), int(cy - face_h * 0.08)), hair_axes, tilt, 0, 360, who.hair.tolist(), -1)

    face = np.zeros_like(image)
    mask = np.zeros(image.shape[:2], np.float32)
    axes = (int(face_w / 2), int(face_h / 2))
    cv2.ellipse(mask, (int(cx), int(cy)), axes, tilt, 0, 360, 1.0, -1)
    light = rng.uniform(-1, 1, 2)
    xx, yy = np.meshgrid((np.arange(width) - cx) / face_w, (np.arange(height) - cy) / face_h)
    shading = 1.0 + 0.35 * (light[0] * xx + light[1] * yy) - 0.25 * (xx**2 + yy**2)
    face[:] = who.skin
    face *= shading[..., None]
    if plastic:
        face = (
            cv2.GaussianBlur(face, (0, 0), 2.0) * 0.9
            + 40 * np.exp(-((xx + 0.1) ** 2 + (yy + 0.2) ** 2) * 12)[..., None]
        )
    else:
        pores = cv2.GaussianBlur(rng.normal(0, 1, image.shape[:2]).astype(np.float32), (0, 0), 0.7)
        face += (pores * rng.uniform(4, 9))[..., None]
    image[:] = image * (1 - mask[..., None]) + face * mask[..., None]

    rot = cv2.getRotationMatrix2D((cx, cy), -tilt, 1.0)

    def at(dx: float, dy: float) -> tuple[int, int]:
        p = rot @ np.array([cx + dx * face_w, cy + dy * face_h, 1.0])
        return int(p[0]), int(p[1])

    eye_r = max(2, int(face_w * 0.09))
    for side in (-1, 1):
        ex = side * who.eye_spacing / 2 * 1.0
        cv2.ellipse(image, at(ex, -0.08), (eye_r + 2, eye_r), tilt, 0, 360, (235, 235, 240), -1)
        cv2.circle(image, at(ex, -0.08), max(1, eye_r // 2 + 1), who.iris.tolist(), -1)
        cv2.circle(image, at(ex, -0.08), max(1, eye_r // 4), (15, 15, 15), -1)
        cv2.line(image, at(ex - 0.1, -0.2), at(ex + 0.1, -0.21), who.hair.tolist(), max(1, eye_r // 2))
    cv2.line(image, at(0, -0.02), at(0.03, 0.15), (who.skin * 0.7).tolist(), max(1, eye_r // 2))
    mouth = (np.array([90, 90, 170]) * rng.uniform(0.7, 1.1)).tolist()
    cv2.ellipse(image, at(0, 0.28), (int(face_w * 0.18), max(2, int(face_h * 0.04))), tilt, 0, 360, mouth, -1)
    return (cx - face_w / 2, cy - face_h / 2, face_w, face_h)


def capture(
    rng: np.random.Generator, who: Identity, height: int, width: int, plastic: bool = False
) -> tuple[np.ndarray, tuple]:
    """A photo of the subject: scene, person, lighting. Returns float BGR image and face box."""
    image = background(rng, height, width, outdoor=bool(rng.integers(0, 2)))
    box = draw_person(rng, image, who, plastic=plastic)
    gain, offset = rng.uniform(0.75, 1.2), rng.uniform(-20, 15)
    return np.clip(image * gain + offset, 0, 255), box


def camera(rng: np.random.Generator, image: np.ndarray, dark: bool = False) -> np.ndarray:
    """The shared camera model: defocus, shot + read noise, quantisation. JPEG happens on write."""
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    noise_sigma = rng.uniform(1.5, 4.0) * (2.0 if dark else 1.0)
    image = image + rng.normal(0, 1, image.shape) * noise_sigma * np.sqrt(np.maximum(image, 1) / 128)
    return np.clip(image, 0, 255)


# --------------------------------------------------------------------------- presentation media


def halftone(rng: np.random.Generator, image: np.ndarray, pitch: float, strength: float) -> np.ndarray:
    """Amplitude-modulated halftone: one rotated dot screen per channel, blended by `strength`."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty_like(image)
    for channel, angle in enumerate(np.deg2rad(rng.uniform(0, 90) + np.array([15.0, 75.0, 45.0]))):
        u = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / pitch
        v = (-xx * np.sin(angle) + yy * np.cos(angle)) * 2 * np.pi / pitch
        screen = (np.cos(u) + np.cos(v) + 2) / 4  # 0..1 dot profile
        ink = 1 - image[..., channel] / 255.0
        dots = (screen < ink).astype(np.float32)
        dots = cv2.GaussianBlur(dots, (0, 0), 0.35 * pitch / 3)
        out[..., channel] = (1 - dots) * 255
    return image * (1 - strength) + out * strength


def print_medium(rng: np.random.Generator, source: np.ndarray, spoof_type: int, strength: float) -> np.ndarray:
    """Photo (glossy, fine screen), poster (coarse screen), A4 (office printer, washed out)."""
    pitch = {1: rng.uniform(2.0, 3.0), 2: rng.uniform(3.5, 5.5), 3: rng.uniform(2.5, 4.0)}[spoof_type]
    paper = np.array([225, 238, 245]) * rng.uniform(0.9, 1.0, 3)
    gamut = rng.uniform(0.55, 0.85) if spoof_type == 3 else rng.uniform(0.7, 0.92)
    faded = source * gamut + paper * (1 - gamut) * rng.uniform(0.6, 1.0)
    printed = halftone(rng, faded, pitch, strength=strength * rng.uniform(0.35, 0.9))
    grain = cv2.GaussianBlur(rng.normal(0, 1, source.shape[:2]).astype(np.float32), (0, 0), rng.uniform(0.6, 2.0))
    printed = printed * (1 + grain[..., None] * 0.04 * strength)
    if spoof_type == 1 and rng.random() < 0.7:
        printed = add_glare(rng, printed, strength)
    border = int(rng.integers(0, 12)) if spoof_type != 1 else int(rng.integers(0, 5))
    if border:
        printed = cv2.copyMakeBorder(printed, border, border, border, border, cv2.BORDER_CONSTANT, value=paper.tolist())
    return np.clip(printed, 0, 255)


def screen_medium(rng: np.random.Generator, source: np.ndarray, spoof_type: int, strength: float) -> np.ndarray:
    """A display showing the source: gamma, white point, RGB sub-pixel stripes, glare, bezel."""
    gamma = rng.uniform(0.7, 1.4)
    shown = 255 * (source / 255) ** gamma * rng.uniform([0.95, 0.9, 0.75], [1.15, 1.0, 0.95]) + rng.uniform(5, 25)
    height, width = shown.shape[:2]
    pitch = {7: 3, 8: 3, 9: 3}[spoof_type]
    stripes = np.zeros((height, width, 3), np.float32)
    order = np.arange(width) % pitch  # BGR image: R stripe at channel 2
    for channel, phase in ((2, 0), (1, 1), (0, 2)):
        stripes[:, order == phase, channel] = 1.0
    gap_rows = (np.arange(height) % pitch) == 0
    stripes[gap_rows] *= 0.4
    mixed = 3 * stripes * shown
    contrast = strength * rng.uniform(0.25, 0.7)
    shown = shown * (1 - contrast) + mixed * contrast
    if rng.random() < 0.8:
        shown = add_glare(rng, shown, strength)
    bezel = int(rng.integers(4, 16))
    shown = cv2.copyMakeBorder(
        shown, bezel, bezel, bezel, bezel, cv2.BORDER_CONSTANT, value=rng.uniform(5, 40, 3).tolist()
    )
    return np.clip(shown, 0, 255)


def add_glare(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.uniform(0, width), rng.uniform(0, height)
    radius = rng.uniform(0.15, 0.5) * max(height, width)
    blob = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * radius**2))
    return image + (blob * 255 * rng.uniform(0.15, 0.6) * strength)[..., None]


def place_medium(
    rng: np.random.Generator, scene: np.ndarray, medium: np.ndarray, source_box: tuple, pad: int
) -> tuple[np.ndarray, tuple]:
    """Warp the medium into the scene with a mild perspective; return the image and the face box."""
    height, width = scene.shape[:2]
    mh, mw = medium.shape[:2]
    fill = rng.uniform(0.7, 1.15)
    scale = fill * min(width / mw, height / mh)
    ow, oh = mw * scale, mh * scale
    ox, oy = rng.uniform(min(0, width - ow), max(0, width - ow)), rng.uniform(min(0, height - oh), max(0, height - oh))
    jitter = rng.uniform(-0.05, 0.05, (4, 2)) * [ow, oh]
    src = np.float32([[0, 0], [mw, 0], [mw, mh], [0, mh]])
    dst = np.float32([[ox, oy], [ox + ow, oy], [ox + ow, oy + oh], [ox, oy + oh]]) + jitter.astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(medium, matrix, (width, height), flags=cv2.INTER_LINEAR)
    cover = cv2.warpPerspective(np.ones((mh, mw), np.float32), matrix, (width, height))
    image = scene * (1 - cover[..., None]) + warped * cover[..., None]
    x, y, w, h = source_box
    corners = np.float32(
        [[x + pad, y + pad], [x + w + pad, y + pad], [x + w + pad, y + h + pad], [x + pad, y + h + pad]]
    )
    mapped = cv2.perspectiveTransform(corners[None], matrix)[0]
    x0, y0 = mapped.min(axis=0)
    x1, y1 = mapped.max(axis=0)
    return image, (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def face_mask(
    rng: np.random.Generator, who: Identity, height: int, width: int, strength: float
) -> tuple[np.ndarray, tuple]:
    """A live body wearing a printed paper face (spoof type 4)."""
    image, box = capture(rng, who, height, width)
    printed = print_medium(rng, image, 3, strength)
    border = (printed.shape[0] - image.shape[0]) // 2
    printed = printed[border : border + image.shape[0], border : border + image.shape[1]]
    x, y, w, h = box
    mask = np.zeros(image.shape[:2], np.float32)
    cv2.ellipse(mask, (int(x + w / 2), int(y + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, 1.0, -1)
    return image * (1 - mask[..., None]) + printed * mask[..., None], box


# --------------------------------------------------------------------------- one labelled image


def render(seed: int, subject: int, index: int, spoof_type: int) -> tuple[np.ndarray, tuple, list[int]]:
    """Render one image; returns uint8 BGR, face box in pixels, and (spoof type, illumination, environment)."""
    rng = np.random.default_rng([seed, subject, index])
    who = identity_of(seed, subject)
    height, width = int(rng.integers(28, 40)) * 8, int(rng.integers(26, 36)) * 8
    strength = float(rng.uniform(0.3, 1.0))
    illumination = int(rng.integers(1, 5))
    outdoor = bool(rng.integers(0, 2))
    if spoof_type == 0:
        image, box = capture(rng, who, height, width)
    elif spoof_type == 10:
        image, box = capture(rng, who, height, width, plastic=True)
    elif spoof_type == 4:
        image, box = face_mask(rng, who, height, width, strength)
    else:
        source, source_box = capture(rng, who, int(height * 1.5), int(width * 1.5))
        if spoof_type in PRINT_TYPES:
            medium = print_medium(rng, source, spoof_type, strength)
        else:
            medium = screen_medium(rng, source, spoof_type, strength)
        pad = (medium.shape[0] - source.shape[0]) // 2
        scene = background(rng, height, width, outdoor)
        image, box = place_medium(rng, scene, medium, source_box, pad)
    image = relight(rng, image, illumination)
    image = camera(rng, image, dark=illumination == 4)
    codes = [spoof_type, 0, 0] if spoof_type == 0 else [spoof_type, illumination, 1 + int(outdoor)]
    return image.astype(np.uint8), box, codes


def relight(rng: np.random.Generator, image: np.ndarray, illumination: int) -> np.ndarray:
    """CelebA-Spoof illumination conditions: normal, strong, back light, dark."""
    if illumination == 2:
        return image * rng.uniform(1.15, 1.4) + 15
    if illumination == 3:
        yy = np.linspace(-1, 1, image.shape[0])[:, None, None]
        xx = np.linspace(-1, 1, image.shape[1])[None, :, None]
        return image * (0.55 + 0.6 * np.clip(xx**2 + yy**2, 0, 1))
    if illumination == 4:
        return image * rng.uniform(0.35, 0.6)
    return image


# --------------------------------------------------------------------------- the dataset on disk


def _plan(config: SyntheticConfig) -> list[tuple[str, int, int, int]]:
    """(split, subject, index, spoof type) for every image; subjects are numbered across splits."""
    rng = np.random.default_rng([config.seed, 1])
    types, weights = zip(*SPOOF_TYPE_WEIGHTS.items(), strict=True)
    weights = np.array(weights) / sum(weights)
    plan = []
    for subject in range(config.train_subjects + config.test_subjects):
        split = "train" if subject < config.train_subjects else "test"
        for index in range(config.images_per_subject):
            is_live = rng.random() < config.live_fraction
            plan.append((split, subject, index, 0 if is_live else int(rng.choice(types, p=weights))))
    return plan


def _write_one(root: Path, seed: int, item: tuple[str, int, int, int]) -> tuple[str, str, list[int]]:
    split, subject, index, spoof_type = item
    image, box, codes = render(seed, subject, index, spoof_type)
    kind = "live" if spoof_type == 0 else "spoof"
    key = f"Data/{split}/{10001 + subject}/{kind}/{index:06d}.jpg"
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    quality = int(np.random.default_rng([seed, subject, index, 3]).integers(70, 96))
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    height, width = image.shape[:2]
    x, y, w, h = box
    sx, sy = BB_FRAME / width, BB_FRAME / height
    bb = (round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy)))
    (path.parent / f"{index:06d}_BB.txt").write_text(f"{bb[0]} {bb[1]} {bb[2]} {bb[3]} 0.99\n")
    return split, key, codes


def generate(root: str | Path, config: SyntheticConfig | None = None, workers: int = 2) -> Path:
    """Write the dataset under `root` unless an identical one is already there; return `root`.

    The marker file records the generator version and config; a different one regenerates. The data is
    written into a hidden folder beside `root` and renamed into place once complete, so a run killed while
    generating leaves no half-made dataset (its leftovers are removed by the next run), and the worker
    processes end with the process that started them. A non-empty folder without the marker is never touched.
    """
    config = config or SyntheticConfig()
    root = Path(root)
    marker = root / MARKER
    wanted = {"version": GENERATOR_VERSION, **asdict(config)}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise FileExistsError(
            f"{root} is not empty and holds no {MARKER}; refusing to generate synthetic data there. "
            "Point data.root at an empty or synthetic folder."
        )
    remove_abandoned_partials(root)
    partial = root.with_name(f".{root.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    plan = _plan(config)
    log.info("Generating %d synthetic CelebA-Spoof images in %s", len(plan), root)
    labels: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
    attributes = {s: identity_of(config.seed, s).attributes for s in {item[1] for item in plan}}
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=die_with_parent) as pool:
            results = list(pool.map(_write_one, [partial] * len(plan), [config.seed] * len(plan), plan, chunksize=16))
    else:
        results = [_write_one(partial, config.seed, item) for item in plan]
    for (split, key, codes), item in zip(results, plan, strict=True):
        labels[split][key] = attributes[item[1]] + codes + [int(codes[0] != 0)]
    metas = partial / "metas" / "intra_test"
    metas.mkdir(parents=True, exist_ok=True)
    for split, split_labels in labels.items():
        (metas / f"{split}_label.json").write_text(json.dumps(split_labels))
    (partial / MARKER).write_text(json.dumps(wanted))
    if root.exists():
        shutil.rmtree(root)  # empty, or an older generated dataset (it holds the marker)
    os.replace(partial, root)
    return root


def remove_abandoned_partials(root: Path) -> None:
    """Delete the hidden folders that generating runs which no longer exist left beside `root`."""
    for partial in root.parent.glob(f".{root.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> None:
    """In a worker process: be sent SIGTERM when the parent dies (Linux), so a killed run leaves no
    worker writing on. Elsewhere nothing is done."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# --------------------------------------------------------------------------- the folder-format twin

FOLDER_MARKER = "synthetic_folder.json"
FOLDER_VERSION = 1
VIDEO_SIZE = (256, 320)  # width, height of the generated clips
VIDEO_FPS = 10


def folder_of(spoof_type: int) -> str:
    """live/, spoof/print/, spoof/replay/, or a bare spoof/ (an attack of unknown type) for the masks."""
    if spoof_type == 0:
        return "live"
    if spoof_type in PRINT_TYPES:
        return "spoof/print"
    if spoof_type in SCREEN_TYPES:
        return "spoof/replay"
    return "spoof"


def generate_folder(
    root: str | Path, config: SyntheticConfig | None = None, videos: int = 2, frames_per_clip: int = 12
) -> Path:
    """The generated dataset as a user would keep it: `<split>/<class folders>/<subject>/<image>.jpg` with a
    pixel `_BB.txt` beside every other image (the rest need face detection), `videos` subjects per split
    with a live and a replay clip of `frames_per_clip` frames, and `manifest.csv` listing the same files
    (path, label, subject, split, box). Regenerated only when the settings change."""
    config = config or SyntheticConfig()
    root = Path(root)
    marker = root / FOLDER_MARKER
    wanted = {"version": FOLDER_VERSION, **asdict(config), "videos": videos, "frames_per_clip": frames_per_clip}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise FileExistsError(f"{root} is not empty and holds no {FOLDER_MARKER}; refusing to generate there")
    for split in ("train", "test"):
        shutil.rmtree(root / split, ignore_errors=True)
    rows = []
    for split, subject, index, spoof_type in _plan(config):
        image, box, _ = render(config.seed, subject, index, spoof_type)
        relative = Path(split) / folder_of(spoof_type) / f"s{subject:02d}" / f"{index:03d}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / relative), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        box_text = " ".join(str(round(v)) for v in box)
        if index % 2 == 0:
            (root / relative).with_name(f"{index:03d}_BB.txt").write_text(box_text + "\n")
        label = folder_of(spoof_type).split("/")[-1]
        rows.append((relative.as_posix(), label, f"s{subject:02d}", split, box_text))
    subjects = {
        "train": range(config.train_subjects),
        "test": range(config.train_subjects, config.train_subjects + config.test_subjects),
    }
    for split, numbers in subjects.items():
        for subject in list(numbers)[:videos]:
            for spoof_type in (0, 8):
                relative = Path(split) / folder_of(spoof_type) / f"s{subject:02d}" / "clip.mp4"
                write_clip(root / relative, config.seed, subject, spoof_type, frames_per_clip)
                rows.append((relative.as_posix(), folder_of(spoof_type).split("/")[-1], f"s{subject:02d}", split, ""))
    with (root / "manifest.csv").open("w", newline="") as file:
        file.write("path,label,subject,split,box\n")
        file.writelines(f"{path},{label},{subject},{split},{box}\n" for path, label, subject, split, box in rows)
    marker.write_text(json.dumps(wanted))
    return root


def write_clip(path: Path, seed: int, subject: int, spoof_type: int, frames: int) -> None:
    """A short MP4 of one subject: each frame a fresh capture (live) or recapture (replay), resized alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, VIDEO_SIZE)
    try:
        for frame in range(frames):
            image, _, _ = render(seed, subject, 1000 + frame, spoof_type)
            writer.write(cv2.resize(image, VIDEO_SIZE, interpolation=cv2.INTER_AREA))
    finally:
        writer.release()


def main(argv: list[str] | None = None) -> None:
    """`python -m fas.data.synthetic <folder> [--folder]`: write the generated dataset (the default run's size)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fas.data.synthetic", description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument(
        "--folder", action="store_true", help="the folder-format twin (class folders, videos, manifest)"
    )
    args = parser.parse_args(argv)
    print(generate_folder(args.root) if args.folder else generate(args.root))


if __name__ == "__main__":
    main()
