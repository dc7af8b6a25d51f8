"""Shared code of the ICH two-stage pipeline: DICOM reading, windowing, boxes, crops, networks, metrics.

Training, evaluation and the MONAI Deploy operators all import from here, so that one implementation of each
transform serves both training and inference.

torch is imported first on purpose: holoscan (pulled in by monai.deploy) needs libcudart, which the CUDA
build of torch loads; importing holoscan first fails on machines without a system CUDA.
"""

import torch  # noqa: F401  (import-order side effect, see above)

__version__ = "0.1.0"
