"""video_predict.py --serve and --collect: the live page and its MJPEG stream on a generated video and on
a local MJPEG camera, viewers that stall or crowd, collecting raw frames, who may get in; and a real
headless Chromium driven through chromedriver's W3C WebDriver HTTP API (urllib only)."""
import base64
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from helpers import cli, serve, sources
from conftest import ROOT, run_main
from test_deploy import RUN_AND_LIST_MODULES
from test_video import COLORS, camera, clip, color_model, csv_rows, needs_cv2, onnx_flags, run  # noqa: F401 (fixtures)

cv2 = sources.cv2
pytestmark = needs_cv2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, thread, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end and thread.is_alive():
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"nothing listens on port {port}")


class Run:
    """video_predict.py's main() in a thread (signals stay with the test's thread), with --serve on a
    free port of 127.0.0.1; .result is what main returned (the Reader) or raised."""

    def __init__(self, *argv):
        self.port, self.result = free_port(), None
        self.base = f"http://127.0.0.1:{self.port}"

        def work():
            try:
                self.result = run(*argv, "--serve", str(self.port))
            except BaseException as e:  # noqa: B036 (handed to the test)
                self.result = e

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        wait_for_port(self.port, self.thread)

    def join(self):
        self.thread.join(60)
        assert not self.thread.is_alive()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def get(url, data=None, headers=None):
    """(status, headers, body) of a request, errors included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw_request(port, text):
    """The status line's code of a request sent byte for byte (no client tidies its path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(text.encode("latin-1"))
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split()[1])


def mjpeg(port, n, query=""):
    """The first n frames of /stream, decoded (BGR)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stream" + query)
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
    frames = []
    while len(frames) < n:
        assert r.fp.readline() == b"--frame\r\n"
        head = {}
        for line in iter(r.fp.readline, b"\r\n"):
            key, _, value = line.decode().partition(":")
            head[key.lower()] = value.strip()
        assert head["content-type"] == "image/jpeg"
        data = r.fp.read(int(head["content-length"]))
        assert r.fp.read(2) == b"\r\n"
        frames.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    conn.close()
    return frames


def colour_of(bgr):
    """The class whose colour the picture's lower part shows (the label box sits at the top)."""
    mean = bgr[60:, :, ::-1].reshape(-1, 3).mean(0)
    return min(COLORS, key=lambda c: np.abs(mean - COLORS[c]).sum())


def annotated(bgr):
    return bgr[:4, :4].mean() < 40 and bgr[60:].mean() > 60  # the label's dark box, over the picture


# ---------------------------------------------------------------- the page and the stream

@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """300 frames, 160x120: a file that lasts long enough to be watched."""
    from test_video import color_frames, write_clip
    return write_clip(tmp_path_factory.mktemp("long") / "long.avi", color_frames() * 10)


def test_page_status_and_stream_of_a_video_file(color_model, long_clip, tmp_path):
    live = Run(long_clip, *onnx_flags(color_model), "--csv", tmp_path / "out.csv", "--save", tmp_path / "out.avi")
    frames = mjpeg(live.port, 3)
    status, headers, body = get(live.base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert re.search(rb'<img id="live" src="/stream\?token=[\w-]+"', body)
    state = json.loads(get(live.base + "/status")[2])
    reader = live.join()
    assert reader.read == 300 and len(csv_rows(tmp_path / "out.csv")) == 301  # the CSV and the video as ever
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.avi", "out.csv"]
    for f in frames:
        assert f.shape == (120, 160, 3) and annotated(f)
    assert state["source"] == str(long_clip) and state["model"] == str(color_model["onnx"])
    assert state["runs_on"].startswith("ONNX Runtime") and state["classes"] is None
    assert len(state["topk"]) == 1 and state["topk"][0][0] in COLORS and state["frame"] > 0


def test_stream_of_a_camera_and_collecting_its_raw_frames(color_model, camera, tmp_path):
    """The annotated frames on the page; a click saves the frame as the camera sent it (no label) into
    the class's folder, atomically, under a new name each time; a class folder already there gets a button."""
    (tmp_path / "photos" / "purple").mkdir(parents=True)
    (tmp_path / "photos" / "purple" / "old.jpg").write_bytes(b"mine")
    cam = camera(fps=30)
    live = Run(cam.url, *onnx_flags(color_model), "--reconnect", "0", "--collect", tmp_path / "photos",
               "--csv", tmp_path / "live.csv")
    frames = mjpeg(live.port, 3)
    assert all(annotated(f) for f in frames)
    page = get(live.base + "/")[2].decode()
    token = re.search(r'action="/collect\?token=([\w-]+)"', page)[1]
    assert re.findall(r'<button name="class" value="(\w+)">', page) == ["blue", "green", "red", "purple"]
    assert get(live.base + "/collect", b"class=red")[0] == 403  # collecting needs the token, even on loopback
    saved = []
    for name in ("red", "red", "green"):
        status, _, body = get(f"{live.base}/collect?token={token}", f"class={name}".encode(),
                              {"Accept": "application/json"})
        assert status == 200, body
        saved.append(json.loads(body)["saved"])
    state = json.loads(get(live.base + "/status")[2])
    assert state["classes"] == {"blue": 0, "green": 1, "red": 2, "purple": 1} and state["last_saved"] == saved[-1]
    assert 0 < state["fps_predicted"] <= state["fps_read"] and state["source"] == cam.url
    assert get(f"{live.base}/thumb")[0] == 200
    status, headers, _ = get(f"{live.base}/collect?token={token}", b"class=blue")  # a form, without the script
    assert status == 200 and headers["Content-Type"].startswith("text/html")  # redirected back to the page
    assert get(f"{live.base}/collect?token={token}", b"class=..")[0] == 400
    cam.stopped = True  # the camera hangs up: the run ends, its files kept
    with pytest.raises(cli.UserError, match=r"lost http://127.0.0.1:\d+/video at frame \d+.*live.csv hold"):
        live.join()
    red = sorted((tmp_path / "photos" / "red").iterdir())
    assert [p.name for p in red] == sorted(os.path.basename(s) for s in saved[:2]) and len(set(saved)) == 3
    assert all(re.fullmatch(r"\d{8}-\d{6}\.\d{3}_f\d{6}(_\d+)?\.jpg", p.name) for p in red)
    for path in red + list((tmp_path / "photos" / "green").iterdir()):
        raw = cv2.imread(str(path))
        assert raw.shape == (120, 160, 3) and not annotated(raw)  # the raw frame, not the annotated one
        assert raw[:12, :].mean() > 60  # no label box anywhere at the top
    assert sorted(p.name for p in (tmp_path / "photos").rglob(".*")) == []  # no temporary file left
    assert (tmp_path / "photos" / "purple" / "old.jpg").read_bytes() == b"mine"


def test_a_stalled_viewer_does_not_slow_prediction(color_model, camera, tmp_path):
    """A viewer that reads nothing: the CSV's frames per second stay within 10% of those of a run without
    it, at the same time from the same camera (so that the machine's load is the same for both), and that
    viewer was sent only the few frames its buffers held."""
    cam = camera(fps=25, plan=(None, None))
    runs = {name: Run(cam.url, *onnx_flags(color_model), "--max-seconds", "2", "--csv", tmp_path / f"{name}.csv")
            for name in ("alone", "stalled")}
    viewer = socket.socket()
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, soon full
    viewer.connect(("127.0.0.1", runs["stalled"].port))
    viewer.sendall(b"GET /stream HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    rows = {}
    for name, live in runs.items():
        live.join()
        rows[name] = len(csv_rows(tmp_path / f"{name}.csv")) - 1  # frames predicted in the run's 2 s
    with viewer, viewer.makefile("rb") as f:
        sent = f.read().count(b"--frame\r\n")  # what it was sent, read only now
    assert rows["stalled"] >= 0.9 * rows["alone"], rows
    assert 0 < sent < rows["stalled"] / 2, (sent, rows)


@pytest.mark.parametrize("sig", [signal.SIGHUP], ids=["sighup"])
def test_a_signal_stops_the_server_with_the_rest_without_torch(color_model, camera, tmp_path, sig):
    """A closed SSH session (SIGHUP; Ctrl-C and SIGTERM take the same path, stop.deferred) with a viewer
    watching: the server stops, the CSV and the video are kept; --onnx runs without torch."""
    cam, port = camera(fps=50), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    block = "".join(f"sys.modules[{m!r}] = None\n" for m in ("torch", "torchvision"))
    proc = subprocess.Popen([sys.executable, "-c", "import sys\n" + block + RUN_AND_LIST_MODULES.format(root=str(ROOT)),
                             str(ROOT / "video_predict.py"), cam.url, *map(str, onnx_flags(color_model)),
                             "--serve", str(port), "--csv", str(tmp_path / "live.csv"),
                             "--save", str(tmp_path / "live.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        seen = [line for _, line in zip(range(3), proc.stdout)]
        assert annotated(mjpeg(port, 1)[0])
        viewer = socket.create_connection(("127.0.0.1", port))
        viewer.sendall(b"GET /stream HTTP/1.0\r\nHost: localhost\r\n\r\n")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode == 128 + sig, err
    assert re.search(rf"^interrupted \({signal.Signals(sig).name}\) after \d+ frames; .*live.csv and .*live.mp4 hold",
                     err, re.M) and "Traceback" not in err
    assert "onnxruntime" in out.rsplit("MODULES", 1)[1].split()  # and torch could not be imported
    predicted = len(re.findall(r"^frame: ", "".join(seen) + out, re.M))
    assert len(csv_rows(tmp_path / "live.csv")) == predicted + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.csv", "live.mp4"]
    with viewer, socket.socket() as s:
        assert viewer.makefile("rb").read().startswith(b"HTTP/1.0 200")  # its stream ended with the run
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more


# ---------------------------------------------------------------- who gets in, and how many

@pytest.fixture
def page(tmp_path):
    """A Page on its own, fed one frame: what video_predict.py's loop does for it."""
    def start(host="127.0.0.1", collect=None):
        p = serve.Page((host, free_port()), ["a", "b"], collect, "camera 0", "m.onnx")
        stack.append(p.serving("ONNX Runtime"))
        stack[-1].__enter__()
        frame = np.full((48, 64, 3), 200, np.uint8)
        p.show(types.SimpleNamespace(image=frame, index=0), frame.copy(), [("a", 0.9)],
               types.SimpleNamespace(read=1, predicted=1))
        return p

    stack = []
    yield start
    for s in stack:
        s.__exit__(None, None, None)


def test_eight_viewers_at_once_and_a_ninth_told_to_wait(page):
    p = page()
    conns = []
    for _ in range(8):
        conns.append(http.client.HTTPConnection("127.0.0.1", p.port, timeout=10))
        conns[-1].request("GET", "/stream")
        r = conns[-1].getresponse()
        assert r.status == 200 and r.fp.readline() == b"--frame\r\n"
    status, headers, _ = get(f"http://127.0.0.1:{p.port}/stream")
    assert status == 503 and headers["Retry-After"]
    assert get(f"http://127.0.0.1:{p.port}/status")[0] == 200  # the page itself still answers
    for conn in conns[:2]:
        conn.close()  # two tabs closed: their threads notice within a few seconds
    start = time.monotonic()
    while (code := raw_request(p.port, "GET /stream HTTP/1.0\r\nHost: localhost\r\n\r\n")) == 503:
        assert time.monotonic() < start + 5
        time.sleep(0.2)
    assert code == 200
    for conn in conns[2:]:
        conn.close()


def test_a_token_on_another_address_and_only_the_servers_own_paths(page, tmp_path, capsys):
    p = page("0.0.0.0", collect=tmp_path / "photos")
    assert re.search(rf"note: the live page is at http://\S+:{p.port}/\?token={p.token} ", capsys.readouterr().err)
    base = f"http://127.0.0.1:{p.port}"
    for path in ("/", "/stream", "/status", "/thumb", f"/?token={p.token[:-1]}"):
        assert get(base + path)[0] == 403, path
    assert get(f"{base}/status?token={p.token}")[0] == 200
    assert get(f"{base}/collect", b"class=a")[0] == 403
    assert get(f"{base}/collect?token={p.token}", b"class=a")[0] == 200 and len(list(tmp_path.rglob("*.jpg"))) == 1
    (tmp_path / "photos" / "b").write_bytes(b"")  # a file where a class's folder goes: refused, the run goes on
    assert get(f"{base}/collect?token={p.token}", b"class=b")[0] == 503
    err = capsys.readouterr().err
    assert re.fullmatch(r"warning: --collect: cannot save \S+photos/b/\S+\.jpg: .*\n", err), err
    with pytest.raises(cli.UserError, match=r"--collect: \S+photos/b is a file; a class's path must be a folder"):
        serve.Page(("127.0.0.1", free_port()), ["a", "b"], tmp_path / "photos", "camera 0", "m.onnx")
    for path in ("/..", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/stream/..%2f..%2fetc%2fpasswd",
                 "/%2fetc%2fpasswd", "//etc/passwd", "/etc/passwd", "http://127.0.0.1/etc/passwd", "/helpers/",
                 "/video_predict.py", "/./status"):
        assert raw_request(p.port, f"GET {path}?token={p.token} HTTP/1.0\r\n\r\n") == 404, path
    assert raw_request(p.port, f"GET /?token={p.token}&{'x' * 5000} HTTP/1.0\r\n\r\n") == 414
    big = f"POST /collect?token={p.token} HTTP/1.0\r\nContent-Length: 100000\r\n\r\n"
    assert raw_request(p.port, big) == 413  # refused before its body is read
    assert raw_request(p.port, f"POST /collect?token={p.token} HTTP/1.0\r\n\r\nclass=a") == 411


def test_on_loopback_a_foreign_host_header_needs_the_token(page, capsys, monkeypatch):
    """A page on 127.0.0.1 opens without the token, but not under another host's name (DNS rebinding)."""
    monkeypatch.setattr(serve, "REQUEST_SECONDS", 1.0)
    p, other = page(), page("127.0.0.2")
    assert f"ssh -L {other.port}:127.0.0.2:{other.port} HOST" in capsys.readouterr().err  # the address it binds
    slow = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(serve.CONNECTIONS)]
    for s in slow:
        s.sendall(b"GET /status HTTP/1.0\r\n")  # then a header line now and then: each dropped at its deadline
    assert raw_request(p.port, "GET /status HTTP/1.0\r\n\r\n") == 503
    for _ in range(6):
        time.sleep(0.25)
        for s in slow:
            with contextlib.suppress(OSError):
                s.sendall(b"X-Slow: 1\r\n")
    assert raw_request(p.port, "GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n") == 200
    for s in slow:
        s.close()
    for _ in range(5):  # viewers that leave at once, before the answer: no traceback
        with socket.create_connection(("127.0.0.1", p.port)) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a polite close
    time.sleep(0.2)
    assert capsys.readouterr().err == ""
    base = f"http://127.0.0.1:{p.port}"
    assert get(base + "/")[0] == 200 and get(base + "/", headers={"Host": f"localhost:{p.port + 1}"})[0] == 200
    assert get(base + "/", headers={"Host": "evil.example:80"})[0] == 403
    assert get(f"{base}/?token={p.token}", headers={"Host": "evil.example:80"})[0] == 200


def test_a_taken_port_or_a_foreign_host_is_one_line_before_the_source_opens(color_model, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # The source does not exist: the port is named first, so nothing was opened.
        res = run_main("video_predict.py", "rtsp://127.0.0.1:1/none", *onnx_flags(color_model), "--serve", port)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == f"error: cannot serve on 127.0.0.1:{port}: port {port} is taken (another --serve?); " \
                         "choose another with --serve [HOST:]PORT\n"
    res = run_main("video_predict.py", "rtsp://127.0.0.1:1/none", *onnx_flags(color_model), "--serve", "192.0.2.7:8080")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "cannot serve on 192.0.2.7:8080: 192.0.2.7 is not an address of this machine" in res.stderr
    for bad in ("http", "0", "host:99999"):
        res = run_main("video_predict.py", "x.mp4", "--serve", bad)
        assert res.returncode == 2 and "expected [HOST:]PORT" in res.stderr and res.stderr.count("\n") == 1
    (tmp_path / "x.mp4").write_bytes(b"")
    res = run_main("video_predict.py", tmp_path / "x.mp4", "--collect", tmp_path)
    assert res.returncode == 1 and "--collect saves frames from the page of --serve" in res.stderr
    (tmp_path / "flower_data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "flower_data" / ".split.json").write_text("{}")
    res = run_main("video_predict.py", "rtsp://127.0.0.1:1/none", *onnx_flags(color_model), "--serve", free_port(),
                   "--collect", tmp_path / "flower_data" / "train")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert re.search(r"--collect .*train is inside .*train, which split_data.py writes; collect into "
                     r".*flower_data/flower_photos and split again", res.stderr)
    with pytest.raises(cli.UserError, match=r"flower_data is the root of a split .*; collect into \S+flower_data/"
                                            r"flower_photos and split again"):  # not train/ and val/ as classes
        serve.collect_classes(tmp_path / "flower_data", ["a"])


# ---------------------------------------------------------------- a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element's id


class WebDriver:
    """Headless Chromium through chromedriver's W3C WebDriver HTTP API, with urllib alone."""

    def __init__(self):
        port = free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 20
        while not self.ready():
            assert time.monotonic() < end and self.proc.poll() is None, "chromedriver did not start"
            time.sleep(0.05)
        options = {"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                                "--disable-dev-shm-usage", "--window-size=720,800"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.base += "/session/" + self.call("POST", "/session", caps)["sessionId"]

    def ready(self):
        try:
            return self.call("GET", "/status")["ready"]
        except OSError:
            return False

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read()[:300]}") from None

    def script(self, js):
        return self.call("POST", "/execute/sync", {"script": js, "args": []})

    def until(self, js, limit=20):
        end = time.monotonic() + limit
        while not self.script(js):
            assert time.monotonic() < end, js
            time.sleep(0.1)

    def screenshot(self):
        return Image.open(io.BytesIO(base64.b64decode(self.call("GET", "/screenshot")))).convert("RGB")

    def quit(self):
        try:
            self.call("DELETE", "")
        finally:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no chromium and chromedriver (apt install chromium "
                                                             "chromium-driver; .ci/run installs them)")
def test_in_a_real_browser_the_page_shows_live_frames_and_a_click_collects(color_model, camera, tmp_path):
    cam = camera(fps=30)
    live = Run(cam.url, *onnx_flags(color_model), "--reconnect", "0", "--collect", tmp_path / "photos")
    browser = WebDriver()
    try:
        browser.call("POST", "/url", {"url": live.base + "/"})
        # The live <img> has a frame, the script has filled in the top-k, the frames/s and the model.
        browser.until("return document.getElementById('live').naturalWidth === 160 && "
                      "document.querySelectorAll('#topk tr').length === 1 && "
                      "document.getElementById('about').textContent.includes('ONNX Runtime')")
        shot = np.asarray(browser.screenshot()).astype(int)
        box = browser.script("const r = document.getElementById('live').getBoundingClientRect(); "
                             "return [r.left, r.top, r.width, r.height, window.devicePixelRatio];")
        scale = box[4]
        x, y, w, h = (round(v * scale) for v in box[:4])
        frame = shot[y:y + h, x:x + w]
        assert frame.shape[:2] == (round(120 * scale), round(160 * scale))
        assert frame[:round(4 * scale), :round(4 * scale)].mean() < 40  # the label's dark box, drawn on the frame
        picture = frame[h // 2:].reshape(-1, 3).mean(0)  # the camera's colour: one of the classes, not the page
        assert min(np.abs(picture - COLORS[c]).sum() for c in COLORS) < 90, picture
        assert np.abs(shot[-40:, -40:] - (30, 30, 30)).max() < 4  # the page's background elsewhere
        button = browser.call("POST", "/element", {"using": "css selector", "value": "#collect button[value=green]"})
        browser.call("POST", f"/element/{button[ELEMENT]}/click", {})
        browser.until("return document.getElementById('saved').textContent.startsWith('saved green/') && "
                      "document.getElementById('thumb').naturalWidth === 160")
        assert browser.script("return document.querySelector('#collect button[value=green] small').textContent") == "1"
    finally:
        browser.quit()
        cam.stopped = True  # the camera hangs up: the run ends, its files kept
    with pytest.raises(cli.UserError, match=r"lost http://127.0.0.1:\d+/video at frame \d+"):
        live.join()
    saved, = (tmp_path / "photos" / "green").iterdir()
    raw = cv2.imread(str(saved))
    assert raw.shape == (120, 160, 3) and not annotated(raw)
