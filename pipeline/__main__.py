"""CLI: `bert-batch run SPEC.yaml` (or `python -m pipeline run ...`), `validate`, `plan`, `spec-reference`.

Exit codes: 0 complete; 1 the job did not finish (some shards not done: a rerun resumes them);
2 a bad spec, input, output or model found before any work. Errors are mapped by class
(`pipeline.errors`: each carries its exit code). On exit 0 and 1 stdout carries a JSON; on 2, nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
import warnings

from pipeline import __version__

EPILOG = """\
examples:
  %(prog)s run jobs/laptop.yaml
  %(prog)s run jobs/nightly_tagging.yaml --set output.path=s3://tags/daily/2026-12-01/
  %(prog)s run jobs/laptop.yaml --limit 20 --set output.path=out/try   # a dry run on the first 20 rows
  %(prog)s run jobs/laptop.yaml --fresh        # redo everything (after retraining the model)
  %(prog)s run jobs/laptop.yaml --retire       # a shard was deleted or renamed: drop its old results
  %(prog)s validate jobs/laptop.yaml           # check spec, input, output and model; run nothing
  %(prog)s run jobs/laptop.yaml | jq .rows_written   # stdout carries only the summary JSON
  %(prog)s plan jobs/ner_extraction.yaml --tokens 2e9 --hours 8 --from out/laptop   # size a cluster

exit codes:
  0  complete: every shard done, _SUMMARY.json and _SUCCESS written (a --limit run: its rows done)
  1  not finished: a shard could not be read or written, too many error rows, storage failed, or
     another run holds the output; rerun the same command to resume. stdout still carries a JSON:
     the run's summary with its status, or {"status": "failed", "error": the sentence}
  2  a bad spec, input, output or model, found before any work (nothing on stdout)
  validate: 0 ready to run; 1 another run holds the output now (its lease is live: run would stop the
     same way); 2 as above, an output whose _LEASE.json is not a lease this job wrote included
  plan: 0 the plan is printed (whatever limit comes first); 2 a bad spec, summary or argument

Progress goes to stderr (a live bar on a terminal, a line every few seconds otherwise); errors are
one sentence naming the field or file and what to do, and the last line on stderr; --debug shows the
traceback.
"""


def _prog() -> str:
    return "bert-batch" if os.path.basename(sys.argv[0] or "") == "bert-batch" else "python -m pipeline"


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    p = argparse.ArgumentParser(prog=prog, description="Batch inference for BERT-family encoders on Ray Data: "
                                "shards in, Parquet predictions out.", epilog=EPILOG % {"prog": prog},
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,validate,plan,spec-reference}")
    for name, help_text in (("run", "run the job (resumes by default)"),
                            ("validate", "check spec, input, output and model without running")):
        s = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG % {"prog": prog},
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("spec", help="job spec (YAML)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec key, e.g. --set output.path=s3://bucket/out (YAML scalar values)")
        s.add_argument("--debug", action="store_true", help="show full tracebacks")
        if name == "run":
            s.add_argument("--fresh", action="store_true",
                           help="redo every shard instead of resuming (removes only files this job wrote)")
            s.add_argument("--retire", action="store_true",
                           help="remove the results of shards no longer in the input (deleted or renamed) "
                                "instead of refusing to run; the summary lists them")
            s.add_argument("--limit", type=_positive, metavar="N",
                           help="run only the first N rows of the input, end to end (a dry run; no _SUCCESS)")
            s.add_argument("--verbose", "-v", action="store_true",
                           help="also show Ray's and the workers' own logs (on stderr)")
    _plan_parser(sub, prog)
    sub.add_parser("spec-reference", help="print the spec reference (Markdown)")
    return p


def _plan_parser(sub, prog: str) -> None:
    help_text = "size a cluster on paper: CPU cores and GPUs for N tokens in H hours, and the first limit"
    s = sub.add_parser("plan", help=help_text, description=help_text + " (see docs/sizing.md)",
                       epilog=EPILOG % {"prog": prog}, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("spec", help="job spec (YAML)")
    s.add_argument("--tokens", type=_amount, required=True, metavar="N",
                   help="tokens in the corpus (window tokens, as the summary counts them): 2e9, 2000000000, 500M, 2G")
    s.add_argument("--hours", type=_amount, required=True, metavar="H", help="hours the run may take")
    s.add_argument("--from", dest="summary", metavar="OUTPUT",
                   help="a previous run's output folder or _SUMMARY.json (local or s3://) for the rates; "
                        "default: the rates documented in pipeline/plan.py")
    s.add_argument("--shards", type=_positive, metavar="N",
                   help="input shards of the corpus (default: the summary's documents per shard, else 100,000)")
    s.add_argument("--object-store-gib", type=_amount, metavar="G",
                   help="the cluster's Ray object store (default: 30%% of a 64 GiB node per model actor)")
    s.add_argument("--json", action="store_true", help="print the plan as JSON")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set resources.gpus_per_actor=1")


_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}


def _amount(text: str) -> float:
    """A positive number: 2e9, 2_000_000_000, 1.5, or with a suffix k, M, G (or B), T."""
    value = text.strip().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(value[-1:].lower(), 1) if value else 1
    try:
        n = float(value[:-1] if scale != 1 else value) * scale
    except ValueError:
        n = 0
    if not n > 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number such as 2e9 or 500M (got {text!r})")
    return n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of rows, 1 or more (got {text!r})")
    return n


def _quiet(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)


# Ray's C++ components log in glog's format ("[2026-12-01 10:01:50,111 E 13232 13232] core_worker.cc:...");
# the same lines are in Ray's log files, so a quiet run leaves them out of stderr, all but F (fatal:
# the process is about to abort, and the line says why).
_RAY_NATIVE_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\] ")


@contextlib.contextmanager
def _stdout_to_stderr(verbose: bool):
    """While the job runs, whatever writes to file descriptors 1 and 2 (Ray's native code and
    subprocesses, a library's print, workers' output forwarded to the driver) goes through a pipe to
    stderr, without Ray's native log lines unless `verbose`, so that stdout carries only the summary.
    Python's own sys.stderr writes straight to the real stderr (the progress bar needs its terminal)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    gate = _Gate()
    pump = threading.Thread(target=_pump, args=(read_end, saved_err, verbose, gate), daemon=True,
                            name="stderr-filter")
    pump.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    streams = sys.stdout, sys.stderr
    genuine = sys.stderr is sys.__stderr__  # not a test's capture
    if genuine:
        sys.stderr = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding=streams[1].encoding, errors="replace")
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        if genuine:
            sys.stderr.close()
        sys.stdout, sys.stderr = streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        # The pump ends when the last writer closes its end (Ray's processes have stopped by now). One
        # that outlives the wait (a Ray process still exiting) is silenced: what the caller prints next
        # (the error line) must be the last thing on stderr.
        pump.join(timeout=2)
        gate.close()


class _Gate:
    """The pump's way out to stderr, which the main thread closes once it has done waiting for it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = True

    def write(self, fd: int, data: bytes) -> None:
        with self._lock:
            if self._open:
                os.write(fd, data)

    def close(self) -> None:
        with self._lock:
            self._open = False


def _pump(read_end: int, out_fd: int, verbose: bool, gate: _Gate) -> None:
    tail = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, tail = (tail + chunk).split(b"\n")
            kept = [line for line in lines if verbose or not _RAY_NATIVE_LOG.match(line)]
            if kept:
                gate.write(out_fd, b"\n".join(kept) + b"\n")
    if tail and (verbose or not _RAY_NATIVE_LOG.match(tail)):
        gate.write(out_fd, tail + b"\n")
    gate.close()
    os.close(out_fd)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    _quiet(verbose)
    if args.command == "spec-reference":
        from pipeline.spec import spec_reference

        print(spec_reference())
        return 0
    if args.command == "plan":
        return _plan(args)
    with _stdout_to_stderr(verbose):
        code, result, error = _command(args, verbose)
    # Only now, with Ray stopped and its output drained, so that nothing follows it.
    if error is not None:
        print(error, file=sys.stderr, flush=True)
    if result is not None:
        print(result, flush=True)
    return code


def _plan(args) -> int:
    """Arithmetic only (no Ray, no model): what `plan` prints goes straight to stdout."""
    from pipeline.plan import (PlanError, Workload, default_rates, format_plan, load_summary, model_config, plan,
                               rates_from_summary)
    from pipeline.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec, args.overrides)
        if args.summary:
            summary, where = load_summary(args.summary, spec.storage)
            rates = rates_from_summary(summary, spec, where)
        else:
            rates = default_rates(spec)
        result = plan(spec, Workload(args.tokens, args.hours, args.shards), rates, config=model_config(spec),
                      object_store_gib=args.object_store_gib)
    except (SpecError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def _command(args, verbose: bool) -> tuple[int, str | None, str | None]:
    """(exit code, what goes to stdout, the error line for stderr). The error is returned, not printed:
    the caller prints it after Ray has stopped and the output pump is drained, as the last line."""
    from pipeline.errors import JobError, JobFailed
    from pipeline.job import run
    from pipeline.preflight import validate
    from pipeline.spec import load_spec

    ray_was_up = _ray_up()
    try:
        spec = load_spec(args.spec, args.overrides)
        if args.command == "validate":
            checked, head = validate(spec)
            # What `run` would stop at: another run's live lease (exit 1, as run), or a lease file that is
            # not one (exit 2).
            _check_lease(spec)
            return 0, (f"ok: {spec.model.head} on {head.model_dir}, {len(checked.shards)} input shard(s), "
                       f"output to {spec.output.path}"), None
        summary = run(spec, fresh=args.fresh, limit=args.limit, verbose=verbose, retire=args.retire)
        return 0, _readable_json(summary), None
    except JobError as e:  # mapped by class: 2 for a spec, input, output or model problem, 1 otherwise
        if e.exit_code != 1:
            return e.exit_code, None, f"error: {_one_line(e)}"
        if args.debug:
            raise
        if isinstance(e, JobFailed) and e.summary is not None:
            return 1, _readable_json(e.summary), f"error: {_one_line(e)}"  # the run's progress record
        return _failed(_one_line(e))
    except KeyboardInterrupt:
        return _failed("interrupted: finished shards are kept; rerun the same command to resume", line="")
    except Exception as e:  # noqa: BLE001 - a bug of ours: one line, and how to see more
        if args.debug:
            raise
        return _failed(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)")
    finally:
        if _ray_up() and not ray_was_up:
            # Stop the Ray this command started (or detach from the cluster) while stdout still goes
            # to stderr: its shutdown messages must not follow the summary.
            from pipeline import raycompat

            raycompat.shutdown()


def _one_line(e: BaseException) -> str:
    """An error's sentence on one line: a cause quoted from a library may hold line breaks."""
    return " ".join(str(e).split())


def _failed(sentence: str, line: str = "error: ") -> tuple[int, str, str]:
    """Exit 1 without the run's progress record: stdout still carries a JSON (for `| jq`), stderr the
    sentence as the last line."""
    return 1, _readable_json({"status": "failed", "error": sentence}), line + sentence


def _check_lease(spec) -> None:
    """RunActive when another run holds output.path; InputError for a _LEASE.json that is no lease."""
    from pipeline.lease import refuse_if_held
    from pipeline.output import OutputDir, StorageFailed
    from pipeline.sources import InputError

    try:
        refuse_if_held(OutputDir(spec.output.path, spec.storage))
    except StorageFailed as e:
        raise InputError(f"output.path: {e}") from None


# A list of scalars as json.dumps(indent=2) writes it: one element a line. JSON strings hold no raw
# newline, so ",\n" separates elements.
_SCALAR_LIST = re.compile(r"\[\n\s+([^\[\]{}]*?)\n\s*\]")


def _readable_json(obj) -> str:
    """Indented JSON with lists of numbers (the summary's timeline) on one line each."""
    text = json.dumps(obj, indent=2)
    return _SCALAR_LIST.sub(lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",\n")) + "]", text)


def _ray_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def cli() -> None:
    """The `bert-batch` command and `python -m pipeline`: `main`, then out at once. The work is done and
    written by then (Ray stopped, the summary flushed), and the interpreter's own teardown of torch,
    transformers and Ray's modules took about a second of each run here."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    cli()
