"""Classify what a camera sees, or a video file, or a network stream, frame by frame.

    python video_predict.py 0                                # the first camera (or /dev/video0)
    python video_predict.py clip.mp4 --csv clip.csv --save clip_labelled.mp4
    python video_predict.py rtsp://user:pass@192.168.1.20:554/stream --onnx resNet34.int8.onnx
    python video_predict.py csi://0 --onnx resNet34.onnx     # a Jetson's CSI camera (JetPack's OpenCV)
    python video_predict.py csi://0 --serve 8080 --collect data_set/flower_data/flower_photos  # watch, collect

From a camera or a stream the newest frame is predicted and the ones the model could not keep up
with are dropped (counted); a file is read frame by frame, in batches. Needs OpenCV
(pip install -r requirements-video.txt). Ctrl-C, SIGTERM, SIGHUP, the end or a lost stream leave a
complete CSV and a playable video.
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import contextlib
import sys
import time

import numpy as np

from helpers import files, inference, serve, sources, stop, video


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Predict the frames of a camera, a video file or a stream", add_help=add_help)
    p.add_argument("source", help="a camera (0, /dev/video0), a video file, rtsp:// or http(s):// URL, csi://N "
                                  "(a Jetson's CSI camera) or a GStreamer pipeline")
    p.add_argument("--batch-size", type=cli.batch_size_arg, default=8,
                   help="frames per batch from a file; a live source is predicted one newest frame at a time "
                        "(default: %(default)s)")
    p.add_argument("--topk", type=cli.positive_int, default=1, help="classes to report per frame (default: %(default)s)")
    p.add_argument("--csv", default=None, metavar="PATH", help="write frame, time_s, top-k classes and probabilities")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="write the frames with their class, probability and frames/s drawn on them (.mp4 or .avi), "
                        "at the source's size and frame rate")
    p.add_argument("--serve", type=serve.address_arg, default=None, metavar="[HOST:]PORT",
                   help="show the live annotated frames, the top-k and the frames/s on a web page (on 127.0.0.1 "
                        "unless HOST is given; on another address the page needs the token printed in its URL)")
    p.add_argument("--collect", default=None, metavar="FOLDER",
                   help="with --serve: one button per class on the page saves the current frame as it came from "
                        "the source into FOLDER/<class>/ (data_set/flower_data/flower_photos: the next split uses it)")
    p.add_argument("--no-show", dest="show", action="store_false", help="no window, even with a display")
    p.add_argument("--every", type=cli.positive_int, default=1, help="predict one frame in N (default: %(default)s)")
    p.add_argument("--max-frames", type=cli.positive_int, default=None, help="stop after N frames of the source")
    p.add_argument("--max-seconds", type=cli.positive_float, default=None,
                   help="stop after S seconds (of the video for a file, since the start for a live source)")
    p.add_argument("--smooth", type=cli.float_in(0, 1, high_open=True), default=0.0, metavar="A",
                   help="average the probabilities over frames, keeping A of the average each frame (0.8: about "
                        "the last 5 frames), so that the label does not flicker (default: 0, off)")
    p.add_argument("--timeout", type=cli.positive_float, default=10.0,
                   help="seconds a camera or stream may take to answer or to send a frame (default: %(default)s)")
    p.add_argument("--reconnect", type=cli.int_in(0, 1000), default=3,
                   help="times a lost camera or stream is reopened (default: %(default)s)")
    p.add_argument("--reconnect-delay", type=cli.non_negative_float, default=2.0,
                   help="seconds between tries (default: %(default)s)")
    inference.add_model_args(p)
    inference.add_min_prob_arg(p)
    return inference.add_runtime_args(p)


def main(args):
    # Settle everything first: the source, the outputs, the classes, the model.
    source = sources.parse_source(args.source)  # or a one-line error, OpenCV's absence among them
    inputs = [args.source] if source.kind == "file" else []
    if args.csv:  # its path now; what it may replace once the classes give its header
        files.check_output(args.csv, "--csv file", overwrite=True, suffixes=(".csv",), inputs=inputs)
    if args.save:
        files.check_report(args.save, "--save video", suffixes=tuple(video.SAVE_FOURCC), inputs=inputs)
    if args.collect and not args.serve:
        raise cli.UserError("--collect saves frames from the page of --serve; add --serve PORT")
    # A live source is predicted one newest frame at a time (and TensorRT's engine built for that).
    p = inference.settle(args, batch_size=1 if source.live else None)
    classes = p.classes
    topk = min(args.topk, len(classes))
    if args.csv:
        files.check_report(args.csv, "--csv file", suffixes=(".csv",), inputs=inputs,
                           head=video.csv_header(topk, args.min_prob))
    # The page's port is taken now: a port in use or a foreign host is one line before the source opens.
    page = serve.Page(args.serve, classes, args.collect, source.name, p.model_file) if args.serve else None
    # A file is opened first, so that its errors come before the model loads; a live source once the model
    # is loaded and warmed up, so that the frames of its first seconds are not dropped meanwhile.
    capture = None if source.live else sources.open_source(source, args.timeout)
    sources.check_reachable(source, args.timeout)  # a stream's host, before the model loads
    predictor, runs_on = inference.load_predictor(p, warm_up=source.live)
    capture = capture or sources.open_source(source, args.timeout)
    window = video.Window(f"video_predict.py: {source.name}", args.show)
    reader = video.Reader(source, capture, video.Plan(
        p.img_size, p.batch_size, args.every, args.max_frames, args.max_seconds, args.reconnect,
        args.reconnect_delay, args.timeout, keep_images=bool(args.save or page) or window.on))
    meter, label, average, pairs = video.RateMeter(), "", None, []

    # A signal ends the loop, and the CSV and the video are closed and kept; a second one quits at once.
    with stop.deferred("stopping; the CSV and the video keep what was predicted"), contextlib.ExitStack() as outputs:
        table = outputs.enter_context(files.atomic_csv(args.csv, video.csv_header(topk, args.min_prob))) if args.csv else None
        save = outputs.enter_context(video.video_writer(args.save, capture.size, capture.fps)) if args.save else None
        outputs.callback(window.close)
        if page:
            outputs.enter_context(page.serving(runs_on))
        start = time.perf_counter()
        for batch in reader.batches():
            crops = [frame.crop for frame in batch if frame.crop is not None]
            probs = iter(predictor(np.stack(crops))) if crops else iter(())
            rate = meter.tick(len(crops))
            for frame in batch:
                if frame.crop is not None:
                    # --smooth: a moving average of the probabilities, so that the label does not flicker.
                    probs_now = next(probs)
                    average = probs_now if average is None else args.smooth * average + (1 - args.smooth) * probs_now
                    pairs = [(classes[i], float(average[i])) for i in np.argsort(-average, kind="stable")[:topk]]
                    name, prob = pairs[0]
                    shown = inference.shown_class(name, prob, args.min_prob)  # or unknown, below --min-prob
                    label = f"{shown} {prob:.2f}"
                    print(f"frame: {frame.index}  time: {frame.time_s:.2f} s  class: {shown}  prob: {prob:.3}"
                          + (f"  (top: {name})" if shown != name else ""))
                    if table:
                        prediction = [shown] if args.min_prob is not None else []
                        table.writerow([frame.index, f"{frame.time_s:.3f}"] + prediction
                                       + [x for c, q in pairs for x in (c, f"{q:.6f}")])
                if frame.image is not None:
                    raw = frame.image.copy() if args.collect else None  # --collect saves what the source sent
                    video.draw_label(frame.image, f"{label}  {rate:.1f} fps")
                    if page:
                        page.show(frame, raw, pairs, reader)
                    if save:
                        save(frame.image)
                    if not window.show(frame.image):
                        reader.end()  # the window was closed, or q or Esc pressed
        seconds = time.perf_counter() - start
    written = [p for p in (args.csv, args.save) if p]
    print(f"{reader.counts()}, {reader.predicted / max(seconds, 1e-9):.1f} frames/s with {runs_on}"
          + (f"; wrote {', '.join(written)}" if written else ""))
    kept = f"; {' and '.join(written)} hold everything up to it" if written else ""
    if reader.lost:
        raise cli.UserError(reader.lost + kept)
    if stop.requested():
        print(f"interrupted ({stop.name(stop.requested())}) after {reader.read} frames{kept}", file=sys.stderr)
        sys.exit(128 + stop.requested())
    return reader


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
