"""compile(..., cuda_graph=True): a plan captured as CUDA graphs (one per input shape) equals eager."""
import pytest
import torch
from nets import pruned_net

import basisrt

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graph_needs_a_cuda_plan():
    with pytest.raises(ValueError, match="cuda_graph=True needs a plan on a CUDA device.*runs on cpu"):
        basisrt.compile(pruned_net(), torch.randn(1, 3, 8, 8), cuda_graph=True)
    with pytest.raises(ValueError, match="needs a plan on a CUDA device"):  # also the Triton backend on CPU tensors
        basisrt.compile(pruned_net(), torch.randn(1, 3, 8, 8), backend="triton", cuda_graph=True)
    assert not basisrt.compile(pruned_net(), torch.randn(1, 3, 8, 8)).cuda_graph


@needs_cuda
def test_capture_and_replay_equal_eager():
    model = pruned_net().cuda()
    x = torch.randn(2, 3, 12, 10, device="cuda")
    eager = basisrt.compile(model, x)
    graphed = basisrt.compile(model, x, cuda_graph=True)
    assert graphed.cuda_graph and graphed.graphs.shapes == []
    first = graphed(x)  # captures
    assert graphed.graphs.shapes == [(2, 3, 12, 10)]
    torch.testing.assert_close(first, eager(x), rtol=1e-5, atol=1e-5)
    kept = first.clone()
    x2 = torch.randn_like(x)
    second = graphed(x2)  # replays on new data
    torch.testing.assert_close(second, eager(x2), rtol=1e-5, atol=1e-5)
    assert torch.equal(first, kept), "an earlier output changed: it aliases the graph's static buffer"
    assert second.data_ptr() != first.data_ptr()
    x4 = torch.randn(4, 3, 12, 10, device="cuda")  # another batch size: its own graph
    torch.testing.assert_close(graphed(x4), eager(x4), rtol=1e-5, atol=1e-5)
    assert graphed.graphs.shapes == [(2, 3, 12, 10), (4, 3, 12, 10)]
    with torch.no_grad():  # eager PyTorch convs may use TF32 on this GPU: ~1e-3
        torch.testing.assert_close(graphed(x), model(x), rtol=2e-3, atol=2e-3)
