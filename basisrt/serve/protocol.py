"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP/REST protocol) for one-input float32
models with one or more float32 outputs (a plan returning a dict, a ModelOutput or a tuple serves
each tensor as an output: by its key, or as output__i): requests parsed and checked into numpy
arrays, responses encoded, with the binary tensor extension both ways (a JSON header of
`Inference-Header-Content-Length` bytes, then each binary tensor's raw little-endian bytes in
order). Nothing here calls torch: this runs on the event loop, where a torch call costs several
microseconds (it drops and retakes the GIL)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

try:  # several times faster than json, on the event loop; the serve extra brings it (the client,
    import orjson  # which imports this module's names, runs without it, as does this module, slower)
except ImportError:
    orjson = None

INPUT_NAME = "input__0"
OUTPUT_NAME = "output__0"
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(Exception):
    """A request the server answers with `status` and {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Output:
    """One of a model's outputs: its name and its shape without the batch dimension."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class InferRequest:
    array: np.ndarray  # (N, C, H, W) float32, N >= 1 (a read-only view of the body when it came binary)
    id: str | None = None
    timeout_s: float | None = None  # parameters.timeout (microseconds in the protocol)
    binary_output: bool = False
    output_names: list[str] | None = None  # None: all of the model's outputs


def parse_infer(body: bytes, header_length: str | None, input_shape: tuple[int, ...],
                output_names: tuple[str, ...] = (OUTPUT_NAME,)) -> InferRequest:
    """One inference request for a model whose input is (-1, *input_shape) FP32 and whose outputs
    are `output_names`: a ProtocolError(400) naming what is wrong otherwise (bad JSON, name, shape,
    datatype, element count, an unknown output)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(400, f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 < n <= len(body):
            raise ProtocolError(400, f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)")
        head, binary = body[:n], len(body) - n  # the binary part's size: it is read in place, not copied
    else:
        head, binary = body, 0
    try:
        req = _loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(400, f"the request is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise ProtocolError(400, "the request must be a JSON object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"'inputs' must list exactly one tensor ({INPUT_NAME})")
    inp = inputs[0]
    if inp.get("name") != INPUT_NAME:
        raise ProtocolError(400, f"unknown input {inp.get('name')!r}; the model's input is {INPUT_NAME!r}")
    if inp.get("datatype") != "FP32":
        raise ProtocolError(400, f"input datatype {inp.get('datatype')!r} is not supported; send FP32")
    shape = inp.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise ProtocolError(400, "'shape' must be a list of integers")
    if len(shape) != 1 + len(input_shape) or tuple(shape[1:]) != tuple(input_shape) or shape[0] < 1:
        raise ProtocolError(400, f"input shape {shape} does not match the model's [-1, "
                                 f"{', '.join(map(str, input_shape))}] (with at least one row)")
    count = math.prod(shape)
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "input 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != count * 4:
            raise ProtocolError(400, f"binary_data_size {size!r} is not {count} FP32 elements ({count * 4} bytes)")
        if binary != size:
            raise ProtocolError(400, f"the body holds {binary} bytes of binary data; binary_data_size says {size}")
        array = np.frombuffer(body, dtype="<f4", offset=len(body) - size).reshape(shape)  # copied into the batch
    else:
        if binary:
            raise ProtocolError(400, "binary data after the JSON header, but no input has binary_data_size")
        data = inp.get("data")
        if not isinstance(data, list):
            raise ProtocolError(400, "input 'data' must be a list of numbers (or send binary_data_size)")
        try:
            array = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise ProtocolError(400, "input 'data' must hold only numbers") from None
        if array.dtype == object or array.size != count:
            raise ProtocolError(400, f"input 'data' holds {array.size} elements; shape {shape} needs {count}")
        array = array.reshape(shape)
    req_params = req.get("parameters") or {}
    if not isinstance(req_params, dict):
        raise ProtocolError(400, "request 'parameters' must be an object")
    timeout = req_params.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise ProtocolError(400, "parameters.timeout must be a positive number of microseconds")
    binary_output = bool(req_params.get("binary_data_output", False))
    names = None
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ProtocolError(400, "'outputs' must be a list of objects")
        names = []
        for o in outputs:
            if o.get("name") not in output_names:
                raise ProtocolError(400, f"unknown output {o.get('name')!r}; the model's outputs are "
                                         f"{', '.join(map(repr, output_names))}")
            names.append(o["name"])
            if (o.get("parameters") or {}).get("binary_data"):
                binary_output = True
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(400, "'id' must be a string")
    return InferRequest(array, rid, None if timeout is None else timeout / 1e6, binary_output, names)


def encode_infer(model: str, request: InferRequest, output: np.ndarray,
                 outputs: tuple[Output, ...] | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the response to `request`. `output`: its rows, of the model's one output,
    or with several `outputs` each row's outputs flattened and laid end to end (app.run_plan)."""
    output = output if output.dtype == np.float32 else output.astype(np.float32)
    head: dict = {"model_name": model, "model_version": "1"}
    if request.id is not None:
        head["id"] = request.id
    tensors = _unpacked(output, outputs)
    entries, binary, finite = [], b"", True
    for name in request.output_names or list(tensors):
        out = tensors[name]
        finite = finite and (request.binary_output or bool(np.isfinite(out).all()))
        entry = {"name": name, "datatype": "FP32", "shape": list(out.shape)}
        if request.binary_output:
            raw = out.astype("<f4", copy=False).tobytes()  # tobytes: C order, whatever the strides
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary += raw
        else:
            entry["data"] = out.reshape(-1).tolist()
        entries.append(entry)
    head["outputs"] = entries
    # orjson writes NaN and infinities as null, json as NaN / Infinity (what Python clients read back)
    fast = orjson is not None and finite
    text = orjson.dumps(head) if fast else json.dumps(head).encode()
    if not request.binary_output:
        return text, {"content-type": "application/json"}
    return text + binary, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def _unpacked(output: np.ndarray, outputs: tuple[Output, ...] | None) -> dict[str, np.ndarray]:
    if outputs is None or len(outputs) == 1:
        return {outputs[0].name if outputs else OUTPUT_NAME: output}
    n, tensors, start = output.shape[0], {}, 0
    for o in outputs:
        tensors[o.name] = output[:, start:start + o.size].reshape(n, *o.shape)
        start += o.size
    return tensors


def _loads(text: bytes):
    """orjson where it is installed; json where orjson refuses, which also reads NaN and Infinity
    as numbers (Python's json writes them so)."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def model_metadata(name: str, input_shape: tuple[int, ...], outputs: tuple[Output, ...]) -> dict:
    return {"name": name, "versions": ["1"], "platform": "basisrt",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]}],
            "outputs": [{"name": o.name, "datatype": "FP32", "shape": [-1, *o.shape]} for o in outputs]}
