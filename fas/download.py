"""A sha256-verified, cached download of the files `models/registry.yaml` lists (`fas.registry`).

    python -m fas.download --list
    python -m fas.download silentface-v2-2.7 silentface-v1se-4.0 yunet-2023mar

Files land in the cache folder ($FAS_CACHE_DIR, default ~/.cache/fas), the same place the predict
configs look. Nothing downloads implicitly: at run time a registry name that is not in the cache is an
error that names the download command. Offline machines can copy the file into the cache by hand
(its sha256 is still checked) or point `url` at a mirror (`file://` URLs and plain paths work).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO

from fas.cli import exit_on_user_error
from fas.errors import FasError
from fas.registry import REGISTRY_PATH, RegistryEntry, read_registry

CHUNK = 1 << 20


class DownloadError(FasError, RuntimeError):
    """A registry name is unknown, a download failed, or a file does not have the recorded sha256."""


def cache_dir() -> Path:
    """$FAS_CACHE_DIR, or ~/.cache/fas (the predict configs use the same rule)."""
    return Path(os.environ.get("FAS_CACHE_DIR") or Path.home() / ".cache" / "fas").expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lookup(name: str, registry: dict[str, RegistryEntry]) -> RegistryEntry:
    if name not in registry:
        raise DownloadError(f"unknown model '{name}'; the registry has: {', '.join(registry)}")
    return registry[name]


def fetch(name: str, cache: Path | None = None, registry: dict[str, RegistryEntry] | None = None) -> Path:
    """The verified local copy of a registry entry, downloaded into the cache if it is not there yet."""
    entry = lookup(name, registry if registry is not None else read_registry())
    target = (cache or cache_dir()) / entry.file
    if target.is_file():
        check_sha256(target, entry)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{entry.file}.")
    os.close(handle)
    try:
        with open(partial, "wb") as stream:
            copy_url(entry.url, stream)
        os.replace(partial, target)
    except (OSError, ValueError) as error:
        raise DownloadError(
            f"{name}: cannot download {entry.url} ({error}); fetch it another way and copy it to {target}"
        ) from None
    finally:
        Path(partial).unlink(missing_ok=True)
    check_sha256(target, entry)
    return target


def copy_url(url: str, destination: BinaryIO) -> None:
    """Copy a URL (or a plain local path) into an open file."""
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, destination, CHUNK)


def check_sha256(path: Path, entry: RegistryEntry) -> None:
    """Delete and refuse a file whose content is not the registered one (corrupt, changed upstream or
    modified in the cache): the next `python -m fas.download` then fetches it afresh."""
    found = sha256_of(path)
    if found != entry.sha256:
        path.unlink()
        raise DownloadError(
            f"{path}: sha256 {found} is not the registered {entry.sha256} of {entry.name} "
            f"(corrupt, changed upstream or modified); the file was deleted, download it again: "
            f"python -m fas.download {entry.name}"
        )


def resolve_model_file(value: str | Path, cache: Path | None = None) -> Path:
    """A config value naming a model: an existing path, or a registry name already in the cache."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    registry = read_registry() if REGISTRY_PATH.is_file() else {}
    if str(value) in registry:
        entry = registry[str(value)]
        cached = (cache or cache_dir()) / entry.file
        if cached.is_file():
            check_sha256(cached, entry)  # a file changed in the cache is not the registered model
            return cached
        raise DownloadError(f"{value} is not downloaded yet; run: python -m fas.download {value}")
    hint = f" or one of the registry names ({', '.join(registry)})" if registry else ""
    raise DownloadError(f"{value}: model file not found; give a path{hint}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fas.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="registry names to download")
    parser.add_argument("--list", action="store_true", help="list the registry and exit")
    parser.add_argument("--cache", type=Path, default=None, help="default: $FAS_CACHE_DIR or ~/.cache/fas")
    parser.add_argument("--registry", type=Path, default=REGISTRY_PATH, help="registry file")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        registry = read_registry(args.registry)
        if args.list or not args.names:
            for entry in registry.values():
                print(f"{entry.name:26} {entry.kind:9} {entry.architecture:16} {entry.file}  [{entry.licence}]")
            return
        failed = []
        for name in args.names:
            try:
                print(fetch(name, args.cache, registry))
            except DownloadError as error:
                print(f"error: {error}", file=sys.stderr)
                failed.append(name)
        if failed:
            print(f"error: {len(failed)} of {len(args.names)} failed: {', '.join(failed)}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
