#!/usr/bin/env python3
"""Convert an Ultralytics YOLOv5 checkpoint (.pt, a pickled Model object) to safetensors.

The state-dict key names are kept (`model.0.conv.weight`, ..., `model.24.anchors`), which is what
mistnet's `--weights` expects. Needs `pip install torch yolov5 safetensors` (yolov5 provides the
classes the pickle refers to).

Usage: python tools/convert_ultralytics.py yolov5s.pt yolov5s.safetensors [--shards N]
"""
import argparse

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--shards", type=int, default=1, help="split the tensors over N files (out-0000i-of-0000N)")
    args = ap.parse_args()
    import yolov5  # noqa: F401  (registers the module path the pickle refers to)

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model = ckpt.get("ema") or ckpt["model"] if isinstance(ckpt, dict) else ckpt
    state = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in model.float().state_dict().items()}
    keys = sorted(state)
    if args.shards <= 1:
        save_file(state, args.out)
        print(f"wrote {len(keys)} tensors to {args.out}")
        return
    per = -(-len(keys) // args.shards)
    stem = args.out[:-len(".safetensors")] if args.out.endswith(".safetensors") else args.out
    for i in range(args.shards):
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        name = f"{stem}-{i + 1:05d}-of-{args.shards:05d}.safetensors"
        save_file(part, name)
        print(f"wrote {len(part)} tensors to {name}")


if __name__ == "__main__":
    main()
