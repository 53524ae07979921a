"""bert-batch-pipeline: distributed batch inference for BERT-family encoders on Ray Data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bert-batch-pipeline")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "apply"]


def __getattr__(name: str):
    # `pipeline.apply` is imported on first use: every Ray worker of a job imports this package,
    # and the job's small bookkeeping actors (pipeline/ledger.py, pipeline/meter.py) need none of
    # what api.py loads (the spec's pydantic models, pyarrow).
    if name == "apply":
        from pipeline.api import apply

        return apply
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
