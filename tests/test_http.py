from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.http import serve_directory

pytestmark = pytest.mark.http


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def test_serves_files_and_directory_listings(tmp_path: Path) -> None:
    (tmp_path / "repo/objects").mkdir(parents=True)
    (tmp_path / "repo/config").write_bytes(b"[core]\nmode=archive-z2\n")
    with serve_directory(tmp_path, tmp_path / "nginx") as url:
        assert url.startswith("http://127.0.0.1:")
        assert _get(f"{url}/repo/config") == b"[core]\nmode=archive-z2\n"
        assert b"objects/" in _get(f"{url}/repo/")
        with pytest.raises(urllib.error.HTTPError) as error:
            _get(f"{url}/repo/missing")
        assert error.value.code == 404
    with pytest.raises(urllib.error.URLError):
        _get(f"{url}/repo/config")


def test_fixture_serves_several_directories(http_server: Callable[[Path], str], tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text(name)
    urls = [http_server(tmp_path / "one"), http_server(tmp_path / "two")]
    assert urls[0] != urls[1]
    assert [_get(f"{url}/file") for url in urls] == [b"one", b"two"]
