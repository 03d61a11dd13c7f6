#!/usr/bin/env python3
"""PyTorch reference for `cargo bench -p mistnet --bench front`: the yolov5s Front at cut 4.

Builds YOLOv5 7.0 layers 0-3 of yolov5s (Conv 6x6/2, Conv 3x3/2, C3 x1, Conv 3x3/2; the same modules
as Ultralytics' models/common.py) with random weights, folds BatchNorm into the convolutions as
Ultralytics' `model.fuse()` does, and times one 640x640 image, batch 1, in inference mode.
Needs `pip install torch numpy pillow`. Prints the median time and the process's peak RSS.

Usage: python tools/bench_front_torch.py [--threads 2] [--iters 30]
"""
import argparse
import resource
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def fuse(self):
        w = self.conv.weight
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                          self.conv.stride, self.conv.padding, bias=True)
        fused.weight.data = w * scale.view(-1, 1, 1, 1)
        fused.bias.data = self.bn.bias - self.bn.running_mean * scale
        self.conv, self.bn = fused, nn.Identity()


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 1), Conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C3(nn.Module):
    def __init__(self, c1, c2, n=1):
        super().__init__()
        c_ = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_), Conv(c1, c_), Conv(2 * c_, c2)
        self.m = nn.Sequential(*(Bottleneck(c_) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


def letterbox(path, size):
    im = Image.open(path).convert("RGB")
    r = min(size / im.width, size / im.height)
    w, h = round(im.width * r), round(im.height * r)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(im.resize((w, h), Image.BILINEAR), (round((size - w) / 2 - 0.1), round((size - h) / 2 - 0.1)))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def fused_front():
    """The yolov5s Front at cut 4 with random weights (seeded), BatchNorm folded, in eval mode."""
    torch.manual_seed(0)
    front = nn.Sequential(Conv(3, 32, 6, 2, 2), Conv(32, 64, 3, 2), C3(64, 64, 1), Conv(64, 128, 3, 2)).eval()
    for m in front.modules():
        if isinstance(m, Conv):
            m.fuse()
    return front


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--image", default="shared/tests/fixtures/images/astronaut.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    front = fused_front()
    x = letterbox(args.image, 640)
    with torch.inference_mode():
        for _ in range(3):
            front(x)
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            y = front(x)
            times.append((time.perf_counter() - t) * 1e3)
    assert tuple(y.shape) == (1, 128, 80, 80)
    times.sort()
    med = times[len(times) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {torch.__version__} front yolov5s cut4 640 bs1: median {med:.2f} ms, min {times[0]:.2f} ms, "
          f"{1e3 / med:.1f} images/s, peak RSS {rss:.1f} MB")


if __name__ == "__main__":
    main()
