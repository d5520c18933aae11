"""``captioner serve``: the HTTP API and web page (needs the ``serve`` extra).

FastAPI and uvicorn are imported only here and below, so ``import captioner`` stays light.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import MissingDependencyError

SERVE_EXTRA_HINT = "captioner serve needs the 'serve' extra: pip install 'captioner[serve]'"
HEADER_TIMEOUT, BODY_TIMEOUT = 10.0, 60.0  # seconds a request's headers / body may take to arrive


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart, for uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"{SERVE_EXTRA_HINT} ({e})") from None


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    max_upload_bytes: int | None = None,
    max_pixels: int | None = None,
    max_batch: int | None = None,
    max_wait_ms: float | None = None,
    max_files: int | None = None,
    decode_memory_bytes: int | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
) -> int:
    """Load ``model`` (a model directory; ``None`` = the bundled model), print the URL and run
    uvicorn until interrupted. A limit left at ``None`` keeps :func:`create_app`'s default;
    ``header_timeout``/``body_timeout`` (seconds) close requests that arrive too slowly."""
    _require_serve_extra()
    import uvicorn

    from ..device import resolve_device
    from .app import create_app
    from .protocol import timed_protocol

    torch_device = resolve_device(device)
    limits = {
        "max_upload_bytes": max_upload_bytes,
        "max_pixels": max_pixels,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_files": max_files,
        "decode_memory_bytes": decode_memory_bytes,
    }
    app = create_app(model, device=torch_device, **{k: v for k, v in limits.items() if v is not None})
    captioner = app.state.model
    print(
        f"captioner: serving {captioner.encoder.name} + {captioner.decoder.name} on {torch_device} at "
        f"{url_for(host, port)} (API docs at /docs; Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", http=timed_protocol(header_timeout, body_timeout))
    return 0


__all__ = ["serve", "url_for"]
