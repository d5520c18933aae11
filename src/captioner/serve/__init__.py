"""``captioner serve``: the HTTP API and web page (needs the ``serve`` extra).

FastAPI and uvicorn are imported only here and below, so ``import captioner`` stays light.
"""
from __future__ import annotations

SERVE_EXTRA_HINT = "captioner serve needs the 'serve' extra: pip install 'captioner[serve]'"

# Server limits: defaults of create_app, overridable by CLI flags of the same name.
LIMIT_OPTIONS = ("max_upload_bytes", "max_pixels", "max_batch", "max_wait_ms", "max_files")


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart, for uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{SERVE_EXTRA_HINT} ({e})") from None


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(args) -> int:
    """Load the model, print the URL and run uvicorn until interrupted."""
    _require_serve_extra()
    import uvicorn

    from ..device import resolve_device
    from .app import create_app

    device = resolve_device(args.device)
    limits = {name: getattr(args, name) for name in LIMIT_OPTIONS if getattr(args, name, None) is not None}
    app = create_app(args.model, device=device, **limits)
    model = app.state.model
    print(
        f"captioner: serving {model.encoder.name} + {model.decoder.name} on {device} at "
        f"{url_for(args.host, args.port)} (API docs at /docs; Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


__all__ = ["serve", "url_for"]
