import pytest
import torch
import torchvision

import model


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet34", 64), ("resnet50", 64), ("resnext50_32x4d", 64)])
def test_torchvision_state_dict_loads_strict_and_gives_same_logits(name, size):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    ours = model.MODELS[name]().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet101", "resnet152", "resnext101_32x8d"])
def test_large_models_have_torchvision_names_and_shapes(name):
    with torch.device("meta"):
        ref = getattr(torchvision.models, name)(weights=None).state_dict()
        ours = model.MODELS[name]().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_num_classes_and_include_top():
    net = model.resnet34(num_classes=5)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    features = model.resnet50(include_top=False)
    assert features(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    assert not any(k.startswith("fc.") for k in features.state_dict())
