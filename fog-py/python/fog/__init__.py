"""fog: content-addressed network disk imaging.

Open a store with :class:`Store`, then capture disks into it and deploy images from it. Calls
return plain dicts (their keys are described by the ``TypedDict`` classes exported here). Errors
are :class:`FogError`, or its subclass :class:`BadInputError` when what the caller gave was wrong.
"""

from ._fog import BadInputError, FogError, Store, __version__
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
    "Store",
    "StoreStats",
    "VerifyReport",
    "__version__",
]
