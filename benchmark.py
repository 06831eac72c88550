"""Measure training and inference images/s: the plain fp32 path against each fast path, in one run.

    python benchmark.py                                   # resnet34, batch 16, 224 px, auto device
    python benchmark.py --device cpu --steps 5 --json
    python benchmark.py --predict-folder bench/imgs       # whole processes: the tutorial's loop, batch_predict.py,
                                                          # --onnx fp32 and INT8; predict.py on one image
    python benchmark.py --video [clip.mp4]                # whole processes on a video: a naive loop by hand,
                                                          # video_predict.py with PyTorch, --onnx fp32 and INT8

Figures come after warm-up; the ratio column is against the plain fp32 (NCHW) path of the same run.
With --predict-folder every figure is a whole process, start-up included, and the ratio is against the
tutorial's own loop (or its predict.py, for one image) in the same run.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from helpers import deploy, devices, files, imaging, inference, weights
from model import MODELS


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Benchmark the plain and fast paths", add_help=add_help)
    p.add_argument("--model", default="resnet34", choices=list(MODELS), help="(default: %(default)s)")
    p.add_argument("--batch-size", type=cli.batch_size_arg, default=16, help="(default: %(default)s)")
    p.add_argument("--img-size", type=cli.img_size_arg, default=224, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="(default: %(default)s)")
    p.add_argument("--steps", type=cli.int_in(1, 10_000), default=5,
                   help="timed steps per path, after --warmup (default: %(default)s)")
    p.add_argument("--warmup", type=cli.int_in(0, 10_000), default=2, help="(default: %(default)s)")
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--predict-folder", default=None,
                   help="instead: time whole processes on this folder of images (made if missing): the tutorial's "
                        "loop, batch_predict.py with PyTorch, with --onnx fp32 and INT8; and predict.py on one image")
    p.add_argument("--predict-images", type=cli.int_in(1, 100_000), default=400,
                   help="images of 320-500 px made for --predict-folder when it is missing (default: %(default)s)")
    p.add_argument("--repeats", type=cli.int_in(1, 100), default=3,
                   help="runs of each one-image prediction; the median is shown (default: %(default)s)")
    p.add_argument("--loader", action="store_true",
                   help="instead: images/s of one data-loader worker, the tutorial's decoding and transforms against "
                        "ours (JPEG draft), on flower-sized photos and on 12 MP phone photos")
    p.add_argument("--loader-images", type=cli.int_in(1, 10_000), default=12, help="photos of each kind for --loader (default: %(default)s)")
    p.add_argument("--video", nargs="?", const=True, default=None, metavar="FILE",
                   help="instead: time whole processes on this video (a generated 640x480 30 fps clip when none is "
                        "given): a naive loop by hand, video_predict.py with PyTorch, with --onnx fp32 and INT8; "
                        "frames/s, and each as a share of its model's own images/s at the same batch and size")
    p.add_argument("--video-frames", type=cli.int_in(1, 100_000), default=300,
                   help="frames of the generated clip (default: %(default)s)")
    p.add_argument("--machine", action="store_true", help="only print the machine: CPU, native bf16, GPU, versions")
    p.add_argument("--naive-video", default=None, help=argparse.SUPPRESS)  # the naive loop's own process
    p.add_argument("--one-path", default=None, help=argparse.SUPPRESS)  # one path in its own process: its peak memory
    p.add_argument("--tutorial-predict", default=None, help=argparse.SUPPRESS)  # the baseline's own process
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    return p


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device, steps, warmup):
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_train(args, device, channels_last, amp):
    torch.manual_seed(0)
    net = weights.build_model(args.model, num_classes=5).to(device)
    fmt = devices.memory_format(channels_last)
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = devices.grad_scaler(device, amp)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 5, (args.batch_size,), device=device)

    def step():
        with devices.autocast(device, amp):
            loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return args.batch_size / time_steps(step, device, args.steps, args.warmup)


def bench_infer(args, device, channels_last, amp):
    net = weights.build_model(args.model, num_classes=5).to(device).eval()
    fmt = devices.memory_format(channels_last)
    net = net.to(memory_format=fmt)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=fmt)

    @torch.inference_mode()
    def step():
        with devices.autocast(device, amp):
            net(x)

    return args.batch_size / time_steps(step, device, args.steps * 2, args.warmup)


def bench_onnx(args):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    net = weights.build_model(args.model, num_classes=5).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        deploy.export_onnx(net, path, args.img_size, 17, "logits")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).numpy()
    return args.batch_size / time_steps(lambda: session.run(None, {"input": x}), torch.device("cpu"),
                                        args.steps * 2, args.warmup)


def model_paths(device):
    """(name, channels_last, amp dtype) of the plain path and of each fast one."""
    amp = devices.amp_dtype(device)
    paths = [("fp32", False, None), ("channels-last", True, None)]
    if amp is not None:
        amp_name = devices.dtype_name(amp)
        paths += [(amp_name, False, amp), (f"{amp_name} + channels-last", True, amp)]
    return paths


def one_path(args):
    """Measure one path in this process (started for it alone), so that its peak memory is its own."""
    device = devices.select_device(args.device)
    task, name = args.one_path.split(":", 1)
    if name == "onnxruntime (CPU)":
        ips = bench_onnx(args)
        if ips is None:
            raise cli.UserError("onnxruntime is not installed")
    else:
        _, cl, dt = next(p for p in model_paths(device) if p[0] == name)
        devices.reset_peak_memory(device)
        ips = (bench_train if task == "train" else bench_infer)(args, device, cl, dt)
    print(json.dumps({"images_per_s": ips, "peak_mem_mb": devices.peak_memory_mb(device)}))


def run_paths(args):
    """Every path in a process of its own: images/s, and peak memory (CUDA: the most the tensors
    held; CPU: the process's peak resident memory, torch's own ~300 MB included)."""
    device = devices.select_device(args.device)
    names = [name for name, _, _ in model_paths(device)]
    jobs = ([("train", n) for n in names] if not args.no_train else []) + [("inference", n) for n in names]
    if not args.no_onnx and importlib.util.find_spec("onnxruntime"):
        jobs.append(("inference", "onnxruntime (CPU)"))
    results = []
    for task, name in jobs:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one-path", f"{task}:{name}", "--model", args.model,
               "--batch-size", str(args.batch_size), "--img-size", str(args.img_size), "--device", str(device),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:  # the child said why in its last line (out of memory, say)
            last = (res.stderr.strip().splitlines() or ["no message"])[-1]
            raise cli.UserError(f"{task} {name}: {last.replace('error: ', '')}")
        results.append({"task": task, "path": name, **json.loads(res.stdout.strip().splitlines()[-1])})
        print(f"  {task:9} {name:26} {results[-1]['images_per_s']:8.1f} images/s "
              f"{results[-1]['peak_mem_mb']:8.0f} MB", file=sys.stderr)
    for r in results:
        base = next(b for b in results if b["task"] == r["task"] and b["path"] == "fp32")
        r["ratio"] = r["images_per_s"] / base["images_per_s"]
    return {"model": args.model, "batch_size": args.batch_size, "img_size": args.img_size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "results": results,
            "defaults": defaults_line(device)}


def defaults_line(device):
    """What train.py and the prediction scripts choose here by default, and why (the rows above)."""
    amp = devices.amp_dtype(device)
    why = {"cpu": f"native bf16: {devices.cpu_bf16_native()}"}.get(device.type, device.type)
    return (f"defaults here: mixed precision {devices.dtype_name(amp)} ({why}), channels-last "
            f"{'on' if devices.channels_last(device) else 'off'} (on CPUs and GPUs with tensor cores, where it is "
            "measured to help; --no-amp, --no-channels-last and --channels-last change them)")


# ---------------------------------------------------------------- the data loader

def make_phone_photos(folder, n, size=(4000, 3000)):
    """n 12 MP JPEGs (drawn small, then scaled up: photo-like sizes and file sizes, quickly)."""
    from helpers import demo_data
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for i in range(n):
        img = demo_data.draw_image(demo_data.CLASSES[i % 5], rng, 600).resize(size, Image.BICUBIC)
        imaging.save_image(img, folder / f"phone_{i:03d}.jpg", quality=90)


def tutorial_transforms(img_size):
    """The tutorial's: every image decoded whole by PIL, then torchvision's transforms."""
    from torchvision import transforms
    norm = [transforms.ToTensor(), transforms.Normalize(imaging.MEAN, imaging.STD)]
    train = transforms.Compose([transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip()] + norm)
    val = transforms.Compose([transforms.Resize(int(round(img_size / 0.875))), transforms.CenterCrop(img_size)] + norm)
    return train, val


def time_per_image(fn, paths, repeat=2):
    fn(paths[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        for p in paths:
            fn(p)
    return len(paths) * repeat / (time.perf_counter() - start)


def loader_benchmark(args):
    """Images/s of one worker: open, decode and transform, as a DataLoader worker does."""
    from PIL import Image
    torch.set_num_threads(1)  # a worker's share
    tut_train, tut_val = tutorial_transforms(args.img_size)
    our_train, our_val = imaging.TrainTransform(args.img_size), imaging.EvalTransform(args.img_size)

    def tutorial(tf):
        def run(p):
            with Image.open(p) as img:
                return tf(img.convert("RGB"))
        return run

    def ours(tf):
        def run(p):
            with imaging.open_image(p) as img:
                return tf(img)
        return run

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"flower-sized photos (320-500 px)": Path(tmp) / "small", "12 MP phone photos (4000x3000)": Path(tmp) / "phone"}
        make_images(sets["flower-sized photos (320-500 px)"], args.loader_images)
        make_phone_photos(sets["12 MP phone photos (4000x3000)"], args.loader_images)
        for data, folder in sets.items():
            paths = imaging.list_images(folder)
            for name, tut, our in (("train transform", tut_train, our_train), ("eval transform", tut_val, our_val)):
                torch.manual_seed(0)
                base = time_per_image(tutorial(tut), paths)
                torch.manual_seed(0)
                fast = time_per_image(ours(our), paths)
                results.append({"task": data, "path": name, "tutorial_images_per_s": base, "images_per_s": fast,
                                "ratio": fast / base})
                print(f"  {data:34} {name:16} tutorial {base:7.1f}  ours {fast:7.1f} images/s", file=sys.stderr)
    return {"task": "data loader, one worker", "model": "-", "device": "cpu", "device_name": cpu_name(),
            "date": time.strftime("%Y-%m-%d"), "results": results}


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
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


# ---------------------------------------------------------------- whole-process prediction

def tutorial_net(args, device):
    """The baselines' model, as the tutorial loads it: fp32, NCHW, nothing folded."""
    net = weights.build_model(args.model, num_classes=5)
    net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()


def tutorial_predict(args):
    """The tutorial's prediction, as the baseline, run in its own process by --predict-folder: for a
    folder, its batch_predict loop (decode one by one in the main process, fp32, NCHW, batches of 5);
    for one file, its predict.py (one image, fp32, the figure drawn with pyplot)."""
    import json as js

    from torchvision import transforms  # the tutorial's preprocessing, and its import cost
    device = devices.select_device(args.device)
    net = tutorial_net(args, device)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    classes = js.loads((Path(args.weights).parent / "class_indices.json").read_text(encoding="utf-8"))
    if Path(args.tutorial_predict).is_file():
        import matplotlib.pyplot as plt

        img = imaging.load_rgb(args.tutorial_predict)
        plt.imshow(img)
        with torch.no_grad():
            probs = torch.softmax(torch.squeeze(net(tf(img).unsqueeze(0).to(device))).cpu(), dim=0)
        best = int(torch.argmax(probs))
        plt.title(f"class: {classes[str(best)]}   prob: {float(probs[best]):.3}")
        for i in range(len(probs)):
            print(f"class: {classes[str(i)]:10}   prob: {float(probs[i]):.3}")
        plt.savefig(Path(args.weights).parent / "tutorial_predict.png")  # headless, plt.show() would do nothing
        return
    paths = imaging.list_images(args.tutorial_predict)
    bs = 5
    with torch.no_grad():
        for ids in range(len(paths) // bs):
            batch = torch.stack([tf(imaging.load_rgb(p)) for p in paths[ids * bs:(ids + 1) * bs]])
            probs = torch.softmax(net(batch.to(device)).cpu(), dim=1)
            for idx, (pro, cla) in enumerate(zip(*torch.max(probs, dim=1))):
                print(f"image: {paths[ids * bs + idx]}  class: {classes[str(int(cla))]}  prob: {float(pro):.3}")


def make_images(folder, n=400):
    """n photo-like JPEGs of 320-500 px a side, the same every time (a fixed seed)."""
    from helpers import demo_data
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(n):
        img = demo_data.draw_image(demo_data.CLASSES[i % 5], rng, rng.randint(320, 500))
        imaging.save_image(img.resize((img.width, rng.randint(320, 500))), folder / f"img_{i:03d}.jpg", quality=90)


def make_folder(folder, fill, what):
    """`folder` made whole or not at all: filled beside it under a temporary name, then renamed, so a
    full disk or Ctrl-C never leaves a partial set that a later run would take for the whole one."""
    folder = Path(folder)
    with files.made_dirs(folder.parent):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            fill(tmp)
            os.rename(tmp, folder)
        except OSError as e:
            raise cli.UserError(f"cannot make the {what} in {folder}: {e.strerror or e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def timed(cmd):
    """Seconds for a whole process, start-up included."""
    start = time.perf_counter()
    run_quietly(cmd)
    return time.perf_counter() - start


def run_quietly(cmd):
    """Run a script; a failure ends the benchmark with the script's own last line."""
    res = subprocess.run([sys.executable] + [str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise cli.UserError(f"{Path(str(cmd[0])).name} failed: {last.replace('error: ', '')}")


def trt_offered():
    try:
        import onnxruntime
    except ImportError:
        return False
    return "TensorrtExecutionProvider" in onnxruntime.get_available_providers()


def predict_folder(args):
    folder = Path(args.predict_folder)
    if folder.exists() and not folder.is_dir():
        raise cli.UserError(f"--predict-folder {folder} is a file; give a folder of images (made when missing)")
    devices.select_device(args.device)  # a wrong --device is refused before the images are made
    if not folder.is_dir():
        files.check_writable_dir(folder, "benchmark images")
        make_folder(folder, lambda tmp: make_images(tmp, args.predict_images), "benchmark images")
    if not imaging.list_images(folder):
        raise cli.UserError(f"no images in {folder}")
    paths = imaging.list_images(folder)
    n = len(paths)
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp_dir:  # throwaway weights and models, removed afterwards
        tmp = Path(tmp_dir)
        weights_path, classes, onnx32 = tmp / "w.pth", tmp / "class_indices.json", tmp / "m.onnx"
        torch.manual_seed(0)  # random weights: the speed is the same as trained ones'
        torch.save(weights.build_model(args.model, num_classes=5).state_dict(), weights_path)
        classes.write_text(json.dumps({str(i): f"class{i}" for i in range(5)}))
        model = ["--model", args.model, "--weights", weights_path, "--class-indices", classes]
        if not args.no_onnx:  # fp32 and INT8 (for the CPU), calibrated on the images themselves
            run_quietly([here / "export_onnx.py", *model, "--out", onnx32, "--int8", "--calib-dir", folder,
                         "--calib-images", "32", "--data-path", tmp / "no-data", "--check-images", folder])
        tutorial = [here / "benchmark.py", "--model", args.model, "--weights", weights_path, "--device", args.device,
                    "--tutorial-predict"]
        torch_run = [*model, "--device", args.device]
        folder_runs = [("tutorial loop (fp32, one by one, batch 5)", tutorial + [folder]),
                       ("batch_predict.py (PyTorch, batch 16)", [here / "batch_predict.py", folder, "--batch-size",
                                                                 "16", *torch_run])]
        one = paths[0]
        fig = ["--save-fig", tmp / "predict.png"]
        latency_runs = [("tutorial predict.py", tutorial + [one]),
                        ("predict.py (PyTorch)", [here / "predict.py", one, *torch_run, *fig])]
        if not args.no_onnx:
            for name, path in (("fp32", onnx32), ("INT8", onnx32.with_name("m.int8.onnx"))):
                folder_runs.append((f"batch_predict.py --onnx {name} (batch 16)",
                                    [here / "batch_predict.py", folder, "--batch-size", "16", "--onnx", path]))
                latency_runs.append((f"predict.py --onnx {name}", [here / "predict.py", one, "--onnx", path, *fig]))
        # TensorRT builds its engine on a model's first run (minutes), then loads it from the cache:
        # that first run is made untimed, as a deployment would have made it once.
        if not args.no_onnx and trt_offered():
            for _, cmd in folder_runs + latency_runs:
                if "--onnx" in cmd:
                    timed(cmd)
        results = []
        for name, cmd in folder_runs:
            seconds = timed(cmd)
            results.append({"task": f"{n} images", "path": name, "seconds": seconds, "images_per_s": n / seconds})
            print(f"  {name:48} {seconds:7.2f} s", file=sys.stderr)
        for name, cmd in latency_runs:  # the median of --repeats runs: a second is easily disturbed
            seconds = sorted(timed(cmd) for _ in range(args.repeats))[args.repeats // 2]
            results.append({"task": "one image", "path": name, "seconds": seconds, "images_per_s": 1 / seconds})
            print(f"  {name:48} {seconds:7.2f} s", file=sys.stderr)
    for r in results:
        base = next(b for b in results if b["task"] == r["task"])  # the tutorial's, first of each task
        r["ratio"] = r["images_per_s"] / base["images_per_s"]
    device = devices.select_device(args.device)
    return {"task": f"whole processes, {n} images of {folder}", "model": args.model, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "date": time.strftime("%Y-%m-%d"), "results": results}


# ---------------------------------------------------------------- video

def make_clip(path, frames=300, size=(640, 480), fps=30):
    """A clip of demo flowers, a new kind every second, each panned slowly; mp4v, which pip's OpenCV
    writes without extra libraries."""
    import numpy as np

    from helpers import demo_data, sources
    cv2 = sources.need_cv2()
    rng = random.Random(2)
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        if i % fps == 0:
            scene = np.asarray(demo_data.draw_image(demo_data.CLASSES[i // fps % 5], rng, w + fps))
        top = (scene.shape[0] - h) // 2
        out.write(cv2.cvtColor(np.ascontiguousarray(scene[top:top + h, i % fps:i % fps + w]), cv2.COLOR_RGB2BGR))
    out.release()
    return Path(path)


def naive_video(args):
    """The loop a user writes by hand, the baseline of --video, in its own process: OpenCV reads a
    frame, PIL and the tutorial's transforms, the model in fp32, one frame at a time."""
    from PIL import Image

    from helpers import sources
    cv2 = sources.need_cv2()
    device = devices.select_device(args.device)
    net = tutorial_net(args, device)
    tf = tutorial_transforms(args.img_size)[1]
    cap = cv2.VideoCapture(args.naive_video)
    n, start = 0, time.perf_counter()
    with torch.no_grad():
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            img = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))  # the careful user's RGB
            probs = torch.softmax(net(tf(img).unsqueeze(0).to(device)), dim=1)[0]
            print(f"frame {n}: class {int(probs.argmax())} prob {float(probs.max()):.3}")
            n += 1
    print(f"read {n} frames, {n / (time.perf_counter() - start):.1f} frames/s")


def model_rate(predict, batch_size, img_size, seconds=3.0):
    """Images/s of a predictor alone (a uint8 NHWC batch to probabilities), on a ready batch."""
    import numpy as np
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, img_size, img_size, 3), dtype=np.uint8)
    predict(batch)
    predict(batch)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        predict(batch)
        n += 1
    return n * batch_size / (time.perf_counter() - start)


def timed_output(cmd):
    """Seconds for a whole process, and its last line on stdout; a failure ends the benchmark."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable] + [str(c) for c in cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise cli.UserError(f"{Path(str(cmd[0])).name} failed: {last.replace('error: ', '')}")
    return seconds, (res.stdout.strip().splitlines() or [""])[-1]


def video_benchmark(args):
    """Whole processes on one video: frames/s of each (its own closing line: decoding included,
    start-up not) and of the whole process, each against its model's own images/s at the same batch
    and size, measured here afterwards."""
    import re

    from helpers import sources
    cv2 = sources.need_cv2()
    given = None if args.video is True else args.video  # --video alone: a generated clip
    if given:
        files.need_file(given, "video file")
    device = devices.select_device(args.device)
    here, bs, size = Path(__file__).resolve().parent, args.batch_size, args.img_size
    with tempfile.TemporaryDirectory() as tmp_dir:  # the clip, throwaway weights and models
        tmp = Path(tmp_dir)
        clip = Path(given) if given else make_clip(tmp / "clip.mp4", args.video_frames)
        calib = tmp / "calib"  # INT8 calibrated on frames of the clip itself
        calib.mkdir()
        cap = cv2.VideoCapture(str(clip))
        for i in range(32):
            ok, frame = cap.read()
            if not ok:
                break
            cv2.imwrite(str(calib / f"frame_{i:02d}.png"), frame)
        cap.release()
        weights_path, classes, onnx32 = tmp / "w.pth", tmp / "class_indices.json", tmp / "m.onnx"
        torch.manual_seed(0)  # random weights: the speed is the same as trained ones'
        torch.save(weights.build_model(args.model, num_classes=5).state_dict(), weights_path)
        classes.write_text(json.dumps({str(i): f"class{i}" for i in range(5)}))
        model = ["--model", args.model, "--weights", weights_path, "--class-indices", classes, "--img-size", size]
        int8 = onnx32.with_name("m.int8.onnx")
        run_quietly([here / "export_onnx.py", *model, "--out", onnx32, "--int8", "--calib-dir", calib,
                     "--calib-images", "32", "--data-path", tmp / "no-data", "--check-images", calib])
        script = [here / "video_predict.py", clip, "--no-show", "--batch-size", bs]
        runs = [("naive loop (OpenCV, PIL, tutorial transforms, fp32, 1 frame at a time)",
                 [here / "benchmark.py", "--naive-video", clip, *model[:4], "--img-size", size, "--device", device]),
                (f"video_predict.py (PyTorch, batch {bs})", script + model + ["--device", device]),
                (f"video_predict.py --onnx fp32 (batch {bs})", script + ["--onnx", onnx32, "--img-size", size]),
                (f"video_predict.py --onnx INT8 (batch {bs})", script + ["--onnx", int8, "--img-size", size])]
        if trt_offered():  # TensorRT builds its engine on the first run: made untimed, as a deployment would
            for _, cmd in runs[2:]:
                timed_output(cmd)
        results = []
        for name, cmd in runs:
            seconds, last = timed_output(cmd)
            frames, fps = int(re.search(r"read (\d+) frames", last)[1]), float(re.search(r"([\d.]+) frames/s", last)[1])
            results.append({"path": name, "frames": frames, "fps": fps, "seconds": seconds,
                            "process_fps": frames / seconds})
            print(f"  {name:72} {fps:7.1f} frames/s  ({seconds:.1f} s whole)", file=sys.stderr)
        # Each model alone, here and now, as its run fed it: the naive net at batch 1 in fp32, the others
        # through the predictor video_predict.py uses.
        plain = tutorial_net(argparse.Namespace(model=args.model, weights=weights_path), device)

        @torch.no_grad()
        def naive_model(batch):
            return net_probs(plain, batch, device)

        settings = dict(model=args.model, weights=str(weights_path), img_size=size, device=str(device), amp_dtype="auto",
                        channels_last="auto", provider="auto", trt_cache=None, batch_size=bs)
        predictors = [naive_model] + [
            inference.load_predictor(inference.settle(argparse.Namespace(**settings, onnx=o, class_indices=classes)))[0]
            for o in (None, str(onnx32), str(int8))]
        for r, predict, batch in zip(results, predictors, (1, bs, bs, bs)):
            r["model_images_per_s"] = model_rate(predict, batch, size)
            r["share"] = r["fps"] / r["model_images_per_s"]
            r["ratio"] = r["fps"] / results[0]["fps"]
    return {"task": f"whole processes on {given or f'a generated 640x480 30 fps clip of {args.video_frames} frames'}",
            "model": args.model, "batch_size": bs, "img_size": size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "results": results}


def net_probs(net, batch, device):
    x = torch.from_numpy(imaging.normalize(batch)).to(device)
    return torch.softmax(net(x), dim=1).cpu().numpy()


def print_video_report(report):
    print(f"{report['model']} at {report['img_size']} px on {report['device_name']} ({report['date']}), "
          f"{report['task']}:")
    print(f"{'path':72} {'frames/s':>9} {'whole':>8} {'model alone':>12} {'share':>6} {'ratio':>7}")
    for r in report["results"]:
        print(f"{r['path']:72} {r['fps']:9.1f} {r['process_fps']:8.1f} {r['model_images_per_s']:12.1f} "
              f"{r['share']:6.0%} {r['ratio']:6.2f}x")
    print("frames/s: the script's own loop (decoding and the model, start-up not); whole: frames / the process's "
          "seconds; share: frames/s against the model alone at the same batch and size; ratio: against the naive loop")


def main(args):
    if args.machine:
        return print(machine_line())
    if args.tutorial_predict:
        return tutorial_predict(args)
    if args.naive_video:
        return naive_video(args)
    if args.video is not None:
        report = video_benchmark(args)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(machine_line())
            print_video_report(report)
        return report
    if args.one_path:
        return one_path(args)
    if args.loader:
        report = loader_benchmark(args)
    elif args.predict_folder:
        report = predict_folder(args)
    else:
        report = run_paths(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(machine_line())
    print(f"{report['model']} on {report['device_name']} ({report['date']}):")
    if args.loader:
        print(f"{'photos':34} {'transform':16} {'tutorial':>9} {'ours':>9} {'ratio':>7}   (images/s, one worker)")
        for r in report["results"]:
            print(f"{r['task']:34} {r['path']:16} {r['tutorial_images_per_s']:9.1f} {r['images_per_s']:9.1f} "
                  f"{r['ratio']:6.2f}x")
        return report
    memory = "peak_mem_mb" in report["results"][0]
    print(f"{'task':10} {'path':48} {'seconds':>8} {'images/s':>9} {'ratio':>7}" + (f" {'peak MB':>8}" if memory else ""))
    for r in report["results"]:
        seconds = f"{r['seconds']:8.2f}" if "seconds" in r else " " * 8
        print(f"{r['task']:10} {r['path']:48} {seconds} {r['images_per_s']:9.1f} {r['ratio']:6.2f}x"
              + (f" {r['peak_mem_mb']:8.0f}" if memory else ""))
    if "defaults" in report:
        print(report["defaults"])
    return report


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
