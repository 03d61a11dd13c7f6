#!/usr/bin/env python3
"""PyTorch reference for `cargo bench -p mistnet-edge --bench extract`: the edge's whole per-image job.

For every image of a directory, in name order: decode (PIL), letterbox to 640 px (bilinear, grey 114
padding), the yolov5s Front at cut 4 (`bench_front_torch.fused_front`: Ultralytics' modules,
BatchNorm folded, random weights), binarize (x > 0), flip each bit with probability 1/(1 + e^2)
(randomized response as `sue` at ε = 4 applies it), pack 8 bits per byte, compress with zstd
(level 3), and write the message atomically (temporary file, fsync, rename, fsync of the directory):
what `mistnet-edge extract --encoding packed --mechanism sue --epsilon 4` does per image. Needs `pip install torch numpy pillow
zstandard`. Prints the same summary line as `mistnet-edge extract`.

Usage: python tools/bench_edge_torch.py PHOTOS OUT [--threads 2]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import zstandard
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_front_torch import fused_front  # noqa: E402


def letterbox(im, size):
    r = min(size / im.width, size / im.height)
    w, h = round(im.width * r), round(im.height * r)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(im.resize((w, h), Image.BILINEAR), (round((size - w) / 2 - 0.1), round((size - h) / 2 - 0.1)))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    front = fused_front()
    os.makedirs(args.out, exist_ok=True)
    names = sorted(n for n in os.listdir(args.photos) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    zstd = zstandard.ZstdCompressor(level=3)
    rng = np.random.default_rng(1)
    flip = 1.0 / (1.0 + np.exp(2.0))
    start = time.perf_counter()
    with torch.inference_mode():
        for name in names:
            x = letterbox(Image.open(os.path.join(args.photos, name)).convert("RGB"), 640)
            bits = (front(x) > 0).numpy().reshape(-1)
            bits ^= rng.random(bits.size) < flip
            message = zstd.compress(np.packbits(bits).tobytes())
            write_atomic(os.path.join(os.path.abspath(args.out), os.path.splitext(name)[0] + ".mnf"), message)
    secs = time.perf_counter() - start
    print(f"extracted: {len(names)} images in {secs:.1f} s ({len(names) / secs:.2f} images/s, {secs * 1e3 / len(names):.1f} ms each)")


if __name__ == "__main__":
    main()
