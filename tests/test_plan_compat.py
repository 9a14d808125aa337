"""Plans written by older basisrt versions still load and give the answers they gave then
(tests/data/README.md says how the files were made)."""
from pathlib import Path

import pytest
import torch

import basisrt

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def io() -> dict:
    return torch.load(DATA / "plan_v1_io.pt")


@pytest.mark.parametrize("name, input_key, output_key", [
    ("plan_v1.basisrt", "input", "output"),
    ("plan_v1_torch.basisrt", "input", "torch_output"),
    ("plan_v1_triton.basisrt", "triton_input", "triton_output"),
])
def test_old_plan_loads_and_matches(io: dict, name: str, input_key: str, output_key: str) -> None:
    # the Triton plan was saved on the CPU (interpreter); on a GPU machine it runs on the GPU
    device = "cuda" if "triton" in name and torch.cuda.is_available() else "cpu"
    plan = basisrt.load(str(DATA / name), device=device)
    y = plan(io[input_key].to(device)).cpu()
    torch.testing.assert_close(y, io[output_key], rtol=1e-5, atol=1e-5 if device == "cuda" else 1e-6)


def test_old_native_plan_stays_native(io: dict) -> None:
    assert basisrt.load(str(DATA / "plan_v1.basisrt")).native is not None
