"""The native extension of :mod:`fog` (import from ``fog``, not from here)."""

import os
import pathlib
from typing import Any, Optional, Union, final

from ._reports import (
    CaptureReport,
    DeployReport,
    GcReport,
    ImageInfo,
    ImageSummary,
    ProgressCallback,
    StoreStats,
    VerifyReport,
)

__version__: str
"""Version of the fog crate this module was built from."""

__all__ = ["BadInputError", "FogError", "Server", "Store", "__version__"]

_StrPath = Union[str, "os.PathLike[str]"]

class FogError(Exception):
    """Base class of fog's errors.

    Raised as is when something failed underneath: I/O, a damaged store, a busy store (``gc``
    while a capture runs), a deploy whose read-back differs. The message is fog's.
    """

class BadInputError(FogError):
    """The error was caused by what the caller gave.

    A path that does not exist or may not be read, an invalid or unknown image name, a disk fog
    cannot use, a target too small for the image, a directory that is not a store.
    """

@final
class Store:
    """A fog image store: a directory of content-addressed chunks and image manifests.

    Images share chunks, so capturing similar disks adds only what differs. Every method
    releases the GIL while it works; one store may be used from several threads.
    """

    def __new__(cls, path: _StrPath) -> "Store":
        """Opens the store at ``path``, creating it when the directory is absent or empty.

        Raises :class:`BadInputError` when ``path`` is a non-empty directory that is not a store.
        """

    @property
    def path(self) -> pathlib.Path:
        """The store directory."""

    def capture(
        self,
        source: _StrPath,
        name: str,
        progress: Optional[ProgressCallback] = None,
        *,
        threads: Optional[int] = None,
        sector_size: Optional[int] = None,
    ) -> CaptureReport:
        """Captures the disk image file or block device ``source`` as image ``name``.

        Reads the partition table and, per partition, only the blocks its filesystem uses (every
        non-zero block for filesystems fog does not know), cuts them into chunks, stores the
        chunks the store lacks and commits the image, replacing an image of that name.

        ``progress(phase, done, total)`` is called with phase ``"capture"`` and bytes read; see
        :data:`fog.ProgressCallback`. If it raises (or Ctrl-C arrives), the exception
        propagates and no image ``name`` is left in the store (the capture itself runs to its
        end first; its chunks go at the next :meth:`gc`).

        ``threads``: hashing and compression workers (default: all cores). ``sector_size``:
        logical sector size of an image file (default: detected from a GPT, else 512).

        Raises :class:`BadInputError` for an invalid name (letters, digits, ``.``, ``-``,
        ``_``; not starting with ``.``), a missing source or a disk fog cannot read.
        """

    def deploy(
        self,
        name: str,
        target: _StrPath,
        verify: bool = False,
        progress: Optional[ProgressCallback] = None,
        *,
        threads: Optional[int] = None,
    ) -> DeployReport:
        """Writes image ``name`` to ``target``: an image file (created at the captured disk's
        size if absent) or a block device at least as large as the image needs.

        With ``verify``, the written data is read back and checked against the image
        (:class:`FogError` on a mismatch). ``progress(phase, done, total)`` is called with phase
        ``"deploy"`` and then, with ``verify``, ``"verify"``. If it raises (or Ctrl-C arrives),
        the deploy stops early and the exception propagates; the target is then incomplete.

        Raises :class:`BadInputError` for an unknown or invalid name or a target too small.
        """

    def images(self) -> list[ImageSummary]:
        """Summaries of all images, sorted by name."""

    def info(self, name: str) -> ImageInfo:
        """The header of image ``name``: source, layout (partition table, partitions), regions
        with their filesystems and sizes.

        Raises :class:`BadInputError` for an unknown or invalid name.
        """

    def remove(self, name: str) -> None:
        """Removes image ``name``. Its chunks stay until :meth:`gc`.

        Raises :class:`BadInputError` for an unknown or invalid name.
        """

    def verify(self) -> VerifyReport:
        """Checks every chunk file against its hash and every image's manifest and chunk
        references. Problems are reported in the dict (``ok`` is False), not raised."""

    def gc(self) -> GcReport:
        """Removes chunks no image references and abandoned capture directories.

        Raises :class:`FogError` when a capture or deploy holds the store.
        """

    def stats(self) -> StoreStats:
        """Counts images, chunks and bytes, and the dedupe-and-compression ratio."""

    def __repr__(self) -> str: ...

@final
class Server:
    """The node's boot services (DHCP full/proxy, TFTP, HTTP boot) from a ``fog.toml`` config.

    ``config`` is TOML text, a path to a TOML file (``str`` without ``=``, ``[`` or a newline,
    or an ``os.PathLike``), or a dict of the same tables, e.g.
    ``{"node": {"address": "10.99.0.1", "boot_dir": "/srv/boot"}, "http": {"listen": "0.0.0.0:8080"},
    "tftp": {}, "dhcp": {"mode": "proxy", "interface": "br0"}}``.
    The config is checked here: a bad key or value raises :class:`BadInputError` naming it.

    Use it as a context manager (``with fog.Server(cfg) as server: ...``) or call
    :meth:`start` and :meth:`stop`.
    """

    def __new__(cls, config: Union[str, "os.PathLike[str]", dict[str, Any]]) -> "Server": ...
    def start(self) -> None:
        """Binds every service, then serves on background threads.

        Raises :class:`BadInputError` naming the port, interface or value that cannot be used
        (a port already taken, a missing privilege); then nothing is served.
        """

    def stop(self) -> None:
        """Stops every service within a few seconds (running transfers are cut after a grace
        period). Raises :class:`FogError` if a service had failed while running."""

    @property
    def running(self) -> bool:
        """True while the services run."""

    @property
    def addrs(self) -> dict[str, Optional[str]]:
        """Where each service listens while running, ``{"http": "127.0.0.1:8080", "tftp": None,
        "dhcp": None}`` (the real port when 0 was asked)."""

    def describe(self) -> str:
        """What the config means, as ``fog config check`` prints it."""

    def __enter__(self) -> "Server": ...
    def __exit__(self, *args: object) -> bool: ...
    def __repr__(self) -> str: ...
