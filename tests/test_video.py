"""video_predict.py: a generated video file, an MJPEG stream from a local http.server (as an IP
camera sends it), the frames' RGB, --onnx without torch, one line for each bad input, Ctrl-C; and
benchmark.py --video."""
import csv
import http.server
import json
import os
import random
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import benchmark
import predict
import video_predict
from helpers import cli, demo_data, deploy, imaging, inference, sources, video, weights
from conftest import ROOT, parse, run_script
from test_deploy import RUN_AND_LIST_MODULES, bench_script

cv2 = sources.cv2
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="OpenCV is not installed (pip install -r requirements-video.txt)")

COLORS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}  # RGB, in class order


def noisy(rgb, shape, rng):
    return np.clip(np.array(rgb) + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)


def color_frames(per_color=10, size=(160, 120)):
    """RGB frames: per_color of blue, then of green, then of red."""
    rng = np.random.default_rng(1)
    return [noisy(rgb, (size[1], size[0], 3), rng) for rgb in COLORS.values() for _ in range(per_color)]


def write_clip(path, frames, fps=10):
    """RGB frames as a video: MJPG in .avi, mp4v in .mp4."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v")), fps,
                          frames[0].shape[1::-1])
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()
    return path


def video_info(path):
    """(frames decoded, (width, height), fps) of a video file."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    info = n, (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return info


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="session")  # tests/test_serve.py uses it too
def color_model(tmp_path_factory):
    """resnet18 at 32 px whose classifier was trained on frames of three clearly different colours,
    on a fixed random backbone (a second to train, the same everywhere); as weights and as ONNX."""
    import torch

    base = tmp_path_factory.mktemp("colors")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    crops = np.stack([noisy(rgb, (32, 32, 3), rng) for rgb in COLORS.values() for _ in range(8)])
    labels = torch.arange(3).repeat_interleave(8)
    net = weights.build_model("resnet18", num_classes=3).eval()
    fc, net.fc = net.fc, torch.nn.Identity()
    with torch.no_grad():
        features = net(torch.from_numpy(imaging.normalize(crops)))
    net.fc = fc
    opt = torch.optim.Adam(fc.parameters(), lr=0.05)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(fc(features), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), base / "w.pth")
    (base / "class_indices.json").write_text(json.dumps({str(i): c for i, c in enumerate(COLORS)}))
    deploy.export_onnx(net, base / "m.onnx", 32)
    (base / "labels.txt").write_text("\n".join(COLORS) + "\n")
    return {"weights": base / "w.pth", "classes": base / "class_indices.json", "onnx": base / "m.onnx"}


def torch_flags(m):
    return ["--model", "resnet18", "--weights", m["weights"], "--class-indices", m["classes"], "--img-size", "32",
            "--device", "cpu"]


def onnx_flags(m):
    return ["--onnx", m["onnx"], "--img-size", "32"]


def run(*argv):
    return video_predict.main(parse(video_predict, [*argv, "--no-show"]))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """30 frames at 10 fps, 160x120: 10 blue, 10 green, 10 red."""
    return write_clip(tmp_path_factory.mktemp("clip") / "colors.mp4", color_frames())


# ---------------------------------------------------------------- video files

@needs_cv2
def test_file_every_frame_in_order_with_classes_csv_and_annotated_video(color_model, clip, tmp_path, capsys):
    run(clip, *torch_flags(color_model), "--batch-size", "4", "--topk", "2", "--csv", tmp_path / "out.csv",
        "--save", tmp_path / "out.mp4")
    rows = csv_rows(tmp_path / "out.csv")
    assert rows[0] == ["frame", "time_s", "class", "prob", "class_2", "prob_2"]
    assert [int(r[0]) for r in rows[1:]] == list(range(30))
    assert [float(r[1]) for r in rows[1:]] == pytest.approx([i / 10 for i in range(30)], abs=1e-3)
    assert [r[2] for r in rows[1:]] == ["blue"] * 10 + ["green"] * 10 + ["red"] * 10
    assert all(float(r[3]) >= float(r[5]) for r in rows[1:])
    assert video_info(tmp_path / "out.mp4") == (30, (160, 120), 10.0)  # the source's size and frame rate
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    frame = cap.read()[1]
    assert frame[:4, :4].mean() < 40 and frame[60:, :].mean() > 60  # the label's dark box, over the picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.mp4"]  # no temporary file left
    out = capsys.readouterr().out
    assert len(re.findall(r"^frame: \d+  time: [\d.]+ s  class: (blue|green|red)  prob: [\d.]+$", out, re.M)) == 30
    closing = out.strip().splitlines()[-1]
    assert re.match(r"read 30 frames, predicted 30, dropped 0, skipped 0, [\d.]+ frames/s with PyTorch on cpu.*; "
                    r"wrote .*out.csv, .*out.mp4$", closing)


@needs_cv2
def test_every_max_frames_max_seconds_and_smooth_with_onnx(color_model, clip, tmp_path, capsys):
    run(clip, *onnx_flags(color_model), "--every", "3", "--max-frames", "20", "--csv", tmp_path / "every.csv",
        "--save", tmp_path / "every.avi")
    rows = csv_rows(tmp_path / "every.csv")[1:]
    assert [int(r[0]) for r in rows] == list(range(0, 20, 3))
    assert [r[2] for r in rows] == ["blue"] * 4 + ["green"] * 3
    assert video_info(tmp_path / "every.avi")[0] == 20  # every frame read is in the video, predicted or not
    assert "read 20 frames, predicted 7, dropped 0, skipped 13, " in capsys.readouterr().out
    reader = run(clip, *onnx_flags(color_model), "--max-seconds", "1.5")
    assert (reader.read, reader.predicted) == (15, 15)  # the frames before 1.5 s of the video
    run(clip, *onnx_flags(color_model), "--smooth", "0.9", "--csv", tmp_path / "smooth.csv")
    smooth = csv_rows(tmp_path / "smooth.csv")[1:]
    # The average lags: the first green frames are still called blue, and its probability is the EMA's.
    assert smooth[10][2] == "blue" and smooth[29][2] in ("green", "red")
    raw = {int(r[0]): float(r[3]) for r in csv_rows(tmp_path / "every.csv")[1:]}
    assert float(smooth[0][3]) == pytest.approx(raw[0], abs=1e-6)


@needs_cv2
def test_min_prob_reports_unknown_frames_and_keeps_the_real_class_beside_it(color_model, clip, tmp_path, capsys):
    run(clip, *onnx_flags(color_model), "--max-frames", "6", "--min-prob", "1", "--csv", tmp_path / "u.csv")
    rows = csv_rows(tmp_path / "u.csv")
    assert rows[0][:5] == ["frame", "time_s", "prediction", "class", "prob"]
    assert [r[2] for r in rows[1:]] == ["unknown"] * 6 and [r[3] for r in rows[1:]] == ["blue"] * 6
    assert capsys.readouterr().out.count("class: unknown") == 6


@needs_cv2
def test_corrupt_frames_in_a_file_are_skipped_and_counted(color_model, tmp_path, capsys):
    path = write_clip(tmp_path / "broken.avi", color_frames(per_color=4))
    data = bytearray(path.read_bytes())
    jpegs = [m.start() for m in re.finditer(b"\xff\xd8\xff", data)]
    assert len(jpegs) == 12
    data[jpegs[5] + 2:jpegs[5] + 402] = bytes(400)  # frame 5's JPEG data destroyed
    path.write_bytes(bytes(data))
    run(path, *onnx_flags(color_model), "--csv", tmp_path / "out.csv")
    rows = csv_rows(tmp_path / "out.csv")[1:]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert float(rows[5][1]) == pytest.approx(0.6, abs=1e-3) and rows[5][2] == "green"
    assert "read 11 frames, predicted 11, dropped 0, skipped 0, corrupt 1, " in capsys.readouterr().out


@needs_cv2
def test_a_truncated_file_says_how_many_frames_it_promised_and_how_many_were_read(color_model, tmp_path, capsys):
    path = write_clip(tmp_path / "cut.avi", color_frames())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the header still promises 30 frames
    reader = run(path, *onnx_flags(color_model), "--csv", tmp_path / "out.csv")
    assert 5 < reader.read < 30 and len(csv_rows(tmp_path / "out.csv")) == reader.read + 1
    assert re.search(rf"^read {reader.read} frames of the 30 that .*cut.avi promised \(the rest could not be read",
                     capsys.readouterr().out, re.M)


@needs_cv2
def test_a_frame_is_predicted_as_predict_py_predicts_it_saved_as_png(tiny_run, tmp_path):
    """RGB, then predict.py's eval transform: the same probabilities as predict.py on the frame as a
    PNG; the same crop in OpenCV's BGR gives others."""
    rng = random.Random(3)
    frames = []
    for kind in ("daisy", "roses", "tulips", "roses"):
        img = Image.new("RGB", (200, 150), (90, 140, 70))
        img.paste(demo_data.draw_image(kind, rng, 140), (30, 5))
        frames.append(np.asarray(img))
    path = write_clip(tmp_path / "flowers.mp4", frames)
    model = ["--model", "resnet18", "--weights", tiny_run["weights"], "--class-indices", tiny_run["classes"],
             "--img-size", "32", "--device", "cpu", "--batch-size", "1"]
    run(path, *model, "--topk", "3", "--csv", tmp_path / "out.csv")
    cap = cv2.VideoCapture(str(path))
    for _ in range(2):
        bgr = cap.read()[1]  # frame 1 as OpenCV decodes it
    cv2.imwrite(str(tmp_path / "frame1.png"), bgr)  # written as a PNG keeps its colours
    (_, _, expected, _), = predict.main(parse(predict, [tmp_path / "frame1.png", *model, "--save-fig",
                                                        tmp_path / "fig.png"]))
    classes = json.loads(tiny_run["classes"].read_text())
    row = csv_rows(tmp_path / "out.csv")[2]
    got = {row[i]: float(row[i + 1]) for i in range(2, 8, 2)}
    assert row[0] == "1"
    assert [got[classes[str(i)]] for i in range(3)] == pytest.approx(expected.tolist(), abs=1e-6)
    predictor, _ = inference.load_predictor(inference.settle(parse(video_predict, [path, *model])))
    rgb = predictor(np.stack([video.model_crop(bgr, imaging.EvalTransform(32))]))[0]
    as_bgr = predictor(np.stack([imaging.EvalTransform(32).resize_crop(Image.fromarray(bgr))]))[0]
    assert rgb == pytest.approx(expected, abs=1e-6) and np.abs(as_bgr - rgb).max() > 1e-3


# ---------------------------------------------------------------- an MJPEG stream (an IP camera)

class Camera(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """An IP camera on 127.0.0.1: GET /video answers JPEG frames as multipart/x-mixed-replace, as
    MJPEG cameras do. plan: the frames each connection gets before the camera hangs up (None: until
    the client leaves); later connections are answered 503. corrupt: parts of the first connection
    sent as broken JPEG data. stall: after its frames a connection stays open and silent."""
    daemon_threads = True

    def __init__(self, frames, plan=(None,), corrupt=(), fps=100, stall=False):
        super().__init__(("127.0.0.1", 0), CameraHandler)
        self.jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in frames]
        self.plan, self.corrupt, self.fps, self.stall = list(plan), set(corrupt), fps, stall
        self.connections, self.stopped = 0, False
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/video"


class CameraHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        cam = self.server
        if self.path != "/video":
            return self.send_error(404)
        n, cam.connections = cam.connections, cam.connections + 1
        if n >= len(cam.plan):
            return self.send_error(503)
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        try:
            while not cam.stopped and (cam.plan[n] is None or i < cam.plan[n]):
                data = b"\xff\xd8broken" * 40 if n == 0 and i in cam.corrupt else cam.jpegs[i % len(cam.jpegs)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                 % (len(data), data))
                i += 1
                time.sleep(1 / cam.fps)
            while cam.stall and not cam.stopped:
                time.sleep(0.05)
        except OSError:  # the client left
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def camera():
    cameras = []

    def start(**kwargs):
        cameras.append(Camera(color_frames(), **kwargs))
        return cameras[-1]

    yield start
    for cam in cameras:
        cam.stopped = True
        cam.shutdown()
        cam.server_close()


@needs_cv2
def test_stream_predicts_the_newest_frame_up_to_max_frames(color_model, camera, tmp_path, capsys):
    cam = camera(corrupt={3})
    reader = run(cam.url, *onnx_flags(color_model), "--max-frames", "20", "--csv", tmp_path / "live.csv")
    assert reader.read == 20 and reader.corrupt == 1
    assert reader.predicted + reader.dropped + reader.skipped == 20 and reader.predicted >= 1
    rows = csv_rows(tmp_path / "live.csv")[1:]
    assert len(rows) == reader.predicted
    numbers = [int(r[0]) for r in rows]
    assert numbers == sorted(set(numbers)) and numbers[-1] <= 20 and 3 not in numbers
    times = [float(r[1]) for r in rows]
    assert times == sorted(times)
    for r in rows:  # frame n of the stream is the camera's n-th picture
        assert r[2] == list(COLORS)[int(r[0]) % 30 // 10]
    assert re.search(r"read 20 frames, predicted \d+, dropped \d+, skipped 0, corrupt 1, [\d.]+ frames/s with ONNX",
                     capsys.readouterr().out)


@pytest.fixture
def web_server(tmp_path):
    """A plain web server on 127.0.0.1 serving tmp_path/www, as a file is served over HTTP."""
    import functools

    (tmp_path / "www").mkdir()
    handler = functools.partial(QuietFiles, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield tmp_path / "www", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@needs_cv2
def test_a_video_file_over_http_is_a_file_every_frame_once_and_a_normal_end(color_model, web_server, tmp_path,
                                                                              capsys):
    www, url = web_server
    write_clip(www / "clip.avi", color_frames())
    reader = run(f"{url}/clip.avi", *onnx_flags(color_model), "--csv", tmp_path / "out.csv", "--max-frames", "60")
    rows = csv_rows(tmp_path / "out.csv")[1:]
    assert [int(r[0]) for r in rows] == list(range(30)) and reader.lost is None
    assert [float(r[1]) for r in rows] == pytest.approx([i / 10 for i in range(30)], abs=1e-3)  # the video's time
    assert [r[2] for r in rows] == ["blue"] * 10 + ["green"] * 10 + ["red"] * 10
    assert "read 30 frames, predicted 30, dropped 0, skipped 0, " in capsys.readouterr().out


@needs_cv2
def test_a_live_source_s_first_frame_is_predicted_with_the_model_loaded_before(color_model, camera, tmp_path):
    cam = camera(fps=5)
    reader = run(cam.url, *onnx_flags(color_model), "--max-frames", "3", "--csv", tmp_path / "live.csv")
    assert [int(r[0]) for r in csv_rows(tmp_path / "live.csv")[1:]] == [0, 1, 2]
    assert (reader.read, reader.predicted, reader.dropped) == (3, 3, 0)


@needs_cv2
def test_reconnects_count_in_a_row_and_a_stream_that_drops_at_once_does_not_give_them_back(color_model, camera):
    cam = camera(plan=(12,) + (2,) * 30)  # after frame 12, each connection sends two frames and hangs up
    with pytest.raises(cli.UserError, match=r"lost http://127.0.0.1:\d+/video at frame 16; 2 reconnects in a row "
                                            r"failed"):
        run(cam.url, *onnx_flags(color_model), "--reconnect", "2", "--reconnect-delay", "0.05")
    assert cam.connections == 3


@needs_cv2
def test_stream_that_drops_is_reopened(color_model, camera, capsys):
    cam = camera(plan=(12, None))
    reader = run(cam.url, *onnx_flags(color_model), "--max-frames", "25", "--reconnect", "2",
                 "--reconnect-delay", "0.1")
    assert reader.read == 25 and reader.lost is None and cam.connections == 2
    err = capsys.readouterr().err
    assert f"note: lost {cam.url} at frame 12; reconnecting (1/2) in 0.1 s" in err
    assert f"note: reconnected to {cam.url}" in err


@needs_cv2
def test_stream_lost_for_good_ends_in_one_line_with_everything_written(color_model, camera, tmp_path, capsys):
    cam = camera(plan=(10,))
    with pytest.raises(cli.UserError, match=r"lost http://127.0.0.1:\d+/video at frame 10; 1 reconnects in a row failed; "
                                            r".*live.csv and .*live.mp4 hold everything up to it"):
        run(cam.url, *onnx_flags(color_model), "--reconnect", "1", "--reconnect-delay", "0.1",
            "--csv", tmp_path / "live.csv", "--save", tmp_path / "live.mp4")
    predicted = int(re.search(r"predicted (\d+)", capsys.readouterr().out)[1])
    assert predicted >= 1 and len(csv_rows(tmp_path / "live.csv")) == predicted + 1
    assert video_info(tmp_path / "live.mp4")[:2] == (predicted, (160, 120))  # a live video holds what was predicted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.csv", "live.mp4"]


@needs_cv2
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_a_signal_leaves_a_complete_csv_and_a_playable_video(color_model, camera, tmp_path, sig):
    cam = camera(fps=50)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "video_predict.py"), cam.url, *map(str, onnx_flags(color_model)),
                             "--csv", str(tmp_path / "live.csv"), "--save", str(tmp_path / "live.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        seen = [line for _, line in zip(range(5), proc.stdout)]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and err.count("running headless") == 1
    name = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
    assert re.search(rf"^interrupted \({name}\) after \d+ frames; .*live.csv and .*live.mp4 hold everything", err, re.M)
    predicted = len(re.findall(r"^frame: ", "".join(seen) + out, re.M))
    assert predicted >= 5 and f"predicted {predicted}, " in out
    assert len(csv_rows(tmp_path / "live.csv")) == predicted + 1
    assert video_info(tmp_path / "live.mp4")[0] == predicted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.csv", "live.mp4"]


@needs_cv2
def test_sigterm_acts_within_a_second_while_a_stream_stalls(color_model, camera, tmp_path):
    """The reader thread waits in OpenCV's read for up to --timeout (10 s) on a silent stream: the stop
    does not wait for it."""
    cam = camera(plan=(5,), fps=20, stall=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "video_predict.py"), cam.url, *map(str, onnx_flags(color_model)),
                             "--csv", str(tmp_path / "live.csv")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("frame: ")
        time.sleep(0.6)  # the five frames were sent in 0.25 s: the stream is silent now
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.perf_counter() - start
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted (SIGTERM)" in err
    assert took < 1.5, took  # a second, and room for a loaded machine; it took 2.2 s when the stop waited
    assert len(csv_rows(tmp_path / "live.csv")) == int(re.search(r"predicted (\d+)", out)[1]) + 1


# ---------------------------------------------------------------- what it needs, and what not

def run_blocking(modules, script, *argv):
    """Run a script as `python script argv` would, with `modules` not importable; it lists the modules
    it imported (test_deploy's RUN_AND_LIST_MODULES)."""
    block = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-c", "import sys\n" + block + RUN_AND_LIST_MODULES.format(root=str(ROOT)),
                           str(ROOT / script), *map(str, argv)], capture_output=True, text=True, env=env, timeout=300)


@needs_cv2
def test_onnx_runs_without_torch_and_the_other_scripts_without_opencv(color_model, clip, tmp_path):
    res = run_blocking(("torch", "torchvision"), "video_predict.py", clip, *onnx_flags(color_model),
                       "--csv", tmp_path / "out.csv")
    assert res.returncode == 0, res.stderr
    assert "onnxruntime" in res.stdout.rsplit("MODULES", 1)[1].split()
    assert len(csv_rows(tmp_path / "out.csv")) == 31
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(color_frames(per_color=1)):
        Image.fromarray(f).save(frames / f"{i}.png")
    for script, *argv in (("batch_predict.py", frames), ("predict.py", frames / "0.png", "--save-fig", tmp_path / "p.png")):
        res = run_blocking(("cv2",), script, *argv, *onnx_flags(color_model), "--workers", "0")
        assert res.returncode == 0, res.stderr
    for path in sorted(ROOT.glob("*.py")) + sorted((ROOT / "helpers").glob("*.py")):  # nor do they import it
        if path.name != "sources.py":
            assert "import cv2" not in path.read_text(), path


def test_without_opencv_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sources, "cv2", None)
    with pytest.raises(cli.UserError, match=r"needs OpenCV: pip install -r requirements-video.txt"):
        run("clip.mp4")


# ---------------------------------------------------------------- bad input

@needs_cv2
def test_each_bad_source_is_one_line(color_model, camera, tmp_path, monkeypatch):
    def refused(source, match, *flags):
        with pytest.raises(cli.UserError, match=match):
            run(source, *onnx_flags(color_model), *flags)

    (tmp_path / "photo.png").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(os.urandom(5000))
    refused(tmp_path / "nope.mp4", r"video file not found: .*nope.mp4")
    refused(tmp_path, r"is a folder, not a file")
    refused(tmp_path / "photo.png", r"is an image, not a video; predict.py .*photo.png predicts it")
    refused(tmp_path / "noise.mp4", r"cannot read video .*noise.mp4: OpenCV")
    refused("99", r"cannot open camera 99: no such camera, or another program is using it")
    refused("/dev/video99", r"camera /dev/video99 not found")
    refused("ftp://127.0.0.1/x.mp4", r"ftp:// is no source this script reads")
    refused("csi://zero", r"a CSI camera is csi://N")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(f"http://127.0.0.1:{port}/video", rf"cannot reach http://127.0.0.1:{port}/video: .*refused")
    refused(f"rtsp://user:secret@127.0.0.1:{port}/live", rf"cannot reach rtsp://user:\*\*\*@127.0.0.1:{port}/live: .*refused")
    refused(camera().url.replace("/video", "/nope"), r"cannot open http://.*/nope: the server answered HTTP 404")
    with socket.socket() as silent:  # takes connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.perf_counter()
        refused(f"http://127.0.0.1:{silent.getsockname()[1]}/video", r"no answer within --timeout 0.5 s", "--timeout", "0.5")
        assert time.perf_counter() - start < 3
    refused(tmp_path / "noise.mp4", r"must end in .mp4 or .avi", "--save", tmp_path / "out.mov")
    monkeypatch.setattr(sources, "has_gstreamer", lambda: False)  # pip's OpenCV; JetPack's has it
    refused("csi://0", r"csi://0 .*needs OpenCV built with GStreamer.*JetPack's own")
    refused("videotestsrc ! videoconvert ! appsink", r"a GStreamer pipeline needs OpenCV built with GStreamer")
    assert sources.parse_source("rtsp://cam/x").live and not sources.parse_source(str(tmp_path / "noise.mp4")).live


@needs_cv2
def test_bad_source_from_the_command_line_is_one_line_on_stderr(color_model, tmp_path):
    res = run_script("video_predict.py", tmp_path / "nope.mp4", *onnx_flags(color_model))
    assert res.returncode == 1 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: video file not found:") and res.stderr.count("\n") == 1


# ---------------------------------------------------------------- benchmark.py --video

@needs_cv2
def test_video_benchmark_runs_each_path_with_valid_commands_and_shares(tmp_path, monkeypatch, capsys):
    """The commands are checked against each script's own parser, the processes faked (the other
    tests run them), and the model alone is faked too."""
    commands, exports, viewers = [], [], []

    def fake_timed(cmd, viewer=None):
        cmd = [str(c) for c in cmd]
        (exports if cmd[0].endswith("export_onnx.py") else commands).append(cmd)
        viewers.append(viewer)
        fps = 10.0 if cmd[0].endswith("naive_video.py") else 40.0
        return 2.0, f"read 60 frames, predicted 60, dropped 0, skipped 0, {fps} frames/s with something"

    monkeypatch.setattr(benchmark, "timed", fake_timed)
    monkeypatch.setattr(benchmark, "model_rate", lambda predict, batch, size: 50.0)
    monkeypatch.setattr(inference, "settle", lambda args: args)
    monkeypatch.setattr(inference, "load_predictor", lambda p: (None, "faked"))
    report = benchmark.main(parse(benchmark, ["--video", "--video-frames", "3", "--model", "resnet18",
                                              "--batch-size", "4", "--img-size", "32", "--device", "cpu"]))
    parsers = {"video_predict.py": video_predict, "naive_video.py": bench_script("naive_video")}
    for cmd in commands:
        args = parse(parsers[os.path.basename(cmd[0])], cmd[1:])
        assert args.img_size == 32 and (getattr(args, "onnx", None) or args.model == "resnet18")
    assert "--int8" in exports[0] and {os.path.basename(c[c.index("--onnx") + 1]) for c in commands
                                        if "--onnx" in c} == {"m.onnx", "m.int8.onnx"}
    assert [r["fps"] for r in report["results"]] == [10.0, 40.0, 40.0, 40.0, 40.0]
    assert [r["share"] for r in report["results"]] == [0.2, 0.8, 0.8, 0.8, 0.8]
    serving = commands[-1]  # --serve with one viewer watching its stream, beside the runs without
    assert viewers[-1] == int(serving[serving.index("--serve") + 1]) and not any(viewers[1:-1])
    assert report["results"][1]["ratio"] == 4.0 and report["results"][1]["process_fps"] == 30.0
    out = capsys.readouterr().out
    assert "640x480 30 fps clip of 3 frames" in out and "80%" in out and "4.00x" in out


@needs_cv2
def test_generated_clip_and_naive_loop(tmp_path, capsys):
    import torch

    clip = demo_data.make_clip(tmp_path / "clip.mp4", frames=4)
    assert video_info(clip) == (4, (640, 480), 30.0)
    torch.save(weights.build_model("resnet18", num_classes=5).state_dict(), tmp_path / "w.pth")
    naive = bench_script("naive_video")
    naive.main(parse(naive, [clip, "--model", "resnet18", "--weights", tmp_path / "w.pth", "--img-size", "32",
                             "--device", "cpu"]))
    out = capsys.readouterr().out
    assert len(re.findall(r"^frame \d: class \d prob ", out, re.M)) == 4
    assert re.search(r"^read 4 frames, [\d.]+ frames/s$", out, re.M)
