#!/usr/bin/env python3
"""The GPU run's summary (deploy/gpu/run.sh): reads the step logs, writes summary.json and summary.md.

  python3 deploy/gpu/summarize.py LOGS_DIR OUT_DIR DEVICE
"""
import json
import re
import sys
from pathlib import Path

# A CPU and a GPU run of the same epoch: per-step losses may differ by float rounding, grown over
# the SGD steps in between.
LOSS_RTOL = 1e-3
MEAN = re.compile(r"mean of (\d+): forward ([\d.]+) ms, loss ([\d.]+) ms, backward ([\d.]+) ms, "
                  r"optimizer ([\d.]+) ms, step ([\d.]+) ms")


def read(path):
    return path.read_text(errors="replace") if path.exists() else ""


def steps(logs):
    out = {}
    for line in read(logs / "steps.tsv").splitlines():
        name, rc, wall, peak = line.split("\t")
        out[name] = {"exit": rc if rc == "skipped" else int(rc), "seconds": float(wall), "gpu_mib_peak": int(peak or 0)}
    return out


def oracle(text):
    results = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    failures = re.findall(r"panicked at [^\n]*\n([^\n]*)", text)
    if not results:
        return {"ran": False}
    status, passed, failed = results[-1]
    return {"ran": True, "ok": status == "ok", "passed": int(passed), "failed": int(failed), "failures": failures[:20]}


def losses(text):
    return [float(m) for m in re.findall(r"train step.*?total_loss=([-\d.eE+]+|NaN|inf)", text)]


def train(logs):
    cpu, gpu = losses(read(logs / "train-ref.log")), losses(read(logs / "train-dev.log"))
    n = min(len(cpu), len(gpu))
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(cpu, gpu)]
    return {"steps_cpu": len(cpu), "steps_gpu": len(gpu), "loss_cpu": cpu, "loss_gpu": gpu,
            "max_rel_diff": max(rel) if rel else None, "rtol": LOSS_RTOL,
            "ok": n > 0 and len(cpu) == len(gpu) and max(rel) <= LOSS_RTOL}


def bench(text):
    m = MEAN.search(text)
    if not m:
        return None
    keys = ["iters", "forward_ms", "loss_ms", "backward_ms", "optimizer_ms", "step_ms"]
    r = dict(zip(keys, [int(m[1])] + [float(x) for x in m.groups()[1:]]))
    peak = re.search(r"peak GPU memory (\d+) MiB allocated, (\d+) MiB reserved", text)
    if peak:
        r["torch_mib_allocated"], r["torch_mib_reserved"] = int(peak[1]), int(peak[2])
    return r


def main():
    logs, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    st = steps(logs)
    s = {"device": device, "steps": st}
    s["oracle"] = {name: oracle(read(logs / f"oracle-{name}.log")) for name in ("layers", "loss", "optimizer")}
    s["train"] = train(logs)
    s["bench"] = {}
    for bs in (8, 64):
        ours, torch = bench(read(logs / f"bench-ours-b{bs}.log")), bench(read(logs / f"bench-torch-b{bs}.log"))
        ratio = torch["step_ms"] / ours["step_ms"] if ours and torch else None
        s["bench"][f"b{bs}"] = {"ours": ours, "torch": torch, "torch_over_ours": ratio,
                                "ours_gpu_mib_peak": st.get(f"bench-ours-b{bs}", {}).get("gpu_mib_peak")}
    s["job"] = st.get("job")
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")

    md = [f"# GPU run on {device}", "", "| step | exit | seconds | GPU MiB (peak, nvidia-smi) |", "| --- | --- | --- | --- |"]
    md += [f"| {k} | {v['exit']} | {v['seconds']} | {v['gpu_mib_peak']} |" for k, v in st.items()]
    md += ["", "## Oracle tests (PyTorch golden data) on the GPU", ""]
    for name, r in s["oracle"].items():
        line = f"- {name}: " + ("not run" if not r["ran"] else f"{'ok' if r['ok'] else 'FAILED'}, {r['passed']} passed, {r['failed']} failed")
        md += [line] + [f"  - {f.strip()}" for f in r.get("failures", [])]
    t = s["train"]
    md += ["", "## One train epoch, CPU against GPU", "",
           f"{t['steps_cpu']} steps on CPU, {t['steps_gpu']} on the GPU; largest relative difference of the per-step loss "
           f"{t['max_rel_diff']} (tolerance {LOSS_RTOL}): {'ok' if t['ok'] else 'NOT OK'}"]
    md += ["", "## Training step, yolov5s Back, cut 4, 640 px", "",
           "| batch | ours: forward / loss / backward / optimizer / step ms | PyTorch: step ms | PyTorch / ours | GPU MiB (ours, nvidia-smi; PyTorch allocated) |",
           "| --- | --- | --- | --- | --- |"]
    for bs, r in s["bench"].items():
        o, p = r["ours"], r["torch"]
        ours = f"{o['forward_ms']} / {o['loss_ms']} / {o['backward_ms']} / {o['optimizer_ms']} / {o['step_ms']}" if o else "no result"
        ratio = f"{r['torch_over_ours']:.2f}" if r["torch_over_ours"] else "-"
        mem = f"{r['ours_gpu_mib_peak']}; {p.get('torch_mib_allocated', '-') if p else '-'}"
        md += [f"| {bs[1:]} | {ours} | {p['step_ms'] if p else 'no result'} | {ratio} | {mem} |"]
    j = s["job"]
    md += ["", "## Whole job", "", "not run" if not j else
           f"exit {j['exit']} (124: stopped at its time cap) after {j['seconds']} s; GPU memory used at most {j['gpu_mib_peak']} MiB"]
    job_md = logs / "job-summary.md"
    if job_md.exists():
        md += ["", read(job_md)]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
