"""Load ImageNet weights into a model of model.py and adapt it to your class count.

Shows the tutorial's two ways:
  1. build the 1000-class model, load the file, then replace fc by Linear(in_features, num_classes);
  2. build the model with num_classes, drop the file's fc.* keys, load with strict=False.
Both give the same backbone; --out saves the adapted weights for train.py --weights.

    python load_weights.py --download --model resnet34 --num-classes 5 --out resnet34-pre.pth
"""
from helpers import cli, downloads
if __name__ == "__main__":
    cli.one_line_ctrl_c()  # before torch loads: a Ctrl-C during its import ends in one line too
from helpers import inference


def get_args_parser(add_help=True):
    p = cli.ArgumentParser(description="Load ImageNet weights and adapt the classifier", add_help=add_help)
    p.add_argument("--model", default="resnet34", choices=inference.MODEL_NAMES, help="architecture (default: %(default)s)")
    p.add_argument("--weights", default=None,
                   help="ImageNet weights file (default: ./<model>-pre.pth, e.g. ./resnet34-pre.pth)")
    p.add_argument("--num-classes", type=cli.int_in(2, 100_000), default=5,
                   help="classes of your data set, two or more (default: %(default)s)")
    p.add_argument("--download", action="store_true",
                   help="fetch torchvision's ImageNet file for --model into the torch hub cache (hash checked)")
    p.add_argument("--url", default=None, help="with --download: another address (or a local file) for the file")
    p.add_argument("--way", type=int, choices=(1, 2), default=2,
                   help="1: load then replace fc; 2: drop fc.* and load with strict=False (default: %(default)s)")
    p.add_argument("--out", default=None, help="save the adapted state_dict here for train.py --weights")
    cli.add_overwrite(p, "replace an existing --out file")
    return p


if __name__ == "__main__":
    cli.check_args_first(get_args_parser())  # before torch loads (seconds): a mistyped flag is refused at once
import torch
import torch.nn as nn

from helpers import files, weights


def replace_fc_after_loading(model_name, state_dict, num_classes, path):
    """Way 1: the 1000-class model takes the whole file, then fc is replaced."""
    net = weights.build_model(model_name)  # num_classes=1000, as the file
    weights.check_architecture(net, model_name, state_dict, path)
    if weights.num_classes_of(state_dict) != net.fc.out_features:
        raise cli.UserError(f"way 1 needs a {net.fc.out_features}-class ImageNet file; this one has "
                        f"{weights.num_classes_of(state_dict)} classes: use --way 2")
    net.load_state_dict(state_dict)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def load_without_fc(model_name, state_dict, num_classes, path):
    """Way 2: the num_classes model loads everything but fc (strict=False)."""
    net = weights.build_model(model_name, num_classes=num_classes)
    weights.check_architecture(net, model_name, state_dict, path)
    missing, unexpected = weights.load_backbone(net, state_dict)
    print(f"missing keys: {missing}")
    print(f"unexpected keys: {unexpected}")
    return net


def main(args):
    if args.url and not args.download:
        raise cli.UserError("--url only applies with --download")
    if args.download:
        url = downloads.as_url(args.url) if args.url else weights.imagenet_url(args.model)
        source = weights.imagenet_cache_path(url)
        if source.exists() and not source.is_file():
            raise cli.UserError(f"{source} is in the way of the download: it is not a file")
    else:
        source = files.need_file(args.weights or f"./{args.model}-pre.pth", "weights file",
                           f"run with --download to fetch torchvision's ImageNet {args.model} file, "
                           "or pass --weights PATH")
    if args.out:  # never over the file it reads, --overwrite or not
        files.check_output(args.out, "adapted weights", overwrite=args.overwrite, suffixes=(".pth", ".pt"), inputs=[source])
    path = source  # downloaded into the torch hub cache, where the checks delete a bad download
    state_dict = weights.read_imagenet(args.model, url=url) if args.download else weights.read_state_dict(path)
    adapt = replace_fc_after_loading if args.way == 1 else load_without_fc
    net = adapt(args.model, state_dict, args.num_classes, path)
    print(f"{args.model} from {path}: fc is now Linear({net.fc.in_features}, {net.fc.out_features}) (way {args.way})")
    if args.out:
        with files.atomic_path(args.out) as tmp:
            torch.save(net.state_dict(), tmp)
        print(f"saved adapted weights to {args.out}; train with: python train.py --model {args.model} "
              f"--weights {args.out}")
    return net


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
