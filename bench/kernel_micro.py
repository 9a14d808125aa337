"""Single-kernel timings on this machine, ours against oneDNN (PyTorch's conv on channels_last),
for the kernel fixes recorded in bench/RESULTS.md. Run alone: `python bench/kernel_micro.py`."""
import time

import torch
import torch.nn.functional as F

from basisrt import _C
from basisrt.compiler.cpu_steps import FusedConv2d


def ms(fn, reps: int = 30) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def case(cin, cout, k, stride, hw, rank=0, groups=1, act=None):
    torch.manual_seed(0)
    w = torch.randn(rank or cout, cin // groups, k, k)
    scale = torch.randn(cout, rank) if rank else None
    step = FusedConv2d(w, None, stride=(stride, stride), padding=(k // 2, k // 2), dilation=(1, 1), groups=groups,
                       scale=scale, activation=act, num_threads=2)
    x = torch.randn(1, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    wl = w.contiguous(memory_format=torch.channels_last)
    ours = ms(lambda: step(x))
    ref = "" if rank or act else f", oneDNN {ms(lambda: F.conv2d(x, wl, None, stride, k // 2, 1, groups)):.3f} ms"
    print(f"c_in {cin} c_out {cout} k{k} s{stride} {hw}x{hw} rank {rank} groups {groups} act {act}: "
          f"ours {ours:.3f} ms{ref}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    print("simd path:", _C.simd_path())
    case(3, 64, 7, 2, 224)                      # ResNet stem
    case(3, 32, 3, 2, 224)                      # MobileNet / EfficientNet stem
    case(64, 64, 3, 1, 56)                      # dense 3x3
    case(64, 256, 1, 1, 56)                     # dense 1x1
    case(64, 64, 3, 1, 56, rank=6)              # low-rank pair
    case(16, 96, 1, 1, 112, rank=2)             # tiny-rank pair (EfficientNet / MobileNetV2 expand at r10)
    case(16, 96, 1, 1, 112, rank=2, act="silu")
    for c, hw, s in [(32, 112, 1), (144, 56, 1), (144, 56, 2), (384, 14, 1), (960, 7, 1)]:
        case(c, c, 3, s, hw, groups=c)          # depthwise
