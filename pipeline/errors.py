"""The job's errors, one hierarchy whose base class carries the CLI's exit code, so that the CLI maps an
error by its class (`except JobError as e: exit e.exit_code`) instead of by a list of names.

- `UserError` (exit 2): a spec, input, output or model problem found before any work; the message is one
  sentence naming the field or file and what to do.
- `JobFailed` (exit 1): the run did not finish; finished shards are kept and a rerun resumes.

This module imports nothing, so that any module can raise these without an import cycle: SpecError and
ModelError are defined here (and imported by `pipeline.spec` and `pipeline.models`, where callers find
them) because heads and `windows` raise them. The other user errors (InputError, PlanError, the
markers' errors) live next to the code that raises them, on UserError. The classes stay ValueError /
RuntimeError too, for code that catches those.
"""

from __future__ import annotations


class JobError(Exception):
    """An error the CLI reports as one sentence and exits with `exit_code`."""

    exit_code = 1


class UserError(JobError, ValueError):
    """A spec, input, output or model problem found before any work."""

    exit_code = 2


class SpecError(UserError):
    """A spec that cannot run; the message names the field and what to do. Also `pipeline.spec.SpecError`."""


class ModelError(UserError):
    """A checkpoint that cannot serve the requested head; the message says what to do. Also
    `pipeline.models.ModelError`."""


class JobFailed(JobError, RuntimeError):
    """The run did not finish. `summary`: the run's progress record, printed on stdout by the CLI."""

    def __init__(self, *args, summary: dict | None = None):
        super().__init__(*args)
        self.summary = summary
