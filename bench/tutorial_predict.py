"""The tutorial's predict.py and batch_predict.py, as the baselines of benchmark.py --predict-folder:
one image with pyplot's figure, or a folder decoded one by one in batches of 5, fp32, NCHW. Changes
for the benchmark only: the model, weights and device are arguments, the class file is read beside
the weights, and the figure is saved (headless, plt.show() would do nothing).

    python bench/tutorial_predict.py IMAGE_OR_FOLDER --model resnet34 --weights W.pth [--device cpu]
"""
import argparse
import json
import os
import sys

import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import MODELS  # noqa: E402  the tutorial's model.py: the same network as predict.py's


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path")
    p.add_argument("--model", default="resnet34", choices=list(MODELS))
    p.add_argument("--weights", required=True)
    p.add_argument("--device", default="auto")
    return p


def main(args):
    device = torch.device(("cuda:0" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    data_transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    folder = os.path.dirname(os.path.abspath(args.weights))
    with open(os.path.join(folder, "class_indices.json")) as f:
        class_indict = json.load(f)
    model = MODELS[args.model](num_classes=len(class_indict)).to(device)
    model.load_state_dict(torch.load(args.weights, map_location=device, weights_only=True))
    model.eval()
    if os.path.isfile(args.path):
        import matplotlib.pyplot as plt

        img = Image.open(args.path).convert("RGB")
        plt.imshow(img)
        img = torch.unsqueeze(data_transform(img), dim=0)
        with torch.no_grad():
            predict = torch.softmax(torch.squeeze(model(img.to(device))).cpu(), dim=0)
            predict_cla = torch.argmax(predict).numpy()
        plt.title("class: {}   prob: {:.3}".format(class_indict[str(predict_cla)], predict[predict_cla].numpy()))
        for i in range(len(predict)):
            print("class: {:10}   prob: {:.3}".format(class_indict[str(i)], predict[i].numpy()))
        plt.savefig(os.path.join(folder, "tutorial_predict.png"))
        return
    img_path_list = sorted(os.path.join(args.path, i) for i in os.listdir(args.path) if i.endswith(".jpg"))
    batch_size = 5
    with torch.no_grad():
        for ids in range(0, len(img_path_list) // batch_size):
            img_list = []
            for img_path in img_path_list[ids * batch_size: (ids + 1) * batch_size]:
                img_list.append(data_transform(Image.open(img_path).convert("RGB")))
            batch_img = torch.stack(img_list, dim=0)
            predict = torch.softmax(model(batch_img.to(device)).cpu(), dim=1)
            probs, classes = torch.max(predict, dim=1)
            for idx, (pro, cla) in enumerate(zip(probs, classes)):
                print("image: {}  class: {}  prob: {:.3}".format(img_path_list[ids * batch_size + idx],
                                                                 class_indict[str(cla.numpy())], pro.numpy()))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
