"""The tutorial's train.py, as the baseline of bench/train_speed.sh: ImageFolder and torchvision's
transforms, min(cpu_count, batch_size, 8) workers, Adam at 1e-4, fp32, NCHW, the tutorial's loop and
its best-accuracy save. Two changes only, both for the benchmark: the data path, epochs and output
are arguments, and the train loop's images/s is printed (the time of the loop alone, as train.py's
history.csv has it). From scratch (resnet34(num_classes)) unless --weights is given.

    python bench/tutorial_train.py --data-path DATA --epochs 1 --save-path OUT/resNet34.pth
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.optim as optim
from torchvision import datasets, transforms
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import resnet34  # noqa: E402  the tutorial's model.py: the same network as train.py's


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--weights", default=None, help="ImageNet weights (the tutorial's resnet34-pre.pth); default: from scratch")
    p.add_argument("--save-path", default="./resNet34.pth")
    args = p.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.save_path)), exist_ok=True)

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    print("using {} device.".format(device))
    data_transform = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(),
                                     transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])}
    train_dataset = datasets.ImageFolder(root=os.path.join(args.data_path, "train"), transform=data_transform["train"])
    train_num = len(train_dataset)
    cla_dict = dict((val, key) for key, val in train_dataset.class_to_idx.items())
    with open(os.path.join(os.path.dirname(os.path.abspath(args.save_path)), "class_indices.json"), "w") as f:
        f.write(json.dumps(cla_dict, indent=4))
    batch_size = args.batch_size
    nw = min([os.cpu_count(), batch_size if batch_size > 1 else 0, 8])
    print("Using {} dataloader workers every process".format(nw))
    train_loader = torch.utils.data.DataLoader(train_dataset, batch_size=batch_size, shuffle=True, num_workers=nw)
    validate_dataset = datasets.ImageFolder(root=os.path.join(args.data_path, "val"), transform=data_transform["val"])
    val_num = len(validate_dataset)
    validate_loader = torch.utils.data.DataLoader(validate_dataset, batch_size=batch_size, shuffle=False, num_workers=nw)
    print("using {} images for training, {} images for validation.".format(train_num, val_num))

    if args.weights:
        net = resnet34()
        net.load_state_dict(torch.load(args.weights, map_location="cpu"))
        net.fc = nn.Linear(net.fc.in_features, len(cla_dict))
    else:
        net = resnet34(num_classes=len(cla_dict))
    net.to(device)
    loss_function = nn.CrossEntropyLoss()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = optim.Adam(params, lr=0.0001)

    best_acc = 0.0
    train_steps = len(train_loader)
    for epoch in range(args.epochs):
        # train
        net.train()
        running_loss = 0.0
        train_bar = tqdm(train_loader, file=sys.stdout)
        start = time.perf_counter()
        for step, data in enumerate(train_bar):
            images, labels = data
            optimizer.zero_grad()
            logits = net(images.to(device))
            loss = loss_function(logits, labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            train_bar.desc = "train epoch[{}/{}] loss:{:.3f}".format(epoch + 1, args.epochs, loss)
        loop_s = time.perf_counter() - start

        # validate
        net.eval()
        acc = 0.0
        with torch.no_grad():
            val_bar = tqdm(validate_loader, file=sys.stdout)
            for val_data in val_bar:
                val_images, val_labels = val_data
                outputs = net(val_images.to(device))
                predict_y = torch.max(outputs, dim=1)[1]
                acc += torch.eq(predict_y, val_labels.to(device)).sum().item()
                val_bar.desc = "valid epoch[{}/{}]".format(epoch + 1, args.epochs)
        val_accurate = acc / val_num
        print("[epoch %d] train_loss: %.3f  val_accuracy: %.3f" % (epoch + 1, running_loss / train_steps, val_accurate))
        print("train loop: %.2f images/s" % (train_num / loop_s))
        if val_accurate > best_acc:
            best_acc = val_accurate
            torch.save(net.state_dict(), args.save_path)
    print("Finished Training")


if __name__ == "__main__":
    main()
