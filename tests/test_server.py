"""Server settings over HTTP against a running app: Streamlit itself enforces the upload limit and XSRF protection.

`streamlit run app.py` starts on a free loopback port with `--server.maxUploadSize 1` (MB). A websocket session is
opened the way the browser opens one (so the upload route accepts its session id), then files are PUT to
`/_stcore/upload_file/<session>/<file>` directly: under the limit they are stored (204), over it Streamlit answers
413 before the app ever sees the bytes, also when the client sends no Content-Length; without the XSRF cookie and
header the server answers 403. No browser is needed.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
import websockets  # a Streamlit dependency: its server speaks websockets
from live_app import ROOT, Server, run_in_fresh_thread, streamlit_app

pytestmark = pytest.mark.slow


LIMIT_MB = 1
XSRF_COOKIE = "_streamlit_xsrf"


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with streamlit_app(tmp_path_factory.mktemp("server"), ["--server.maxUploadSize", str(LIMIT_MB)]) as srv:
        yield srv


def xsrf_token(server: Server) -> str:
    """The XSRF cookie the server hands out with its health endpoint (as the browser gets it)."""
    _, headers, _ = _get(f"{server.url}/_stcore/health")
    cookie = next((v for k, v in headers.items() if k.lower() == "set-cookie" and v.startswith(XSRF_COOKIE)), "")
    assert cookie, f"no {XSRF_COOKIE} cookie: XSRF protection is off? headers {headers}"
    return cookie.split(";", 1)[0].split("=", 1)[1]


def multipart(data: bytes, filename: str = "upload.zip") -> tuple[bytes, str]:
    boundary = "----classifier" + uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/zip\r\n\r\n").encode()  # fmt: skip
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def put_file(
    server: Server, session: str, data: bytes, token: str | None, *, cookie: str | None = None, chunked: bool = False
) -> int:
    """PUT one file to Streamlit's upload route; the HTTP status.

    `token` goes in the X-Xsrftoken header and (unless `cookie` is given) in the XSRF cookie, as the browser sends
    them; `chunked` sends no Content-Length header.
    """
    body, ctype = multipart(data)
    headers = {"Content-Type": ctype}
    if token is not None:
        headers.update({"X-Xsrftoken": token, "Cookie": f"{XSRF_COOKIE}={cookie or token}"})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        path = f"/_stcore/upload_file/{session}/{uuid.uuid4().hex}"
        if chunked:
            pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
            conn.request("PUT", path, body=pieces, headers=headers, encode_chunked=True)
        else:
            conn.request("PUT", path, body=body, headers=headers)
        return conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        return 413  # the server may close the connection as soon as it has refused the body
    finally:
        conn.close()


def with_session(server: Server, token: str, work: Callable[[str], object]) -> object:
    """Open a Streamlit session over the websocket (as the browser does), run `work(session_id)` while it is open."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    async def main() -> object:
        ws_url = server.url.replace("http://", "ws://") + "/_stcore/stream"
        headers = {"Origin": server.url, "Cookie": f"{XSRF_COOKIE}={token}"}
        async with websockets.connect(ws_url, subprotocols=["streamlit", token], additional_headers=headers) as ws:
            rerun = BackMsg()
            rerun.rerun_script.query_string = ""
            await ws.send(rerun.SerializeToString())
            session = None
            while session is None:
                msg = ForwardMsg()
                msg.ParseFromString(await asyncio.wait_for(ws.recv(), 60))
                if msg.WhichOneof("type") == "new_session":
                    session = msg.new_session.initialize.session_id
            return await asyncio.to_thread(work, session)

    return run_in_fresh_thread(main())


def test_config_keeps_xsrf_protection_and_a_stated_upload_limit() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["enableXsrfProtection"] is True
    assert isinstance(config["server"]["maxUploadSize"], int) and config["server"]["maxUploadSize"] > 0


def test_row01_server_refuses_uploads_over_the_limit_and_accepts_smaller_ones(server: Server) -> None:
    token = xsrf_token(server)
    limit = LIMIT_MB * 1024 * 1024

    def uploads(session: str) -> dict[str, int]:
        return {
            "small": put_file(server, session, os.urandom(100_000), token),
            "just under": put_file(server, session, os.urandom(limit - 1024), token),
            "over": put_file(server, session, os.urandom(limit + 100_000), token),
            "over, chunked": put_file(server, session, os.urandom(3 * limit), token, chunked=True),
        }

    codes = with_session(server, token, uploads)
    print(f"FIGURES upload route with maxUploadSize={LIMIT_MB} MB: {codes}")
    assert codes == {"small": 204, "just under": 204, "over": 413, "over, chunked": 413}


def test_xsrf_protection_refuses_uploads_without_the_token(server: Server) -> None:
    token, other = xsrf_token(server), xsrf_token(server)  # each call hands out a fresh token
    assert token != other

    def attempts(session: str) -> dict[str, int]:
        return {
            "no token": put_file(server, session, b"PK\x05\x06" + bytes(18), None),
            # A cross-site page can send a header but not the victim's cookie: a token that differs from it fails.
            "token not matching the cookie": put_file(server, session, b"PK\x05\x06" + bytes(18), other, cookie=token),
            "with token": put_file(server, session, b"PK\x05\x06" + bytes(18), token),
        }

    codes = with_session(server, token, attempts)
    assert codes == {"no token": 403, "token not matching the cookie": 403, "with token": 204}
    # Deleting an upload is guarded the same way.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("DELETE", f"/_stcore/upload_file/{uuid.uuid4()}/{uuid.uuid4().hex}")
        assert conn.getresponse().status == 403
    finally:
        conn.close()
