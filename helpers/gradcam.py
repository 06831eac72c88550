"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

The gradient of the class's score with respect to layer4's output, averaged over the positions, weighs
layer4's channels; their weighted sum through a ReLU is the map, upsampled to the input and scaled to
[0, 1]. With a global average pool before one linear layer, as in a ResNet, this is exactly CAM.
predict.py --cam imports this module only then: it needs torch, which --onnx does not.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from helpers import imaging


def _no_autocast(device):
    # The map is computed in fp32. torch 2.0's autocast knows only cpu and cuda, and elsewhere none is on.
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def grad_cam(net, x, classes=None):
    """Heatmaps (N, H, W), float32 in [0, 1], of the normalised batch x on the net's device, for
    classes[i] (default: each image's top class). net is a ResNet of model.py in eval mode."""
    stage = {}

    def cut(module, inputs, output):
        # layer4's output becomes a leaf, so the backward pass goes through fc and the pool only.
        stage["out"] = output.detach().float().requires_grad_()
        return stage["out"]

    handle = net.layer4.register_forward_hook(cut)
    try:
        with torch.enable_grad(), _no_autocast(x.device):
            logits = net(x.float()).float()
            if classes is None:
                classes = logits.argmax(1)
            target = torch.as_tensor(classes, device=logits.device).long().view(-1, 1)
            # Each image's score depends on its own features only (eval mode): one backward for all.
            (grad,) = torch.autograd.grad(logits.gather(1, target).sum(), stage["out"])
    finally:
        handle.remove()
    with torch.no_grad():
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * stage["out"]).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))  # no evidence: all 0
    return cam.cpu().numpy().astype(np.float32)


def crop_heatmaps(net, device, crops, classes, batch_size=16):
    """Grad-CAM of classes[i] on crops[i], the uint8 HWC crops the model saw, in batches."""
    maps = []
    for start in range(0, len(crops), batch_size):
        batch = np.stack(crops[start:start + batch_size])
        x = torch.from_numpy(imaging.normalize(batch)).to(device)
        maps.extend(grad_cam(net, x, classes[start:start + batch_size]))
    return maps
