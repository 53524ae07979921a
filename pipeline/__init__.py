"""bert-batch-pipeline: distributed batch inference for BERT-family encoders on Ray Data."""

from importlib.metadata import PackageNotFoundError, version

from pipeline.compose import apply

try:
    __version__ = version("bert-batch-pipeline")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "apply"]
