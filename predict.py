"""Predict one image (or a few) and show it with its top class.

    python predict.py                         # data/imgs/daisy.jpg, as in the tutorial
    python predict.py a.jpg b.png --save-fig result.png
    python predict.py photo.jpg --onnx resNet34.onnx      # ONNX Runtime, no PyTorch; the file holds its classes and size
    python predict.py photo.jpg --cam                     # and where the evidence for the top class is
Without a display the figure is written as a PNG (predict.png unless --save-fig says otherwise).
"""
from helpers import cli
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
import sys

import numpy as np

from helpers import files, imaging, inference, plots


MAX_PANELS = 32


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Predict the class of images", add_help=add_help)
    p.add_argument("images", nargs="*", default=["data/imgs/daisy.jpg"], help="image files (default: data/imgs/daisy.jpg)")
    p.add_argument("--save-fig", default=None, metavar="PATH",
                   help="write the figure here instead of showing it (default without a display: predict.png)")
    p.add_argument("--batch-size", type=cli.batch_size_arg, default=16, help="images per batch (default: %(default)s)")
    p.add_argument("--cam", action="store_true",
                   help="overlay a Grad-CAM heatmap of the top class on the crop the model saw (needs PyTorch)")
    inference.add_model_args(p)
    inference.add_min_prob_arg(p)
    return inference.add_runtime_args(p)


def main(args):
    if args.cam and args.onnx:
        raise cli.UserError("--cam needs PyTorch (the gradient of the model), not ONNX Runtime: leave out --onnx")
    for path in args.images:
        files.need_file(path, "image", "pass image files, e.g. python predict.py photo.jpg (batch_predict.py "
                                       "predicts a folder)")
    figure = args.save_fig or (None if plots.has_display() else "predict.png")
    if figure:
        files.check_report(figure, "--save-fig figure", suffixes=plots.FIGURE_SUFFIXES, inputs=args.images)
    p = inference.settle(args)
    classes, torch_model = p.classes, None
    if args.cam:
        from helpers import gradcam  # torch: only here, so that --onnx runs without it
        torch_model = inference.load_torch_model(p)  # one net for both
    predictor, _ = inference.load_predictor(p, torch_model)

    shown, titles, results = [], [], []  # the figure's panels (at most MAX_PANELS), every image's result
    crops = []  # --cam: the crop each heatmap is of, every image's (small)
    for path, probs, error in inference.predict_paths(list(args.images), predictor, p):
        if probs is None:
            if len(args.images) == 1:
                raise cli.UserError(error)
            print(f"skipped: {error}", file=sys.stderr)
            continue
        if len(args.images) > 1:
            print(f"image: {path}")
        for name, prob in zip(classes, probs.tolist()):
            print(f"class: {name:10}   prob: {prob:.3}")
        best = int(probs.argmax())
        shown_class = inference.shown_class(classes[best], probs[best], args.min_prob)
        if shown_class != classes[best]:
            print(f"prediction: {shown_class} (the top class, {classes[best]}, has {probs[best]:.3} < --min-prob "
                  f"{args.min_prob})")
        results.append((path, classes[best], probs, None))
        if args.cam:  # the heatmap is the crop's: the crop is what the panel shows
            with imaging.open_image(path) as img:
                crops.append(np.asarray(imaging.EvalTransform(p.img_size).resize_crop(img)))
        if len(shown) == MAX_PANELS:  # a figure of hundreds of panels is hundreds of MB: batch_predict.py's job
            continue
        titles.append(f"class: {shown_class}   prob: {probs[best]:.3}"
                      + (f" ({classes[best]}?)" if shown_class != classes[best] else "")
                      + (f"\nGrad-CAM on the {p.img_size} px crop" if args.cam else ""))
        # a figure panel needs no more than 1024 px
        shown.append(crops[-1] if args.cam else imaging.load_rgb(path, min_side=800, max_side=1024))
    if not results:  # every image skipped (each named above): nothing was predicted
        raise cli.UserError(f"none of the {len(args.images)} images could be read")
    heatmaps = None
    if args.cam and crops:
        heatmaps = gradcam.crop_heatmaps(*torch_model, crops, [int(r[2].argmax()) for r in results], args.batch_size)
        results = [r[:3] + (h,) for r, h in zip(results, heatmaps)]
    if len(results) > len(shown):
        print(f"note: the figure shows the first {len(shown)} of {len(results)} images; batch_predict.py predicts a "
              "folder (with --csv)")
    if shown:
        written = plots.show_or_save(shown, titles, figure, heatmaps=heatmaps and heatmaps[:len(shown)])
        if written:
            print(f"figure saved to {written}")
    return results


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
