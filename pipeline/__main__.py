"""CLI: `python -m pipeline run SPEC.yaml [--set key=value ...] [--fresh]`, `validate`, `spec-reference`.

Exit codes: 0 complete; 1 the job did not finish (some shards not done: a rerun resumes them);
2 a bad spec, input or model found before any work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the job"), ("validate", "check spec, input and model without running")):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("spec", help="job spec (YAML)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec key, e.g. --set output.path=s3://bucket/out (YAML scalar values)")
        s.add_argument("--debug", action="store_true", help="show full tracebacks")
        if name == "run":
            s.add_argument("--fresh", action="store_true",
                           help="redo every shard instead of resuming (removes only files this job wrote)")
    sub.add_parser("spec-reference", help="print the spec reference (Markdown)")
    return p


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet()
    from pipeline.job import JobFailed, run, validate
    from pipeline.lease import RunActive
    from pipeline.markers import FingerprintMismatch
    from pipeline.models import ModelError
    from pipeline.sources import InputError
    from pipeline.spec import SpecError, load_spec, spec_reference

    if args.command == "spec-reference":
        print(spec_reference())
        return 0
    try:
        spec = load_spec(args.spec, args.overrides)
        if args.command == "validate":
            facts = validate(spec)
            print(f"ok: {spec.model.head} on {facts['model_dir']}, {len(facts['shards'])} input shard(s), "
                  f"output to {spec.output.path}")
            return 0
        summary = run(spec, fresh=args.fresh)
    except (SpecError, InputError, ModelError, FingerprintMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (JobFailed, RunActive) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug of ours: one line, and how to see more
        if args.debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
