"""Segmentation networks."""

from ichseg.networks.transdeeplab import TransDeepLab

__all__ = ["TransDeepLab"]
