"""Download code against a local http.server on 127.0.0.1, with checksums checked."""
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest
import torch

from helpers import cli, downloads, files, weights
import load_weights
import split_data
from conftest import make_class_folders, parse


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_checks_sha256_and_leaves_no_partial_file(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"hello" * 1000)
    good = downloads.download(f"{url}/f.bin", tmp_path / "out" / "f.bin", sha256=sha256(root / "f.bin"), progress=False)
    assert good.read_bytes() == b"hello" * 1000
    with pytest.raises(cli.UserError, match="checksum mismatch"):
        downloads.download(f"{url}/f.bin", tmp_path / "bad" / "f.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "bad").exists()  # nor the folder made for it
    with pytest.raises(cli.UserError, match="could not download"):
        downloads.download(f"{url}/missing.bin", tmp_path / "m" / "x", progress=False)
    assert not (tmp_path / "m").exists()


def make_flowers_tgz(path, tmp_path):
    src = make_class_folders(tmp_path / "src" / "flower_photos", per_class=5, classes=("daisy", "roses"))
    (src / "LICENSE.txt").write_text("licence")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="flower_photos")


def test_download_flowers_unpacks_and_splits(server, tmp_path, capsys):
    root, url = server
    make_flowers_tgz(root / "flower_photos.tgz", tmp_path)
    data = tmp_path / "data"
    args = ["--data-path", data, "--download", "--url", f"{url}/flower_photos.tgz"]
    with pytest.raises(cli.UserError, match="checksum mismatch"):
        split_data.main(parse(split_data, args + ["--sha256", "ab" * 32]))
    assert not (data / "flower_photos").exists() and not list(data.glob("*.tgz*"))
    split_data.main(parse(split_data, args + ["--sha256", sha256(root / "flower_photos.tgz")]))
    assert (data / "flower_photos" / "LICENSE.txt").exists()
    assert len(list((data / "train" / "daisy").iterdir())) + len(list((data / "val" / "daisy").iterdir())) == 5
    assert not list(data.glob("*.tgz")) and not list(data.glob(".unpack-*"))


def test_archive_member_outside_target_is_refused(server, tmp_path):
    root, url = server
    evil = root / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("flower_photos/daisy/ok.jpg", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    data = tmp_path / "data"
    with pytest.raises(cli.UserError, match="outside"):
        split_data.main(parse(split_data, ["--data-path", data, "--download", "--url", f"{url}/evil.tgz",
                                           "--sha256", sha256(evil)]))
    assert not (tmp_path / "escaped.txt").exists() and not (data / "flower_photos").exists()
    assert not list(data.glob(".unpack-*"))


def test_imagenet_weights_download_into_hub_cache_with_hash_prefix(server, tmp_path, monkeypatch, capsys):
    root, url = server
    import model
    state = model.resnet18().state_dict()
    tmp = root / "tmp.pth"
    torch.save(state, tmp)
    digest = sha256(tmp)
    good, bad = root / f"resnet18-{digest[:8]}.pth", root / "resnet18-00000000.pth"
    tmp.rename(good)
    bad.write_bytes(good.read_bytes())
    hub = tmp_path / "hub"
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        with pytest.raises(cli.UserError, match="checksum mismatch.*Offline"):
            load_weights.main(parse(load_weights, ["--model", "resnet18", "--download", "--url", f"{url}/{bad.name}"]))
        net = load_weights.main(parse(load_weights, ["--model", "resnet18", "--download", "--url", f"{url}/{good.name}",
                                                     "--num-classes", "3", "--out", tmp_path / "adapted.pth"]))
        assert (hub / "checkpoints" / good.name).exists()
        assert not (hub / "checkpoints" / bad.name).exists()
        assert net.fc.out_features == 3
        torch.testing.assert_close(net.state_dict()["conv1.weight"], state["conv1.weight"])
        # offline: one line saying where to put the file
        with pytest.raises(cli.UserError, match=r"Offline\? Fetch .* put it at .*resnet34"):
            weights.imagenet_weights("resnet34", url="http://127.0.0.1:9/resnet34-b627a593.pth", progress=False)
    finally:
        torch.hub.set_dir(old)


def test_an_archive_the_user_put_there_is_unpacked_and_kept(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_flowers_tgz(data / "flower_photos.tgz", tmp_path)
    split_data.main(parse(split_data, ["--data-path", data, "--download", "--url",
                                       (data / "flower_photos.tgz").as_uri(), "--sha256", "none"]))
    assert (data / "flower_photos.tgz").exists() and (data / "train" / "roses").is_dir()


def test_a_download_that_fails_its_checks_leaves_nothing_in_the_hub_cache(server, tmp_path, monkeypatch):
    """A bad file at --url was kept in the torch hub cache; a later good file of the same name was then
    refused with the same error, and nothing said to delete the cached copy."""
    from conftest import run_main
    root, url = server
    hub = tmp_path / "torch" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))  # TORCH_HOME is read only while no hub folder was set in this process
    cached = hub / "checkpoints" / "resnet18.pth"  # no hash in its name: only reading it can check it
    argv = ["--model", "resnet18", "--download", "--url", f"{url}/resnet18.pth", "--num-classes", "3"]
    try:
        for bad in (b"<html>Service unavailable</html>", None):  # not weights; weights of another model
            if bad is None:  # a VGG's first layer, say
                torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, root / "resnet18.pth")
            else:
                (root / "resnet18.pth").write_bytes(bad)
            res = run_main("load_weights.py", *argv)
            error = res.stderr.strip().splitlines()[-1]  # after the server's log and the progress bar
            assert res.returncode == 1 and res.stderr.count("error:") == 1 and error.startswith("error:"), res.stderr
            assert "The download from" in error and error.endswith("was deleted"), res.stderr
            assert not cached.exists() and not list(hub.rglob("*.partial"))
        good = weights.build_model("resnet18").state_dict()
        torch.save(good, root / "resnet18.pth")
        assert run_main("load_weights.py", *argv).returncode == 0 and cached.exists()
        cached.write_bytes(b"damaged on the card")  # a cached copy that fails: named, to be deleted
        res = run_main("load_weights.py", *argv)
        assert res.returncode == 1 and "torch hub cache: delete it" in res.stderr, res.stderr
    finally:
        torch.hub.set_dir(old)
