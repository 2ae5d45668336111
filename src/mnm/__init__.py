"""mnm — Mix-and-Match tuning and label-efficient semantic segmentation.

The framework-free core lives here (backbones, mix, match, losses, heads,
metrics); Lightning stages are in :mod:`mnm.stages`, data in
:mod:`mnm.datamodules`.
"""

import os

# albumentations checks PyPI for updates on import unless told not to; nothing
# in this package may touch the network at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
