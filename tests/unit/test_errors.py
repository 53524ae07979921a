"""Errors that name the fix: each mistake found before any work is one sentence `field: what is wrong;
what to do`, printed by the CLI as `error: ...` with exit 2. Model paths (hub names without a hub,
relative folders, folders that are no checkpoint), missing S3 credentials on each of model.path,
input.path and output.path, an unwritable output, and spec mistakes pydantic would word its own way."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import yaml

from pipeline.__main__ import main
from pipeline.models import ModelError, resolve_model_dir
from pipeline.spec import SpecError, spec_from_dict
from pipeline.stages import load_head
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADS = "token-classification, embedding, sequence-classification, fill-mask, question-answering"
RAW_PYDANTIC = ("Input should", "Input tag", "Field required", "Extra inputs", "valid dictionary", "Value error",
                "token-classification.", "Repo id must")


@pytest.fixture
def docs(tmp_path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"Document number {i}."}) + "\n" for i in range(3)))
    return path


def write_spec(tmp_path: Path, input_path, model_path, output_path, **storage) -> Path:
    spec = {"input": {"path": str(input_path)}, "model": {"path": str(model_path), "head": "embedding",
                                                          "max_length": 64},
            "output": {"path": str(output_path)}}
    if storage:
        spec["storage"] = storage
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def the_error(capfd) -> str:
    """The one line the CLI printed (fd-level capture: library retry messages would show here too)."""
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0][len("error: "):]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


# -- model.path: hub names ------------------------------------------------------------------------


@pytest.fixture
def hub_online(monkeypatch):
    """Hub offline mode off (conftest turns it on for the session); returns a function pointing the hub
    endpoint at a URL."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return lambda url: monkeypatch.setenv("HF_ENDPOINT", url)


@pytest.fixture
def fake_hub():
    """A real HTTP server standing in for the hub: HEAD answers 200 for the repo `org/there`'s
    config.json and 404 for anything else; records the paths asked for."""
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(200 if self.path == "/org/there/resolve/main/config.json" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_a_hub_name_without_a_reachable_hub_fails_at_once_in_one_sentence(tmp_path, docs, hub_online, capfd):
    hub_online(f"http://127.0.0.1:{free_port()}")  # nothing listens there: refused, as with no network
    spec = write_spec(tmp_path, docs, "bert-base-cased", tmp_path / "out")
    started = time.monotonic()
    assert main(["validate", str(spec)]) == 2
    assert time.monotonic() - started < 5  # transformers alone retries for about a minute
    assert the_error(capfd) == (
        "model.path: 'bert-base-cased' is not a local folder and the model hub (127.0.0.1:"
        f"{os.environ['HF_ENDPOINT'].rsplit(':', 1)[1]}) cannot be reached: give a local folder (./path/to/model) or an "
        "s3:// prefix, or run where the hub is reachable"
    )


def test_a_hub_name_through_the_cli_when_the_hub_host_does_not_resolve(tmp_path, docs):
    spec = write_spec(tmp_path, docs, "bert-base-cased", tmp_path / "out")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://hub.invalid"  # .invalid never resolves (RFC 2606)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(spec)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: model.path: 'bert-base-cased' is not a local folder and the model hub (hub.invalid) cannot be reached: "
        "give a local folder (./path/to/model) or an s3:// prefix, or run where the hub is reachable"
    ]


def test_hf_hub_offline_fails_at_once_without_asking_the_hub(fake_hub, hub_online, monkeypatch):
    url, asked = fake_hub
    hub_online(url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        resolve_model_dir("org/there")
    assert asked == []
    msg = str(info.value)
    assert msg.startswith("model.path: 'org/there' is not a local folder (relative paths are from the directory you "
                          f"run in, {os.getcwd()}) and the model hub is switched off (HF_HUB_OFFLINE)"), msg
    assert msg.endswith("or unset HF_HUB_OFFLINE where the hub is reachable"), msg


def test_a_reachable_hub_keeps_hub_names_working(fake_hub, hub_online):
    url, asked = fake_hub
    hub_online(url)
    assert resolve_model_dir("org/there") == "org/there"  # transformers downloads it
    assert asked == ["/org/there/resolve/main/config.json"]
    with pytest.raises(ModelError, match=r"^model\.path: 'org/gone' is not a local folder .* and the model hub "
                                         r"\(127\.0\.0\.1:\d+\) serves no model by that name to you \(it answered "
                                         r"404\): check the name, set HF_TOKEN"):
        resolve_model_dir("org/gone")


def test_a_hub_model_in_the_hub_cache_runs_without_the_hub(tmp_path, tiny_ner_dir, monkeypatch):
    import huggingface_hub.constants

    # The hub cache's layout: models--org--name/refs/main names the snapshot holding the files.
    repo = tmp_path / "hub" / "models--org--tiny-ner"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(tiny_ner_dir, repo / "snapshots" / "0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    spec = spec_from_dict({"input": {"path": "x.jsonl"}, "model": {"path": "org/tiny-ner", "head": "token-classification"},
                           "output": {"path": str(tmp_path / "out")}})
    head = load_head(spec)
    assert head.ctx.extra["model_dir"] == str(repo / "snapshots" / "0123abcd")


# -- model.path: local folders --------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, tiny_ner_dir, monkeypatch) -> Path:
    """The directory the job runs in, with a checkpoint at jobs/models/demo-ner and one at models/tiny."""
    shutil.copytree(tiny_ner_dir, tmp_path / "jobs" / "models" / "demo-ner")
    shutil.copytree(tiny_ner_dir, tmp_path / "models" / "tiny")
    (tmp_path / "models" / "notes.txt").write_text("not a checkpoint")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def model_error(path: str) -> str:
    with pytest.raises(ModelError) as info:
        resolve_model_dir(path)
    msg = str(info.value)
    assert not any(raw in msg for raw in RAW_PYDANTIC), msg
    return msg


@pytest.mark.parametrize("path", ["models/tiny", "jobs/models/demo-ner", "./models/tiny"])
def test_a_relative_folder_is_used_as_it_is_spelt(workdir, path):
    assert resolve_model_dir(path) == path
    spec = spec_from_dict({"input": {"path": "x.jsonl"}, "model": {"path": path, "head": "token-classification"},
                           "output": {"path": "out"}})
    assert load_head(spec).ctx.config.id2label[1] == "B-PER"  # the checkpoint really loads from there


def test_a_missing_relative_path_says_from_where(workdir):
    here = f"(relative paths are from the directory you run in, {workdir})"
    assert model_error("jobs/models/x") == f"model.path: no folder jobs/models/x {here}; jobs/models holds demo-ner; " \
        "give the folder a checkpoint was saved to (save_pretrained writes config.json, tokenizer.json, model.safetensors)"
    # One slash could be a hub name, but ./models is a folder here: a path.
    assert model_error("models/nope").startswith(f"model.path: no folder models/nope {here}; models holds tiny; ")
    assert model_error("models/tinny") == f"model.path: no folder models/tinny {here}; did you mean models/tiny?"
    assert model_error("jobs/modles/demo-ner") == (f"model.path: no folder jobs/modles/demo-ner {here}; did you mean "
                                                   "jobs/models/demo-ner?")
    shutil.rmtree(workdir / "jobs" / "models" / "demo-ner")
    assert model_error("jobs/models/demo-ner").endswith("; make the demo model with `python -m tools.make_demo_model` "
                                                        "(seconds to minutes on CPU), or fix the path")
    assert model_error("jobs/models/demo-qa").endswith("; make the demo model with `python -m tools.make_demo_model "
                                                       "--head qa` (seconds to minutes on CPU), or fix the path")


def test_a_name_that_no_hub_could_serve_is_a_missing_folder(workdir):
    assert model_error("my model").startswith("model.path: no folder my model (relative paths are from")
    assert model_error("org/na--me").startswith("model.path: no folder org/na--me (")


def test_a_single_slash_name_without_a_folder_tries_the_hub_and_says_both(workdir):
    msg = model_error("org/name")  # HF_HUB_OFFLINE=1 in the tests
    assert msg.startswith(f"model.path: 'org/name' is not a local folder (relative paths are from the directory you "
                          f"run in, {workdir}) and the model hub is switched off"), msg


def test_a_folder_that_is_no_checkpoint(workdir):
    assert model_error("models") == ("model.path: models is a folder but holds no config.json, so it is not a "
                                     "checkpoint; did you mean models/tiny?")
    (workdir / "empty").mkdir()
    assert model_error("empty").startswith("model.path: empty is a folder but holds no config.json, so it is not a "
                                           "checkpoint; give the folder a checkpoint was saved to")
    assert model_error("models/tiny/config.json") == ("model.path: models/tiny/config.json is a file, not a checkpoint "
                                                      "folder; did you mean models/tiny?")


def test_cli_missing_relative_model_folder(tmp_path, docs, workdir, capfd):
    spec = write_spec(tmp_path, docs, "x", tmp_path / "out")
    assert main(["validate", str(spec), "--set", "model.path=jobs/models/x"]) == 2
    assert the_error(capfd).startswith(f"model.path: no folder jobs/models/x (relative paths are from the directory "
                                       f"you run in, {workdir}); jobs/models holds demo-ner")


# -- S3 without credentials -----------------------------------------------------------------------


def remove_aws_credentials(monkeypatch, tmp_path) -> None:
    for key in list(os.environ):
        if key.startswith("AWS_") and key != "AWS_CA_BUNDLE":
            monkeypatch.delenv(key)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait on the instance metadata endpoint
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


CREDENTIALS_FIX = ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or "
                   "run where an instance role provides them")


@pytest.fixture
def uploaded(s3_endpoint, docs) -> str:
    """A prefix under which the buckets `data` and `models` hold a document and a config (uploaded while
    the credentials are still there)."""
    prefix = f"errors-{os.getpid()}-{time.monotonic_ns()}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket="data", Key=f"{prefix}/docs.jsonl", Body=docs.read_bytes())
    client.put_object(Bucket="models", Key=f"{prefix}/config.json", Body=b"{}")
    return prefix


def test_s3_model_path_without_credentials(tmp_path, docs, s3_endpoint, uploaded, monkeypatch, capfd):
    spec = write_spec(tmp_path, docs, f"s3://models/{uploaded}", tmp_path / "out", endpoint_url=s3_endpoint)
    remove_aws_credentials(monkeypatch, tmp_path)
    assert main(["validate", str(spec)]) == 2
    assert the_error(capfd) == f"model.path: cannot list s3://models/{uploaded} ({CREDENTIALS_FIX})"


def test_s3_input_path_without_credentials(tmp_path, minilm_dir, s3_endpoint, uploaded, monkeypatch, capfd):
    spec = write_spec(tmp_path, f"s3://data/{uploaded}/", minilm_dir, tmp_path / "out", endpoint_url=s3_endpoint)
    remove_aws_credentials(monkeypatch, tmp_path)
    assert main(["validate", str(spec)]) == 2
    assert the_error(capfd) == f"input.path: cannot list s3://data/{uploaded}/ ({CREDENTIALS_FIX})"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_s3_output_path_without_credentials(tmp_path, docs, minilm_dir, s3_endpoint, monkeypatch, capfd, command):
    out = f"s3://results/errors-{command}-{time.monotonic_ns()}"
    spec = write_spec(tmp_path, docs, minilm_dir, out, endpoint_url=s3_endpoint)
    remove_aws_credentials(monkeypatch, tmp_path)
    assert main([command, str(spec)]) == 2
    line = the_error(capfd)
    # validate's write probe says "cannot write to", run's lease "cannot read from": both name the fix.
    assert line.startswith("output.path: cannot ") and f" {out}: " in line and line.endswith(CREDENTIALS_FIX), line


# -- an unwritable output -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_output_below_a_file_exits_2_through_the_cli(tmp_path, docs, minilm_dir, command):
    blocker = tmp_path / "afile"  # no folder can be made below a file, not even by root
    blocker.write_text("not a folder")
    spec = write_spec(tmp_path, docs, minilm_dir, blocker / "out")
    proc = cli(command, str(spec))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: output.path: cannot ") and str(blocker / "out") in line, line
    # run checks the output as validate does, before it takes the lease or starts any work
    assert line == (f"error: output.path: cannot write to {blocker / 'out'} ({blocker} is a file, not a folder); "
                    "choose another output.path")
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile", "docs.jsonl", "spec.yaml"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_output_where_no_file_can_be_made_exits_2(tmp_path, docs, minilm_dir, capfd, command):
    # /proc lets root pass os.access, yet nothing can be made there.
    spec = write_spec(tmp_path, docs, minilm_dir, "/proc/no-such-job/out")
    assert main([command, str(spec)]) == 2
    line = the_error(capfd)
    assert line.startswith("output.path: "), line
    if command == "validate":
        assert line == ("output.path: cannot write to /proc/no-such-job/out (/proc is not a writable folder: No such "
                        "file or directory); choose another output.path or make it writable")


def test_validate_leaves_no_probe_file(tmp_path, docs, minilm_dir, capfd):
    spec = write_spec(tmp_path, docs, minilm_dir, tmp_path / "new" / "out")
    assert main(["validate", str(spec)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "spec.yaml"]


# -- spec mistakes ------------------------------------------------------------------------------


BASE = {"input": {"path": "d.jsonl"}, "model": {"path": "m", "head": "token-classification"}, "output": {"path": "o"}}


def spec_error(**sections) -> str:
    data = json.loads(json.dumps(BASE))
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    msg = str(info.value)
    assert msg.startswith("spec: ")
    return msg[len("spec: "):]


def test_a_wrong_head_name_is_one_sentence():
    assert spec_error(model={"head": "ner"}) == (
        f"model.head: 'ner' is not a head; choose one of {HEADS} (did you mean token-classification?)"
    )
    assert spec_error(model={"head": "embeding"}) == (
        f"model.head: 'embeding' is not a head; choose one of {HEADS} (did you mean embedding?)"
    )
    assert spec_error(model={"head": "summarize"}) == f"model.head: 'summarize' is not a head; choose one of {HEADS}"


def test_an_option_of_another_head_on_the_laptop_job(capfd):
    assert main(["validate", str(REPO_ROOT / "jobs" / "laptop.yaml"), "--set", "model.head=embedding"]) == 2
    assert the_error(capfd) == (
        f"{REPO_ROOT / 'jobs' / 'laptop.yaml'}: head.aggregation_strategy: an option of the token-classification head, "
        "not of embedding (embedding takes pooling, normalize, layer, long_document); remove it or change model.head"
    )


def test_head_options_several_heads_have_and_none_has():
    assert spec_error(head={"top_k": 3}) == (
        "head.top_k: an option of the sequence-classification, fill-mask and question-answering heads, not of "
        "token-classification (token-classification takes aggregation_strategy, ignore_labels); remove it or change "
        "model.head"
    )
    assert spec_error(head={"aggregation": "first"}) == (
        "head.aggregation: unknown key; did you mean head.aggregation_strategy? (token-classification takes "
        "aggregation_strategy, ignore_labels)"
    )
    assert spec_error(head={"frobnicate": 1}) == (
        "head.frobnicate: unknown key; token-classification takes aggregation_strategy, ignore_labels"
    )


@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"model": {"hed": "embedding"}}, "model.hed: unknown key; did you mean model.head?"),
        ({"resources": {"gpus": 1}}, "resources.gpus: unknown key; did you mean resources.gpus_per_actor?"),
        ({"outputs": {}}, "outputs: unknown key; did you mean output?"),
        ({"output": {"endpoint_url": "x"}}, "output.endpoint_url: unknown key here; did you mean storage.endpoint_url?"),
        ({"model": {"dtype": "float"}}, "model.dtype: 'float' is not a choice; choose one of auto, float32, bfloat16, "
                                        "float16 (did you mean float32?)"),
        ({"model": {"dtype": "double"}}, "model.dtype: 'double' is not a choice; choose one of auto, float32, "
                                         "bfloat16, float16"),
        ({"head": {"aggregation_strategy": "frist"}},
         "head.aggregation_strategy: 'frist' is not a choice; choose one of none, simple, first, average, max "
         "(did you mean first?)"),
        ({"input": {"format": "csv"}}, "input.format: 'csv' is not a choice; choose one of parquet, jsonl"),
        ({"model": {"max_length": 4}}, "model.max_length: 4 is too small; use at least 8"),
        ({"output": {"max_error_fraction": 2}}, "output.max_error_fraction: 2 is too large; use at most 1.0"),
        ({"model": {"max_length": "long"}}, "model.max_length: 'long' is not a whole number; give an integer"),
        ({"model": {"allow_pickle": "maybe"}}, "model.allow_pickle: 'maybe' is not true or false; give true or false"),
        ({"output": {"columns": "url"}}, "output.columns: 'url' is not a list; give a list, e.g. [a, b]"),
        ({"output": {"columns": [1]}}, "output.columns[0]: 1 is not text; quote it in the YAML ('1')"),
        ({"model": {"path": None}}, "model.path: has no value; add it (Checkpoint: a local directory, an `s3://` "
                                    "prefix (copied once per node to a local cache), or a model-hub name where a hub "
                                    "is reachable)"),
        ({"input": "d.jsonl"}, "input: 'd.jsonl' is not a section; write its keys (path, format, id_column, "
                               "text_column, text_pair_column, question_column, context_column, split_mb, verify) indented under input:"),
        ({"model": {"path": "m"}}, f"model.head: required key is missing; add it (one of {HEADS})"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_spec_errors_read_as_field_wrong_and_what_to_do(sections, expected):
    if sections == {"model": {"path": "m"}}:
        data = {**BASE, "model": {"path": "m"}, "head": {"top_k": 2}}  # the head union error is not repeated
        with pytest.raises(SpecError) as info:
            spec_from_dict(data)
        msg = str(info.value)[len("spec: "):]
    else:
        msg = spec_error(**sections)
    assert msg == expected
    assert not any(raw in msg for raw in RAW_PYDANTIC), msg


def test_several_mistakes_are_separate_sentences():
    assert spec_error(model={"hed": 1, "max_length": 4}, output={"granularty": "token"}) == (
        "model.max_length: 4 is too small; use at least 8. model.hed: unknown key; did you mean model.head? "
        "output.granularty: unknown key; did you mean output.granularity?"
    )
