"""Shapes of the dicts that :class:`fog.Store` returns, as ``TypedDict`` for type checkers.

They are plain ``dict`` at run time; these classes only describe their keys.
"""

from __future__ import annotations

from typing import Callable, List, Optional, TypedDict

__all__ = [
    "CaptureReport",
    "DeployReport",
    "Filesystem",
    "GcReport",
    "ImageInfo",
    "ImageSummary",
    "Layout",
    "Partition",
    "ProgressCallback",
    "Region",
    "RegionReport",
    "Section",
    "StoreStats",
    "VerifyReport",
]

ProgressCallback = Callable[[str, int, int], object]
"""``progress(phase, done, total)``: phase is ``"capture"``, ``"deploy"`` or ``"verify"``; done
and total are bytes of that phase. Called from fog's worker threads (with the GIL held), at
most about 20 times a second, plus once when a phase starts and once when it ends. If it raises,
the job stops and the exception propagates out of the call that started the job."""


class ImageSummary(TypedDict):
    """One image, as listed by :meth:`fog.Store.images`."""

    name: str
    created: int
    """Unix time of capture."""
    disk_size: int
    """Source disk size in bytes."""
    data_bytes: int
    """Used data bytes stored (before dedupe and compression)."""
    chunk_count: int
    table: str
    """Partition table: ``"none"``, ``"mbr"`` or ``"gpt"``."""


class Partition(TypedDict):
    """A data partition of the captured disk."""

    number: int
    """Number as Linux names it (``sda1``; logical MBR partitions start at 5)."""
    offset: int
    len: int
    type_id: str
    """MBR type byte as ``"0x83"``, or GPT type GUID."""
    name: str
    """GPT partition name (empty for MBR)."""


class Layout(TypedDict):
    """The partition layout of the captured disk."""

    table: str
    """``"none"`` (whole-disk filesystem), ``"mbr"`` or ``"gpt"``."""
    sector_size: int
    disk_size: int
    partitions: List[Partition]
    backup_gpt_len: int


class _SwapFields(TypedDict, total=False):
    page_size: int
    uuid: str
    label: str


class Filesystem(_SwapFields):
    """What a region holds; swap regions also carry ``page_size``, ``uuid`` and ``label``."""

    kind: str
    """``"ext"``, ``"fat"``, ``"ntfs"``, ``"swap"`` or ``"raw"`` (all non-zero blocks)."""


class Section(TypedDict):
    """Where a list lives inside the manifest file."""

    offset: int
    count: int


class Region(TypedDict):
    """A stored region of the disk: a partition, or the bytes outside partitions."""

    partition: Optional[int]
    """Partition number, or None for the bytes outside partitions (or a whole-disk volume)."""
    offset: int
    len: int
    filesystem: Filesystem
    used_bytes: int
    extents: Section
    chunks: Section


class ImageInfo(TypedDict):
    """The header of an image, from :meth:`fog.Store.info`."""

    format: int
    name: str
    created: int
    source: str
    """The disk or image file it was captured from."""
    layout: Layout
    regions: List[Region]
    chunk_count: int
    data_bytes: int


class RegionReport(TypedDict):
    """One region in a :class:`CaptureReport`."""

    partition: Optional[int]
    filesystem: str
    size: int
    used_bytes: int


class CaptureReport(TypedDict):
    """What :meth:`fog.Store.capture` did."""

    name: str
    source: str
    disk_size: int
    table: str
    regions: List[RegionReport]
    data_bytes: int
    """Used bytes read and stored (before dedupe and compression)."""
    chunks: int
    new_chunks: int
    """Chunks the store did not have before."""
    new_stored_bytes: int
    """Bytes added to the store."""
    seconds: float
    peak_memory_bytes: int
    """Peak resident memory of the process by the end of the job (the process's, not the job's alone)."""


class DeployReport(TypedDict):
    """What :meth:`fog.Store.deploy` did."""

    name: str
    target: str
    target_size: int
    data_bytes: int
    bytes_written: int
    """Bytes actually written (zero chunks are skipped on a fresh target)."""
    chunks: int
    verified: bool
    """True when the written data was read back and matched."""
    seconds: float
    peak_memory_bytes: int
    """Peak resident memory of the process by the end of the job (the process's, not the job's alone)."""


class VerifyReport(TypedDict):
    """What :meth:`fog.Store.verify` found."""

    ok: bool
    """True when nothing is wrong."""
    chunks_checked: int
    corrupt: List[str]
    """Ids (hex) of chunks whose content does not match their hash (or whose frame is damaged)."""
    images_checked: int
    image_errors: List[str]
    """Problems with images (damaged manifest, missing chunks)."""
    peak_memory_bytes: int
    """Peak resident memory of the process by the end of the job (the process's, not the job's alone)."""


class GcReport(TypedDict):
    """What :meth:`fog.Store.gc` did."""

    chunks_kept: int
    chunks_removed: int
    bytes_freed: int
    staging_removed: int
    """Abandoned capture directories removed."""
    peak_memory_bytes: int
    """Peak resident memory of the process by the end of the job (the process's, not the job's alone)."""


class StoreStats(TypedDict):
    """Sizes of the store, from :meth:`fog.Store.stats`."""

    images: int
    chunks: int
    stored_bytes: int
    """Bytes the packs (frames of chunks) and the index take."""
    logical_bytes: int
    """Used bytes the images hold, summed over images."""
    ratio: float
    """logical_bytes / stored_bytes (dedupe and compression together); 0.0 when empty."""
