"""Measure training and inference images/s: the plain fp32 path against each fast path, in one run.

    python benchmark.py                              # resnet34, batch 16, 224 px, auto device
    python benchmark.py --device cpu --steps 5 --json
    python benchmark.py --predict-folder bench/imgs  # whole processes: the tutorial's loop against ours
    python benchmark.py --video [clip.mp4]           # whole processes on a video: a naive loop against ours
    python benchmark.py --loader                     # one data-loader worker: the tutorial's decoding against ours

The ratio is against the plain fp32 path, or the tutorial's own loop, in the same run. Our figures:
docs/benchmarks.md.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from helpers import demo_data, deploy, files, imaging, inference

HERE = Path(__file__).resolve().parent


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Benchmark the plain and fast paths", add_help=add_help)
    p.add_argument("--model", default="resnet34", choices=inference.MODEL_NAMES, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=cli.batch_size_arg, default=16, help="(default: %(default)s)")
    p.add_argument("--img-size", type=cli.img_size_arg, default=224, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="(default: %(default)s)")
    p.add_argument("--steps", type=cli.int_in(1, 10_000), default=5, help="timed steps per path (default: %(default)s)")
    p.add_argument("--warmup", type=cli.int_in(0, 10_000), default=2, help="(default: %(default)s)")
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--predict-folder", default=None,
                   help="instead: whole processes on this folder of images (made if missing), and on one of them")
    p.add_argument("--predict-images", type=cli.int_in(1, 100_000), default=400,
                   help="images made for a missing --predict-folder (default: %(default)s)")
    p.add_argument("--repeats", type=cli.int_in(1, 100), default=3,
                   help="runs of each one-image prediction; the median is shown (default: %(default)s)")
    p.add_argument("--loader", action="store_true",
                   help="instead: images/s of one data-loader worker, on flower-sized and on 12 MP phone photos")
    p.add_argument("--loader-images", type=cli.int_in(1, 10_000), default=12, help="photos of each kind (default: %(default)s)")
    p.add_argument("--video", nargs="?", const=True, default=None, metavar="FILE",
                   help="instead: whole processes on this video (default: a generated 640x480 30 fps clip)")
    p.add_argument("--video-frames", type=cli.int_in(1, 100_000), default=300, help="(default: %(default)s)")
    p.add_argument("--machine", action="store_true", help="only print the machine: CPU, native bf16, GPU, versions")
    p.add_argument("--one-path", default=None, help=argparse.SUPPRESS)  # One path, in a process of its own.
    return p


if __name__ == "__main__":
    cli.check_args_first(get_args_parser())  # before torch loads (seconds): a mistyped flag is refused at once
import torch
import torch.nn as nn

from helpers import devices, weights


def time_steps(step, device, steps, warmup):
    """Seconds per step, after warm-up; on a GPU, waits for its queue before reading the clock."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench_model(args, device, task, channels_last, amp):
    torch.manual_seed(0)
    fmt = devices.memory_format(channels_last)
    net = weights.build_model(args.model, num_classes=5).to(device).to(memory_format=fmt).train(task == "train")
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 5, (args.batch_size,), device=device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = devices.grad_scaler(device, amp)

    def step():
        with torch.inference_mode(task != "train"), devices.autocast(device, amp):
            loss = nn.functional.cross_entropy(net(x), y)
        if task == "train":
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return args.batch_size / time_steps(step, device, args.steps * (1 if task == "train" else 2), args.warmup)


def bench_onnx(args):
    ort = deploy.import_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        deploy.export_onnx(weights.build_model(args.model, num_classes=5).eval(), path, args.img_size)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).numpy()
    return args.batch_size / time_steps(lambda: session.run(None, {"input": x}), torch.device("cpu"),
                                        args.steps * 2, args.warmup)


def model_paths(device):
    """(name, channels_last, amp dtype) of the plain path and of each fast one."""
    amp = devices.amp_dtype(device)
    paths = [("fp32", False, None), ("channels-last", True, None)]
    if amp is not None:
        name = devices.dtype_name(amp)
        paths += [(name, False, amp), (f"{name} + channels-last", True, amp)]
    return paths


def one_path(args):
    """Measure one path in this process, started for it alone, so that its peak memory is its own."""
    device = devices.select_device(args.device)
    task, name = args.one_path.split(":", 1)
    if name == "onnxruntime (CPU)":
        ips = bench_onnx(args)
    else:
        _, channels_last, amp = next(p for p in model_paths(device) if p[0] == name)
        devices.reset_peak_memory(device)
        ips = bench_model(args, device, task, channels_last, amp)
    print(json.dumps({"images_per_s": ips, "peak_mem_mb": devices.peak_memory_mb(device)}))


def run_paths(args):
    """Every path in a process of its own: images/s, and peak memory (CUDA: the most the tensors
    held; CPU: the process's peak resident memory, torch's own included)."""
    device = devices.select_device(args.device)
    names = [name for name, _, _ in model_paths(device)]
    jobs = ([] if args.no_train else [("train", n) for n in names]) + [("inference", n) for n in names]
    if not args.no_onnx and importlib.util.find_spec("onnxruntime"):
        jobs.append(("inference", "onnxruntime (CPU)"))
    results = []
    for task, name in jobs:
        try:
            _, last = timed([HERE / "benchmark.py", "--one-path", f"{task}:{name}", "--model", args.model,
                             "--batch-size", args.batch_size, "--img-size", args.img_size, "--device", device,
                             "--steps", args.steps, "--warmup", args.warmup])
        except cli.UserError as e:  # Say which path failed: out of memory, say.
            raise cli.UserError(f"{task} {name}: {e}") from None
        results.append({"task": task, "path": name, **json.loads(last)})
    for r in results:
        r["ratio"] = r["images_per_s"] / next(b for b in results if b["task"] == r["task"])["images_per_s"]
    amp = devices.amp_dtype(device)
    why = f"native bf16: {devices.cpu_bf16_native()}" if device.type == "cpu" else device.type
    defaults = (f"defaults here: mixed precision {devices.dtype_name(amp)} ({why}), channels-last "
                f"{'on' if devices.channels_last(device) else 'off'} (on CPUs and GPUs with tensor cores, where it is "
                "measured to help; --no-amp, --no-channels-last and --channels-last change them)")
    return report_of(args, device, "the model alone", results, defaults=defaults)


def report_of(args, device, task, results, **more):
    return {"task": task, "model": args.model, "batch_size": args.batch_size, "img_size": args.img_size,
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "results": results, **more}


def machine_line():
    """The machine beside every figure: CPU model and cores, native bf16 or not, the GPU, versions."""
    import torchvision
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    isa = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "?")()  # ATen's kernels
    capped = " (capped by ONEDNN_MAX_CPU_ISA)" if os.environ.get("ONEDNN_MAX_CPU_ISA") else ""
    return (f"machine: {cpu_name()}, {isa} kernels | native bf16: {devices.cpu_bf16_native()}{capped} | "
            f"GPU: {', '.join(gpus) or 'none'} | "
            f"torch {torch.__version__}, torchvision {torchvision.__version__} | {time.strftime('%Y-%m-%d')}")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        return f"{model} ({os.cpu_count()} cores)"
    except (OSError, StopIteration):
        return f"CPU ({os.cpu_count()} cores)"


def make_images(folder, n=400, phone=False):
    """n photo-like JPEGs, the same every time: 320-500 px a side, or 12 MP phone photos (drawn
    small, then scaled up, which is quick)."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1 if phone else 0)
    for i in range(n):
        img = demo_data.draw_image(demo_data.CLASSES[i % 5], rng, 600 if phone else rng.randint(320, 500))
        img = img.resize((4000, 3000), Image.BICUBIC) if phone else img.resize((img.width, rng.randint(320, 500)))
        imaging.save_image(img, folder / f"{'phone' if phone else 'img'}_{i:03d}.jpg", quality=90)


def loader_benchmark(args):
    """Images/s of one worker: open, decode and transform, as a DataLoader worker does. The tutorial
    decodes every image whole; ours decodes a JPEG only as large as its crop needs."""
    from PIL import Image
    from torchvision import transforms as T
    torch.set_num_threads(1)  # One worker's share of the machine.
    norm, size = [T.ToTensor(), T.Normalize(imaging.MEAN, imaging.STD)], args.img_size
    pairs = [("train transform", T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] + norm),
              imaging.TrainTransform(size)),
             ("eval transform", T.Compose([T.Resize(int(round(size / 0.875))), T.CenterCrop(size)] + norm),
              imaging.EvalTransform(size))]

    def per_second(run, paths, repeat=2):
        run(paths[0])  # warm-up
        start = time.perf_counter()
        for p in paths * repeat:
            run(p)
        return len(paths) * repeat / (time.perf_counter() - start)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for data, phone in (("flower-sized photos (320-500 px)", False), ("12 MP phone photos (4000x3000)", True)):
            make_images(Path(tmp) / data, args.loader_images, phone)
            paths = imaging.list_images(Path(tmp) / data)
            for name, tutorial, ours in pairs:
                torch.manual_seed(0)
                base = per_second(lambda p: tutorial(Image.open(p).convert("RGB")), paths)
                torch.manual_seed(0)
                fast = per_second(lambda p: ours(imaging.open_image(p)), paths)
                results.append({"task": data, "path": name, "tutorial_images_per_s": base, "images_per_s": fast,
                                "ratio": fast / base})
                print(f"  {data:34} {name:16} tutorial {base:7.1f}  ours {fast:7.1f} images/s", file=sys.stderr)
    return report_of(args, torch.device("cpu"), "data loader, one worker", results)


def timed(cmd, viewer=None):
    """Run a script in a new Python; return its seconds, start-up included, and its last line on
    stdout. A failure ends the benchmark with the script's own last line. viewer: the port of
    video_predict.py --serve, whose stream one viewer reads to the end while it runs."""
    if viewer:
        threading.Thread(target=watch_stream, args=(viewer,), daemon=True).start()
    start = time.perf_counter()
    res = subprocess.run([sys.executable] + [str(c) for c in cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(f"  {' '.join(Path(str(c)).name for c in cmd[:3])} ... {seconds:.1f} s", file=sys.stderr)  # Progress.
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise cli.UserError(f"{Path(str(cmd[0])).name} failed: {last.replace('error: ', '')}")
    return seconds, (res.stdout.strip().splitlines() or [""])[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def watch_stream(port, wait=60):
    """One viewer of a live page's MJPEG stream, as a browser reads it, from when the port opens to the end."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(None)
                s.sendall(b"GET /stream HTTP/1.0\r\nHost: localhost\r\n\r\n")
                while s.recv(1 << 16):
                    pass
                return
        except OSError:
            time.sleep(0.02)


def throwaway_model(args, tmp, calib, img_size=None, export=True):
    """Random weights (as fast as trained ones), their class file, and their ONNX export, fp32 and
    INT8 calibrated on `calib`. Returns the model's flags and the two ONNX files."""
    torch.manual_seed(0)
    torch.save(weights.build_model(args.model, num_classes=5).state_dict(), tmp / "w.pth")
    (tmp / "class_indices.json").write_text(json.dumps({str(i): f"class{i}" for i in range(5)}))
    model = ["--model", args.model, "--weights", tmp / "w.pth", "--class-indices", tmp / "class_indices.json"]
    model += ["--img-size", img_size] if img_size else []
    if export:
        timed([HERE / "export_onnx.py", *model, "--out", tmp / "m.onnx", "--int8", "--calib-dir", calib,
               "--calib-images", "32", "--data-path", tmp / "no-data", "--check-images", calib])
    return model, tmp / "m.onnx", tmp / "m.int8.onnx"


def build_trt_engines(commands):
    """TensorRT builds its engine on a model's first run, for minutes: that run is made untimed, as a
    deployment would have made it once."""
    try:
        import onnxruntime
    except ImportError:
        return
    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        for cmd in commands:
            timed(cmd)


def predict_folder(args):
    folder = Path(args.predict_folder)
    if folder.exists() and not folder.is_dir():
        raise cli.UserError(f"--predict-folder {folder} is a file; give a folder of images (made when missing)")
    device = devices.select_device(args.device)  # A wrong --device is refused before the images are made.
    if not folder.is_dir():  # Made whole or not at all: a later run would take a partial set for the whole.
        files.check_writable_dir(folder, "benchmark images")
        with files.made_dirs(folder.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
            try:
                make_images(tmp, args.predict_images)
                os.rename(tmp, folder)
            except OSError as e:
                raise cli.UserError(f"cannot make the benchmark images in {folder}: {e.strerror or e}") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    paths = imaging.list_images(folder)
    readable = readable_images(paths, args.img_size)
    if not readable:
        raise cli.UserError(f"no images in {folder}" + (" that can be read (each is named above)" if paths else ""))
    with tempfile.TemporaryDirectory() as tmp:
        if len(readable) < len(paths):  # the runs see only the readable ones, linked into a folder of their own
            folder = Path(tmp) / folder.name
            folder.mkdir()
            for p in readable:
                try:
                    os.link(p, folder / p.name)
                except OSError:  # another file system
                    os.symlink(p.resolve(), folder / p.name)
        paths = [folder / p.name for p in readable]
        model, onnx32, int8 = throwaway_model(args, Path(tmp), folder, export=not args.no_onnx)
        tutorial = [HERE / "bench" / "tutorial_predict.py", *model[:4], "--device", args.device]
        batch = [HERE / "batch_predict.py", folder, "--batch-size", "16"]
        one = [HERE / "predict.py", paths[0], "--save-fig", Path(tmp) / "predict.png"]
        folder_runs = [("tutorial loop (fp32, one by one, batch 5)", tutorial + [folder]),
                       ("batch_predict.py (PyTorch, batch 16)", batch + model + ["--device", args.device])]
        latency_runs = [("tutorial predict.py", tutorial + [paths[0]]),
                        ("predict.py (PyTorch)", one + model + ["--device", args.device])]
        if not args.no_onnx:
            for name, path in (("fp32", onnx32), ("INT8", int8)):
                folder_runs.append((f"batch_predict.py --onnx {name} (batch 16)", batch + ["--onnx", path]))
                latency_runs.append((f"predict.py --onnx {name}", one + ["--onnx", path]))
            build_trt_engines([cmd for _, cmd in folder_runs + latency_runs if "--onnx" in cmd])
        results = []
        for name, cmd in folder_runs:
            seconds = timed(cmd)[0]
            results.append({"task": f"{len(paths)} images", "path": name, "seconds": seconds,
                            "images_per_s": len(paths) / seconds})
        for name, cmd in latency_runs:  # The median of --repeats runs: one second is easily disturbed.
            seconds = sorted(timed(cmd)[0] for _ in range(args.repeats))[args.repeats // 2]
            results.append({"task": "one image", "path": name, "seconds": seconds, "images_per_s": 1 / seconds})
    for r in results:  # Against the tutorial's, the first row of each task.
        r["ratio"] = r["images_per_s"] / next(b for b in results if b["task"] == r["task"])["images_per_s"]
    return report_of(args, device, f"whole processes, {len(paths)} images of {folder}", results)


def readable_images(paths, img_size):
    """The images that decode; each other one is named and skipped, as batch_predict.py does (the
    tutorial's loop, one of the runs timed, would stop at it)."""
    readable = []
    for indices, _, errors in inference.decode_batches(paths, img_size, batch_size=64):
        readable += [paths[i] for i in indices]
        for _, error in errors:
            print(f"skipped: {error}", file=sys.stderr)
    return readable


def model_rate(predict, batch_size, img_size):
    """Images/s of a predictor alone (a uint8 NHWC batch to probabilities), on a ready batch."""
    import numpy as np
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, img_size, img_size, 3), dtype=np.uint8)
    return batch_size / time_steps(lambda: predict(batch), torch.device("cpu"), steps=30, warmup=2)


def video_benchmark(args):
    """Whole processes on one video: each one's frames/s (its own closing line: decoding included,
    start-up not) and the whole process's, against its model's own images/s, measured afterwards."""
    given = None if args.video is True else files.need_file(args.video, "video file")
    device = devices.select_device(args.device)
    bs, size = args.batch_size, args.img_size
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip = given or demo_data.make_clip(tmp / "clip.mp4", args.video_frames)
        make_images(tmp / "calib", 32)  # INT8's speed does not depend on the images it is calibrated on.
        model, onnx32, int8 = throwaway_model(args, tmp, tmp / "calib", size)
        script = [HERE / "video_predict.py", clip, "--no-show", "--batch-size", bs]
        runs = [("naive loop (OpenCV, PIL, tutorial transforms, fp32, 1 frame at a time)",
                 [HERE / "bench" / "naive_video.py", clip, *model[:4], "--img-size", size, "--device", device]),
                (f"video_predict.py (PyTorch, batch {bs})", script + model + ["--device", device]),
                (f"video_predict.py --onnx fp32 (batch {bs})", script + ["--onnx", onnx32, "--img-size", size]),
                (f"video_predict.py --onnx INT8 (batch {bs})", script + ["--onnx", int8, "--img-size", size]),
                (f"video_predict.py --onnx fp32 --serve, 1 viewer (batch {bs})",
                 script + ["--onnx", onnx32, "--img-size", size, "--serve", free_port()])]
        build_trt_engines([cmd for _, cmd in runs[2:]])
        results = []
        for name, cmd in runs:
            seconds, last = timed(cmd, viewer=cmd[-1] if "--serve" in cmd else None)
            frames, fps = int(re.search(r"read (\d+) frames", last)[1]), float(re.search(r"([\d.]+) frames/s", last)[1])
            results.append({"path": name, "frames": frames, "fps": fps, "seconds": seconds,
                            "process_fps": frames / seconds})
        # Each model alone, fed as its run fed it: the naive net at batch 1 in fp32, the others
        # through the predictor that video_predict.py uses.
        plain = weights.build_model(args.model, num_classes=5)
        plain.load_state_dict(torch.load(tmp / "w.pth", map_location="cpu", weights_only=True))
        plain.to(device).eval()

        @torch.no_grad()
        def naive_model(batch):
            return torch.softmax(plain(torch.from_numpy(imaging.normalize(batch)).to(device)), dim=1).cpu().numpy()

        settings = dict(model=args.model, weights=str(tmp / "w.pth"), img_size=size, device=str(device),
                        amp_dtype="auto", channels_last="auto", provider="auto", trt_cache=None, batch_size=bs,
                        class_indices=tmp / "class_indices.json")
        predictors = [naive_model] + [inference.load_predictor(inference.settle(argparse.Namespace(**settings, onnx=o)))[0]
                                      for o in (None, str(onnx32), str(int8))]
        predictors.append(predictors[2])  # --serve's run predicts with the fp32 ONNX model
        for r, predict, batch in zip(results, predictors, (1, bs, bs, bs, bs)):
            r["model_images_per_s"] = model_rate(predict, batch, size)
            r["share"] = r["fps"] / r["model_images_per_s"]
            r["ratio"] = r["fps"] / results[0]["fps"]
    return report_of(args, device, f"whole processes on {given or f'a generated 640x480 30 fps clip of {args.video_frames} frames'}",
                     results)


FORMATS = {"frames": "{:d}", "seconds": "{:.2f}", "share": "{:.0%}", "ratio": "{:.2f}x", "peak_mem_mb": "{:.0f}"}


def print_report(report):
    """The machine and the run, then a table: one column for each figure, one row for each path."""
    print(machine_line())
    print(f"{report['model']} at {report['img_size']} px on {report['device_name']} ({report['date']}), "
          f"{report['task']}:")
    keys = list(report["results"][0])
    text = [isinstance(report["results"][0][k], str) for k in keys]  # Text is left-aligned, figures right.
    rows = [[r[k] if t else FORMATS.get(k, "{:.1f}").format(r[k]) for k, t in zip(keys, text)]
            for r in report["results"]]
    widths = [max(len(k), *(len(row[i]) for row in rows)) for i, k in enumerate(keys)]
    for row in [keys] + rows:
        print("  ".join(c.ljust(w) if t else c.rjust(w) for c, w, t in zip(row, widths, text)))
    if report.get("defaults"):
        print(report["defaults"])


def main(args):
    if args.machine:
        return print(machine_line())
    if args.one_path:
        return one_path(args)
    if args.video is not None:
        report = video_benchmark(args)
    elif args.loader:
        report = loader_benchmark(args)
    else:
        report = predict_folder(args) if args.predict_folder else run_paths(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return report


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
