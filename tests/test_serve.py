"""`basisrt serve`: a real server process on a free loopback port, spoken to over HTTP (JSON and
binary tensors, errors, batching under concurrency, graceful shutdown on SIGTERM)."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import basisrt  # noqa: E402
from basisrt.serve import Client, InferenceError  # noqa: E402
from basisrt.serve.protocol import HEADER_LENGTH  # noqa: E402

INPUT = (3, 32, 32)


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = basisrt.models.create("resnet18").eval()
    pruned = basisrt.decompose(model).model.eval()
    basisrt.prune_basis(pruned, "ratio", 0.1)
    compiled = basisrt.compile(pruned, torch.randn(1, *INPUT), dense_backend="basisrt")
    path = tmp_path_factory.mktemp("plans") / "r18.basisrt"
    compiled.save(str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, plan: Path, *flags: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "basisrt.cli", "serve", f"r18={plan}", "--port",
                                      str(self.port), "--threads", "1", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not become ready")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def get(self, path: str) -> tuple[int, dict]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body or b"{}") if body[:1] in (b"{", b"[") else body.decode()

    def infer_json(self, body: dict | bytes) -> tuple[int, dict]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, _, out = self.request("POST", "/v2/models/r18/infer", raw, {"Content-Type": "application/json"})
        return status, json.loads(out)

    def metrics(self) -> dict[str, float]:
        text = self.request("GET", "/metrics")[2].decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(plan_path):
    s = Server(plan_path, "--max-body-mb", "1")
    yield s
    assert s.stop() == 0


def _request(x: torch.Tensor, **extra) -> dict:
    return {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.flatten().tolist()}], **extra}


def test_endpoints(server) -> None:
    assert server.get("/v2/health/live")[0] == 200
    assert server.get("/v2/health/ready")[0] == 200
    status, meta = server.get("/v2")
    assert status == 200 and meta["name"] == "basisrt" and "binary_tensor_data" in meta["extensions"]
    status, meta = server.get("/v2/models/r18")
    assert status == 200
    assert meta["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, *INPUT]}]
    assert meta["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 10]}]
    assert server.get("/v2/models/r18/ready") == (200, {"name": "r18", "ready": True})
    status, body = server.get("/v2/models/nope")
    assert status == 404 and "unknown model 'nope'" in body["error"]
    assert server.get("/v2/models/nope/ready")[0] == 404


def test_json_and_binary_round_trips_equal_the_plan(server, plan_path) -> None:
    plan = basisrt.load(str(plan_path))
    x = torch.randn(3, *INPUT)
    expected = plan(x)
    status, body = server.infer_json(_request(x, id="req-7"))
    assert status == 200 and body["id"] == "req-7" and body["model_name"] == "r18"
    (out,) = body["outputs"]
    assert out["name"] == "output__0" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    assert torch.equal(torch.tensor(out["data"]).view(3, 10), expected)  # alone in its batch: bit-exact
    client = Client(server.url)
    assert torch.equal(client.infer("r18", x), expected)
    assert torch.equal(client.infer("r18", x, binary=False), expected)
    # binary request, JSON response (binary output not asked for)
    raw = x.numpy().astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [3, *INPUT],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    status, headers, body = server.request("POST", "/v2/models/r18/infer", head + raw,
                                           {HEADER_LENGTH: str(len(head))})
    assert status == 200 and HEADER_LENGTH not in headers
    assert torch.equal(torch.tensor(json.loads(body)["outputs"][0]["data"]).view(3, 10), expected)
    # JSON request, binary response for every output (binary_data_output)
    status, headers, body = server.request("POST", "/v2/models/r18/infer",
                                           json.dumps(_request(x, parameters={"binary_data_output": True})).encode())
    n = int(headers[HEADER_LENGTH])
    assert status == 200 and json.loads(body[:n])["outputs"][0]["parameters"]["binary_data_size"] == 120
    assert torch.equal(torch.frombuffer(bytearray(body[n:]), dtype=torch.float32).view(3, 10), expected)


@pytest.mark.parametrize("with_orjson", [True, False])
def test_protocol_keeps_nan_and_infinity_both_ways(with_orjson, monkeypatch) -> None:
    """JSON has no NaN: Python's json writes and reads NaN / Infinity tokens, orjson (the fast path)
    would write null. A request with them parses, and an output with them comes back as them; the
    same without orjson (the client's install)."""
    import numpy as np

    from basisrt.serve import protocol
    from basisrt.serve.protocol import encode_infer, parse_infer

    if not with_orjson:
        monkeypatch.setattr(protocol, "orjson", None)

    x = np.array([[float("nan"), float("inf"), -1.5]], dtype=np.float32)
    req = parse_infer(json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3],
                                              "data": x.ravel().tolist()}]}).encode(), None, (3,))
    assert np.array_equal(req.array, x, equal_nan=True)
    body, headers = encode_infer("m", req, x)
    assert headers["content-type"] == "application/json"
    back = np.array(json.loads(body)["outputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(back, x.ravel(), equal_nan=True)
    # binary rows are a view of the body (copied when the batch is formed), not a copy per request
    raw = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    req = parse_infer(head + raw, str(len(head)), (3,))
    assert np.array_equal(req.array, x, equal_nan=True) and not req.array.flags.writeable


def test_larger_than_max_batch_is_split_and_reassembled(plan_path) -> None:
    s = Server(plan_path, "--max-batch-size", "4")
    try:
        x = torch.randn(11, *INPUT)
        y = Client(s.url).infer("r18", x)
        plan = basisrt.load(str(plan_path))
        assert y.shape == (11, 10)
        assert (y - plan(x)).abs().max() < 1e-5
        assert s.metrics()['basisrt_batches_total{model="r18"}'] >= 3
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"inputs": []}, 400, "exactly one tensor"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": []}]}, 400, "unknown input"),
    ({"inputs": [{"name": "input__0", "datatype": "INT8", "shape": [1, 3, 32, 32], "data": [0]}]}, 400, "datatype"),
    ({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.5] * 768}]}, 400,
     "does not match"),
    ({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [0, 3, 32, 32], "data": []}]}, 400,
     "at least one row"),
    ({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 7}]}, 400,
     "holds 7 elements"),
    ({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": ["a"] * 3072}]}, 400,
     "only numbers"),
    ({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 3072}],
      "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    ({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 3072}],
      "parameters": {"timeout": -3}}, 400, "timeout"),
])
def test_bad_requests_get_400_and_the_server_stays_ready(server, body, status, message) -> None:
    got, answer = server.infer_json(body)
    assert got == status and message in answer["error"], answer
    assert server.get("/v2/health/ready")[0] == 200


def test_binary_size_mismatch_and_body_limit(server) -> None:
    head = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, *INPUT],
                                   "parameters": {"binary_data_size": 3072 * 4}}]}).encode()
    status, _, body = server.request("POST", "/v2/models/r18/infer", head + b"\0" * 100,
                                     {HEADER_LENGTH: str(len(head))})
    assert status == 400 and "binary data" in json.loads(body)["error"]
    status, _, body = server.request("POST", "/v2/models/r18/infer", head, {HEADER_LENGTH: str(len(head) + 5)})
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(body)["error"]
    big = json.dumps(_request(torch.randn(40, *INPUT))).encode()  # about 2.6 MB > --max-body-mb 1
    status, _, body = server.request("POST", "/v2/models/r18/infer", big)
    assert status == 413 and "over the limit" in json.loads(body)["error"]
    assert server.get("/v2/health/ready")[0] == 200


def test_deadline_before_start_is_504(server) -> None:
    x = torch.randn(1, *INPUT)
    status, body = server.infer_json(_request(x, parameters={"timeout": 1}))  # 1 microsecond
    assert status == 504 and "deadline" in body["error"]
    assert server.get("/v2/health/ready")[0] == 200


def _load(url: str, clients: int, requests: int, rows: int = 1) -> Counter:
    results: Counter = Counter()
    lock = threading.Lock()

    def worker() -> None:
        client = Client(url)
        x = torch.randn(rows, *INPUT)
        for _ in range(requests):
            try:
                client.infer("r18", x)
                outcome: object = 200
            except InferenceError as e:
                outcome = e.status
            except OSError as e:
                outcome = type(e).__name__
            with lock:
                results[outcome] += 1
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_are_batched(server) -> None:
    before = server.metrics()
    results = _load(server.url, clients=12, requests=8)
    assert results == Counter({200: 96})
    after = server.metrics()
    key = 'basisrt_batch_size_{}{{model="r18"}}'
    batches = after[key.format("count")] - before[key.format("count")]
    rows = after[key.format("sum")] - before[key.format("sum")]
    assert rows == 96 and rows / batches > 1.0


def test_queue_full_is_503_with_retry_after(plan_path) -> None:
    s = Server(plan_path, "--max-queue", "1", "--max-delay-ms", "50")
    try:
        results = _load(s.url, clients=12, requests=4, rows=8)
        assert set(results) <= {200, 503} and results[503] > 0 and results[200] > 0, results
        x = torch.randn(1, *INPUT)
        assert Client(s.url).infer("r18", x).shape == (1, 10)  # still serving
        status, headers, _ = s.request("GET", "/v2/health/ready")
        assert status == 200
        m = s.metrics()
        assert m['basisrt_failures_total{model="r18",reason="queue_full"}'] == results[503]
    finally:
        assert s.stop() == 0


def test_a_disconnected_clients_rows_never_run(plan_path) -> None:
    s = Server(plan_path, "--max-batch-size", "1024")
    try:
        busy = threading.Thread(target=lambda: Client(s.url).infer("r18", torch.randn(1024, *INPUT)))
        busy.start()  # about a second of work on one thread
        while s.metrics()["basisrt_in_flight"] < 1:
            time.sleep(0.01)
        time.sleep(0.3)  # its 12 MB are read and it runs
        x = torch.randn(1, *INPUT)
        head = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, *INPUT],
                                       "parameters": {"binary_data_size": x.numel() * 4}}]}).encode()
        body = head + x.numpy().tobytes()
        with socket.create_connection(("127.0.0.1", s.port)) as c:  # sends a whole request, then hangs up
            c.sendall(b"POST /v2/models/r18/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s: %d\r\n\r\n"
                      % (len(body), HEADER_LENGTH.encode(), len(head)) + body)
            time.sleep(0.2)
        busy.join()
        m = s.metrics()
        assert m['basisrt_failures_total{model="r18",reason="disconnected"}'] == 1
        assert m['basisrt_rows_total{model="r18"}'] == 1024  # the busy request's rows only
        assert Client(s.url).infer("r18", x).shape == (1, 10)
    finally:
        assert s.stop() == 0


def test_sigterm_under_load_drains_and_exits_0(plan_path) -> None:
    s = Server(plan_path, "--grace-s", "10")
    results: Counter = Counter()
    stop = threading.Event()

    def worker() -> None:
        client = Client(s.url)
        x = torch.randn(2, *INPUT)
        while not stop.is_set():
            try:
                client.infer("r18", x)
                results[200] += 1
            except InferenceError as e:
                results[e.status] += 1
                if e.status == 503:
                    return
            except OSError:
                results["refused"] += 1  # the listening socket closed after the drain
                return
    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(60)
    stop.set()
    for t in threads:
        t.join()
    assert code == 0
    assert results[200] > 0
    assert set(results) <= {200, 503, "refused"}, results


@pytest.mark.skipif(basisrt._C.bf16_path() == "none", reason="this CPU has no AVX512-BF16 (nor AMX)")
def test_bf16_plan_served_as_saved_or_at_fp32(tmp_path) -> None:
    """A plan saved at bf16 is served at bf16; --precision fp32 serves the same file at fp32."""
    torch.manual_seed(0)
    pruned = basisrt.decompose(basisrt.models.create("resnet18").eval()).model.eval()
    basisrt.prune_basis(pruned, "ratio", 0.25)
    path = tmp_path / "r18.basisrt"
    basisrt.compile(pruned, torch.randn(1, *INPUT), precision="bf16").save(str(path))
    x = torch.randn(3, *INPUT)
    for flags, precision in (((), "bf16"), (("--precision", "fp32"), "fp32")):
        s = Server(path, *flags)
        try:
            assert torch.equal(Client(s.url).infer("r18", x), basisrt.load(str(path), precision=precision)(x))
        finally:
            assert s.stop() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_plan_is_served_from_its_gpu(tmp_path, cuda_graph) -> None:
    """A plan compiled on CUDA (Triton steps; CUDA graphs too) takes CPU request rows and answers."""
    torch.manual_seed(0)
    pruned = basisrt.decompose(basisrt.models.create("resnet18").eval()).model.eval()
    basisrt.prune_basis(pruned, "ratio", 0.1)
    x = torch.randn(3, *INPUT)
    compiled = basisrt.compile(pruned.cuda(), x.cuda(), cuda_graph=cuda_graph)
    path = tmp_path / "r18_cuda.basisrt"
    compiled.save(str(path))
    expected = compiled(x.cuda()).cpu()
    s = Server(path, "--max-batch-size", "8")
    try:
        assert s.get("/v2/models/r18")[1]["outputs"][0]["shape"] == [-1, 10]
        # the server autotunes the Triton kernels again, so it may pick other tiles: not bit-exact
        torch.testing.assert_close(Client(s.url).infer("r18", x), expected, rtol=1e-4, atol=1e-4)
    finally:
        s.stop()


def test_model_failure_is_500_for_that_batch_only(plan_path) -> None:
    """In process (Starlette's test client): a plan that raises on some inputs."""
    from starlette.testclient import TestClient

    import basisrt.serve.app as app_module

    real_load = app_module._load

    def flaky_load(name: str, path: str, precision: str | None = None):
        m = real_load(name, path, precision)
        plan = m.plan

        class Flaky:
            input_shape, dtype, device = plan.input_shape, plan.dtype, plan.device

            def __call__(self, x):
                if x.shape[0] == 5:
                    raise RuntimeError("boom on five rows")
                return plan(x)
        m.plan = Flaky()
        return m
    app_module._load = flaky_load
    try:
        app = app_module.create_app(app_module.ServeConfig({"r18": str(plan_path)}))
        with TestClient(app) as client:
            r = client.post("/v2/models/r18/infer", json=_request(torch.randn(5, *INPUT)))
            assert r.status_code == 500 and "boom on five rows" in r.json()["error"]
            r = client.post("/v2/models/r18/infer", json=_request(torch.randn(2, *INPUT)))
            assert r.status_code == 200
            assert client.get("/v2/health/ready").status_code == 200
            assert 'reason="model_error"} 1.0' in client.get("/metrics").text
    finally:
        app_module._load = real_load


@pytest.mark.slow
def test_ray_serve_two_replicas_answer_the_same_suite(plan_path) -> None:
    """`basisrt serve --ray --replicas 2`: the same app behind Ray Serve's proxy on loopback."""
    pytest.importorskip("ray.serve")
    s = Server(plan_path, "--ray", "--replicas", "2", "--max-batch-size", "8")
    try:
        plan = basisrt.load(str(plan_path))
        client = Client(s.url)
        assert s.get("/v2/models/r18")[1]["outputs"][0]["shape"] == [-1, 10]
        for rows in (1, 3, 19):  # 19 > --max-batch-size: split into parts, batched by rows
            x = torch.randn(rows, *INPUT)
            assert (client.infer("r18", x) - plan(x)).abs().max() < 1e-5
            assert (client.infer("r18", x, binary=False) - plan(x)).abs().max() < 1e-5
        x = torch.randn(2, *INPUT)
        status, body = s.infer_json(_request(x, id="ray-1"))
        assert status == 200 and body["id"] == "ray-1"
        status, body = s.infer_json({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                                 "data": [0.0] * 192}]})
        assert status == 400 and "does not match" in body["error"]
        assert s.get("/v2/health/ready")[0] == 200
        assert _load(s.url, clients=6, requests=5) == Counter({200: 30})
    finally:
        assert s.stop() == 0


class TwoHeads(torch.nn.Module):
    """Returns a ModelOutput-like dict of two outputs (Hugging Face's models return one)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, pixel_values):
        f = torch.relu(self.conv(pixel_values))
        return {"logits": self.fc(f.mean((2, 3))), "features": f}


def test_a_plan_of_several_outputs_serves_each_by_name(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "two.basisrt"
    basisrt.compile(basisrt.decompose(TwoHeads().eval()).model, torch.randn(1, *INPUT)).save(str(path))
    plan = basisrt.load(str(path))
    x = torch.randn(3, *INPUT)
    expected = plan(x)
    s = Server(path)
    try:
        status, meta = s.get("/v2/models/r18")
        assert status == 200 and meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                                                     {"name": "features", "datatype": "FP32", "shape": [-1, 4, 16, 16]}]
        for binary in (True, False):
            got = Client(s.url).infer("r18", x, binary=binary)
            assert set(got) == {"logits", "features"}
            assert all(torch.equal(got[k], expected[k]) for k in got)  # alone in its batch: bit-exact
        status, body = s.infer_json(_request(x, outputs=[{"name": "features"}]))
        assert status == 200 and [o["name"] for o in body["outputs"]] == ["features"]
        assert torch.equal(torch.tensor(body["outputs"][0]["data"]).view(3, 4, 16, 16), expected["features"])
        status, body = s.infer_json(_request(x, outputs=[{"name": "output__0"}]))
        assert status == 400 and "the model's outputs are 'logits', 'features'" in body["error"]
        # several requests in one batch: each gets its own rows of each output
        xs = [torch.randn(n, *INPUT) for n in (1, 2, 3, 1)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: Client(s.url).infer("r18", t), xs))
        for t, got in zip(xs, answers):
            want = plan(t)
            assert all((got[k] - want[k]).abs().max() < 1e-5 for k in want)
    finally:
        assert s.stop() == 0
