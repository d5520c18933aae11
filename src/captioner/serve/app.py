"""The HTTP API and web page: ``create_app(model_dir)`` → a FastAPI application.

- ``GET /`` the web page (served from the package, no CDN), ``GET /healthz``,
  ``GET /v1/models``, ``POST /v1/captions`` (multipart ``image`` files), ``/docs``.
- Uploads are checked before they are decoded: total request bytes (413), the pixel
  count read from the image header (413, decompression bombs), the format (415); a file
  that is not a readable image is a 400. Every error is JSON ``{"error": "..."}``.
- Decodes share a server-wide memory budget (``decode_memory_bytes``): more wait.
- Images are decoded in a worker thread and captioned by a :class:`MicroBatcher`, so
  the event loop never runs the model and concurrent requests share forward passes.
"""
from __future__ import annotations

import io
import threading
import time
from contextlib import asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Optional

import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..version import __version__
from ..captions import check_language, model_languages
from ..data.images import ImageLimits, ImageReadError, ImageTooLargeError, PreprocessConfig, build_transform, load_image
from ..decoding import DecodeOptions
from ..errors import InvalidInputError
from ..model import Caption, Captioner, default_model_dir
from .batcher import MicroBatcher, QueueFullError

STATIC_DIR = Path(__file__).parent / "static"

# PIL format name → the name users know. MPO is how PIL reports many camera JPEGs.
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "WEBP": "WebP", "BMP": "BMP"}
ACCEPTED_TEXT = "JPEG, PNG, GIF, WebP, BMP"

MAX_BEAM_SIZE = 10


# Peak bytes per pixel of one decode: PIL's decoded image (at most 4 bytes a pixel: RGBA,
# 32-bit integer or float modes) plus its 3-byte RGB copy.
DECODE_BYTES_PER_PIXEL = 7


class DecodeBudget:
    """A server-wide bound on the memory of the images being decoded at once.

    A decode reserves its size (from the header) and waits while the reservations would pass
    ``total_bytes``; an image larger than the whole budget still runs, alone.
    """

    def __init__(self, total_bytes: int):
        if total_bytes < 1:
            raise InvalidInputError(f"the decode memory budget must be positive, got {total_bytes} bytes")
        self.total_bytes = total_bytes
        self.reserved = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int):
        with self._changed:
            self._changed.wait_for(lambda: self.reserved == 0 or self.reserved + nbytes <= self.total_bytes)
            self.reserved += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.reserved -= nbytes
                self._changed.notify_all()


class UploadError(Exception):
    """A rejected upload: an HTTP status (4xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(
    data: bytes, filename: str, max_pixels: int, preprocess: PreprocessConfig, budget: DecodeBudget | None = None
) -> Image.Image:
    """Upload bytes → RGB image, refusing unknown formats and oversized images before decoding;
    decoded only as large as ``preprocess`` needs (JPEG draft mode, whole-factor reduction);
    with a ``budget``, the decode waits for its share of the server's decode memory."""
    if not data:
        raise UploadError(400, f"{filename}: empty file")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"{filename}: too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise UploadError(415, f"{filename}: not an image in an accepted format ({ACCEPTED_TEXT})") from None
    except Exception as e:  # PIL raises many types on hostile headers
        raise UploadError(400, f"{filename}: unreadable image header ({type(e).__name__}: {e})") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise UploadError(415, f"{filename}: {image.format} images are not accepted ({ACCEPTED_TEXT})")
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(
                413, f"{filename}: {width}×{height} = {width * height} pixels is over the limit of {max_pixels}"
            )
    try:
        with budget.reserve(width * height * DECODE_BYTES_PER_PIXEL) if budget else nullcontext():
            return load_image(data, preprocess, ImageLimits(max_pixels=max_pixels), name=filename)
    except ImageTooLargeError as e:
        raise UploadError(413, str(e)) from None
    except ImageReadError as e:  # truncated data, bad EXIF, decoder errors: the file's fault
        raise UploadError(400, str(e)) from None


def caption_to_json(caption: Caption, filename: str, with_attention: bool) -> dict:
    """One result of ``POST /v1/captions``: the upload's filename and :meth:`Caption.to_dict`."""
    return {"filename": filename, **caption.to_dict(attention=with_attention)}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _field_name(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


async def _drain(receive) -> None:
    while True:
        event = await receive()
        if event["type"] != "http.request" or not event.get("more_body", False):
            return


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` (413): by Content-Length before reading,
    and by counting for chunked uploads, so a huge upload is never buffered."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body is over the limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                return await _error(400, "invalid Content-Length header")(scope, receive, send)
            if too_large:
                if int(length) <= 4 * self.max_bytes:
                    # Read (and drop) a moderately oversized body before answering: closing a
                    # socket with unread data makes the kernel reset it, and the client would
                    # see a broken connection instead of the 413.
                    await _drain(receive)
                return await _error(413, message, {"Connection": "close"})(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, message)
            return event

        await self.app(scope, counting_receive, send)


def _model_info(model: Captioner, model_id: str) -> dict:
    return {
        "id": model_id,
        "encoder": model.encoder.name,
        "decoder": model.decoder.name,
        "vocab_size": len(model.vocab),
        "has_attention": bool(model.decoder.has_attention),
        "max_length": model.max_length,
        "languages": list(model_languages(model)),  # the first is the default; the page offers them all
        "preprocess": model.preprocess.to_dict(),
        # {"threshold", "domain", "held_out_images"}: the page names the domain under the threshold
        "confidence": model.confidence.describe() if model.confidence is not None else None,
    }


def create_app(
    model_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    max_upload_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 40_000_000,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_files: int = 16,
    max_queue: int = 1024,
    decode_memory_bytes: int = 1024 * 1024 * 1024,
) -> FastAPI:
    """Load the model (default: the bundled one) and build the app.

    ``decode_memory_bytes`` bounds the memory of all the images being decoded at once
    (estimated from their headers, :data:`DECODE_BYTES_PER_PIXEL`); decodes beyond it wait.

    ``max_batch=1`` turns micro-batching off. The model is loaded here, so a bad model
    directory fails before any port is opened.
    """
    directory = Path(model_dir) if model_dir is not None else default_model_dir()
    model = Captioner.from_pretrained(directory, device=device)
    model_id = directory.resolve().name
    info = _model_info(model, model_id)
    transform = build_transform(model.preprocess)
    budget = DecodeBudget(decode_memory_bytes)
    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "max_files": max_files,
        "decode_memory_bytes": decode_memory_bytes,
        "max_beam_size": MAX_BEAM_SIZE,
        "formats": ACCEPTED_TEXT.split(", "),
    }

    def run_batch(pixels: list[torch.Tensor], options: DecodeOptions) -> list[Caption]:
        return model.caption_pixels(torch.stack(pixels), options)  # (batch, 3, H, W)

    batcher = MicroBatcher(run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(
        title="captioner",
        version=__version__,
        description="Image captioning: upload a picture, get a sentence.",
        lifespan=lifespan,
        docs_url=None,  # served below from a pip package, not a CDN
        redoc_url=None,
    )
    app.state.model = model
    app.state.batcher = batcher
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    _install_error_handlers(app)
    _install_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="200 once the model is loaded and the worker runs")
    async def healthz():
        if not batcher.running:
            return _error(503, "model worker is not running")
        return {
            "status": "ok",
            "model": model_id,
            "batches_run": batcher.batches_run,
            "images_captioned": batcher.items_run,
        }

    @app.get("/v1/models", summary="The served model and the request limits")
    async def models():
        return {"models": [info], "limits": limits}

    @app.post("/v1/captions", summary="Caption one or more uploaded images")
    async def captions(
        image: Annotated[list[UploadFile], File(description=f"one or more images ({ACCEPTED_TEXT})")],
        beam_size: Annotated[Optional[int], Form(ge=1, le=MAX_BEAM_SIZE)] = None,
        n_best: Annotated[Optional[int], Form(ge=1, le=MAX_BEAM_SIZE)] = None,
        attention: Annotated[Optional[bool], Form()] = None,
        language: Annotated[Optional[str], Form(max_length=32)] = None,
        beam_size_query: Annotated[Optional[int], Query(alias="beam_size", ge=1, le=MAX_BEAM_SIZE)] = None,
        n_best_query: Annotated[Optional[int], Query(alias="n_best", ge=1, le=MAX_BEAM_SIZE)] = None,
        attention_query: Annotated[Optional[bool], Query(alias="attention")] = None,
        language_query: Annotated[Optional[str], Query(alias="language", max_length=32)] = None,
    ):
        """Options come as form fields or query parameters (a form field wins).
        ``beam_size`` 1..10 and ``n_best`` 1..beam_size (defaults from ``DecodeOptions``), ``attention``
        adds per-word attention weights when the model's decoder has attention, ``language`` picks one
        of the model's languages (``/v1/models`` lists them; default: the first)."""
        started = time.perf_counter()
        defaults = DecodeOptions()
        try:
            options = DecodeOptions.of(beam_size=_pick(beam_size, beam_size_query, defaults.beam_size),
                                       n_best=_pick(n_best, n_best_query, defaults.n_best),
                                       language=_pick(language, language_query, defaults.language))
            written_in = check_language(model, options.language)  # one it does not know: 400, before any decoding
        except InvalidInputError as e:
            raise HTTPException(400, str(e)) from None
        want_attention = _pick(attention, attention_query, False)
        if len(image) > max_files:
            raise HTTPException(400, f"{len(image)} images in one request; the limit is {max_files}")
        uploads = [(upload.filename or f"image{i}", await upload.read()) for i, upload in enumerate(image)]

        def prepare():
            return [transform(decode_upload(data, name, max_pixels, model.preprocess, budget)) for name, data in uploads]

        pixels = await run_in_threadpool(prepare)
        try:
            results = await batcher.run_many(pixels, key=options)
        except QueueFullError as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        return {
            "results": [
                caption_to_json(caption, name, want_attention) for caption, (name, _) in zip(results, uploads)
            ],
            "language": written_in,
            "model": model_id,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    return app


def _pick(form_value, query_value, default):
    if form_value is not None:
        return form_value
    return query_value if query_value is not None else default


def _install_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's own included, leaves as ``{"error": "..."}``."""

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = [f"{_field_name(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Only a bug gets here (bad input is a 4xx above); say so without leaking internals.
        return _error(500, f"internal error ({type(exc).__name__})")


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the ``swagger-ui-bundle-v2`` package's files when it is
    installed (offline); otherwise FastAPI's page, which loads Swagger UI from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path is not None and (Path(swagger_ui_path) / "swagger-ui-bundle.js").is_file():
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
        assets = {
            "swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
            "swagger_css_url": "/docs-assets/swagger-ui.css",
            "swagger_favicon_url": "/docs-assets/favicon-32x32.png",
        }
    else:
        assets = {}

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="captioner API", **assets)
