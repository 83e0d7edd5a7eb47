"""fog: content-addressed network disk imaging.

Open a store with :class:`Store`, then capture disks into it and deploy images from it. Calls
return plain dicts (their keys are described by the ``TypedDict`` classes exported here). Errors
are :class:`FogError`, or its subclass :class:`BadInputError` when what the caller gave was wrong.
:class:`Server` runs the node's network boot services (DHCP, TFTP, HTTP) from a config.
"""

from ._fog import BadInputError, FogError, Server, Store, __version__
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

__all__ = [
    "BadInputError",
    "CaptureReport",
    "DeployReport",
    "Filesystem",
    "FogError",
    "GcReport",
    "ImageInfo",
    "ImageSummary",
    "Layout",
    "Partition",
    "ProgressCallback",
    "Region",
    "RegionReport",
    "Section",
    "Server",
    "Store",
    "StoreStats",
    "VerifyReport",
    "__version__",
]
