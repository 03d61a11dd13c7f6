#!/usr/bin/env python3
"""PyTorch reference for `cargo bench -p mistnet-train --bench train_step` (cloud/train/benches/train_step.rs).

One training step of the YOLOv5 (7.0) Back on CPU or, with --device cuda, on a GPU -- modules cut..24 of yolov5s, as `load_back` builds it, fed
with random features of layer cut-1's output shape ([8, 128, 80, 80] at cut 4, 640 px, batch 8) -- timed per
phase:

  forward    the Back in train mode (BatchNorm batch statistics, running stats updated), Detect's raw outputs
  loss       YOLOv5 ComputeLoss (build_targets with anchor_t, the two neighbouring cells, CIoU box loss,
             objectness BCE against the detached IoU, class BCE, balance [4, 1, 0.4]), hyp.scratch-low gains
             scaled as train.py scales them
  backward   loss.backward()
  optimizer  torch.optim.SGD (nesterov, momentum 0.937, lr 0.01) with YOLOv5's three parameter groups
             (weights with decay 5e-4 x batch x accumulate / 64, BatchNorm weights and biases without)

The same 5 synthetic boxes per image as the Rust bench, 80 classes. Self-contained: the YOLOv5 modules and
ComputeLoss below follow ultralytics/yolov5 v7.0 (models/common.py, models/yolo.py, utils/loss.py,
utils/metrics.py bbox_iou) -- the same code shared/tests/fixtures/yolov5/make_yolov5_oracle.py imports from
the `yolov5` PyPI package -- so only torch is needed.

  python3 tools/bench_train_step_torch.py --threads 2      # --model-size s --cut 4 --imgsz 640 --batch 8 --iters 3
  python3 tools/bench_train_step_torch.py --device cuda    # each phase timed between torch.cuda.synchronize()
"""
import argparse
import math
import resource
import time

import torch
import torch.nn as nn

# yolov5{n,s,m,l,x}.yaml: (depth_multiple, width_multiple)
SIZES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
# yolov5 7.0 yolov5*.yaml: [from, number, module, args] with base channels (before width_multiple)
ARCH = [
    [-1, 1, "Conv", [64, 6, 2, 2]],  # 0-P1/2
    [-1, 1, "Conv", [128, 3, 2]],  # 1-P2/4
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],  # 3-P3/8
    [-1, 6, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],  # 5-P4/16
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [1024, 3, 2]],  # 7-P5/32
    [-1, 3, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],  # 9
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, "Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],  # cat backbone P4
    [-1, 3, "C3", [512, False]],  # 13
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],  # cat backbone P3
    [-1, 3, "C3", [256, False]],  # 17 (P3/8-small)
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 14], 1, "Concat", [1]],  # cat head P4
    [-1, 3, "C3", [512, False]],  # 20 (P4/16-medium)
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],  # cat head P5
    [-1, 3, "C3", [1024, False]],  # 23 (P5/32-large)
    [[17, 20, 23], 1, "Detect", [80, ANCHORS]],  # Detect(P3, P4, P5)
]
STRIDES = [8, 16, 32]


# ---- models/common.py (v7.0) ----
class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


# ---- models/yolo.py (v7.0), training-mode Detect ----
class Detect(nn.Module):
    def __init__(self, nc, anchors, ch):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.stride = torch.tensor(STRIDES, dtype=torch.float32)
        # grid units (pixels / stride), as Model.__init__ leaves them after check_anchor_order + division
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2) / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        for mi, s in zip(self.m, STRIDES):  # Model._initialize_biases
            b = mi.bias.view(self.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5:self.no] += math.log(0.6 / (self.nc - 0.99))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def forward(self, x):
        out = []
        for i in range(self.nl):
            y = self.m[i](x[i])
            bs, _, ny, nx = y.shape
            out.append(y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out


def make_divisible(x, divisor=8):
    return math.ceil(x / divisor) * divisor


def build_model(size, nc=80):
    """parse_model (v7.0): returns (modules, from-lists, output channels) of all 25 layers."""
    gd, gw = SIZES[size]
    layers, froms, ch = [], [], [3]
    for i, (f, n, name, args) in enumerate(ARCH):
        n = max(round(n * gd), 1) if n > 1 else n
        if name in ("Conv", "C3", "SPPF"):
            c1, c2 = ch[f], make_divisible(args[0] * gw, 8)
            if name == "C3":
                m = C3(c1, c2, n, *args[1:])
            else:
                m = (Conv if name == "Conv" else SPPF)(c1, c2, *args[1:])
        elif name == "Upsample":
            m, c2 = nn.Upsample(scale_factor=args[1], mode=args[2]), ch[f]
        elif name == "Concat":
            m, c2 = Concat(args[0]), sum(ch[x] for x in f)
        else:
            m, c2 = Detect(nc, args[1], [ch[x] for x in f]), None
        for mod in m.modules():  # utils/torch_utils.initialize_weights
            if isinstance(mod, nn.BatchNorm2d):
                mod.eps, mod.momentum = 1e-3, 0.03
        layers.append(m)
        froms.append(f)
        ch = ch + [c2] if i else [c2]
    return layers, froms, ch


class Back(nn.Module):
    """Modules cut..24, fed the output of layer cut-1 (BaseModel._forward_once from there on), as the Rust
    `load_back` splits: the Front is modules 0..cut-1."""

    def __init__(self, layers, froms, cut):
        super().__init__()
        self.cut = cut
        self.layers = nn.ModuleList(layers[cut:])
        self.froms = froms[cut:]

    def forward(self, feats):
        y = {self.cut - 1: feats}
        x = feats
        for i, (m, f) in enumerate(zip(self.layers, self.froms), self.cut):
            if f != -1:
                x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
            x = m(x)
            y[i] = x
        return x


# ---- utils/metrics.py bbox_iou (xywh, CIoU) and utils/loss.py ComputeLoss (v7.0) ----
def bbox_ciou(box1, box2, eps=1e-7):
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
    w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class ComputeLoss:
    def __init__(self, det, hyp):
        device = det.anchors.device
        self.BCEcls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
        self.BCEobj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
        self.cp, self.cn = 1.0, 0.0  # smooth_BCE(label_smoothing 0)
        self.balance = [4.0, 1.0, 0.4]
        self.gr, self.hyp = 1.0, hyp
        self.na, self.nc, self.nl, self.anchors = det.na, det.nc, det.nl, det.anchors

    def __call__(self, p, targets):
        device = targets.device
        lcls, lbox, lobj = torch.zeros(1, device=device), torch.zeros(1, device=device), torch.zeros(1, device=device)
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                pbox = torch.cat((pxy, pwh), 1)
                iou = bbox_ciou(pbox, tbox[i]).squeeze()
                lbox += (1.0 - iou).mean()
                iou = iou.detach().clamp(0).type(tobj.dtype)
                tobj[b, a, gj, gi] = iou  # gr = 1
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[range(n), tcls[i]] = self.cp
                    lcls += self.BCEcls(pcls, t)
            lobj += self.BCEobj(pi[..., 4], tobj) * self.balance[i]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = tobj.shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p, targets):
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=targets.device)
        ai = torch.arange(na, device=targets.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)
        g = 0.5
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=targets.device).float() * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i], p[i].shape
            gain[2:6] = torch.tensor(shape)[[3, 2, 3, 2]]
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                j = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t = t[j]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                l, m = ((gxi % 1 < g) & (gxi > 1)).T
                j = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[j]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[j]
            else:
                t = targets[0]
                offsets = 0
            bc, gxy, gwh, a = t.chunk(4, 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            indices.append((b, a, gj.clamp_(0, shape[2] - 1), gi.clamp_(0, shape[3] - 1)))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


def smart_optimizer(model, lr, momentum, decay):
    """utils/torch_utils.smart_optimizer (v7.0), SGD: weights with decay, BN weights and biases without."""
    g = [], [], []
    bn = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
    for v in model.modules():
        for p_name, p in v.named_parameters(recurse=False):
            if p_name == "bias":
                g[2].append(p)
            elif p_name == "weight" and isinstance(v, bn):
                g[1].append(p)
            else:
                g[0].append(p)
    opt = torch.optim.SGD(g[2], lr=lr, momentum=momentum, nesterov=True)
    opt.add_param_group({"params": g[0], "weight_decay": decay})
    opt.add_param_group({"params": g[1], "weight_decay": 0.0})
    return opt


def synthetic_targets(bs):
    """The Rust bench's boxes: [image, class, x, y, w, h], five per image spread over sizes."""
    rows = []
    for b in range(bs):
        for k in range(5):
            f = float(b * 5 + k)
            rows.append([b, (b * 7 + k * 13) % 80, 0.1 + 0.16 * k, 0.2 + 0.07 * (b % 8),
                         0.03 + 0.12 * (f % 6.0), 0.04 + 0.1 * (f % 5.0)])
    return torch.tensor(rows, dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-size", default="s", choices=sorted(SIZES))
    ap.add_argument("--cut", type=int, default=4)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuDNN as torch configures it by default)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    layers, froms, ch = build_model(args.model_size)
    back = Back(layers, froms, args.cut).train().to(device)
    det = back.layers[-1]
    # the Front's output stride: the product of the strides of layers 0..cut-1
    stride = 1
    for m in layers[:args.cut]:
        conv = m.conv if isinstance(m, Conv) else None
        stride *= conv.stride[0] if conv is not None else 1
    hw, bs = args.imgsz // stride, args.batch
    feats = torch.rand(bs, ch[args.cut - 1], hw, hw).to(device)
    targets = synthetic_targets(bs).to(device)

    nl, nc, nbs = det.nl, det.nc, 64
    hyp = {"lr0": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "box": 0.05, "cls": 0.5, "cls_pw": 1.0,
           "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}
    hyp["box"] *= 3 / nl  # train.py
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (args.imgsz / 640) ** 2 * 3 / nl
    accumulate = max(round(nbs / bs), 1)
    decay = hyp["weight_decay"] * bs * accumulate / nbs
    loss_fn = ComputeLoss(det, hyp)
    opt = smart_optimizer(back, hyp["lr0"], hyp["momentum"], decay)
    n_params = sum(1 for _ in back.parameters())
    on = f"{torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}" if cuda else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {on}: yolov5{args.model_size} Back at cut "
          f"{args.cut}: features [{bs}, {ch[args.cut - 1]}, {hw}, {hw}], {args.imgsz} px, {n_params} parameters")

    totals = [0.0] * 4
    for it in range(args.iters + 1):
        opt.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        out = back(feats)
        sync()
        t1 = time.perf_counter()
        loss, items = loss_fn(out, targets)
        sync()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        opt.step()
        sync()
        t4 = time.perf_counter()
        phases = [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
        warm = " (warm-up)" if it == 0 else ""
        print(f"step {it}{warm}: forward {phases[0] * 1e3:.0f} ms, loss {phases[1] * 1e3:.1f} ms, "
              f"backward {phases[2] * 1e3:.0f} ms, optimizer {phases[3] * 1e3:.0f} ms, "
              f"total {sum(phases) * 1e3:.0f} ms (loss {loss.item():.4f})", flush=True)
        if it > 0:
            totals = [t + p for t, p in zip(totals, phases)]
    n = max(args.iters, 1)
    mean = [t * 1e3 / n for t in totals]
    print(f"mean of {args.iters}: forward {mean[0]:.0f} ms, loss {mean[1]:.1f} ms, backward {mean[2]:.0f} ms, "
          f"optimizer {mean[3]:.0f} ms, step {sum(mean):.0f} ms")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated, "
              f"{torch.cuda.max_memory_reserved(device) / 2**20:.0f} MiB reserved")


if __name__ == "__main__":
    main()
