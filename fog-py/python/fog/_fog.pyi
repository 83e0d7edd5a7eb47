"""The native extension of :mod:`fog` (import from ``fog``, not from here)."""

import os
import pathlib
from typing import Any, Iterator, Literal, Optional, Sequence, Union, final

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

__all__ = [
    "ApiError",
    "BadInputError",
    "FogError",
    "Master",
    "RunningMaster",
    "Server",
    "Store",
    "TaskWatch",
    "__version__",
    "run_agent",
    "start_master",
]

_StrPath = Union[str, "os.PathLike[str]"]

_LayoutMode = Literal["fit", "exact"]
"""How a deploy lays the image's partitions out on a disk of another size: ``"fit"`` (partitions
that must keep their size keep it, the others share the rest in proportion, their filesystems
grown or shrunk) or ``"exact"`` (the image's partition table as it is)."""

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

class ApiError(FogError):
    """The master refused a call. ``code`` is the API's error code (``"unauthorized"``,
    ``"forbidden"``, ``"not_found"``, ``"invalid"``, ``"conflict"``, ``"illegal_transition"``,
    ...), ``status`` the HTTP status and ``message`` the master's message (it names the input)."""

    code: str
    status: int
    message: str

@final
class Store:
    """A fog image store: a directory of content-addressed chunks and image manifests.

    Images share chunks, so capturing similar disks adds only what differs. Every method
    releases the GIL while it works; one store may be used from several threads.
    """

    def __new__(cls, path: _StrPath, *, memory_mib: int = 256) -> "Store":
        """Opens the store at ``path``, creating it when the directory is absent or empty.

        ``memory_mib`` (at least 8) bounds what each capture, deploy, verify or gc keeps in memory
        of what grows with an image; the rest goes to sorted runs in the store's ``tmp/``.

        Raises :class:`BadInputError` when ``path`` is a non-empty directory that is not a store,
        or ``memory_mib`` is below 8.
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
        layout: _LayoutMode = "fit",
    ) -> DeployReport:
        """Writes image ``name`` to ``target``: an image file (created at the captured disk's
        size if absent) or a block device at least as large as the image needs, its partitions
        laid out by ``layout`` (``"fit"`` or ``"exact"``; another value raises
        :class:`BadInputError`).

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

_Record = dict[str, Any]
"""A JSON record of the master, as a plain dict (see the REST API's schemas in the README)."""

_Placement = Union[str, Sequence[str], None]
"""``"all"`` (or ``None``): every node keeps the image; a list of node names: only those."""

@final
class Master:
    """A connection to a master's REST API (``/api/v1``) with a bearer token (admin, or a node's
    for the node routes). Every call blocks with the GIL released (Ctrl-C interrupts it) and
    returns plain dicts and lists. The master's refusals raise :class:`ApiError` with its code;
    bad arguments (an unknown key, an invalid subnet) raise :class:`BadInputError` before
    anything is sent; an unreachable master raises :class:`FogError`. An ``https://`` master is
    trusted by the system's roots, by the CA in the PEM file ``ca``, or by the SHA-256
    ``fingerprint`` of its certificate (what ``fog master --tls-self-signed`` prints)."""

    def __new__(
        cls,
        url: str,
        token: Optional[str] = None,
        ca: Optional[str] = None,
        fingerprint: Optional[str] = None,
    ) -> "Master": ...
    @property
    def url(self) -> str:
        """The master's URL, without a trailing ``/``."""

    def health(self) -> _Record:
        """``{"ok": True, "version": ...}``: the master answers (no token needed)."""
    # hosts
    def hosts(self) -> list[_Record]:
        """Every host."""

    def host(self, name: str) -> _Record:
        """One host: ``name``, ``macs``, ``uuid``, ``address``, ``image``, ``group``, ``node``,
        ``primary_disk``, ``kernel_args``, ``inventory``, ``layout`` (``"fit"``, the default, or
        ``"exact"``: how its deploys lay partitions out unless a task says otherwise)."""

    def create_host(self, name: str, macs: Sequence[str], **fields: Any) -> _Record:
        """Adds a host; ``fields`` are the other keys of :meth:`host` (``image="golden"``,
        ``node="site-a"``, ``address="10.99.0.50"``, ``layout="exact"``, ...). MACs come back
        canonical. An unknown key or layout raises :class:`BadInputError`."""

    def update_host(self, host: _Record) -> _Record:
        """Replaces a host with ``host`` (a dict as :meth:`host` returns it, changed)."""

    def delete_host(self, name: str) -> None:
        """Removes a host (refused while it has a task not over)."""

    def wake(self, host: str) -> _Record:
        """Asks the host's node to wake it with a Wake-on-LAN packet (the node sends it at its
        next heartbeat, when its config has ``[node] wake_broadcast``). Returns the request:
        ``id``, ``host``, ``macs``, ``node``, ``task``, ``requested_at``."""
    # groups
    def groups(self) -> list[_Record]:
        """Every group: ``name``, ``description``."""

    def create_group(self, name: str, description: str = "") -> _Record:
        """Adds a group."""

    def delete_group(self, name: str) -> None:
        """Removes a group (its hosts stay)."""
    # images
    def images(self) -> list[_Record]:
        """Every image record with ``copies`` (each node's copy: ``node``, ``state`` pending,
        replicating, complete or failed, ``bytes``, ``reason``), by name."""

    def image(self, name: str) -> _Record:
        """One image record (``name``, ``description``, ``os``, ``size_bytes``, ``placement``)
        with ``copies``."""

    def create_image(
        self,
        name: str,
        *,
        placement: _Placement = None,
        description: str = "",
        os: str = "",
        size_bytes: int = 0,
    ) -> _Record:
        """Adds an image record kept on ``placement`` (every node by default)."""

    def set_placement(self, name: str, placement: _Placement) -> _Record:
        """Changes which nodes keep an image; returns the record."""

    def copies(self, name: str) -> list[_Record]:
        """Each node's copy of an image."""

    def delete_image(self, name: str) -> None:
        """Removes an image record (refused while a host or an open task uses it)."""
    # nodes
    def nodes(self) -> list[_Record]:
        """Every node: ``name``, ``url``, ``subnets``, ``max_clients``, ``enabled``, ``last_seen``."""

    def create_node(
        self, name: str, url: str, subnets: Sequence[str] = ..., max_clients: int = 10, enabled: bool = True
    ) -> _Record:
        """Adds a node; returns ``{"node": {...}, "token": "fog_..."}``. The token is shown once."""

    def node_token(self, name: str) -> _Record:
        """Revokes a node's tokens; returns ``{"node", "token"}`` with a new one."""

    def delete_node(self, name: str) -> None:
        """Removes a node and its tokens (refused while it has tasks not over)."""
    # tasks
    def create_task(
        self,
        kind: str,
        host: Optional[str] = None,
        image: Optional[str] = None,
        *,
        group: Optional[str] = None,
        after: str = "reboot",
        wake: bool = False,
        layout: Optional[_LayoutMode] = None,
    ) -> _Record:
        """Creates a task of ``kind`` (deploy, multicast, capture, inventory, wipe_fast, wipe_full, debug)
        for ``host``, returning it (``id``, ``kind``, ``host``, ``image``, ``node``, ``state``,
        ``percent``..., ``wake``, ``layout``); or for each host of ``group``, returning
        ``{"created": [...], "skipped": [{"host", "reason"}]}``. ``after``: reboot, poweroff or
        stay. ``wake``: the host's node wakes it first (Wake-on-LAN). ``layout``: a deploy's
        (default: each host's; the task carries the one it settled on, ``None`` for other
        kinds, which refuse one)."""

    def deploy(
        self,
        host: Optional[str] = None,
        image: Optional[str] = None,
        *,
        group: Optional[str] = None,
        after: str = "reboot",
        wake: bool = False,
        layout: Optional[_LayoutMode] = None,
    ) -> _Record:
        """A deploy task: ``image`` (default: the host's) to ``host`` or each host of ``group``,
        laid out by ``layout`` (default: each host's)."""

    def capture(self, host: str, image: str, *, after: str = "reboot", wake: bool = False) -> _Record:
        """A capture task: ``host``'s disk into ``image`` (an image record)."""

    def inventory(
        self, host: Optional[str] = None, *, group: Optional[str] = None, after: str = "reboot", wake: bool = False
    ) -> _Record:
        """An inventory task: the agent reports the hardware, stored on the host."""

    def wipe(
        self,
        host: Optional[str] = None,
        *,
        full: bool = False,
        group: Optional[str] = None,
        after: str = "reboot",
        wake: bool = False,
    ) -> _Record:
        """A wipe task: partition tables and signatures, or the whole disk with ``full``."""

    def tasks(
        self,
        *,
        state: Optional[str] = None,
        host: Optional[str] = None,
        node: Optional[str] = None,
        open_only: bool = False,
        limit: Optional[int] = None,
    ) -> list[_Record]:
        """Tasks, newest first, filtered by state name, host, node, open ones only, at most
        ``limit``."""

    def task(self, id: int) -> _Record:
        """One task."""

    def cancel(self, id: int) -> _Record:
        """Cancels a task not over; returns it (:class:`ApiError` ``illegal_transition`` when it
        is over)."""

    def history(self, id: int) -> list[_Record]:
        """A task's state changes, oldest first: ``task``, ``at``, ``from``, ``to``, ``detail``."""

    def tokens(self) -> list[_Record]:
        """People's tokens: ``name``, ``role``, ``owner``, ``created_at``, ``expires_at`` (never
        the secrets)."""

    def create_token(self, name: str, expires_at: Optional[int] = None, role: Optional[str] = None) -> _Record:
        """Issues a named token (admin unless ``role`` is ``operator`` or ``viewer``), expiring
        at ``expires_at`` (ms since the epoch) if given; its secret (``token``) is in the answer,
        once."""

    def revoke_token(self, name: str) -> None:
        """Revokes a token: refused from the next request on."""

    def users(self) -> list[_Record]:
        """The users who sign in to the web pages: ``name``, ``role``, ``created_at``,
        ``last_login``."""

    def create_user(self, name: str, role: str, password: str) -> _Record:
        """Adds a user; ``role`` is ``admin``, ``operator`` or ``viewer``."""

    def update_user(self, name: str, *, role: Optional[str] = None, password: Optional[str] = None) -> _Record:
        """Changes a user's role and/or password (a new password ends their sessions)."""

    def remove_user(self, name: str) -> None:
        """Removes a user, their sessions and their tokens (the last admin stays)."""

    def audit(
        self,
        *,
        limit: int = 100,
        actor: Optional[str] = None,
        q: Optional[str] = None,
        failed: bool = False,
    ) -> list[_Record]:
        """The audit log, newest first: ``at``, ``actor``, ``action``, ``target``, ``address``,
        ``status``, ``result``."""

    def watch(self, id: int, timeout: Optional[float] = None, *, interval: float = 0.5) -> "TaskWatch":
        """Yields the task now and again at each change (state, progress), asking every
        ``interval`` seconds, until it is complete, failed or cancelled (the last item).
        Raises :class:`TimeoutError` when ``timeout`` seconds pass first."""

    def __repr__(self) -> str: ...

@final
class TaskWatch(Iterator[_Record]):
    """The iterator :meth:`Master.watch` returns."""

    def __iter__(self) -> "TaskWatch": ...
    def __next__(self) -> _Record: ...

@final
class RunningMaster:
    """A master running in this process (:func:`start_master`). Use it in a ``with`` block or
    call :meth:`stop`."""

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with TLS): where the API listens."""

    @property
    def fingerprint(self) -> Optional[str]:
        """The SHA-256 fingerprint of its certificate (``AB:CD:...``) when it speaks HTTPS:
        :meth:`client` pins it."""

    @property
    def admin_token(self) -> Optional[str]:
        """The admin token of the master's first start (only its hash is stored; with a
        ``data_dir`` it is also in ``data_dir/admin-token``, read back on later starts). ``None``
        when the database had admin tokens already and no such file exists."""

    @property
    def running(self) -> bool:
        """True until :meth:`stop`."""

    def client(self) -> Master:
        """A :class:`Master` of it with the admin token."""

    def stop(self) -> None:
        """Stops serving (open requests get 5 s) and closes the database."""

    def __enter__(self) -> "RunningMaster": ...
    def __exit__(self, *args: object) -> bool: ...
    def __repr__(self) -> str: ...

def start_master(
    db_url: Optional[str] = None,
    listen: str = "127.0.0.1:0",
    data_dir: Optional[_StrPath] = None,
    store: Union[Store, _StrPath, None] = None,
    tls_self_signed: bool = False,
) -> RunningMaster:
    """Starts a master in this process: the REST API on ``listen`` (port 0: any free port), its
    database at ``db_url`` (``sqlite://PATH?mode=rwc`` or ``postgres://...``), else
    ``data_dir/fog.db``, migrated. With ``store`` it also serves that store's chunks and
    manifests to agents (``/api/v1/store``; with only ``data_dir``, ``data_dir/store``). A first
    start issues the admin token (:attr:`RunningMaster.admin_token`), as ``fog master`` does.
    ``tls_self_signed`` serves HTTPS with a certificate made on the first start and kept in
    ``data_dir`` (:attr:`RunningMaster.fingerprint`).

    Raises :class:`BadInputError` for a bad ``listen`` address, a port already in use, or neither
    ``db_url`` nor ``data_dir``."""

def run_agent(
    master: str,
    token: Optional[str] = None,
    *,
    disk: Optional[_StrPath] = None,
    macs: Sequence[str] = ...,
    uuid: Optional[str] = None,
    once: bool = True,
    verify: bool = False,
    sys_root: Optional[_StrPath] = None,
    progress: Optional[ProgressCallback] = None,
    threads: Optional[int] = None,
) -> _Record:
    """Runs the imaging agent (``fog agent run``): checks in with ``master`` as ``macs`` (default:
    the cards under ``sys_root``, ``/sys``), waits for a slot, runs its task against ``disk`` (a
    disk image file or device), reports progress, checks out. With ``once`` it returns at once
    when no task waits. Returns ``{"task", "ok", "reason", "after", "bytes", "seconds"}``; never
    reboots or powers off. Raises :class:`ApiError` when the master refuses the check-in."""
