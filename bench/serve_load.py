"""Serving load test: `basisrt serve` under wrk against the plan called in-process.

    PYTHONPATH=. python bench/serve_load.py [--duration 10] [--concurrency 1 4 16 64] [--threads 2]
        [--out bench/out/serve_load.json] [--markdown bench/SERVING.md]

1. Builds a pruned ResNet-18 (basisrt.models "resnet18", 3x32x32, every basis layer at 10 % rank,
   random init), compiles it (dense_backend="basisrt": one native program) and saves the plan.
2. Direct ceiling: the plan called in-process at batch 1, 2, 4, ... max-batch-size (median of
   repeated calls): latency and rows/s.
3. Starts `basisrt serve` on a free loopback port and, for each encoding (binary, JSON) and
   concurrency, runs `wrk -t1 -cC -dD --latency` (Debian's wrk; a Lua script posts one 1-row
   request body, prepared here and checked once against the plan) and reads the server's
   /metrics before and after for the mean batch size. Non-2xx answers are counted by wrk.

wrk and the server share the machine's cores: on 2 cores that costs the server part of one.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import basisrt  # noqa: E402
from basisrt.serve import Client  # noqa: E402

INPUT = (3, 32, 32)


def build_plan(path: Path, threads: int) -> basisrt.CompiledModel:
    torch.manual_seed(0)
    model = basisrt.models.create("resnet18").eval()
    pruned = basisrt.decompose(model).model.eval()
    basisrt.prune_basis(pruned, "ratio", 0.1)
    torch.set_num_threads(threads)
    compiled = basisrt.compile(pruned, torch.randn(1, *INPUT), dense_backend="basisrt")
    compiled.save(str(path))
    return basisrt.load(str(path))


def direct(plan, max_batch: int, seconds: float = 1.5) -> list[dict]:
    rows = []
    b = 1
    while b <= max_batch:
        x = torch.randn(b, *INPUT)
        for _ in range(5):
            plan(x)
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 10:
            t = time.perf_counter()
            plan(x)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        rows.append(dict(batch=b, p50_ms=med * 1e3, rows_per_s=b / med))
        b *= 2
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def request_body(binary: bool) -> tuple[bytes, dict[str, str], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, *INPUT), generator=g)
    inp = {"name": "input__0", "datatype": "FP32", "shape": [1, *INPUT]}
    if binary:
        raw = x.numpy().astype("<f4").tobytes()
        inp["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps({"inputs": [inp], "outputs": [{"name": "output__0", "parameters": {"binary_data": True}}]})
        return head.encode() + raw, {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(head))}, x
    inp["data"] = x.flatten().tolist()
    return json.dumps({"inputs": [inp]}).encode(), {"Content-Type": "application/json"}, x


_LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
{headers}
"""


def run_wrk(url: str, body_path: str, headers: dict[str, str], concurrency: int, duration: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA.format(body=body_path, headers="\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())))
        script = f.name
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(round(duration))}s", "--latency", "--timeout", "30s", "-s", script,
           url + "/v2/models/r18/infer"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    os.unlink(script)

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return dict(concurrency=concurrency, requests=int(total.group(1)) if total else 0,
                rows_per_s=float(rps.group(1)) if rps else 0.0, p50_ms=ms("50"), p90_ms=ms("90"), p99_ms=ms("99"),
                non_2xx=int(non2xx.group(1)) if non2xx else 0, socket_errors=errors.group(1) if errors else "",
                raw=out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=2, help="kernel threads, in-process and in the server")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--out", default=str(HERE / "out" / "serve_load.json"))
    ap.add_argument("--markdown", help="write the tables to this Markdown file")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    work = Path(tempfile.mkdtemp())
    plan = build_plan(work / "r18.basisrt", args.threads)
    assert plan.native is not None
    ceiling = direct(plan, args.max_batch_size)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "basisrt.cli", "serve", f"r18={work / 'r18.basisrt'}", "--port",
                               str(port), "--threads", str(args.threads), "--max-batch-size", str(args.max_batch_size),
                               "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "1024"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        client = Client(url)
        for _ in range(300):
            try:
                if client.ready():
                    break
            except OSError:
                pass
            time.sleep(0.2)
        for binary in (True, False):
            body, headers, x = request_body(binary)
            # the body wrk sends, answered as the plan answers it (checked once here)
            y = client.infer("r18", x, binary=binary)
            assert torch.equal(y, plan(x)), "the server's answer differs from the plan's"
            path = work / ("body.bin" if binary else "body.json")
            path.write_bytes(body)
            for c in args.concurrency:
                before = _metrics(url)
                r = run_wrk(url, str(path), headers, c, args.duration)
                after = _metrics(url)
                key = 'basisrt_batch_size_{}{{model="r18"}}'
                batches = after[key.format("count")] - before[key.format("count")]
                rows = after[key.format("sum")] - before[key.format("sum")]
                r.update(encoding="binary" if binary else "json", mean_batch=rows / batches if batches else 0.0)
                print(f"{r['encoding']:>6} c={c:>3}: {r['rows_per_s']:8.0f} rows/s  p50 {r['p50_ms']} ms  "
                      f"p99 {r['p99_ms']} ms  mean batch {r['mean_batch']:.1f}  non-2xx {r['non_2xx']}", flush=True)
                results.append(r)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    meta = dict(date=time.strftime("%Y-%m-%d"), threads=args.threads, duration_s=args.duration,
                max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms, server_exit=code,
                command=" ".join([Path(sys.executable).name, *sys.argv]), cpus=os.cpu_count())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(meta=meta, direct=ceiling, server=results), indent=1))
    lines = ["| direct batch | p50 ms | rows/s |", "| ---: | ---: | ---: |"]
    lines += [f"| {d['batch']} | {d['p50_ms']:.2f} | {d['rows_per_s']:.0f} |" for d in ceiling]
    lines += ["", "| encoding | concurrency | rows/s | p50 ms | p90 ms | p99 ms | mean batch | non-2xx |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['encoding']} | {r['concurrency']} | {r['rows_per_s']:.0f} | {r['p50_ms']:.2f} | "
              f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {r['non_2xx']} |" for r in results]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
