"""One error hierarchy (`pipeline.errors`): every error the CLI reports carries its exit code, 2 for a spec,
input, output or model problem found before any work and 1 for a run that did not finish, and the CLI
maps errors by class. A walk of `pipeline/` keeps user-facing problems off bare builtin exceptions,
which would reach the CLI as "unexpected ValueError" and exit 1. On exit 1 stdout still carries a JSON."""

from __future__ import annotations

import ast
import builtins
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.errors import JobError, JobFailed, ModelError, SpecError, UserError  # noqa: E402

# -- no bare builtin for a user-facing problem -------------------------------------------------------

BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}
VALIDATORS = {"field_validator", "model_validator"}  # pydantic needs ValueError there

# (file, enclosing function, exception) -> why a builtin is right there. Internal invariants and
# protocols only: nothing here can be caused by a spec, an input, an output or a model.
ALLOWED = {
    ("pipeline/__init__.py", "__getattr__", "AttributeError"):
        "a module __getattr__ must raise AttributeError (the import protocol)",
    ("pipeline/windows.py", "best_window_positions", "AssertionError"):
        "'windows do not cover every token': an invariant of the window arithmetic",
    ("pipeline/heads/options.py", "QuestionAnsweringHead.check", "ValueError"):
        "HeadOptions.check runs inside JobSpec's model_validator: pydantic turns the ValueError into the "
        "spec's one-sentence error",
    **{("pipeline/heads/base.py", f"Head.{method}", "NotImplementedError"): "an abstract method each head overrides"
       for method in ("encode_batch", "forward", "output_schema", "postprocess")},
    ("pipeline/heads/__init__.py", "HeadEntry.__post_init__", "ValueError"):
        "the head registry checks its own entries at import: a programming error, not a user's",
    ("pipeline/heads/sequence_classification.py", "apply_function", "ValueError"):
        "head.function_to_apply is a Literal the spec has validated; another value is a bug",
    ("pipeline/aggregation.py", "Aggregation.__post_init__", "ValueError"):
        "head.aggregation_strategy is a Literal the spec has validated; another value is a bug",
    ("pipeline/batching.py", "_array", "ValueError"):
        "a caller's reused buffer too small for a micro-batch: a bug of the caller",
    ("pipeline/heads/question_answering.py", "_token_to_word", "OverflowError"):
        "transformers' pipeline control flow, ported as is: caught in _indices",
    ("pipeline/heads/question_answering.py", "_indices", "TypeError"):
        "transformers' pipeline control flow, ported as is: caught in the same function",
}


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return exc.id if isinstance(exc, ast.Name) else None


def _is_validator(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in func.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name in VALIDATORS:
            return True
    return False


def bare_builtin_raises(root: Path = REPO_ROOT / "pipeline") -> list[tuple[str, str, str, int]]:
    """(file, enclosing qualified name, exception, line) of every `raise` of a builtin exception class
    outside a pydantic validator."""
    found = []

    def visit(node: ast.AST, path: str, scope: list[str], in_validator: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, path, [*scope, child.name], in_validator or _is_validator(child))
            elif isinstance(child, ast.ClassDef):
                visit(child, path, [*scope, child.name], in_validator)
            else:
                if isinstance(child, ast.Raise) and child.exc is not None and not in_validator:
                    name = _raised_name(child)
                    if name in BUILTIN_EXCEPTIONS:
                        found.append((path, ".".join(scope), name, child.lineno))
                visit(child, path, scope, in_validator)

    for file in sorted(root.rglob("*.py")):
        visit(ast.parse(file.read_text(), str(file)), file.relative_to(root.parent).as_posix(), [], False)
    return found


def test_no_bare_builtin_is_raised_for_a_user_facing_problem():
    offenders = [f"{path}:{line} {scope}: raise {name}" for path, scope, name, line in bare_builtin_raises()
                 if (path, scope, name) not in ALLOWED]
    assert not offenders, ("raise a pipeline.errors class (SpecError, ModelError, InputError, JobFailed, ...) for a "
                           "problem a user can cause, or add the internal invariant to ALLOWED with its reason:\n"
                           + "\n".join(offenders))


def test_the_allowlist_holds_no_stale_entries():
    present = {(path, scope, name) for path, scope, name, _ in bare_builtin_raises()}
    assert not set(ALLOWED) - present, set(ALLOWED) - present


def test_the_walk_finds_a_bare_raise_and_spares_validators(tmp_path):
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "m.py").write_text(
        "from pydantic import field_validator\n"
        "class A:\n"
        "    @field_validator('x')\n"
        "    def v(cls, x):\n"
        "        raise ValueError('pydantic wants this')\n"
        "    def f(self):\n"
        "        raise ValueError('a user problem')\n"
        "def g():\n"
        "    raise SpecError('fine')\n"
    )
    assert bare_builtin_raises(tmp_path / "pipeline") == [("pipeline/m.py", "A.f", "ValueError", 7)]


# -- the classes carry their exit codes ----------------------------------------------------------------


def _user_errors():
    from pipeline.markers import FingerprintMismatch, MarkerInvalid, VanishedShards
    from pipeline.plan import PlanError
    from pipeline.sources import InputError

    return [SpecError, ModelError, InputError, PlanError, FingerprintMismatch, MarkerInvalid, VanishedShards]


def test_user_facing_errors_exit_2_and_stay_value_errors():
    import pipeline.models
    import pipeline.spec

    assert pipeline.spec.SpecError is SpecError and pipeline.models.ModelError is ModelError  # imported from there
    for cls in _user_errors():
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
        assert cls.exit_code == 2 and cls("x").exit_code == 2, cls


def test_a_run_that_did_not_finish_exits_1():
    from pipeline.lease import RunActive

    assert JobError.exit_code == 1
    assert issubclass(JobFailed, JobError) and issubclass(JobFailed, RuntimeError) and JobFailed.exit_code == 1
    assert issubclass(RunActive, JobError) and RunActive.exit_code == 1 and not issubclass(RunActive, UserError)
    assert JobFailed("stopped").summary is None
    failed = JobFailed("stopped", summary={"status": "incomplete"})
    assert failed.summary == {"status": "incomplete"} and str(failed) == "stopped"


def test_internal_errors_stay_outside_the_hierarchy():
    # Caught inside the job and turned into error rows or sentences: never what the CLI maps.
    from pipeline.heads.base import RowError
    from pipeline.output import StorageFailed
    from pipeline.sinks import ShardIncomplete
    from pipeline.sources import ShardUnreadable

    for cls in (RowError, StorageFailed, ShardIncomplete, ShardUnreadable):
        assert not issubclass(cls, JobError), cls


def test_the_errors_module_imports_nothing_of_the_job():
    tree = ast.parse((REPO_ROOT / "pipeline" / "errors.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_fill_mask_does_not_import_the_spec_module():
    tree = ast.parse((REPO_ROOT / "pipeline" / "heads" / "fill_mask.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "pipeline.spec" not in modules


# -- the CLI maps by class -----------------------------------------------------------------------------


def _write_spec(tmp_path: Path, model_path: str, head: str = "embedding", out: Path | None = None) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "text": f"Document {i} [MASK]."}) + "\n" for i in range(3)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": {"path": str(docs)},
                                    "model": {"path": model_path, "head": head, "max_length": 64},
                                    "output": {"path": str(out or tmp_path / "out")}}))
    return spec


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def _failing(monkeypatch, error: BaseException) -> None:
    """The command's first step (reading the spec, for run and validate alike) raises `error`."""
    import pipeline.spec

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline.spec, "load_spec", fail)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_each_user_error_exits_2_with_nothing_on_stdout(tmp_path, monkeypatch, capsys, command):
    from pipeline.__main__ import main

    spec = _write_spec(tmp_path, "m")
    for cls in _user_errors():
        _failing(monkeypatch, cls(f"{cls.__name__}: what to do"))
        assert main([command, str(spec), "--debug"]) == 2, cls  # --debug re-raises only exit 1
        captured = capsys.readouterr()
        assert captured.out == "", cls
        assert _error_line(captured.err) == f"error: {cls.__name__}: what to do"


def test_exit_1_prints_the_run_record_on_stdout(tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main

    spec = _write_spec(tmp_path, "m")
    record = {"status": "incomplete", "shards": 2, "shards_done": 1, "timeline": [1, 2, 3]}
    _failing(monkeypatch, JobFailed("1 of 2 shard(s) did not finish", summary=record))
    assert main(["run", str(spec)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == record
    assert "[1, 2, 3]" in captured.out  # as the summary of a finished run reads
    assert _error_line(captured.err) == "error: 1 of 2 shard(s) did not finish"


@pytest.mark.parametrize("error, sentence", [
    (JobFailed("the job stopped: boom"), "the job stopped: boom"),
    (JobError("another run holds it"), "another run holds it"),
    (OSError("disk on fire"), "unexpected OSError: disk on fire (rerun with --debug for the traceback)"),
])
def test_exit_1_without_a_record_prints_a_failed_status(tmp_path, monkeypatch, capsys, error, sentence):
    from pipeline.__main__ import main

    _failing(monkeypatch, error)
    assert main(["run", str(_write_spec(tmp_path, "m"))]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"status": "failed", "error": sentence}
    assert _error_line(captured.err) == f"error: {sentence}"


def test_debug_reraises_exit_1_errors(tmp_path, monkeypatch):
    from pipeline.__main__ import main

    _failing(monkeypatch, JobFailed("the job stopped: boom"))
    with pytest.raises(JobFailed):
        main(["run", str(_write_spec(tmp_path, "m")), "--debug"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def test_cli_validate_maps_a_spec_problem_to_2_and_a_live_lease_to_1(tmp_path, minilm_dir):
    from pipeline.output import LEASE

    spec = _write_spec(tmp_path, minilm_dir)
    proc = _cli("validate", str(spec), "--set", "model.max_length=4")  # SpecError
    assert proc.returncode == 2, proc.stderr
    assert "model.max_length" in _error_line(proc.stderr) and proc.stdout == ""

    out = tmp_path / "out"  # another run's live lease: RunActive, a JobError of exit 1
    out.mkdir()
    (out / LEASE).write_text(json.dumps({"run_id": "other", "host": "another-host", "pid": 1,
                                         "heartbeat": time.time(), "timeout_seconds": 600.0}))
    proc = _cli("validate", str(spec))
    assert proc.returncode == 1, proc.stderr
    line = _error_line(proc.stderr)
    assert line.startswith("error: output.path: another run (other on another-host, pid 1) is writing ")
    assert json.loads(proc.stdout) == {"status": "failed", "error": line.removeprefix("error: ")}


def test_fill_mask_on_a_tokenizer_without_a_mask_token_exits_2(tmp_path, capsys):
    # Before: a bare ValueError from the head, "unexpected ValueError" and exit 1.
    from pipeline.__main__ import main
    from tests.models import build_bert

    model = tmp_path / "no-mask"
    build_bert(model, "masked-lm")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["mask_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    capsys.readouterr()  # the builder's own output
    assert main(["validate", str(_write_spec(tmp_path, str(model), head="fill-mask"))]) == 2
    captured = capsys.readouterr()
    line = _error_line(captured.err)
    assert line.startswith("error: model.path: the tokenizer of ") and "defines no mask token" in line, line
    assert captured.out == "" and not (tmp_path / "out").exists()
