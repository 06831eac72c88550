"""Every image becomes 8-bit RGB with its EXIF orientation applied."""
import numpy as np
import pytest
from PIL import Image

from cli import UserError
from images import load_rgb


def save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,ext", [("RGBA", "png"), ("LA", "png"), ("L", "jpg"), ("CMYK", "jpg"),
                                      ("P", "png"), ("I;16", "png"), ("1", "bmp"), ("RGB", "webp"),
                                      ("RGB", "gif"), ("RGB", "tif")])
def test_modes_become_rgb(tmp_path, mode, ext):
    img = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode) if mode != "I;16" else \
        Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    out = load_rgb(save(img, tmp_path / f"x.{ext}"))
    assert out.mode == "RGB" and out.size == (30, 20)


def test_alpha_is_composited_not_dropped(tmp_path):
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert load_rgb(save(img, tmp_path / "a.png")).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 40000, dtype=np.uint16)
    out = load_rgb(save(Image.fromarray(arr), tmp_path / "g.png"))
    assert out.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256, not 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = load_rgb(save(img, tmp_path / "r.jpg", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_corrupt_and_truncated_files_give_one_line_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")
    good = save(Image.new("RGB", (200, 200), (1, 2, 3)), tmp_path / "t.png")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot read image .*cut.png"):
        load_rgb(tmp_path / "cut.png")


@pytest.mark.parametrize("size,img_size", [((500, 333), 224), ((240, 320), 224), ((256, 300), 224), ((90, 70), 64)])
def test_eval_transform_equals_torchvision(size, img_size):
    from torchvision import transforms
    from images import MEAN, STD, EvalTransform
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = transforms.Compose([transforms.Resize(int(round(img_size / 0.875))), transforms.CenterCrop(img_size),
                              transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    import torch
    torch.testing.assert_close(torch.from_numpy(EvalTransform(img_size)(img)), ref(img), rtol=0, atol=1e-5)
