"""Video for video_predict.py: the reader thread that decodes beside the model, the annotated video
and the window. A live source gives its newest frame and drops the others (counted); a file (one whose
length is known, wherever it lives) gives every frame. torch is not imported (video_predict.py --onnx
runs without it).
"""
import contextlib
import dataclasses
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import cli, files, imaging, plots, sources, stop

cv2 = sources.cv2
SAVE_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}  # what pip's OpenCV encodes without extra libraries
# Seconds a reopened live source must send frames before its reconnects are given back: one that drops
# again sooner (it opens, sends a frame or replays a few, and hangs up) keeps counting, so it ends.
RECONNECT_HEALED = 1.0


@dataclasses.dataclass
class Frame:
    index: int  # its number in the source, from 0 (corrupt frames have numbers too)
    time_s: float  # its time in the video (a file) or since the start (a live source)
    image: object  # BGR as decoded, or None when nothing draws or shows it
    crop: object = None  # the model's RGB crop (uint8 HWC), for a frame that is predicted
    seq: int = 0  # its number among the good frames


def model_crop(image, transform):
    """The frame as the model was trained on it: RGB, then predict.py's eval transform."""
    return np.asarray(transform.resize_crop(Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a Reader reads: the crop size, the batch, one frame in `every`, the limits, and how
    often and how long it tries to reopen a lost live source."""
    img_size: int
    batch_size: int = 8
    every: int = 1
    max_frames: int = None
    max_seconds: float = None
    reconnect: int = 0
    reconnect_delay: float = 1.0
    timeout: float = 10.0
    keep_images: bool = True  # False: nothing draws or shows the frames


class Reader:
    """The frames of an opened source, decoded in a thread of its own while the model runs.
    batches() yields lists of Frames, in order, until the source ends, end() is called or a stop is
    requested. `lost` says why a live source ended early (None if it did not); `at_end`, that a file
    was read to its end (which may come before the frames it promised)."""

    def __init__(self, source, capture, plan):
        self.source, self.capture, self.plan = source, capture, plan
        self.live = capture.live
        self.transform = imaging.EvalTransform(plan.img_size)
        self.read = self.predicted = self.dropped = self.skipped = 0
        self.corrupt = capture.corrupt
        self.lost = self._error = None
        self.at_end = False
        self._done = threading.Event()
        # A file's frames are decoded ahead; a live source's queue holds its newest frame only.
        self._queue = queue.Queue(maxsize=1 if self.live else 2 * plan.batch_size + 2)
        self._received = 0  # a live source's good frames so far
        self._reconnects = 0  # in a row: given back once a reopened source has sent frames for a while
        self._thread = threading.Thread(target=self._run, daemon=True)

    def end(self):
        """Stop reading: the window was closed."""
        self._done.set()

    # -- the reader thread

    def _frames(self):
        """(index, time_s, BGR image, seq) of each good frame, seq its number among the good ones."""
        cap, live, plan = self.capture.cap, self.live, self.plan
        # The model was loaded before a live source was opened: its first frame is new, and predicted.
        image, reopened_at = self.capture.first, None
        index, good, failures = self.capture.corrupt, 0, 0
        while not self._done.is_set() and (plan.max_frames is None or good < plan.max_frames):
            if image is None:
                ok, raw = cap.read()
                image = sources.to_bgr(raw) if ok else None
            if image is None:
                failures += 1
                if failures < self.source.retries:
                    continue
                image = self._reopen(index) if live else None
                if image is None:
                    self.at_end = not live
                    return
                cap, failures, reopened_at = self.capture.cap, 0, time.perf_counter()
                continue
            if reopened_at is not None and time.perf_counter() - reopened_at >= RECONNECT_HEALED:
                self._reconnects, reopened_at = 0, None  # it sends again: the reconnects in a row start over
            self.corrupt += failures
            index, failures = index + failures, 0
            msec = cap.get(cv2.CAP_PROP_POS_MSEC) if not live else 0
            t = (time.perf_counter() - self.capture.opened_at if live else
                 msec / 1000 if msec > 0 or index == 0 else index / self.capture.fps)
            if plan.max_seconds is not None and t >= plan.max_seconds:
                return
            yield index, t, image, good
            index, good, image = index + 1, good + 1, None

    def _reopen(self, at):
        """The first frame of the source opened again, or None (self.lost says why)."""
        self.capture.cap.release()
        plan, name = self.plan, self.source.name
        while self._reconnects < plan.reconnect:
            self._reconnects += 1
            print(f"note: lost {name} at frame {at}; reconnecting ({self._reconnects}/{plan.reconnect}) in "
                  f"{plan.reconnect_delay:g} s", file=sys.stderr)
            if self._done.wait(plan.reconnect_delay):
                return None
            try:
                capture = sources.open_source(self.source, plan.timeout)
            except cli.UserError:
                continue
            print(f"note: reconnected to {name}", file=sys.stderr)
            self.capture.cap = capture.cap
            self.corrupt += capture.corrupt
            return capture.first
        self.lost = f"lost {name} at frame {at}" + (f"; {plan.reconnect} reconnects in a row failed" if plan.reconnect
                                                    else " (--reconnect N reopens it)")
        return None

    def _run(self):
        try:
            for index, t, image, seq in self._frames():
                if self.live:
                    self._received = seq + 1
                    self._put(Frame(index, t, image, seq=seq))
                    continue
                crop = model_crop(image, self.transform) if seq % self.plan.every == 0 else None
                self._put(Frame(index, t, image if self.plan.keep_images else None, crop, seq))
        except BaseException as e:  # The main thread raises it again.
            self._error = e
        finally:
            self.capture.cap.release()
            self._put(None)  # The end: it waits until the main thread took the last frame.

    def _put(self, frame):
        while not self._done.is_set():
            if self.live and frame is not None:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()  # The model was busy: the older frame is dropped (counted later).
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                pass

    # -- the main thread

    def batches(self):
        self._thread.start()
        try:
            yield from (self._live_batches() if self.live else self._file_batches())
        finally:
            self._done.set()
            # A stop acts within a second: a stalled stream's read may take --timeout, so the thread (a daemon)
            # is left to end by itself.
            self._thread.join(timeout=0.3)
            if self.live:  # the frames that came after the last one predicted
                self._pass_over(self._received - self.read, self.read > 0)
                self.read = self._received
        if self._error is not None:
            raise self._error

    def _pass_over(self, n, after_one):
        """n frames not predicted: up to every - 1 after a predicted one are --every's, the rest dropped."""
        skipped = min(n, self.plan.every - 1) if after_one else 0
        self.skipped += skipped
        self.dropped += n - skipped

    def _next_queued(self):
        """The next frame the reader thread decoded, or None once it ended or a stop was asked for."""
        while not self._done.is_set() and not stop.requested():
            with contextlib.suppress(queue.Empty):
                return self._queue.get(timeout=0.1)
        return None

    def _file_batches(self):
        pending, n = [], 0
        while True:
            frame = self._next_queued()
            if frame is None:
                break
            self.read += 1
            self.skipped += frame.crop is None
            self.predicted += frame.crop is not None
            n += frame.crop is not None
            pending.append(frame)
            if n >= self.plan.batch_size or len(pending) >= 4 * self.plan.batch_size:
                yield pending
                pending, n = [], 0
        if pending:
            yield pending

    def _live_batches(self):
        taken = -1  # the seq of the frame predicted last
        while True:
            frame = self._next_queued()
            if frame is None:
                return
            if taken >= 0 and frame.seq < taken + self.plan.every:
                continue  # --every: a newer frame is wanted
            self._pass_over(frame.seq - taken - 1, taken >= 0)
            self.read, self.predicted, taken = frame.seq + 1, self.predicted + 1, frame.seq
            frame.crop = model_crop(frame.image, self.transform)
            if not self.plan.keep_images:
                frame.image = None
            yield [frame]

    def counts(self):
        promised = self.capture.frames
        short = (f" of the {promised} that {self.source.name} promised (the rest could not be read: is it cut short?)"
                 if self.at_end and self.read + self.corrupt < promised else "")
        return (f"read {self.read} frames{short}, predicted {self.predicted}, dropped {self.dropped}, skipped "
                f"{self.skipped}" + (f", corrupt {self.corrupt}" if self.corrupt else ""))


# ---------------------------------------------------------------- the main loop's helpers

def csv_header(topk, min_prob=None):
    """frame,time_s,[prediction,]class,prob,class_2,prob_2,..., as batch_predict.py's CSV."""
    return (["frame", "time_s"] + (["prediction"] if min_prob is not None else []) + ["class", "prob"]
            + [f"{name}_{k}" for k in range(2, topk + 1) for name in ("class", "prob")])


class RateMeter:
    """Frames predicted per second over the last two seconds, for the overlay."""

    def __init__(self):
        self.ticks = []

    def tick(self, n):
        now = time.perf_counter()
        self.ticks = [(t, k) for t, k in self.ticks if now - t < 2.0] + [(now, n)]
        return sum(k for _, k in self.ticks[1:]) / max(now - self.ticks[0][0], 1e-9)


def draw_label(image, text):
    """The text in the top-left corner, white on a dark box, sized to the frame."""
    scale = max(0.4, image.shape[0] / 720)
    thickness = max(1, round(2 * scale))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = round(6 * scale)
    cv2.rectangle(image, (0, 0), (w + 2 * pad, h + base + 2 * pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (pad, h + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


@contextlib.contextmanager
def video_writer(path, size, fps):
    """A function that writes one BGR frame to `path` (.mp4 or .avi). Encoding a frame can take as
    long as predicting it, so it runs in a thread beside the model. The file is renamed into place
    when the block ends (files.atomic_path), so a stopped run leaves a playable video."""
    fourcc = SAVE_FOURCC[Path(path).suffix.lower()]
    with files.atomic_path(path) as tmp:
        out = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not out.isOpened():
            raise cli.UserError(f"cannot write video {path}: this OpenCV has no {fourcc} encoder")
        jobs, failed, written = queue.Queue(maxsize=8), [], [0]

        def work():
            while True:
                frame = jobs.get()
                if frame is None:
                    return
                if not failed:
                    try:
                        out.write(frame if frame.shape[1::-1] == tuple(size) else cv2.resize(frame, size))
                    except cv2.error as e:
                        failed.append(e)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()

        def write(frame):
            if failed:
                raise cli.UserError(f"cannot write video {path}: {cli.first_line(failed[0])}")
            jobs.put(frame)
            written[0] += 1

        try:
            yield write
        finally:
            jobs.put(None)
            thread.join()
            out.release()
        if failed or (written[0] and tmp.stat().st_size == 0):
            raise cli.UserError(f"cannot write video {path} (is the disk full?); it was left as it was")
        files.mark_video(tmp)


class Window:
    """The annotated frames in a window, where there is a display and this OpenCV can show one.
    show() is False once the user closed it or pressed q or Esc."""

    def __init__(self, title, wanted=True):
        self.title, self.on = title, False
        if not wanted:
            return
        why = "no display"
        if plots.has_display():
            try:
                cv2.namedWindow(title, cv2.WINDOW_NORMAL)
                self.on = True
            except cv2.error:
                why = "this OpenCV shows no windows (opencv-python-headless)"
        if not self.on:
            print(f"note: {why}: running headless (--save writes the annotated video)", file=sys.stderr)

    def show(self, image):
        if not self.on:
            return True
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27) and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self):
        if self.on:
            cv2.destroyWindow(self.title)
