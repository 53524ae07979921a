"""The CLI: exit codes (0 ok, 2 invalid spec / input / model, nothing written) and one-line errors without
tracebacks. Two cases run `python -m pipeline` in a subprocess exactly as users do; the rest call
`pipeline.__main__.main` in-process (faster). None of these start Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.__main__ import main  # noqa: E402


@pytest.fixture
def docs(tmp_path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"Document number {i}."}) + "\n" for i in range(3)))
    return path


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def embedding_spec(docs: Path, model_dir: str, out: Path, **model) -> dict:
    return {
        "input": {"path": str(docs)},
        "model": {"path": model_dir, "head": "embedding", "max_length": 64, **model},
        "output": {"path": str(out)},
    }


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- subprocess: as users run it -------------------------------------------------------------------


def test_subprocess_bad_spec_exits_2_with_one_line(tmp_path, docs):
    spec = write_spec(tmp_path, {"input": {"path": str(docs)}, "model": {"path": "m", "head": "token-classification",
                                                                         "hed": 1}, "output": {"path": "o"}})
    proc = cli("validate", str(spec))
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "model.hed" in line and "unknown key" in line
    assert proc.stdout == ""


def test_subprocess_good_spec_validates(tmp_path, docs, minilm_dir):
    spec = write_spec(tmp_path, embedding_spec(docs, minilm_dir, tmp_path / "out"))
    proc = cli("validate", str(spec), "--set", "head.pooling=cls")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: embedding on "), proc.stdout
    assert "1 input shard(s)" in proc.stdout
    assert not (tmp_path / "out").exists()  # validate writes nothing


def test_subprocess_plan_sizes_a_cluster_from_a_summary_file(tmp_path, docs):
    # The rates of a run: 100 tokens a document, one model actor does 1 M tokens/s, the CPU stages far more.
    stages = {name: {"rows": 1000, "tokens": 100_000, "busy_seconds": 0.01, "rows_per_second": 100_000.0,
                     "tokens_per_second": 10_000_000.0} for name in ("read", "tokenize", "postprocess", "write")}
    stages["predict"] = {"rows": 1000, "tokens": 100_000, "busy_seconds": 0.1, "tokens_per_second": 1_000_000.0}
    (tmp_path / "run").mkdir()
    summary = tmp_path / "run" / "_SUMMARY.json"
    summary.write_text(json.dumps({"rows_read": 1000, "rows_written": 1000, "output_rows": 1000, "tokens": 100_000,
                                   "shards": 1, "stages": stages}))
    spec = write_spec(tmp_path, {"input": {"path": str(docs)}, "model": {"path": "m", "head": "token-classification"},
                                 "output": {"path": str(tmp_path / "out")}})
    # 3.6e10 tokens in 2 h = 5 M tokens/s: 5 model actors, one GPU each.
    proc = cli("plan", str(spec), "--tokens", "36G", "--hours", "2", "--from", str(summary),
               "--set", "resources.gpus_per_actor=1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("36,000,000,000 tokens in 2 h: 5,000,000 tokens/s "), proc.stdout
    assert "5 model actor(s), 5 GPU(s)" in proc.stdout
    assert "first limit: GPUs; done in 2 h with the cores and model actors above" in proc.stdout
    assert not (tmp_path / "out").exists()  # a plan is arithmetic: nothing runs, nothing is written


# -- in-process -----------------------------------------------------------------------------------


def test_validate_good_spec(tmp_path, docs, minilm_dir, capsys):
    spec = write_spec(tmp_path, embedding_spec(docs, minilm_dir, tmp_path / "out"))
    assert main(["validate", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: embedding on ") and str(tmp_path / "out") in out


@pytest.mark.parametrize("command", ["validate", "run"])
def test_missing_input_exits_2_naming_the_path(tmp_path, minilm_dir, capsys, command):
    missing = tmp_path / "nowhere" / "*.jsonl"
    spec = write_spec(tmp_path, embedding_spec(missing, minilm_dir, tmp_path / "out"))
    assert main([command, str(spec)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "input.path" in line and str(missing) in line
    assert not (tmp_path / "out").exists()  # nothing written


def test_checkpoint_without_the_head_is_refused(tmp_path, docs, minilm_dir, capsys):
    # MiniLM is an encoder without a token-classification head: it would run with random weights.
    spec = write_spec(tmp_path, {**embedding_spec(docs, minilm_dir, tmp_path / "out"),
                                 "model": {"path": minilm_dir, "head": "token-classification"}})
    assert main(["validate", str(spec)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "random" in line and "model.allow_random_head" in line and "classifier" in line

    assert main(["validate", str(spec), "--set", "model.allow_random_head=true"]) == 0
    assert capsys.readouterr().out.startswith("ok: token-classification on ")


def test_model_directory_that_does_not_exist(tmp_path, docs, capsys):
    spec = write_spec(tmp_path, embedding_spec(docs, str(tmp_path / "no-model"), tmp_path / "out"))
    assert main(["validate", str(spec)]) == 2
    assert "model.path" in one_line_error(capsys.readouterr().err)


def test_bad_spec_on_run_exits_2_and_writes_nothing(tmp_path, docs, capsys):
    spec = write_spec(tmp_path, {"input": {"path": str(docs)}, "model": {"path": "m", "head": "embedding"},
                                 "head": {"aggregation_strategy": "simple"}, "output": {"path": str(tmp_path / "out")}})
    assert main(["run", str(spec)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "head.aggregation_strategy" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.max_length=4", "model.max_length"),
        ("model.stride=64", "model.stride"),
        ("output.granularity=sentence", "output.granularity"),
        ("model.pth=x", "model.pth: unknown key"),
        ("model.max_length", "expected key.path=value"),
        ("model.path.x=1", "path is not a section"),
    ],
)
def test_bad_overrides_exit_2(tmp_path, docs, minilm_dir, capsys, override, expected):
    spec = write_spec(tmp_path, embedding_spec(docs, minilm_dir, tmp_path / "out"))
    assert main(["validate", str(spec), "--set", override]) == 2
    assert expected in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content, expected",
    [(None, "cannot read the spec"), ("input: [1\n", "not valid YAML"), ("just text\n", "must be a mapping")],
    ids=["missing-file", "invalid-yaml", "not-a-mapping"],
)
def test_unreadable_spec_files_exit_2(tmp_path, capsys, content, expected):
    path = tmp_path / "spec.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    first = err.splitlines()[0]
    assert expected in first and "spec.yaml" in first


def test_invalid_yaml_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("input: [1\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "line 2" in err or "line 1" in err  # where the mistake is


def test_embeddings_job_as_documented(tmp_path, docs, minilm_dir, capsys):
    # jobs/embeddings.yaml takes the shipped checkpoint's directory through --set model.path=...
    spec = REPO_ROOT / "jobs" / "embeddings.yaml"
    assert main(["validate", str(spec), "--set", f"input.path={docs}", "--set", f"model.path={minilm_dir}"]) == 0
    assert capsys.readouterr().out.startswith("ok: embedding on ")
    # Without it, the placeholder is reported as a model path that cannot be loaded.
    assert main(["validate", str(spec), "--set", f"input.path={docs}"]) == 2
    assert "model.path" in one_line_error(capsys.readouterr().err)


def test_nightly_job_without_dates_is_refused(capsys, s3_endpoint):
    # Against the local S3 (moto), so the test never reaches AWS.
    spec = REPO_ROOT / "jobs" / "nightly_tagging.yaml"
    assert main(["validate", str(spec), "--set", f"storage.endpoint_url={s3_endpoint}"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "input.path" in line and "YYYY-MM-DD" in line


def test_laptop_job_validates_on_a_freshly_made_demo_model(tmp_path, capsys):
    # The README's road: tools.make_demo_model saves a token-classification checkpoint that the laptop
    # spec accepts (a few training steps here; the real run trains for minutes).
    from tools.make_demo_model import main as make_demo_model

    model = tmp_path / "demo-ner"
    assert make_demo_model(["--out", str(model), "--steps", "3", "--eval-sentences", "20"]) == 0
    assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the spec's paths are relative to the repository root
    try:
        assert main(["validate", "jobs/laptop.yaml", "--set", f"model.path={model}"]) == 0
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out.startswith("ok: token-classification on ")


def test_the_demo_model_is_saved_where_the_laptop_spec_reads_it():
    # The README's quick start runs tools.make_demo_model with no arguments, then jobs/laptop.yaml.
    from pipeline.spec import load_spec
    from tools.make_demo_model import DEFAULT_OUT

    spec = load_spec(REPO_ROOT / "jobs" / "laptop.yaml")
    assert DEFAULT_OUT == (REPO_ROOT / spec.model.path).resolve()


def test_spec_reference(capsys):
    assert main(["spec-reference"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| key | default | meaning |") and "`model.max_length`" in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_text_column_the_input_lacks_exits_2_before_any_work(tmp_path, docs, minilm_dir, capsys, command):
    spec = write_spec(tmp_path, embedding_spec(docs, minilm_dir, tmp_path / "out"))
    assert main([command, str(spec), "--set", "input.text_column=body"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == "error: input.text_column: column 'body' not in docs.jsonl (it has: id, text)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_an_output_path_overlapping_the_input_exits_2(tmp_path, docs, minilm_dir, capsys, where):
    out = {"same": docs.parent, "inside": docs.parent / "results", "containing": docs.parent.parent}[where]
    spec = write_spec(tmp_path, embedding_spec(docs.parent, minilm_dir, out))
    assert main(["run", str(spec)]) == 2
    assert "output.path" in one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in docs.parent.iterdir()) == ["docs.jsonl", "spec.yaml"]


def test_an_unwritable_output_exits_2_on_validate(tmp_path, docs, minilm_dir, capsys):
    blocker = tmp_path / "a-file"  # a folder cannot be made below a file, whoever runs the test
    blocker.write_text("not a folder")
    spec = write_spec(tmp_path, embedding_spec(docs, minilm_dir, blocker / "out"))
    assert main(["validate", str(spec)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: output.path: cannot write to {blocker / 'out'} (") and "a-file" in line


# -- help, version ----------------------------------------------------------------------------------


def test_version(capsys):
    from pipeline import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"python -m pipeline {__version__}"
    assert __version__[0].isdigit() and __version__ != "0.0.0+unknown"  # the installed package's version


def test_help_has_examples_and_exit_codes(capsys):
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "examples:" in out and "python -m pipeline run jobs/laptop.yaml" in out
        assert "exit codes:" in out and "\n  0  complete" in out and "\n  1  not finished" in out and "\n  2  a bad" in out
    assert "--limit N" in out and "--verbose" in out and "--fresh" in out


def test_the_command_stops_its_ray_without_waiting_on_the_autoscaler_monitor():
    """raycompat.shutdown kills the monitor before ray.shutdown, which would SIGTERM it after stopping the GCS and
    wait out its second of grace; then every process of that Ray is gone."""
    script = textwrap.dedent("""
        import json, os, ray
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        node = ray._private.worker._global_node
        (monitor,) = node.all_processes["monitor"]
        processes = [i.process for infos in node.all_processes.values() for i in infos]
        at_shutdown, shutdown = [], ray.shutdown
        ray.shutdown = lambda: (at_shutdown.append(monitor.process.poll()), shutdown())
        from pipeline import raycompat
        raycompat.shutdown()
        print(json.dumps({"monitor_at_shutdown": at_shutdown, "up": ray.is_initialized(),
                          "alive": [p.args[0] for p in processes if p.poll() is None]}))
    """)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"monitor_at_shutdown": [-9], "up": False, "alive": []}


def test_console_script_calls_itself_bert_batch():
    script = Path(sys.executable).parent / "bert-batch"
    assert script.exists(), "the project is installed with its console script"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: bert-batch ")
    assert "bert-batch run jobs/laptop.yaml" in proc.stdout and "python -m pipeline" not in proc.stdout


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_limit_must_be_a_positive_number(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "spec.yaml", "--limit", value])
    assert exit_.value.code == 2
    assert "--limit" in capsys.readouterr().err


def test_summary_json_is_readable_and_round_trips():
    from pipeline.__main__ import _readable_json

    summary = {"timeline": {"rows": {"read": [0, 120, 80], "write": []}}, "top_errors": {"a, b": 2},
               "done": ["x,\ny", "[z]", "p, q"], "nested": [[1, 2], {"k": [3]}], "n": None}
    text = _readable_json(summary)
    assert json.loads(text) == summary
    assert '"read": [0, 120, 80]' in text and '"k": [3]' in text


@pytest.mark.parametrize("text, tokens", [("2e9", 2e9), ("2_000_000_000", 2e9), ("500M", 5e8), ("1.5B", 1.5e9),
                                          ("20k", 2e4)])
def test_plan_reads_token_counts_as_people_write_them(text, tokens, monkeypatch):
    import pipeline.__main__ as cli_module

    seen = {}

    def plan_of(args):  # the parsed arguments only: the arithmetic has its own tests (test_plan.py)
        seen["tokens"] = args.tokens
        return 0

    monkeypatch.setattr(cli_module, "_plan", plan_of)
    assert main(["plan", "spec.yaml", "--tokens", text, "--hours", "1"]) == 0
    assert seen["tokens"] == tokens


@pytest.mark.parametrize("value", ["0", "-1", "lots", "inf"])
def test_plan_hours_must_be_a_positive_number(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "spec.yaml", "--tokens", "1e9", "--hours", value])
    assert exit_.value.code == 2
    assert "--hours" in capsys.readouterr().err
