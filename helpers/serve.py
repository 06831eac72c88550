"""video_predict.py --serve: the live page. The annotated frames as MJPEG (multipart/x-mixed-replace,
which a browser shows in an <img>), the top-k, the frames per second, the source and the model; with
--collect, one button per class that saves the current raw frame into FOLDER/<class>/.

The standard library's threading HTTP server is enough: a few fixed paths, one thread per viewer.
The main loop only swaps in the newest frame (show); each viewer's thread encodes it (once for all of
them) and sends it at its own pace, so a slow viewer misses frames and never slows prediction.
"""
import argparse
import contextlib
import errno
import hmac
import html
import http.server
import io
import ipaddress
import json
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from helpers import cli, files, imaging, sources

cv2 = sources.cv2
VIEWERS = 8  # streams at once; the next is answered 503 (try again later)
CONNECTIONS = 2 * VIEWERS  # threads at once, streams included; more connections are closed at once
MAX_URL, MAX_BODY = 2048, 1024  # bytes of a request's URL and of a POST's body
REQUEST_SECONDS = 5  # the whole request (its line, headers and body) must arrive within this, or it is dropped
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
PAGE = (Path(__file__).parent / "serve.html").read_text(encoding="utf-8")  # the page, its style and its script


def address_arg(text):
    """--serve [HOST:]PORT: (host, port), 127.0.0.1 when no host is given."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:8080
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT with a port from 1 to 65535, got {text!r}")
    return host or "127.0.0.1", int(port)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = CONNECTIONS  # a page opens several connections at once: none waits for a resent SYN

    def __init__(self, sockaddr, family, page):
        self.address_family, self.page = family, page
        self.slots = threading.BoundedSemaphore(CONNECTIONS)
        super().__init__(sockaddr, Handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):  # too many connections: no thread for this one
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a viewer that left or stalled is normal, not an error
            super().handle_error(request, client_address)


class DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read given only the time left before one deadline: a client that sends
    its request a line at a time cannot hold a connection (and its thread) for longer."""

    def __init__(self, sock, seconds):
        self.sock, self.end = sock, time.monotonic() + seconds

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Page:
    """The server, bound at once (a taken port or a foreign host is one line, before the source opens);
    `with page.serving(runs_on):` serves until the block ends; show() hands it each annotated frame."""

    def __init__(self, address, classes, collect, source_name, model_file):
        host, port = address
        self.folder = Path(collect) if collect else None
        self.counts = collect_classes(self.folder, classes) if collect else {}  # checked before the port is taken
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self.server = Server(sockaddr[:2], family, self)
        except socket.gaierror:
            raise cli.UserError(f"--serve {host}:{port}: unknown host {host}") from None
        except OSError as e:
            why = {errno.EADDRINUSE: f"port {port} is taken (another --serve?); choose another with --serve [HOST:]PORT",
                   errno.EADDRNOTAVAIL: f"{host} is not an address of this machine (0.0.0.0 serves on all of them)",
                   errno.EACCES: f"port {port} needs root; choose one above 1023"}.get(e.errno, cli.describe_os_error(e))
            raise cli.UserError(f"cannot serve on {host}:{port}: {why}") from None
        ip, self.port = self.server.server_address[:2]
        self.bound = "localhost" if ip in LOOPBACK_NAMES else f"[{ip}]" if ":" in ip else ip  # for ssh -L
        self.loopback = ipaddress.ip_address(ip).is_loopback
        self.token = secrets.token_urlsafe(16)  # needed for everything on another address, for collecting always
        self.names = LOOPBACK_NAMES | {ip}  # the Host a browser on this machine sends (127.0.0.2 is loopback too)
        shown = "localhost" if ip in LOOPBACK_NAMES else socket.gethostname() if ip in ("0.0.0.0", "::") else host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}/" + ("" if self.loopback else f"?token={self.token}")
        self.about = {"source": source_name, "model": str(model_file), "runs_on": ""}
        self.cond, self.encoding, self.saving = threading.Condition(), threading.Lock(), threading.Lock()
        self.viewers = threading.BoundedSemaphore(VIEWERS)
        self.image = self.raw = self.jpeg = None
        self.seq = self.jpeg_seq = 0
        self.status, self.rates, self.last_saved, self.thumb, self.closed = {}, [], None, None, False

    @contextlib.contextmanager
    def serving(self, runs_on):
        self.about["runs_on"] = runs_on
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        print(f"note: the live page is at {self.url}" + (
            f" (from another machine: ssh -L {self.port}:{self.bound}:{self.port} HOST, then open it there)"
            if self.loopback else " (the token in it keeps everyone else out)"), file=sys.stderr)
        try:
            yield self
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            self.server.shutdown()
            self.server.server_close()

    # -- the main loop's side: never waits for a viewer

    def show(self, frame, raw, pairs, reader):
        """The newest frame (annotated), its raw copy (for --collect), the top-k, the reader's counts."""
        now = time.perf_counter()
        self.rates = [r for r in self.rates if now - r[0] < 2.0] + [(now, reader.read, reader.predicted)]
        (t0, read, predicted), dt = self.rates[0], max(now - self.rates[0][0], 1e-9)
        status = {"topk": [[c, round(q, 4)] for c, q in pairs], "frame": frame.index,
                  "fps_read": round((reader.read - read) / dt, 1),
                  "fps_predicted": round((reader.predicted - predicted) / dt, 1)}
        with self.cond:
            self.image, self.raw, self.status = frame.image, raw, status
            self.seq += 1
            self.cond.notify_all()

    # -- the viewers' side

    def next_jpeg(self, seen):
        """(seq, JPEG) of the newest frame once there is one newer than `seen`; the same again after a
        second without one (a closed tab is noticed then). Encoded once, by the first viewer to ask."""
        with self.cond:
            self.cond.wait_for(lambda: self.seq > seen or self.closed, timeout=1.0)
            seq, image = self.seq, self.image
        if image is None:
            return seen, None
        with self.encoding:
            if self.jpeg_seq != seq:
                self.jpeg, self.jpeg_seq = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(), seq
            return seq, self.jpeg

    def state(self):
        with self.cond:
            status = dict(self.status)
        return dict(status, **self.about, classes=self.counts if self.folder else None, last_saved=self.last_saved)

    def collect(self, name):
        """Save the newest raw frame as FOLDER/name/<time>_f<frame>.jpg: written atomically, never over a file."""
        with self.cond:
            raw, frame = self.raw, self.status.get("frame", 0)
        if raw is None:
            raise cli.UserError("no frame yet")
        data = cv2.imencode(".jpg", raw, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        with self.saving:
            now = time.time()
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
            n = 0
            while True:  # a unique name that sorts by time: a second click in the same millisecond gets _1
                path = self.folder / name / f"{stamp}_f{frame:06d}{f'_{n}' if n else ''}.jpg"
                if not path.exists():
                    break
                n += 1
            try:
                files.atomic_write_bytes(path, data)
            except OSError as e:  # a full disk, a file put where the class's folder was: the run goes on
                raise cli.UserError(f"cannot save {path}: {cli.describe_os_error(e)}") from None
            self.counts[name] += 1
            small = cv2.resize(raw, (160, max(1, raw.shape[0] * 160 // raw.shape[1])), interpolation=cv2.INTER_AREA)
            self.thumb, self.last_saved = cv2.imencode(".jpg", small)[1].tobytes(), f"{name}/{path.name}"
        return self.last_saved


def collect_classes(folder, classes):
    """{class: images already there}: the model's classes, then the class folders already in FOLDER."""
    if folder.exists() and not folder.is_dir():
        raise cli.UserError(f"--collect {folder} is a file; give a folder (data_set/flower_data/flower_photos)")
    for side in [folder.resolve(), *folder.resolve().parents]:  # train/ and val/ are split_data.py's to write
        if side.name in ("train", "val", "test") and (side.parent / ".split.json").exists():
            raise cli.UserError(f"--collect {folder} is inside {side}, which split_data.py writes; collect into "
                                f"{side.parent / 'flower_photos'} and split again")
    if (folder / ".split.json").exists() or (folder / "flower_photos").is_dir() and (
            (folder / "train").is_dir() or (folder / "val").is_dir()):
        raise cli.UserError(f"--collect {folder} is the root of a split (its train/ and val/ are split_data.py's "
                            f"to write); collect into {folder / 'flower_photos'} and split again")
    files.check_writable_dir(folder, "collected frames")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    names = list(dict.fromkeys(list(classes) + found))
    bad = [c for c in names if c in (".", "..") or "/" in c or "\\" in c]
    if bad:
        raise cli.UserError(f"--collect: the class {bad[0]!r} cannot be a folder name")
    taken = [folder / c for c in names if (folder / c).exists() and not (folder / c).is_dir()]
    if taken:
        raise cli.UserError(f"--collect: {taken[0]} is a file; a class's path must be a folder or absent")
    return {c: sum(imaging.is_image_file(p) for p in (folder / c).iterdir()) if (folder / c).is_dir() else 0
            for c in names}


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # seconds a socket may block: a stalled viewer or a slow request frees its thread then
    server_version, sys_version = "video_predict.py", ""

    def log_message(self, *args):
        pass  # stdout holds the frames' lines

    def setup(self):
        super().setup()
        self.rfile.close()  # read through the request's deadline instead
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, REQUEST_SECONDS))

    def send_response(self, *args):
        self.connection.settimeout(self.timeout)  # the request is read: answers get the usual timeout again
        super().send_response(*args)

    def allowed(self, query, need_token=False):
        """The token, or (for a GET on loopback) a Host that names loopback (no DNS rebinding)."""
        page = self.server.page
        if hmac.compare_digest(query.get("token", [""])[0].encode(), page.token.encode()):
            return True
        host = urllib.parse.urlsplit("//" + self.headers.get("Host", "")).hostname
        return page.loopback and not need_token and host in page.names

    def checked(self, paths, need_token=False):
        """The path of a request for one of `paths` that may pass, else None once answered: the URL
        size-bound, exact paths only (no files, no folders, no '..', no absolute URL), the token."""
        url = urllib.parse.urlsplit(self.path)
        if len(self.path) > MAX_URL:
            return self.send_error(414)
        if not self.path.startswith("/") or url.path not in paths:
            return self.send_error(404)
        if not self.allowed(urllib.parse.parse_qs(url.query), need_token):
            return self.send_error(403, "add ?token=... as printed by video_predict.py")
        return url.path

    def do_GET(self):
        page, path = self.server.page, self.checked(("/", "/stream", "/status", "/thumb"))
        if path is None:
            return
        if path == "/":
            return self.reply(200, "text/html; charset=utf-8", page_html(page).encode())
        if path == "/status":
            return self.reply(200, "application/json", json.dumps(page.state()).encode())
        if path == "/thumb":
            return self.reply(200, "image/jpeg", page.thumb) if page.thumb else self.send_error(404)
        if not page.viewers.acquire(blocking=False):
            self.send_response(503, f"{VIEWERS} viewers already; try again later")
            self.send_header("Retry-After", "5")
            self.end_headers()
            return
        try:
            # A small send buffer: a slow viewer waits for the newest frame instead of seconds of old ones.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0
            while not page.closed:
                seen, jpeg = page.next_jpeg(seen)
                if jpeg is not None:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
        except OSError:  # the viewer left, or stalled for `timeout` seconds
            pass
        finally:
            page.viewers.release()

    def do_POST(self):
        page = self.server.page
        if self.checked(("/collect",) if page.folder else (), need_token=True) is None:
            return
        length = self.headers.get("Content-Length", "")
        if "Transfer-Encoding" in self.headers or not length.isdigit():
            return self.send_error(411)
        if int(length) > MAX_BODY:
            return self.send_error(413)
        name = urllib.parse.parse_qs(self.rfile.read(int(length)).decode("utf-8", "replace")).get("class", [""])[0]
        if name not in page.counts:
            return self.send_error(400, "no such class")
        try:
            saved = page.collect(name)
        except cli.UserError as e:
            print(f"warning: --collect: {e}", file=sys.stderr)
            return self.send_error(503, "not saved", str(e))  # the path may not be Latin-1: in the body
        if "application/json" in self.headers.get("Accept", ""):
            return self.reply(200, "application/json", json.dumps({"saved": saved, "classes": page.counts}).encode())
        self.send_response(303)  # a form sent without the page's script: back to the page
        self.send_header("Location", "/?token=" + page.token)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, code, kind, body):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def page_html(page):
    q = "?token=" + page.token
    buttons = "".join(f'<button name="class" value="{html.escape(c)}">{html.escape(c)} <small>{n}</small></button>'
                      for c, n in page.counts.items())
    collect = (f'<form id="collect" method="post" action="/collect{q}"><p>Save the current frame (as the camera '
               f'sees it) as:</p>{buttons}</form><p id="saved"></p><img id="thumb" alt="">' if page.folder else "")
    return PAGE.replace("@TITLE@", html.escape(page.about["source"])).replace("@COLLECT@", collect).replace("@Q@", q)
