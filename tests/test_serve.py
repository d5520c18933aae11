"""The HTTP API against a real uvicorn server on loopback, with a model trained on real images."""
from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
pytest.importorskip("multipart", reason="the 'serve' extra is not installed")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from captioner import Captioner  # noqa: E402
from captioner.model import Caption  # noqa: E402
from background_server import BackgroundServer  # noqa: E402
from captioner.serve.app import STATIC_DIR, caption_to_json, create_app  # noqa: E402
from captioner.serve.batcher import MicroBatcher, QueueFullError  # noqa: E402

IMAGES = Path(__file__).parent / "fixtures" / "tiny" / "images"
MAX_UPLOAD_BYTES = 200_000
MAX_PIXELS = 250_000


@pytest.fixture(scope="module")
def server(trained_show_tell):
    app = create_app(
        trained_show_tell, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS, max_batch=8, max_wait_ms=5
    )
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def library(trained_show_tell):
    return Captioner.from_pretrained(trained_show_tell)


def upload(*paths: Path) -> list:
    return [("image", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width × height`` but holds almost no data (a decompression bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def assert_json_error(response, statuses) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "detail" not in body
    return body


# --- health, model info, pages ----------------------------------------------------------
def test_healthz_and_models(client, library):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    body = client.get("/v1/models").json()
    (info,) = body["models"]
    assert info["encoder"] == "efficientnet_lite0"
    assert info["decoder"] == "show-tell"
    assert info["vocab_size"] == len(library.vocab)
    assert info["has_attention"] is False
    assert info["preprocess"] == json.loads(json.dumps(library.preprocess.to_dict()))
    assert body["limits"]["max_upload_bytes"] == MAX_UPLOAD_BYTES
    assert body["limits"]["max_pixels"] == MAX_PIXELS


def test_page_and_docs_are_served_without_a_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and 'name="viewport"' in page.text
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, f"{path.name} references an external URL"
        assert client.get(f"/static/{path.name}").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/captions" in schema["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    try:
        import swagger_ui_bundle  # noqa: F401
    except ImportError:
        pytest.skip("swagger-ui-bundle-v2 is not installed: /docs loads Swagger UI from a CDN")
    assert "cdn." not in docs.text and "https://" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200


def test_unknown_route_and_method_are_json(client):
    assert_json_error(client.get("/nope"), {404})
    assert_json_error(client.get("/v1/captions"), {405})


# --- captions -------------------------------------------------------------------------
def test_caption_equals_the_library(client, library):
    path = IMAGES / "astronaut.jpg"
    response = client.post("/v1/captions", files=upload(path))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = library.caption(path)  # the library's defaults: beam_size=3, n_best=1
    (result,) = body["results"]
    assert result["filename"] == "astronaut.jpg"
    assert result["caption"] == expected.text and expected.text
    assert result["score"] == pytest.approx(expected.score, abs=1e-4)
    assert [a["caption"] for a in result["alternatives"]] == [expected.text]
    assert "attention" not in result
    assert body["model"] == client.get("/v1/models").json()["models"][0]["id"]
    assert body["elapsed_ms"] > 0


def test_several_files_in_one_request(client, library):
    paths = [IMAGES / "chelsea.jpg", IMAGES / "emoji_1f34e.png", IMAGES / "moon.jpg"]  # RGB, RGBA, grayscale
    response = client.post("/v1/captions", params={"beam_size": 4, "n_best": 3}, files=upload(*paths))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = library.caption(paths, beam_size=4, n_best=3)
    assert [r["filename"] for r in results] == [p.name for p in paths]
    for result, caption in zip(results, expected):
        assert result["caption"] == caption.text
        assert [a["caption"] for a in result["alternatives"]] == [a.text for a in caption.alternatives]
        assert len(result["alternatives"]) == 3
        assert [a["score"] for a in result["alternatives"]] == pytest.approx(
            [a.score for a in caption.alternatives], abs=1e-4
        )


def test_options_as_form_fields(client, library):
    path = IMAGES / "horse.jpg"
    response = client.post(
        "/v1/captions", data={"beam_size": "2", "n_best": "2"}, params={"beam_size": 9}, files=upload(path)
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    expected = library.caption(path, beam_size=2, n_best=2)  # the form field wins over the query
    assert [a["caption"] for a in result["alternatives"]] == [a.text for a in expected.alternatives]


def test_attention_is_left_out_for_a_decoder_without_it(client):
    response = client.post("/v1/captions", data={"attention": "true"}, files=upload(IMAGES / "coins.jpg"))
    assert response.status_code == 200
    assert "attention" not in response.json()["results"][0]


def test_attention_json_shape():
    weights = torch.softmax(torch.randn(3, 4), -1)  # (words, regions)
    caption = Caption("a red apple", -1.5, attention=weights, grid_shape=(2, 2), words=["a", "red", "apple"])
    result = caption_to_json(caption, "x.png", with_attention=True)
    assert result["attention"]["words"] == ["a", "red", "apple"]
    assert result["attention"]["grid"] == [2, 2]
    assert len(result["attention"]["weights"]) == 3 and all(len(row) == 4 for row in result["attention"]["weights"])
    assert "attention" not in caption_to_json(caption, "x.png", with_attention=False)
    json.dumps(caption_to_json(Caption("x", float("-inf")), "x.png", True), allow_nan=False)  # no infinities


def test_attention_from_an_attention_decoder(tmp_path):
    from captioner import list_decoders
    from captioner.data.vocab import Vocabulary

    if "show-attend-tell" not in list_decoders():
        pytest.skip("no attention decoder is registered yet")
    vocab = Vocabulary("a cat dog on the red table".split())
    model = Captioner.build("efficientnet_lite0", "show-attend-tell", vocab, encoder_options={"pretrained": False})
    model.save_pretrained(tmp_path / "attend")
    with BackgroundServer(create_app(tmp_path / "attend", max_batch=4)) as server:
        info = httpx.get(server.url + "v1/models").json()["models"][0]
        assert info["has_attention"] is True
        response = httpx.post(
            server.url + "v1/captions", params={"attention": "true"}, files=upload(IMAGES / "chelsea.jpg"), timeout=60
        )
    assert response.status_code == 200, response.text
    attention = response.json()["results"][0]["attention"]
    rows, cols = attention["grid"]
    assert len(attention["weights"]) == len(attention["words"]) > 0
    for row in attention["weights"]:
        assert len(row) == rows * cols and sum(row) == pytest.approx(1.0, abs=1e-2)


# --- bad input: always a 4xx JSON error, never a 500 ----------------------------------
def bad_uploads() -> dict:
    jpeg = (IMAGES / "astronaut.jpg").read_bytes()
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    return {
        "text named .png": ("notes.png", b"this is not an image, just text\n" * 10, {400, 415}),
        "truncated jpeg": ("half.jpg", jpeg[: len(jpeg) // 2], {400}),
        "empty file": ("empty.jpg", b"", {400}),
        "tiff": ("scan.tiff", tiff.getvalue(), {415}),
        "pixels over the limit": ("big.png", png_bytes(600, 600), {413}),  # 360,000 px > 250,000
        "bomb header under PIL's limit": ("bomb.png", png_header_only(30_000, 1_000), {413}),
        "bomb header over PIL's limit": ("bomb2.png", png_header_only(100_000, 100_000), {413}),
        "bytes over the limit": ("huge.jpg", os.urandom(MAX_UPLOAD_BYTES + 50_000), {413}),
    }


@pytest.mark.parametrize("case", list(bad_uploads()))
def test_bad_upload_is_a_json_4xx(client, case):
    name, data, statuses = bad_uploads()[case]
    body = assert_json_error(client.post("/v1/captions", files=[("image", (name, data, "image/png"))]), statuses)
    if case != "bytes over the limit":
        assert name in body["error"]


def test_one_bad_file_fails_the_request_and_names_it(client):
    files = upload(IMAGES / "clock.jpg") + [("image", ("notes.png", b"hello", "image/png"))]
    body = assert_json_error(client.post("/v1/captions", files=files), {400, 415})
    assert "notes.png" in body["error"]


def test_chunked_upload_over_the_limit(client):
    boundary = "captionerboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():  # no Content-Length: the server must count
        yield head
        for _ in range(30):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/captions", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_json_error(response, {413})


@pytest.mark.parametrize(
    "options",
    [{"beam_size": "0"}, {"beam_size": "11"}, {"beam_size": "abc"}, {"n_best": "4", "beam_size": "2"}, {"n_best": "0"}],
)
def test_bad_options_are_a_json_4xx(client, options):
    for as_query in (False, True):
        kwargs = {"params": options} if as_query else {"data": options}
        response = client.post("/v1/captions", files=upload(IMAGES / "clock.jpg"), **kwargs)
        body = assert_json_error(response, {400, 422})
        assert any(name in body["error"] for name in options)


def test_missing_image_field(client):
    assert_json_error(client.post("/v1/captions", data={"beam_size": "3"}), {400, 422})
    as_json = client.post("/v1/captions", content=b"{}", headers={"Content-Type": "application/json"})
    assert_json_error(as_json, {400, 422})


def test_concurrent_requests_all_get_their_own_caption(server, client, library):
    paths = sorted(IMAGES.glob("*.jpg"))[:12]
    expected = {p.name: c.text for p, c in zip(paths, library.caption(paths))}
    batcher = server.app.state.batcher
    batches, items = batcher.batches_run, batcher.items_run

    def one(path):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.post("/v1/captions", files=upload(path))

    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(one, paths))
    for path, response in zip(paths, responses):
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["caption"] == expected[path.name]
    assert batcher.items_run - items == len(paths)
    assert client.get("/healthz").status_code == 200


# --- the micro-batcher on its own -------------------------------------------------------
def _recording_batcher(**options):
    calls = []

    def run(items, key):
        calls.append((list(items), key))
        if "boom" in items:
            raise ValueError("boom")
        return [f"{key}:{item}" for item in items]

    return MicroBatcher(run, **options).start(), calls


def test_batcher_collects_concurrent_items_and_groups_by_key():
    batcher, calls = _recording_batcher(max_batch=8, max_wait_ms=300)
    try:
        futures = [batcher.submit(i, key="a" if i % 2 else "b") for i in range(6)]
        assert [f.result(10) for f in futures] == [f"{'a' if i % 2 else 'b'}:{i}" for i in range(6)]
        assert sorted(key for _, key in calls) == ["a", "b"]  # one run per key, all in one window
        assert batcher.batches_run == 2 and batcher.items_run == 6
    finally:
        batcher.stop()


def test_batcher_without_batching_runs_items_one_by_one():
    batcher, calls = _recording_batcher(max_batch=1, max_wait_ms=300)
    try:
        futures = [batcher.submit(i) for i in range(5)]
        assert [f.result(10) for f in futures] == [f"None:{i}" for i in range(5)]
        assert [items for items, _ in calls] == [[i] for i in range(5)]
    finally:
        batcher.stop()


def test_batcher_failure_reaches_callers_and_the_worker_survives():
    batcher, _ = _recording_batcher(max_batch=4, max_wait_ms=1)
    try:
        with pytest.raises(ValueError, match="boom"):
            batcher.submit("boom").result(10)
        assert batcher.submit("ok").result(10) == "None:ok"
    finally:
        batcher.stop()
    with pytest.raises(RuntimeError):
        batcher.submit("late")


def test_batcher_bounded_queue():
    gate = threading.Event()
    batcher = MicroBatcher(lambda items, key: [gate.wait(10) for _ in items], max_batch=1, max_queue=2).start()
    try:
        first = batcher.submit(0)
        time.sleep(0.2)  # the worker now holds item 0
        batcher.submit(1)
        batcher.submit(2)
        with pytest.raises(QueueFullError):
            batcher.submit(3)
        gate.set()
        assert first.result(10) is True
    finally:
        gate.set()
        batcher.stop()


# --- the command ----------------------------------------------------------------------
def test_captioner_serve_command(trained_show_tell):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--model", str(trained_show_tell), "--port", str(port),
         "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "captioner serve did not come up"
            time.sleep(0.25)
        response = httpx.post(f"{url}/v1/captions", files=upload(IMAGES / "rocket.jpg"), timeout=60)
        assert response.status_code == 200 and response.json()["results"][0]["caption"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert f"http://127.0.0.1:{port}/" in output
    assert process.returncode == 0, output


def test_captioner_serve_bad_model_dir(tmp_path):
    from captioner.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing"), "--device", "cpu"]) == 2


# --- slow clients and the decode budget ----------------------------------------------
@pytest.fixture(scope="module")
def impatient_server():
    """The bundled model behind 1-second header and body deadlines."""
    with BackgroundServer(create_app(), header_timeout=1.0, body_timeout=1.0) as running:
        yield running


def _closed_within(sockets: list[socket.socket], seconds: float, drip: bytes) -> tuple[int, float]:
    """Keep dripping ``drip`` into each open socket every 0.2 s; returns how many the server
    closed within ``seconds`` and when the last one closed."""
    started, open_ = time.monotonic(), set(sockets)
    last = 0.0
    while open_ and time.monotonic() - started < seconds:
        for sock in list(open_):
            try:
                sock.sendall(drip)
                closed = bool(select.select([sock], [], [], 0)[0])  # the server answered (408) or closed
            except OSError:  # reset by the server
                closed = True
            if closed:
                open_.discard(sock)
                last = time.monotonic() - started
        time.sleep(0.2)
    return len(sockets) - len(open_), last


def test_slowloris_connections_are_closed_at_the_header_deadline(impatient_server):
    sockets = [socket.create_connection(("127.0.0.1", impatient_server.port), timeout=5) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n")
        closed, last = _closed_within(sockets, 6.0, b"X")  # one header byte at a time, never the end
    finally:
        for sock in sockets:
            sock.close()
    assert closed == 50 and last < 4.0, (closed, last)
    assert httpx.get(impatient_server.url + "healthz", timeout=10).status_code == 200  # still serving


def test_a_body_that_never_ends_is_closed_at_the_body_deadline(impatient_server):
    sock = socket.create_connection(("127.0.0.1", impatient_server.port), timeout=5)
    try:
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")
        closed, last = _closed_within([sock], 6.0, b"y")
    finally:
        sock.close()
    assert closed == 1 and last < 4.0, last


def test_a_slow_but_steady_request_within_the_deadline_is_answered(impatient_server):
    sock = socket.create_connection(("127.0.0.1", impatient_server.port), timeout=10)
    try:
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.2)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_decode_budget_bounds_concurrent_decodes():
    from captioner.data.images import PreprocessConfig
    from captioner.serve.app import DECODE_BYTES_PER_PIXEL, DecodeBudget, decode_upload

    image = (IMAGES / "astronaut.jpg").read_bytes()
    with Image.open(io.BytesIO(image)) as probe:
        cost = probe.width * probe.height * DECODE_BYTES_PER_PIXEL
    budget = DecodeBudget(cost * 2)  # room for two decodes at once
    peak, lock = [0], threading.Lock()
    reserve = budget.reserve

    def watched(nbytes):
        context = reserve(nbytes)

        class Watch:
            def __enter__(self):
                context.__enter__()
                with lock:
                    peak[0] = max(peak[0], budget.reserved)

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Watch()

    budget.reserve = watched
    with ThreadPoolExecutor(8) as pool:
        decoded = list(pool.map(lambda _: decode_upload(image, "astronaut.jpg", 10**9, PreprocessConfig(), budget), range(16)))
    assert all(d.size == decoded[0].size for d in decoded)
    assert peak[0] == cost * 2 and budget.reserved == 0  # two at once at most, and all released


def test_language_field_picks_a_multilingual_models_language(trained_en_de):
    """``language`` (form or query) picks the caption language; the models endpoint lists them;
    a language the model does not know is a 400 naming those it knows."""
    with BackgroundServer(create_app(trained_en_de)) as running, httpx.Client(base_url=running.url,
                                                                              timeout=60) as client:
        assert client.get("/v1/models").json()["models"][0]["languages"] == ["en", "de"]
        library = Captioner.from_pretrained(trained_en_de)
        path = IMAGES / "chelsea.jpg"
        for language in ("en", "de"):
            body = client.post("/v1/captions", files=upload(path), data={"language": language}).json()
            assert body["language"] == language
            assert body["results"][0]["caption"] == library.caption(path, language=language).text
        response = client.post("/v1/captions", files=upload(path), params={"language": "ja"})
        body = assert_json_error(response, {400})
        assert "it knows en, de" in body["error"]
