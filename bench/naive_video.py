"""The loop a user writes by hand to classify a video, the baseline of benchmark.py --video: OpenCV
reads a frame, PIL and the tutorial's transforms, the model in fp32, one frame at a time. Its last
line says how many frames it read and at what rate (the loop alone, start-up not counted).

    python bench/naive_video.py CLIP --model resnet34 --weights W.pth [--img-size 224] [--device cpu]
"""
import argparse
import os
import sys
import time

import cv2
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import MODELS  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("video")
    p.add_argument("--model", default="resnet34", choices=list(MODELS))
    p.add_argument("--weights", required=True)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="auto")
    return p


def main(args):
    device = torch.device(("cuda:0" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    tf = transforms.Compose([transforms.Resize(int(round(args.img_size / 0.875))), transforms.CenterCrop(args.img_size),
                             transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    net = MODELS[args.model](num_classes=5)
    net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    net.to(device).eval()
    cap = cv2.VideoCapture(args.video)
    n, start = 0, time.perf_counter()
    with torch.no_grad():
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            img = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))  # The careful user's RGB.
            probs = torch.softmax(net(tf(img).unsqueeze(0).to(device)), dim=1)[0]
            print(f"frame {n}: class {int(probs.argmax())} prob {float(probs.max()):.3}")
            n += 1
    print(f"read {n} frames, {n / (time.perf_counter() - start):.1f} frames/s")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
