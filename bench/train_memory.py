"""The table behind helpers/memory.py: an architecture's peak memory in training as a fixed part plus
a part per image, in fp32 and with 16-bit autocast (bf16; fp16 takes the same bytes), channels-last
as train.py runs, with Adam; and in fp32 inference (what --freeze-backbone's frozen layers cost per
image). Each figure is one configuration in a process of its own: its peak RSS after two steps,
torch included; the per-image part is the slope between two batch sizes. (bf16 is only meaningful
where the CPU runs it natively: elsewhere oneDNN emulates it and keeps fp32 copies.)

    python bench/train_memory.py                                 # every architecture, 224 px, fp32
    python bench/train_memory.py --models resnet34 --paths fp32 bf16 infer --img-size 160
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(model, path, batch, img_size):
    import torch
    import torch.nn as nn

    from helpers import devices, weights
    torch.manual_seed(0)
    net = weights.build_model(model, num_classes=5).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, img_size, img_size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,))
    dtype = torch.bfloat16 if path == "bf16" else None
    if path == "infer":
        net.eval()
        with torch.inference_mode():
            for _ in range(2):
                with devices.autocast(torch.device("cpu"), dtype):
                    net(x)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        for _ in range(2):
            with devices.autocast(torch.device("cpu"), dtype):
                loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, sum(p.numel() for p in net.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                                   "resnext50_32x4d", "resnext101_32x8d"])
    p.add_argument("--paths", nargs="+", default=["fp32"], choices=("fp32", "bf16", "infer"))
    p.add_argument("--batches", nargs=2, type=int, default=[4, 12])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        m, path, b, s = args.one
        print(json.dumps(one(m, path, int(b), int(s))))
        return
    import torch
    print(f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {os.cpu_count()} cores, img_size {args.img_size}, "
          f"batches {args.batches[0]} and {args.batches[1]}")
    print(f"{'model':18} {'path':6} {'params_M':>8} {'MB b%d' % args.batches[0]:>9} {'MB b%d' % args.batches[1]:>9} "
          f"{'fixed':>7} {'per_image':>9}", flush=True)
    for m in args.models:
        for path in args.paths:
            peaks = []
            for b in args.batches:
                out = subprocess.run([sys.executable, __file__, "--one", m, path, str(b), str(args.img_size)],
                                     capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
                peak, params = json.loads(out.stdout.strip().splitlines()[-1])
                peaks.append(peak)
            per = (peaks[1] - peaks[0]) / (args.batches[1] - args.batches[0])
            print(f"{m:18} {path:6} {params / 1e6:8.2f} {peaks[0]:9.0f} {peaks[1]:9.0f} "
                  f"{peaks[0] - per * args.batches[0]:7.0f} {per:9.1f}", flush=True)


if __name__ == "__main__":
    main()
