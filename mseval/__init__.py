"""mseval: forecast MS NET2 lesion masks and turn the forecasts into trial-grade statistics."""

from mseval._version import __version__

__all__ = ["__version__"]
