"""`basisrt.serve.Client`: a small client of the Open Inference Protocol v2 (binary tensors by
default), on the standard library's HTTP client."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import numpy as np
import torch

from .protocol import HEADER_LENGTH, INPUT_NAME


class InferenceError(RuntimeError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    """`Client("http://127.0.0.1:8000").infer("resnet18", x)` -> the output tensor (a dict of them,
    by name, for a model of several outputs). One keep-alive connection per client (not
    thread-safe: one client per thread)."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL, got {url!r}")
        self.host, self.port, self.timeout_s = parts.hostname, parts.port or 80, timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                r = self._conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _json(self, method: str, path: str) -> dict:
        status, _, body = self._request(method, path)
        data = json.loads(body or b"{}")
        if status != 200:
            raise InferenceError(status, data.get("error", ""))
        return data

    def ready(self) -> bool:
        return self._request("GET", "/v2/health/ready")[0] == 200

    def metadata(self, model: str) -> dict:
        return self._json("GET", f"/v2/models/{model}")

    def infer(self, model: str, x: torch.Tensor, binary: bool = True, request_id: str | None = None,
              timeout_ms: float | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's output for `x` (N, C, H, W) float32: a tensor, or a dict of tensors by name
        where the model has several outputs."""
        array = np.ascontiguousarray(x.detach().cpu().to(torch.float32).numpy())
        inp: dict = {"name": INPUT_NAME, "datatype": "FP32", "shape": list(array.shape)}
        req: dict = {"inputs": [inp], "parameters": {"binary_data_output": binary}}
        if request_id is not None:
            req["id"] = request_id
        if timeout_ms is not None:
            req["parameters"]["timeout"] = int(timeout_ms * 1000)
        headers = {"Content-Type": "application/json"}
        if binary:
            raw = array.astype("<f4", copy=False).tobytes()
            inp["parameters"] = {"binary_data_size": len(raw)}
            head = json.dumps(req).encode()
            body = head + raw
            headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
        else:
            inp["data"] = array.reshape(-1).tolist()
            body = json.dumps(req).encode()
        status, rheaders, rbody = self._request("POST", f"/v2/models/{model}/infer", body, headers)
        n = int(rheaders.get(HEADER_LENGTH, len(rbody)))
        head = json.loads(rbody[:n])
        if status != 200:
            raise InferenceError(status, head.get("error", ""))
        tensors, offset = {}, n
        for out in head["outputs"]:
            if "data" in out:
                data = np.asarray(out["data"], dtype=np.float32)
            else:
                size = out["parameters"]["binary_data_size"]
                data, offset = np.frombuffer(rbody[offset:offset + size], dtype="<f4"), offset + size
            tensors[out["name"]] = torch.from_numpy(data.reshape(out["shape"]).copy())
        return next(iter(tensors.values())) if len(tensors) == 1 else tensors
