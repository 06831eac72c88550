"""What the scripts share. The scripts on top (train.py, predict.py, ...) are the design card;
this package holds the machinery below them, one module for each kind of thing:

    cli          one-line errors (run_cli, UserError), the argument parser and checked argument types
    stop         the one way to stop: Ctrl-C, SIGTERM and SIGHUP, at once or at the end of a step
    files        input and output checks, the reports these scripts wrote, atomic writes, locks
    classnames   the class-index and labels files, and the checks every class name passes
    downloads    a URL or a file fetched with torch.hub's downloader, its checksum checked
    imaging      decoding images safely (size limits, EXIF, draft scaling) and the train/eval transforms
    devices      the device, mixed precision, channels-last, peak memory (torch 2.0 to today)
    memory       training's memory estimate against what is free, out-of-memory errors, halving batches
    weights      building models, reading weight files safely, architecture checks, ImageNet files
    settings     train.py's settings, resolved once into a frozen object
    data         the image folders, the resumable sampler, class weights, mixup and cutmix
    optim        the optimizer, its schedule (torch.optim.lr_scheduler) and the EMA of the weights
    checkpoints  checkpoints, resume, the best weights and what a failed run saves
    training     the processes, the device and precision of a run, its state, a step's bundle
    reports      what a run writes about itself: history.csv, the per-class table, predictions
    inference    prediction's settings resolved once (settle), decoding, the PyTorch predictor
    deploy       ONNX files and what they carry, ONNX Runtime, TensorRT's engine cache, export
    plots        the figures (PNG when there is no display)
    gradcam      Grad-CAM heatmaps for predict.py --cam
    sources      cameras, video files, streams and CSI opened with OpenCV (imported here only)
    video        video_predict.py's reader thread, the annotated video and the window
    serve        video_predict.py --serve: the live page (MJPEG, top-k, collecting frames; serve.html)
    demo_data    synthetic flowers for a demo or a test when there is no real data set

Scripts import modules, not names: `from helpers import files` and then `files.atomic_path(...)`.
Nothing here imports a script; model.py is the one file on top that this package uses.
"""
