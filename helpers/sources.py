"""The sources of video_predict.py: a camera, a video file, a network stream, a Jetson's CSI camera
or a GStreamer pipeline, each opened with OpenCV, with a one-line error that says why one cannot be.
OpenCV is imported here and nowhere else, so that the other scripts run without it.
"""
import dataclasses
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from helpers import cli, files, imaging

# OpenCV's warnings and FFmpeg's complaints about each broken packet name no file and would bury the
# one line that says what is wrong (a user who sets these variables keeps their own).
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
try:
    import cv2
except ImportError:
    cv2 = None

# A Jetson CSI camera at 1280x720 and 30 frames/s, converted to BGR on the way; appsink keeps the newest frame only.
CSI_PIPELINE = ("nvarguscamerasrc sensor-id={} ! video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1 ! "
                "nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
                "appsink drop=true max-buffers=1")
STREAM_SCHEMES = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}  # and their default ports
# Failed reads in a row that still count as corrupt frames, not as the end: FFmpeg answers at once
# at the end of a file, and a stream that dropped answers at once every time (a file over the network
# counts as a stream here: each failed read may wait --timeout).
RETRIES = {"file": 50, "live": 5}


def need_cv2():
    if cv2 is None:
        raise cli.UserError("video_predict.py needs OpenCV: pip install -r requirements-video.txt "
                            "(opencv-python-headless), or on a Jetson use JetPack's own (python3-opencv)")
    return cv2


def has_gstreamer():
    return bool(re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.M))


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # for messages: the path, the URL without its password, "camera 0", "csi://0"
    kind: str  # "file", "camera", "stream", "csi" or "pipeline"
    target: object  # what cv2.VideoCapture opens
    api: int  # OpenCV's backend for it

    @property
    def live(self):
        """A camera or a stream, as far as can be told before it is opened (Capture.live tells after)."""
        return self.kind != "file"

    @property
    def retries(self):
        return RETRIES["file" if self.kind == "file" else "live"]


def need_gstreamer(what):
    if not has_gstreamer():
        raise cli.UserError(f"{what} needs OpenCV built with GStreamer, and this one ({cv2.__version__}) is not: "
                            "pip's opencv-python-headless never is; on a Jetson use JetPack's own (python3-opencv, "
                            "in a venv made with --system-site-packages and without pip's opencv)")


def hide_password(url):
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}").geturl()


def parse_source(text):
    """What SOURCE names, or a one-line error: a camera index or device, a video file, a stream URL,
    csi://N, or a GStreamer pipeline (elements joined by '!')."""
    need_cv2()
    if re.fullmatch(r"\d+", text):
        return Source(f"camera {text}", "camera", int(text), cv2.CAP_ANY)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and scheme[1].lower() == "csi":
        sensor = re.fullmatch(r"csi://(\d+)", text, re.I)
        if not sensor:
            raise cli.UserError(f"{text}: a CSI camera is csi://N, N its sensor id (csi://0)")
        need_gstreamer(f"{text} (the Jetson's CSI camera, through nvarguscamerasrc)")
        return Source(text, "csi", CSI_PIPELINE.format(int(sensor[1])), cv2.CAP_GSTREAMER)
    if scheme and scheme[1].lower() in STREAM_SCHEMES:
        return Source(hide_password(text), "stream", text, cv2.CAP_FFMPEG)
    if scheme:
        raise cli.UserError(f"{text}: {scheme[1]}:// is no source this script reads; give a video file, a camera "
                            "(0 or /dev/video0), rtsp://, http(s)://, csi://N or a GStreamer pipeline")
    if text.startswith("/dev/") and not os.path.isfile(text):
        if not os.path.exists(text):
            raise cli.UserError(f"camera {text} not found (ls /dev/video* lists the cameras)")
        return Source(text, "camera", text, cv2.CAP_V4L2)
    if "!" in text and not os.path.exists(text):
        need_gstreamer("a GStreamer pipeline")
        pipeline = text if "appsink" in text else text + " ! videoconvert ! video/x-raw, format=BGR ! appsink"
        return Source("the GStreamer pipeline", "pipeline", pipeline, cv2.CAP_GSTREAMER)
    files.need_file(text, "video file", "give a video file, a camera (0 or /dev/video0), a URL (rtsp://, http://) "
                                        "or csi://N")
    if imaging.is_image_file(text):
        raise cli.UserError(f"{text} is an image, not a video; predict.py {text} predicts it")
    return Source(text, "file", text, cv2.CAP_ANY)


def check_reachable(source, timeout):
    """A one-line error unless the stream's host takes a connection on its port. OpenCV alone would
    only say that it could not open the URL. Other sources pass."""
    if source.kind != "stream":
        return
    parts = urllib.parse.urlsplit(source.target)
    try:
        port = parts.port or STREAM_SCHEMES[parts.scheme.lower()]
    except ValueError:
        raise cli.UserError(f"{source.name}: the port is not a number") from None
    if not parts.hostname:
        raise cli.UserError(f"{source.name}: the URL names no host")
    where = f"{parts.hostname}:{port}"
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return
    except socket.gaierror:
        why = f"unknown host {parts.hostname}"
    except socket.timeout:
        why = f"no answer from {where} within --timeout {timeout:g} s"
    except OSError as e:
        why = f"{e.strerror or e} ({where})"
    raise cli.UserError(f"cannot reach {source.name}: {why}")


NOT_OPENED = {
    "file": "cannot read video {}: OpenCV cannot open it (not a video, or a codec this OpenCV lacks)",
    "camera": "cannot open {}: no such camera, or another program is using it (ls /dev/video* lists the cameras)",
    "csi": "cannot open {}: nvarguscamerasrc did not start (is the camera connected, the sensor id right, "
           "nvargus-daemon running?)",
    "pipeline": "cannot open {} (gst-launch-1.0 with the same elements says why)",
}


def why_not_opened(source, timeout, slow=False):
    """Why OpenCV could not open the source, as far as can be told; slow: it took the whole timeout."""
    if source.kind in NOT_OPENED:
        return NOT_OPENED[source.kind].format(source.name)
    answer = "it answered, but not with a video OpenCV can read (is the path right?)"
    if slow:
        answer = f"no answer within --timeout {timeout:g} s"
    elif urllib.parse.urlsplit(source.target).scheme.lower() == "http":  # Its HTTP status says more.
        try:
            urllib.request.urlopen(source.target, timeout=timeout).close()
        except urllib.error.HTTPError as e:
            answer = f"the server answered HTTP {e.code} {e.reason}"
        except (OSError, ValueError) as e:  # URLError is an OSError
            if isinstance(getattr(e, "reason", e), socket.timeout):
                answer = f"no answer within --timeout {timeout:g} s"
    return f"cannot open {source.name}: {answer}"


def to_bgr(frame):
    """A decoded frame as 8-bit BGR, or None for a frame that is not one (counted as corrupt)."""
    if frame is None or frame.dtype != np.uint8 or frame.size == 0:
        return None
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame if frame.ndim == 3 and frame.shape[2] == 3 else None


@dataclasses.dataclass
class Capture:
    """An opened source and its first good frame."""
    cap: object
    first: np.ndarray
    corrupt: int  # bad frames before the first good one
    fps: float  # the source's frame rate, as it says (30 when it says nothing usable)
    opened_at: float  # time.perf_counter() when the first frame came: a live source's time 0
    frames: int = 0  # the frames the container promises; 0 for a live source, whose length nobody knows
    live: bool = False  # a camera or a stream: frames are dropped while the model is busy, never a file's

    @property
    def size(self):
        return self.first.shape[1], self.first.shape[0]


def open_source(source, timeout):
    """The opened source with its first frame, or a one-line error saying why not. The opening runs in
    a thread, because some OpenCV builds ignore their own timeouts."""
    check_reachable(source, timeout)
    args = [source.target, source.api]
    if source.kind == "stream" and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        ms = int(timeout * 1000)
        args.append([cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    box = {}

    def work():
        try:
            start = time.perf_counter()
            cap = cv2.VideoCapture(*args)
            if not cap.isOpened():
                box["why"] = why_not_opened(source, timeout, time.perf_counter() - start >= 0.9 * timeout)
                return
            for bad in range(source.retries):
                ok, frame = cap.read()
                frame = to_bgr(frame) if ok else None
                if frame is not None:
                    fps = cap.get(cv2.CAP_PROP_FPS)
                    fps = fps if 1 <= fps <= 240 else 30.0
                    # A known length is a file, wherever it lives (a video served over HTTP too): every frame
                    # is read, once. A live source (a camera, RTSP, MJPEG) has none (0, -1 or -2**63).
                    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
                    frames = int(count) if 0 < count < 2**31 else 0
                    box["capture"] = Capture(cap, frame, bad, fps, time.perf_counter(), frames,
                                             live=source.live and not frames)
                    return
            cap.release()
            box["why"] = (f"cannot read video {source.name}: OpenCV opened it but decoded no frame" if not source.live
                          else f"{source.name} opened, but sent no frame")
        except cv2.error as e:
            box["why"] = f"cannot open {source.name}: {cli.first_line(e)}"

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout + 1 if source.live else None)
    if thread.is_alive():
        raise cli.UserError(f"{source.name}: no frame within --timeout {timeout:g} s")
    if "why" in box:
        raise cli.UserError(box["why"])
    return box["capture"]
