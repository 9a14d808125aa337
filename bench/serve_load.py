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

4. `--soak S`: wrk at concurrency 64 for S seconds, binary, every answer checked in wrk's Lua
   (status 200 and the body byte for byte the one the plan gives: a row's answer does not depend
   on the batch it ran in), the server's resident memory before and after.
5. `--overload S`: S seconds of arrivals at twice the measured capacity (the binary concurrency-64
   throughput): 4096 wrk connections (more than the server's queue of 256 holds), each waiting an
   exponential gap after every answer, so that while the server answers quickly (a 503) the arrivals
   keep their rate, as open-loop arrivals would. Reports the share of 503s, the accepted requests'
   p99 from the server's histogram (status 200), memory before, during and after, and then
   concurrency 1 again: p50 and errors once the load drops.

By default wrk and the server share the machine's cores: on 2 cores that costs the server part of
one. `--server-cpus 1 --load-cpus 0` pins them apart, as a load generator on another machine would
be: this process (so the direct ceiling) and the server on --server-cpus, wrk on --load-cpus.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


def direct(plan, max_batch: int, seconds: float = 1.5, first: int = 1) -> list[dict]:
    rows = []
    b = first
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

# Checks every answer: counts by outcome in each thread's Lua state, summed in done()
_CHECK_LUA = _LUA + """
local e = io.open("{expected}", "rb")
local expected = e:read("*all")
e:close()
ok, bad_body, s503, s504, other = 0, 0, 0, 0, 0
function response(status, headers, body)
  if status == 200 then
    if body == expected then ok = ok + 1 else bad_body = bad_body + 1 end
  elseif status == 503 then s503 = s503 + 1
  elseif status == 504 then s504 = s504 + 1
  else other = other + 1 end
end
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local n = {{ok = 0, bad_body = 0, s503 = 0, s504 = 0, other = 0}}
  for _, t in ipairs(threads) do
    for k, _ in pairs(n) do n[k] = n[k] + t:get(k) end
  end
  io.write(string.format("CHECKED ok=%d bad_body=%d s503=%d s504=%d other=%d\\n",
                         n.ok, n.bad_body, n.s503, n.s504, n.other))
end
{delay}
"""

# Exponential gaps after each answer, mean `mean_ms`, per connection
_DELAY_LUA = """
math.randomseed(os.time())
function delay() return -math.log(1 - math.random()) * {mean_ms} end
"""


def run_wrk(url: str, body_path: str, headers: dict[str, str], concurrency: int, duration: float,
            expected_path: str | None = None, mean_gap_ms: float | None = None) -> dict:
    """wrk -t1 at `concurrency`; with `expected_path` every answer is checked against that body,
    with `mean_gap_ms` each connection waits an exponential gap after each answer."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        if expected_path is None:
            f.write(_LUA.format(body=body_path, headers=lines))
        else:
            delay = _DELAY_LUA.format(mean_ms=mean_gap_ms) if mean_gap_ms else ""
            f.write(_CHECK_LUA.format(body=body_path, headers=lines, expected=expected_path, delay=delay))
        script = f.name
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(round(duration))}s", "--latency", "--timeout", "30s",
           "-s", script,
           url + "/v2/models/r18/infer"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, preexec_fn=_more_files).stdout
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
    checked = re.search(r"CHECKED (.*)", out)
    return dict(concurrency=concurrency, requests=int(total.group(1)) if total else 0,
                rows_per_s=float(rps.group(1)) if rps else 0.0, p50_ms=ms("50"), p90_ms=ms("90"), p99_ms=ms("99"),
                non_2xx=int(non2xx.group(1)) if non2xx else 0, socket_errors=errors.group(1) if errors else "",
                checked={k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", checked.group(1))} if checked else None,
                raw=out)


LOAD_CPUS: set[int] | None = None  # --load-cpus


def _more_files() -> None:
    """Lets wrk open a socket per connection (4096 for --overload), on --load-cpus if given."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    if LOAD_CPUS:
        os.sched_setaffinity(0, LOAD_CPUS)


def _rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _p99_accepted_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Upper bucket bound (ms) holding 99 % of the requests answered 200 between two /metrics reads."""
    buckets = []
    for k, v in after.items():
        m = re.match(r'basisrt_request_seconds_bucket\{le="([^"]+)",model="r18",status="200"\}', k)
        if m:
            buckets.append((float(m.group(1)), v - before.get(k, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= 0.99 * total) * 1e3


def soak(url: str, server_pid: int, body_path: str, headers: dict, expected_path: str, seconds: float) -> dict:
    rss0 = _rss_mb(server_pid)
    r = run_wrk(url, body_path, headers, 64, seconds, expected_path)
    r.update(kind="soak", rss_before_mb=rss0, rss_after_mb=_rss_mb(server_pid))
    return r


def overload(url: str, server_pid: int, body_path: str, headers: dict, expected_path: str, capacity: float,
             seconds: float = 20.0, connections: int = 4096) -> dict:
    """Arrivals at twice `capacity` (requests/s), then concurrency 1 again (recovery)."""
    rate = 2 * capacity
    gap_ms = 1e3 * connections / rate  # each connection's mean gap, answers taken as instant
    rss0 = _rss_mb(server_pid)
    before = _metrics(url)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=run_wrk(url, body_path, headers, connections, seconds,
                                                                 expected_path, gap_ms)))
    t.start()
    samples = []  # (seconds since the start, resident MB): flat once the connections are open?
    start = time.monotonic()
    while t.is_alive():
        samples.append((round(time.monotonic() - start, 1), _rss_mb(server_pid)))
        time.sleep(1.0)
    t.join()
    rss_during = samples[int(len(samples) * 0.75)][1] if samples else float("nan")
    late = [mb for s, mb in samples if s >= seconds / 2]
    after = _metrics(url)
    r = box["r"]
    c = r["checked"] or {}
    answered = sum(c.values())
    recovery = run_wrk(url, body_path, headers, 1, 5, expected_path)
    r.update(kind="overload", target_rate=rate, offered_rate=answered / seconds,
             accepted_rate=c.get("ok", 0) / seconds, share_503=c.get("s503", 0) / answered if answered else 0.0,
             p99_accepted_ms=_p99_accepted_ms(before, after), rss_before_mb=rss0, rss_during_mb=rss_during,
             rss_samples=samples, rss_second_half_growth_mb=(late[-1] - late[0]) if late else None,
             rss_after_mb=_rss_mb(server_pid), recovery=recovery)
    return r


def _cpus(text: str) -> set[int]:
    """"0,2-3" -> {0, 2, 3}"""
    out: set[int] = set()
    for item in text.split(","):
        lo, _, hi = item.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=2, help="kernel threads, in-process and in the server")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--out", default=str(HERE / "out" / "serve_load.json"))
    ap.add_argument("--markdown", help="write the tables to this Markdown file")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of the checked concurrency-64 run (0: none)")
    ap.add_argument("--overload", type=float, default=0.0, help="seconds of arrivals at twice the measured capacity")
    ap.add_argument("--paired", type=int, default=0,
                    help="then this many rounds of the direct plan at --max-batch-size beside the server at "
                         "concurrency 64 (binary), one after the other: the saturation ratio from pairs")
    ap.add_argument("--server-cpus", type=_cpus, help="CPUs of the server and of the direct ceiling (e.g. 1)")
    ap.add_argument("--load-cpus", type=_cpus, help="CPUs of wrk (e.g. 0)")
    args = ap.parse_args(argv)
    global LOAD_CPUS
    LOAD_CPUS = args.load_cpus
    if args.server_cpus:
        os.sched_setaffinity(0, args.server_cpus)  # before any thread starts: the server inherits it
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
                               "--max-delay-ms", str(args.max_delay_ms),  # --max-queue: its default, 256
                               # --overload's connections pause up to seconds between requests
                               "--keep-alive-s", "120"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results, extra = [], []
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
        if args.soak or args.overload:
            body, headers, x = request_body(True)
            path, expected = work / "body.bin", work / "expected.bin"
            path.write_bytes(body)
            req = urllib.request.Request(url + "/v2/models/r18/infer", data=body, headers=headers)
            expected.write_bytes(urllib.request.urlopen(req, timeout=30).read())  # checked above to equal the plan's
        if args.soak:
            r = soak(url, server.pid, str(path), headers, str(expected), args.soak)
            print(f"soak {args.soak:.0f} s c=64: {r['checked']}, {r['rows_per_s']:.0f} rows/s, p99 {r['p99_ms']} ms, "
                  f"RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB", flush=True)
            extra.append(r)
        if args.overload:
            capacity = next((r["rows_per_s"] for r in results if r["encoding"] == "binary" and r["concurrency"] == 64),
                            None) or run_wrk(url, str(path), headers, 64, 5)["rows_per_s"]
            r = overload(url, server.pid, str(path), headers, str(expected), capacity, args.overload)
            rec = r["recovery"]
            print(f"overload at {r['target_rate']:.0f}/s: offered {r['offered_rate']:.0f}/s, accepted "
                  f"{r['accepted_rate']:.0f}/s, 503 share {r['share_503']:.2f}, {r['checked']}, accepted p99 <= "
                  f"{r['p99_accepted_ms']} ms, RSS (overload's second half: {r['rss_second_half_growth_mb']:+.1f} MB) "
                  f"{r['rss_before_mb']:.0f}/{r['rss_during_mb']:.0f}/"
                  f"{r['rss_after_mb']:.0f} MB; then c=1: p50 {rec['p50_ms']} ms, {rec['checked']}", flush=True)
            extra.append(r)
        if args.paired:
            body, headers, _ = request_body(True)
            path = work / "body.bin"
            path.write_bytes(body)
            for _ in range(args.paired):
                d = direct(plan, args.max_batch_size, seconds=3.0, first=args.max_batch_size)[0]["rows_per_s"]
                s = run_wrk(url, str(path), headers, 64, args.duration)["rows_per_s"]
                extra.append(dict(kind="paired", direct_rows_per_s=d, server_rows_per_s=s, ratio=s / d))
                print(f"paired: direct batch {args.max_batch_size} {d:.0f} rows/s, server c=64 binary {s:.0f} "
                      f"rows/s, ratio {s / d:.3f}", flush=True)
            ratios = sorted(r["ratio"] for r in extra if r["kind"] == "paired")
            print(f"paired: median ratio {statistics.median(ratios):.3f} (from {ratios[0]:.3f} to {ratios[-1]:.3f})")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    meta = dict(date=time.strftime("%Y-%m-%d"), threads=args.threads, duration_s=args.duration,
                max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms, server_exit=code,
                command=" ".join([Path(sys.executable).name, *sys.argv]), cpus=os.cpu_count(),
                server_cpus=sorted(args.server_cpus or []), load_cpus=sorted(args.load_cpus or []))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(meta=meta, direct=ceiling, server=results, load=extra), indent=1))
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
