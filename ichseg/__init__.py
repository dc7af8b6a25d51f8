"""Shared code of the ICH two-stage pipeline: DICOM reading, windowing, boxes, crops, networks, metrics.

Training, evaluation and the MONAI Deploy operators all import from here, so that one implementation of each
transform serves both training and inference. Importing the package itself is cheap (no torch): the app answers a
bad setting or a refused input before it imports torch and the SDK (``ichseg.sdk``).
"""

__version__ = "0.1.0"
