"""Every image becomes 8-bit RGB with its EXIF orientation applied."""
import numpy as np
import pytest
from PIL import Image

from helpers import cli, imaging


def save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,ext", [("RGBA", "png"), ("LA", "png"), ("L", "jpg"), ("CMYK", "jpg"),
                                      ("P", "png"), ("I;16", "png"), ("1", "bmp"), ("RGB", "webp"),
                                      ("RGB", "gif"), ("RGB", "tif")])
def test_modes_become_rgb(tmp_path, mode, ext):
    img = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode) if mode != "I;16" else \
        Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    out = imaging.load_rgb(save(img, tmp_path / f"x.{ext}"))
    assert out.mode == "RGB" and out.size == (30, 20)


def test_alpha_is_composited_not_dropped(tmp_path):
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert imaging.load_rgb(save(img, tmp_path / "a.png")).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 40000, dtype=np.uint16)
    out = imaging.load_rgb(save(Image.fromarray(arr), tmp_path / "g.png"))
    assert out.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256, not 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = imaging.load_rgb(save(img, tmp_path / "r.jpg", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_corrupt_and_truncated_files_give_one_line_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(cli.UserError, match="cannot read image .*bad.jpg"):
        imaging.load_rgb(tmp_path / "bad.jpg")
    good = save(Image.new("RGB", (200, 200), (1, 2, 3)), tmp_path / "t.png")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(cli.UserError, match="cannot read image .*cut.png"):
        imaging.load_rgb(tmp_path / "cut.png")


@pytest.mark.parametrize("size,img_size", [((500, 333), 224), ((240, 320), 224), ((256, 300), 224), ((90, 70), 64)])
def test_eval_transform_equals_torchvision(size, img_size):
    from torchvision import transforms
    from helpers import imaging
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = transforms.Compose([transforms.Resize(int(round(img_size / 0.875))), transforms.CenterCrop(img_size),
                              transforms.ToTensor(), transforms.Normalize(imaging.MEAN, imaging.STD)])
    import torch
    torch.testing.assert_close(torch.from_numpy(imaging.EvalTransform(img_size)(img)), ref(img), rtol=0, atol=1e-5)


def photo(path, size, orientation=None):
    """A photo-like JPEG (demo flowers drawn, then scaled to `size`)."""
    import random

    from helpers import demo_data
    img = demo_data.draw_image("sunflowers", random.Random(3), 300).resize(size, Image.BICUBIC)
    kw = {"quality": 92}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(path, **kw)
    return path


def test_photo_no_bigger_than_the_target_is_unchanged(tmp_path):
    """No draft below the resize target: the tutorial's pixels exactly, in training and prediction."""
    import torch
    from torchvision import transforms

    from helpers import imaging
    path = photo(tmp_path / "small.jpg", (300, 240))
    ref = Image.open(path).convert("RGB")
    norm = [transforms.ToTensor(), transforms.Normalize(imaging.MEAN, imaging.STD)]
    val = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)] + norm)
    with imaging.open_image(path) as img:
        torch.testing.assert_close(torch.from_numpy(imaging.EvalTransform(224)(img)), val(ref), rtol=0, atol=1e-5)
    train_ref = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()] + norm)
    ours = imaging.TrainTransform(224)
    for seed in range(5):
        torch.manual_seed(seed)
        expected = train_ref(ref)
        torch.manual_seed(seed)
        with imaging.open_image(path) as img:
            torch.testing.assert_close(ours(img), expected, rtol=0, atol=1e-5)


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_looks_the_same(tmp_path):
    import torch
    from torchvision import transforms

    from helpers import imaging
    path = photo(tmp_path / "phone.jpg", (2400, 1800), orientation=6)  # shown as 1800 x 2400
    with imaging.open_image(path) as img:
        small = imaging.decode_rgb(img, shrink=1800 / 256)
    assert small.size == (1800 // 4, 2400 // 4)  # DCT scale 1/4 keeps the short side >= 256, and upright
    full = ImageOps_exif(path)
    val = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                              transforms.Normalize(imaging.MEAN, imaging.STD)])
    with imaging.open_image(path) as img:
        ours = torch.from_numpy(imaging.EvalTransform(224)(img))
    diff = (ours - val(full)).abs()
    assert diff.mean() < 0.03 and diff.max() < 1.0  # normalised units: a few levels of 255 on average


def ImageOps_exif(path):
    from PIL import ImageOps
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")
