"""fog: content-addressed network disk imaging.

Open a store with :class:`Store`, then capture disks into it and deploy images from it. Calls
return plain dicts (their keys are described by the ``TypedDict`` classes exported here). Errors
are :class:`FogError`, or its subclass :class:`BadInputError` when what the caller gave was wrong.
:class:`Server` runs the node's network boot services (DHCP, TFTP, HTTP) from a config;
:func:`serve` starts one. :class:`Master` talks to a master's REST API (errors it answers are
:class:`ApiError`, with the API's ``code``); :func:`start_master` runs a master in this process and
:func:`run_agent` the imaging agent.
"""

from typing import Any, Union
import os

from ._fog import (
    ApiError,
    BadInputError,
    FogError,
    Master,
    RunningMaster,
    Server,
    Store,
    TaskWatch,
    __version__,
    run_agent,
    start_master,
)
from ._reports import (
    CaptureReport,
    DeployReport,
    Filesystem,
    GcReport,
    ImageInfo,
    ImageSummary,
    Layout,
    Partition,
    ProgressCallback,
    Region,
    RegionReport,
    Section,
    StoreStats,
    VerifyReport,
)



def serve(config: Union[str, "os.PathLike[str]", "dict[str, Any]"]) -> Server:
    """Starts a node (``fog serve``): its boot services and, with ``[node] master``, the node role
    (heartbeats, its hosts' tasks, wake requests). ``config`` is what :class:`Server` takes.
    Returns the running :class:`Server`; call ``.stop()`` (or use it in a ``with`` block)."""
    server = Server(config)
    server.start()
    return server


__all__ = [
    "ApiError",
    "BadInputError",
    "CaptureReport",
    "DeployReport",
    "Filesystem",
    "FogError",
    "GcReport",
    "ImageInfo",
    "ImageSummary",
    "Layout",
    "Master",
    "Partition",
    "ProgressCallback",
    "Region",
    "RunningMaster",
    "RegionReport",
    "Section",
    "Server",
    "Store",
    "StoreStats",
    "TaskWatch",
    "VerifyReport",
    "__version__",
    "run_agent",
    "serve",
    "start_master",
]
