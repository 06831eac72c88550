"""What the scripts share. The scripts on top (train.py, predict.py, ...) are the design card;
this package holds the machinery below them, one module for each kind of thing:

    cli        one-line errors (run_cli, UserError), the argument parser and checked argument types
    files      input and output checks, atomic writes, class-index and labels files, downloads
    imaging    decoding images safely (size limits, EXIF, draft scaling) and the train/eval transforms
    devices    the device, mixed precision, channels-last, peak memory (torch 2.0 to today)
    memory     training's memory estimate against what is free, out-of-memory errors, halving batches
    weights    reading weight files safely, architecture checks, torchvision's ImageNet files
    training   the data sets, sampler, optimizer, schedule, EMA, the stop signals and a run's state
    settings   train.py's settings, resolved once into a frozen object, and its checkpoints
    reports    what a run writes about itself: history.csv, the per-class table, predictions
    inference  the predictors, what an ONNX file carries, TensorRT's cache, decoding (no torch on top)
    plots      the figures (PNG when there is no display)
    video      cameras, video files, streams and CSI for video_predict.py: the reader thread, the
               annotated video, the window (OpenCV, imported here only)
    gradcam    Grad-CAM heatmaps for predict.py --cam
    demo_data  synthetic flowers for a demo or a test when there is no real data set

Scripts import modules, not names: `from helpers import files` and then `files.atomic_path(...)`.
Nothing here imports a script; model.py is the one file on top that this package uses.
"""
