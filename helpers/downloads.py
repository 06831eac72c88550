"""Downloads: a URL or a local file, fetched with torch.hub's downloader and checked."""
import posixpath
import re
import urllib.error
import urllib.parse
from pathlib import Path

from helpers import cli, files


def as_url(text):
    """A URL as given, or an existing file's path as a file:// URL."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return text
    if Path(text).is_file():
        return Path(text).resolve().as_uri()
    raise cli.UserError(f"{text} is neither a URL (https://, http://, file://) nor an existing file")


def url_file_name(url):
    """The file name at the end of a URL's path, without its ?query or #fragment (as torch.hub names it)."""
    return posixpath.basename(urllib.parse.urlparse(url).path)


def download(url, dest, sha256=None, progress=True, timeout=60):
    """Fetch url to dest with torch.hub's downloader, which renames its temporary file only once it
    is complete and matches `sha256` (a digest or its start)."""
    import socket

    from torch.hub import download_url_to_file  # Only downloads need torch.

    dest = Path(dest)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torch.hub sets none, and a stalled server would hang forever.
    try:
        with files.made_dirs(dest.parent):
            download_url_to_file(url, str(dest), hash_prefix=sha256.lower() if sha256 else None, progress=progress)
    except RuntimeError as e:
        if "hash" not in str(e):
            raise
        got = str(e).rsplit("got", 1)[-1].strip(' "()')
        raise cli.UserError(f"checksum mismatch for {url}: expected SHA-256 {sha256}..., got {got}; "
                        "the file was not kept (a broken download or a wrong --url)") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise cli.UserError(f"could not download {url}: {getattr(e, 'reason', None) or e}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return dest
