from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from fas.download import (
    REGISTRY_PATH,
    DownloadError,
    cache_dir,
    fetch,
    main,
    read_registry,
    resolve_model_file,
    sha256_of,
)
from fas.inference.backends import load_backend
from fas.registry import model_convention

SHARED_FILES = {
    "silentface-v2-2.7": "silentface/2.7_80x80_MiniFASNetV2.pth",
    "silentface-v1se-4.0": "silentface/4_0_0_80x80_MiniFASNetV1SE.pth",
    "suri-liveness": "suri-liveness/best_model.pth",
    "suri-liveness-int8-onnx": "suri-liveness/best_model_quantized.onnx",
    "yunet-2023mar": "yunet/face_detection_yunet_2023mar.onnx",
}


def local_registry(tmp_path: Path, payload: bytes, url: str | None = None) -> Path:
    source = tmp_path / "mirror" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(payload)
    entry = {
        "file": "weights.bin",
        "url": url or source.as_uri(),
        "sha256": hashlib.sha256(b"the real weights").hexdigest(),
        "licence": "MIT",
        "kind": "liveness",
        "architecture": "minifasnet_v2",
        "card": "cards/x.md",
    }
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": {"tiny": entry}}))
    return path


def test_registry_matches_the_reference_files(reference_dir: Path) -> None:
    registry = read_registry()
    assert set(registry) == set(SHARED_FILES)
    for name, relative in SHARED_FILES.items():
        entry, path = registry[name], reference_dir / relative
        assert entry.file == path.name and entry.size_bytes == path.stat().st_size
        assert entry.sha256 == sha256_of(path), name
        assert (REGISTRY_PATH.parent / entry.card).is_file(), entry.card
        if entry.kind == "liveness":
            info = load_backend(path).info
            published = model_convention(name)
            assert published.input_convention() == info.convention, name
            assert published.class_scheme(info.class_scheme.num_classes, path) == info.class_scheme
            assert entry.architecture == info.backbone


def test_fetch_downloads_verifies_and_caches(tmp_path: Path) -> None:
    registry = read_registry(local_registry(tmp_path, b"the real weights"))
    cache = tmp_path / "cache"
    path = fetch("tiny", cache, registry)
    assert path == cache / "weights.bin" and path.read_bytes() == b"the real weights"
    (tmp_path / "mirror" / "weights.bin").unlink()  # the second call must not need the source
    assert fetch("tiny", cache, registry) == path
    assert [p.name for p in cache.iterdir()] == ["weights.bin"]  # no partial files left


def test_fetch_accepts_a_plain_path_as_url(tmp_path: Path) -> None:
    mirror = tmp_path / "elsewhere.bin"
    mirror.write_bytes(b"the real weights")
    registry = read_registry(local_registry(tmp_path, b"unused", url=str(mirror)))
    assert fetch("tiny", tmp_path / "cache", registry).read_bytes() == b"the real weights"


def test_fetch_deletes_a_file_with_the_wrong_sha256(tmp_path: Path) -> None:
    registry = read_registry(local_registry(tmp_path, b"tampered weights"))
    with pytest.raises(DownloadError, match=r"sha256 [0-9a-f]{64} is not the registered .* of tiny"):
        fetch("tiny", tmp_path / "cache", registry)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_url_says_where_to_put_the_file(tmp_path: Path) -> None:
    registry = read_registry(local_registry(tmp_path, b"x", url=(tmp_path / "missing.bin").as_uri()))
    with pytest.raises(DownloadError, match=r"tiny: cannot download file://.*missing.bin .*copy it to .*weights.bin"):
        fetch("tiny", tmp_path / "cache", registry)
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_name_lists_the_registry() -> None:
    with pytest.raises(DownloadError, match=r"unknown model 'nope'; the registry has: silentface-v2-2.7, "):
        fetch("nope")


def test_resolve_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAS_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    with pytest.raises(DownloadError, match=r"yunet-2023mar is not downloaded yet; run: python -m fas.download"):
        resolve_model_file("yunet-2023mar")
    (tmp_path / "face_detection_yunet_2023mar.onnx").write_bytes(b"")  # in the cache, but not the registered file
    with pytest.raises(DownloadError, match=r"sha256 .* is not the registered .* of yunet-2023mar"):
        resolve_model_file("yunet-2023mar")
    assert not (tmp_path / "face_detection_yunet_2023mar.onnx").exists()
    (tmp_path / "mine.onnx").write_bytes(b"")
    assert resolve_model_file(tmp_path / "mine.onnx") == tmp_path / "mine.onnx"  # a path is the user's own file
    with pytest.raises(DownloadError, match=r"nowhere.pth: model file not found; give a path or one of"):
        resolve_model_file("nowhere.pth")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = local_registry(tmp_path, b"the real weights")
    main(["--list", "--registry", str(registry)])
    assert "tiny" in capsys.readouterr().out
    main(["tiny", "--registry", str(registry), "--cache", str(tmp_path / "c")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "weights.bin")
    with pytest.raises(SystemExit) as exited:
        main(["other", "tiny", "another", "--registry", str(registry), "--cache", str(tmp_path / "c")])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out.strip() == str(tmp_path / "c" / "weights.bin")  # went on
    assert captured.err.splitlines() == [
        "error: unknown model 'other'; the registry has: tiny",
        "error: unknown model 'another'; the registry has: tiny",
        "error: 2 of 3 failed: other, another",
    ]
