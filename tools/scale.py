"""Per-shard cost: the same rows cut into more and more shards, run by the real CLI on a near-free model
(BERT, 1 layer, hidden 32: tools.bench.build_null_model), so what grows is the job's own bookkeeping.

    python -m tools.scale [--docs 8000] [--shards 1,64,512,4096] [--s3] [--tree DIR] [--steady]
    python -m tools.scale --soak --docs 1000000 --shards 1000

For each shard count it runs `python -m pipeline run` on a spec with no `resources` (the job's local
defaults) and then the same command again (the no-op rerun: every shard done), and prints:
- wall time of the run and of the no-op rerun, each timed from the process's start to its exit;
- the cost per extra shard: (wall - wall of the first count) / (shards - first count's shards);
- peak RSS of the driver and of the ledger actor (Ray's `ray::ReadLedger` process), sampled from /proc
  every 0.2 s;
- the object store's peak use, read as the raylet's shared resident memory (the plasma pages it has
  touched: an upper estimate) and the bytes spilled to disk (Ray's `ray_spilled_objects` folders);
- with `--s3`: input and output on moto's S3 server behind tests.s3faults' proxy (no faults), and the
  requests of the run and of the rerun per shard, by verb (LIST, HEAD, GET, PUT, DELETE, POST).

`--tree DIR` runs the CLI of another checkout (e.g. `git worktree add /tmp/before <commit>`), for a
before/after table from one machine. `--steady` prints the data plane's steady-state rate instead: the
marginal tokens/s between one shard of `--docs` and one of 4x as many documents (start-up cancels out),
per core of this machine: the ceiling the CPU stages put on any accelerator (pipeline.plan uses it).
`--soak` runs `--docs` documents in one count of `--shards`, killing the driver (SIGKILL) once half the
shards have markers and running the same command again: it prints the driver's RSS after the first
10% of shards and at the end of each run, the peak spilled bytes, and whether the rerun finished the
rest (every row read once, `_SUCCESS`).

The machine is shared and noisy: compare the figures of one run of the tool with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.2
VERBS = ("LIST", "HEAD", "GET", "PUT", "DELETE", "POST")


def write_shards(texts: list[str], shards: int, folder: Path) -> None:
    """`texts` cut into `shards` JSONL files of consecutive documents, sizes differing by one at most."""
    folder.mkdir(parents=True, exist_ok=True)
    per, extra = divmod(len(texts), shards)
    start = 0
    for s in range(shards):
        n = per + (s < extra)
        lines = (json.dumps({"id": f"{s}-{i}", "text": t}) for i, t in enumerate(texts[start:start + n]))
        (folder / f"part-{s:05d}.jsonl").write_text("\n".join(lines) + "\n")
        start += n


class PeakSampler:
    """Peak RSS of the driver and of the ledger actor, the raylet's shared memory and the spilled bytes,
    sampled from /proc while a run lasts."""

    def __init__(self, driver_pid: int):
        self.driver_pid = driver_pid
        self.peaks = {"driver_mib": 0.0, "ledger_mib": 0.0, "store_mib": 0.0, "spilled_mib": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._keep("driver_mib", _status_mib(self.driver_pid, "VmRSS"))
            for pid, title in _processes():
                if title.startswith("ray::ReadLedger"):
                    self._keep("ledger_mib", _status_mib(pid, "VmRSS"))
                elif "raylet" in title.split(" ")[0]:
                    self._keep("store_mib", _status_mib(pid, "RssShmem"))
            self._keep("spilled_mib", _spilled_bytes() / 2**20)

    def _keep(self, name: str, value: float) -> None:
        self.peaks[name] = max(self.peaks[name], value)


def _processes():
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            yield int(entry.name), title


def _status_mib(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _spilled_bytes() -> int:
    total = 0
    for folder in Path(tempfile.gettempdir(), "ray").glob("**/ray_spilled_objects*"):
        total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def run_cli(spec: Path, env: dict, tree: Path = REPO_ROOT) -> tuple[float, int, dict, dict]:
    """One `python -m pipeline run` of `tree`'s pipeline: wall seconds, exit status, peaks, summary."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec)], cwd=tree,
                            env={**env, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    with PeakSampler(proc.pid) as sampler:
        out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"  exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else out[-300:]}",
              file=sys.stderr)
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = {}
    return wall, proc.returncode, sampler.peaks, summary


def _spec(work: Path, model: str, where: dict, shards: int) -> Path:
    spec = {"input": {"path": where["input"].format(shards=shards)},
            "model": {"path": model, "head": "token-classification", "max_length": 128},
            "output": {"path": where["output"].format(shards=shards)}}
    if "endpoint" in where:
        spec["storage"] = {"endpoint_url": where["endpoint"]}
    path = work / f"spec-{shards}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _s3(work: Path, texts: list[str], counts: list[int]):
    """moto's server behind the proxy, with the shards uploaded: (proxy, server, where)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from tests.cluster import free_port
    from tests.s3faults import FaultyS3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    for bucket in ("data", "results"):
        client.create_bucket(Bucket=bucket)
    for n in counts:
        folder = work / f"in-{n}"
        write_shards(texts, n, folder)
        for f in sorted(folder.iterdir()):
            client.upload_file(str(f), "data", f"scale/{n}/{f.name}")
    proxy = FaultyS3(url).start()
    where = {"input": "s3://data/scale/{shards}/", "output": "s3://results/scale/{shards}/", "endpoint": proxy.url}
    return proxy, server, where


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=8000)
    parser.add_argument("--shards", default="1,64,512,4096", help="comma-separated shard counts")
    parser.add_argument("--s3", action="store_true", help="input and output on moto's S3, requests counted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="the checkout whose pipeline runs")
    parser.add_argument("--steady", action="store_true", help="the data plane's steady-state rate per core")
    parser.add_argument("--soak", action="store_true", help="one large run, killed half-way and resumed")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.shards.split(",")]
    if args.steady:
        print(steady_rate(args.docs, args.seed, args.tree))
        return
    if args.soak:
        print(soak(args.docs, counts[0], args.seed, args.tree))
        return

    from tools.bench import build_null_model
    from tools.corpus import documents

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = documents(args.docs, seed=args.seed, long_tail=False)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, as on a laptop
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = Path(tmp)
        model = build_null_model(work / "model")
        proxy = server = None
        if args.s3:
            env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
            os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
            proxy, server, where = _s3(work, texts, counts)
        else:
            where = {"input": str(work / "in-{shards}"), "output": str(work / "out-{shards}")}
            for n in counts:
                write_shards(texts, n, work / f"in-{n}")
        try:
            for n in counts:
                spec = _spec(work, model, where, n)
                before = dict(proxy.verbs) if proxy else {}
                wall, rc, peaks, _ = run_cli(spec, env, args.tree)
                middle = dict(proxy.verbs) if proxy else {}
                noop, noop_rc, _, _ = run_cli(spec, env, args.tree)
                after = dict(proxy.verbs) if proxy else {}
                row = {"shards": n, "wall_s": round(wall, 1), "exit": rc, "noop_s": round(noop, 2), "noop_exit": noop_rc,
                       **{k: round(v, 1) for k, v in peaks.items()}}
                if proxy:
                    row["run_requests_per_shard"] = {v: round((middle.get(v, 0) - before.get(v, 0)) / n, 2) for v in VERBS}
                    row["noop_requests"] = {v: after.get(v, 0) - middle.get(v, 0) for v in VERBS}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            if proxy:
                proxy.stop()
                server.stop()
    print(table(rows, args.docs))


def steady_rate(docs: int, seed: int, tree: Path) -> str:
    """Marginal tokens/s of one shard of `docs` and one of 4 x `docs` documents, and per core."""
    from tools.bench import build_null_model
    from tools.corpus import documents

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    runs = []
    with tempfile.TemporaryDirectory(prefix="steady-") as tmp:
        work = Path(tmp)
        model = build_null_model(work / "model")
        texts = documents(4 * docs, seed=seed, long_tail=False)
        for n in (docs, 4 * docs):
            write_shards(texts[:n], 1, work / f"in-{n}")
            spec = _spec(work, model, {"input": str(work / "in-{shards}"), "output": str(work / "out-{shards}")}, n)
            wall, rc, _, summary = run_cli(spec, env, tree)
            if rc != 0:
                raise SystemExit(f"the run of {n:,} documents exited {rc}")
            runs.append((n, wall, summary["tokens"]))
    (n1, w1, t1), (n2, w2, t2) = runs
    rate = (t2 - t1) / (w2 - w1)
    cores = os.cpu_count() or 1
    return (f"{n1:,} documents: {w1:.1f} s, {t1:,} tokens; {n2:,}: {w2:.1f} s, {t2:,} tokens\n"
            f"data plane, steady state: {rate:,.0f} tokens/s on {cores} cores = {rate / cores:,.0f} tokens/s per core")


def soak(docs: int, shards: int, seed: int, tree: Path) -> str:
    """A large run on a near-free model, killed once half its shards are done, then resumed."""
    import signal

    from tools.bench import build_null_model
    from tools.corpus import documents

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        model = build_null_model(work / "model")
        texts = documents(min(docs, 20_000), seed=seed, long_tail=False)
        texts = [texts[i % len(texts)] for i in range(docs)]  # short documents, generated once, repeated
        write_shards(texts, shards, work / "in")
        spec = _spec(work, model, {"input": str(work / "in"), "output": str(work / "out")}, shards)
        markers = work / "out" / "_shards"
        lines = []
        for attempt, kill_at in (("run (killed)", shards // 2), ("rerun", None)):
            started = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec)], cwd=tree,
                                    env={**env, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            rss_early = rss_last = 0.0
            # "Early": once a tenth of the shards this run does are done (a rerun starts with half).
            before = len(list(markers.glob("*.json"))) if markers.exists() else 0
            with PeakSampler(proc.pid) as sampler:
                while proc.poll() is None:
                    done = len(list(markers.glob("*.json"))) if markers.exists() else 0
                    rss = _status_mib(proc.pid, "VmRSS")
                    rss_last = rss or rss_last
                    if not rss_early and done - before >= max(1, (shards - before) // 10):
                        rss_early = rss
                    if kill_at is not None and done >= kill_at:
                        proc.send_signal(signal.SIGKILL)
                        break
                    time.sleep(1.0)
                out = proc.communicate()[0]
            summary = json.loads(out) if out.strip().startswith("{") else {}
            lines.append(f"{attempt}: exit {proc.returncode}, {time.perf_counter() - started:,.0f} s, "
                         f"{len(list(markers.glob('*.json')))} of {shards} shards done; driver RSS "
                         f"{rss_early:,.0f} MiB after 10% of its shards, {rss_last:,.0f} MiB at the end "
                         f"(x{rss_last / max(rss_early, 1):.2f}), peak {sampler.peaks['driver_mib']:,.0f} MiB; "
                         f"spilled {sampler.peaks['spilled_mib']:,.0f} MiB")
        lines.append(f"rerun: status {summary.get('status')}, rows read {summary.get('rows_read', 0):,} of {docs:,}, "
                     f"shards resumed {summary.get('shards_resumed')}, run {summary.get('shards_run')}, "
                     f"_SUCCESS {(work / 'out' / '_SUCCESS').exists()}")
        return "\n".join(lines)


def table(rows: list[dict], docs: int) -> str:
    """The figures as a Markdown table, with the cost per extra shard over the first row."""
    first = rows[0]
    head = ["shards", "wall s", "x first", "ms / extra shard", "no-op s", "driver MiB", "ledger MiB",
            "store MiB", "spilled MiB"]
    s3 = "run_requests_per_shard" in first
    if s3:
        head += ["requests / shard (" + " ".join(VERBS) + ")", "no-op requests"]
    lines = [f"{docs:,} documents; near-free model; no resources (local defaults)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        extra = r["shards"] - first["shards"]
        per = f"{(r['wall_s'] - first['wall_s']) / extra * 1000:.0f}" if extra else "—"
        cells = [f"{r['shards']:,}", f"{r['wall_s']:.1f}" + ("" if r["exit"] == 0 else f" (exit {r['exit']})"),
                 f"{r['wall_s'] / first['wall_s']:.2f}", per, f"{r['noop_s']:.2f}", f"{r['driver_mib']:.0f}",
                 f"{r['ledger_mib']:.0f}", f"{r['store_mib']:.0f}", f"{r['spilled_mib']:.0f}"]
        if s3:
            per_shard = r["run_requests_per_shard"]
            cells += [f"{sum(per_shard.values()):.1f} (" + " ".join(f"{per_shard[v]:g}" for v in VERBS) + ")",
                      str(sum(r["noop_requests"].values()))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
