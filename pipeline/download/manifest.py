"""The download manifest: which files make up each dataset part, where they come from, how to check them.

The data lives in ``manifest.yaml`` beside this module (its header documents every key); this
module loads it into frozen dataclasses and validates it, so a typo stops with one line naming
the part, the file and the key before anything is fetched. Tests and callers may pass their own
:class:`Manifest` (e.g. :meth:`Manifest.with_file` pointing a part's URLs at a local server).

Archive caps (:class:`ExtractLimits`) live in the manifest too, their one home: a top-level
``limits:`` mapping sets them for every archive, and the same keys in a file's ``extract:`` for
that archive alone; what neither sets keeps the defaults below. A site changes them in its own
manifest (``$PIPELINE_DOWNLOAD_MANIFEST``). Keys:

- ``max_extracted_size`` (bytes, default 256 GiB): the most one archive may unpack to in all
  (the largest shipped archive, FMoW, is about 50 GiB);
- ``max_expansion_ratio`` (default 20): the most it may unpack to per byte of archive (real
  image archives stay near 1; a 7 MB archive unpacking to 1.6 GiB is 230);
- ``ratio_grace`` (bytes, default 64 MiB): what any archive may unpack to whatever its ratio
  (small archives of text or synthetic images compress far better than 20 to 1).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pipeline.download.errors import ManifestError

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.yaml"
# A manifest file to use instead of the shipped one: a site's own mirrors, or a test's loopback server.
MANIFEST_ENV = "PIPELINE_DOWNLOAD_MANIFEST"
_HEX = {"md5": re.compile(r"[0-9a-f]{32}"), "sha256": re.compile(r"[0-9a-f]{64}")}
_PART_KEYS = {"title", "homepage", "layout", "check", "manual", "instructions", "files"}
_FILE_KEYS = {"name", "urls", "size", "approx_size", "md5", "sha256", "checksum_source", "size_source", "extract", "to"}
_MIRROR_KEYS = {"url", "size", "md5", "sha256", "checksum_source"}
_LIMIT_KEYS = {"max_extracted_size", "max_expansion_ratio", "ratio_grace"}


@dataclass(frozen=True)
class ExtractLimits:
    """Caps on what one archive may unpack to (see the module docstring); ``manifest`` names where to change them."""

    max_extracted_size: int = 256 * 2**30
    max_expansion_ratio: float = 20.0
    ratio_grace: int = 64 * 2**20
    manifest: str = field(default=str(MANIFEST_PATH), compare=False)

    def cap(self, archive_size: int) -> tuple[int, str]:
        """The most bytes an archive of ``archive_size`` bytes may unpack to, and the setting that caps it."""
        by_ratio = max(int(self.max_expansion_ratio * archive_size), self.ratio_grace)
        if by_ratio < self.max_extracted_size:
            return by_ratio, "max_expansion_ratio"
        return self.max_extracted_size, "max_extracted_size"


@dataclass(frozen=True)
class Mirror:
    """One URL of a file; ``size``/``md5``/``sha256`` set only where this host serves other bytes."""

    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    checksum_source: str | None = None

    @property
    def own_checksum(self) -> bool:
        return bool(self.md5 or self.sha256 or self.size)


@dataclass(frozen=True)
class Expected:
    """What a download from one mirror must match: exact size and published hashes (any may be None)."""

    size: int | None
    md5: str | None
    sha256: str | None
    source: str | None

    @property
    def published(self) -> bool:
        return bool(self.md5 or self.sha256)


@dataclass(frozen=True)
class FileSpec:
    """One file of a part: its mirrors, what it must match, and where it ends up under the root."""

    name: str
    mirrors: tuple[Mirror, ...]
    size: int | None = None
    approx_size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    checksum_source: str | None = None
    member: str | None = None      # archive: the folder inside it to keep ("." = the archive's root)
    to: str = ""                   # path under the root: the member's new name, or the plain file's
    limits: ExtractLimits = ExtractLimits()   # archive: caps on what it may unpack to

    @property
    def is_archive(self) -> bool:
        return self.member is not None

    def expected(self, mirror: Mirror) -> Expected:
        """The file's checks, or the mirror's own where that host serves other bytes."""
        if mirror.own_checksum:
            return Expected(mirror.size, mirror.md5, mirror.sha256, mirror.checksum_source)
        return Expected(self.size, self.md5, self.sha256, self.checksum_source)


@dataclass(frozen=True)
class Part:
    """A unit fetched and placed as a whole: a dataset, an OOD set, one DomainNet domain."""

    name: str
    title: str
    homepage: str
    layout: str
    check: tuple[tuple[str, ...], ...]
    files: tuple[FileSpec, ...] = ()
    manual: bool = False
    instructions: str = ""

    def layout_line(self, root: Path) -> str:
        return self.layout.replace("<root>", str(root))

    def destinations(self) -> list[str]:
        """Paths under the root that this part's files create, in file order."""
        return [f.to for f in self.files]


@dataclass(frozen=True)
class Manifest:
    parts: Mapping[str, Part]
    path: str = field(default="<memory>", compare=False)

    def part(self, name: str) -> Part:
        try:
            return self.parts[name]
        except KeyError:
            raise ManifestError(f"{self.path}: no part {name!r} (known: {', '.join(sorted(self.parts))})") from None

    def with_file(self, part: str, file: str, **changes: Any) -> Manifest:
        """A copy with one file's fields replaced; ``urls=[...]`` (strings) replaces its mirrors.

        Lets tests point a shipped part at a local server while keeping its extract and layout spec.
        """
        p = self.part(part)
        if not any(f.name == file for f in p.files):
            raise ManifestError(f"{self.path}: part {part!r} has no file {file!r}")
        if "urls" in changes:
            changes["mirrors"] = tuple(Mirror(u) for u in changes.pop("urls"))
        files = tuple(dataclasses.replace(f, **changes) if f.name == file else f for f in p.files)
        return Manifest({**self.parts, part: dataclasses.replace(p, files=files)}, self.path)


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a manifest file (default: the shipped ``manifest.yaml``)."""
    path = Path(path) if path is not None else MANIFEST_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"{path}: cannot read the download manifest ({type(e).__name__}: {e})") from None
    return parse_manifest(raw, str(path))


def active_manifest() -> Manifest:
    """The manifest downloads use: the file ``$PIPELINE_DOWNLOAD_MANIFEST`` names, else the shipped one."""
    return load_manifest(os.environ.get(MANIFEST_ENV) or None)


def parse_manifest(raw: Any, where: str = "<memory>") -> Manifest:
    """Validate the mapping form of a manifest (as in ``manifest.yaml``) into a :class:`Manifest`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("parts"), dict) or not raw["parts"]:
        raise ManifestError(f"{where}: expected a mapping with a non-empty 'parts' mapping")
    _keys(raw.get("limits", {}), _LIMIT_KEYS, f"{where}: limits")
    limits = _limits(raw.get("limits", {}), ExtractLimits(manifest=where), f"{where}: limits")
    return Manifest({name: _part(str(name), spec, where, limits) for name, spec in raw["parts"].items()}, where)


def _limits(spec: Any, base: ExtractLimits, ctx: str) -> ExtractLimits:
    """``base`` with the limit keys that ``spec`` sets (its other keys are the caller's to check)."""
    changes = {}
    for key in sorted(_LIMIT_KEYS & set(spec)):
        value = spec[key]
        if key == "max_expansion_ratio":
            ok, want = isinstance(value, (int, float)) and value > 0, "a positive number"
        else:
            grace = key == "ratio_grace"
            ok = isinstance(value, int) and (value >= 0 if grace else value > 0)
            want = f"a number of bytes{', 0 or more' if grace else ' above 0'}"
        if not ok or isinstance(value, bool):
            raise ManifestError(f"{ctx}.{key}: expected {want}, got {value!r}")
        changes[key] = value
    return dataclasses.replace(base, **changes)


def _part(name: str, spec: Any, where: str, limits: ExtractLimits) -> Part:
    ctx = f"{where}: parts.{name}"
    _keys(spec, _PART_KEYS, ctx)
    for key in ("title", "homepage", "layout"):
        _text(spec.get(key), f"{ctx}.{key}")
    check = spec.get("check")
    if not isinstance(check, list) or not check or not all(isinstance(a, list) and a for a in check):
        raise ManifestError(f"{ctx}.check: expected a non-empty list of non-empty path lists")
    manual = bool(spec.get("manual", False))
    files = spec.get("files", [])
    if manual and (files or not spec.get("instructions")):
        raise ManifestError(f"{ctx}: a manual part has instructions and no files")
    if not manual and (not isinstance(files, list) or not files):
        raise ManifestError(f"{ctx}.files: expected a non-empty list (or manual: true with instructions)")
    parsed = tuple(_file(f, f"{ctx}.files[{i}]", limits) for i, f in enumerate(files))
    names = [f.name for f in parsed]
    if len(set(names)) != len(names):
        raise ManifestError(f"{ctx}.files: file names must be unique, got {names}")
    return Part(name=name, title=spec["title"], homepage=spec["homepage"], layout=spec["layout"],
                check=tuple(tuple(_relative(p, f"{ctx}.check", allow_dir=True) for p in alt) for alt in check),
                files=parsed, manual=manual, instructions=str(spec.get("instructions", "")))


def _file(spec: Any, ctx: str, limits: ExtractLimits) -> FileSpec:
    _keys(spec, _FILE_KEYS, ctx)
    name = _text(spec.get("name"), f"{ctx}.name")
    if "/" in name or name.startswith("."):
        raise ManifestError(f"{ctx}.name: a plain file name is expected, got {name!r}")
    urls = spec.get("urls")
    if not isinstance(urls, list) or not urls:
        raise ManifestError(f"{ctx}.urls: expected a non-empty list of URLs (mirrors, current host first)")
    if ("extract" in spec) == ("to" in spec):
        raise ManifestError(f"{ctx}: give either extract: {{member, to}} (an archive) or to: (a plain file)")
    if "extract" in spec:
        extract = spec["extract"]
        _keys(extract, {"member", "to", *_LIMIT_KEYS}, f"{ctx}.extract")
        limits = _limits(extract, limits, f"{ctx}.extract")
        member = _relative(_text(extract.get("member"), f"{ctx}.extract.member"), f"{ctx}.extract.member",
                           allow_dot=True)
        to = _relative(_text(extract.get("to"), f"{ctx}.extract.to"), f"{ctx}.extract.to")
    else:
        member, to = None, _relative(_text(spec.get("to"), f"{ctx}.to"), f"{ctx}.to")
    return FileSpec(name=name, mirrors=tuple(_mirror(u, f"{ctx}.urls[{i}]") for i, u in enumerate(urls)),
                    size=_size(spec.get("size"), f"{ctx}.size"),
                    approx_size=_size(spec.get("approx_size"), f"{ctx}.approx_size"),
                    md5=_hex(spec.get("md5"), "md5", ctx), sha256=_hex(spec.get("sha256"), "sha256", ctx),
                    checksum_source=_checksum_source(spec, ctx), member=member, to=to, limits=limits)


def _mirror(spec: Any, ctx: str) -> Mirror:
    if isinstance(spec, str):
        spec = {"url": spec}
    _keys(spec, _MIRROR_KEYS, ctx)
    url = _text(spec.get("url"), f"{ctx}.url")
    if not re.match(r"https?://[^/\s]+", url):
        raise ManifestError(f"{ctx}.url: expected an http(s) URL, got {url!r}")
    return Mirror(url=url, size=_size(spec.get("size"), f"{ctx}.size"), md5=_hex(spec.get("md5"), "md5", ctx),
                  sha256=_hex(spec.get("sha256"), "sha256", ctx), checksum_source=_checksum_source(spec, ctx))


def _checksum_source(spec: dict, ctx: str) -> str | None:
    if (spec.get("md5") or spec.get("sha256")) and not spec.get("checksum_source"):
        raise ManifestError(f"{ctx}: a checksum needs checksum_source (where the value is published)")
    return spec.get("checksum_source")


def _keys(spec: Any, allowed: set[str], ctx: str) -> None:
    if not isinstance(spec, dict):
        raise ManifestError(f"{ctx}: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ManifestError(f"{ctx}: unknown key(s) {unknown} (allowed: {', '.join(sorted(allowed))})")


def _text(value: Any, ctx: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{ctx}: expected a non-empty string")
    return value


def _size(value: Any, ctx: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ManifestError(f"{ctx}: expected a positive number of bytes, got {value!r}")
    return value


def _hex(value: Any, algo: str, ctx: str) -> str | None:
    if value is not None and not (isinstance(value, str) and _HEX[algo].fullmatch(value)):
        raise ManifestError(f"{ctx}.{algo}: expected {_HEX[algo].pattern} (lower-case hex), got {value!r}")
    return value


def _relative(path: str, ctx: str, allow_dir: bool = False, allow_dot: bool = False) -> str:
    """A path under the root: relative, no ``..``; where the manifest writes, nothing may escape it."""
    if allow_dot and path == ".":
        return path
    pure = PurePosixPath(path.rstrip("/") if allow_dir else path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or path.endswith("/") and not allow_dir:
        raise ManifestError(f"{ctx}: expected a relative path without '..', got {path!r}")
    return path
