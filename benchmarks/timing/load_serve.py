"""Load test of ``captioner serve``: concurrent clients, with and without micro-batching.

Starts the server twice on loopback (a subprocess each: batched, then ``max_batch=1``), or
loads an already running one given by ``--url``; N clients × M requests each (asyncio +
httpx), bounded in time; reports errors, p50/p99 latency and throughput.

    python -m benchmarks.timing.load_serve --model runs/tiny              # both configurations
    python -m benchmarks.timing.load_serve --url http://127.0.0.1:8000/   # a running server
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGES = ROOT / "tests" / "fixtures" / "tiny" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(args) -> int:
    """The ``--serve`` mode: one server process for one configuration."""
    import torch
    import uvicorn

    from captioner.serve.app import create_app

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    app = create_app(args.model, device=args.device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


class ServerProcess:
    def __init__(self, model: str | None, max_batch: int, max_wait_ms: float, device: str, torch_threads: int = 0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        command = [
            sys.executable, __file__, "--serve", "--port", str(self.port),
            "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--device", device,
            "--torch-threads", str(torch_threads),
        ] + (["--model", model] if model else [])
        self.process = subprocess.Popen(command)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}")
            try:
                if httpx.get(self.url + "healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server at {self.url} did not become healthy in {timeout:.0f}s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def load(url: str, images: list[tuple[str, bytes]], clients: int, requests: int, time_limit: float,
               beam_size: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.monotonic() + time_limit

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(time_limit)) as client:

        async def one_client(index: int) -> None:
            for r in range(requests):
                if time.monotonic() > deadline:
                    errors["not sent (time limit)"] = errors.get("not sent (time limit)", 0) + requests - r
                    return
                name, data = images[(index * requests + r) % len(images)]
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "v1/captions", files=[("image", (name, data))], data={"beam_size": str(beam_size)}
                    )
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        key = f"HTTP {response.status_code}"
                        errors[key] = errors.get(key, 0) + 1
                except httpx.HTTPError as e:
                    key = type(e).__name__
                    errors[key] = errors.get(key, 0) + 1

        await client.get("healthz")
        health_before = (await client.get("healthz")).json()
        started = time.perf_counter()
        tasks = [asyncio.create_task(one_client(i)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit + 30)
        for task in pending:
            task.cancel()
        if pending:
            errors["cancelled clients"] = len(pending)
        wall = time.perf_counter() - started
        health_after = (await client.get("healthz")).json()

    batches = health_after.get("batches_run", 0) - health_before.get("batches_run", 0)
    captioned = health_after.get("images_captioned", 0) - health_before.get("images_captioned", 0)
    return {
        "ok": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 2) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else float("nan"),
        "mean_batch": round(captioned / batches, 2) if batches else None,
    }


async def warm_up(url: str, images: list[tuple[str, bytes]], beam_size: int, count: int = 4) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for name, data in images[:count]:
            options = {"beam_size": str(beam_size)}
            response = await client.post("v1/captions", files=[("image", (name, data))], data=options)
            response.raise_for_status()


def read_images(paths: list[str]) -> list[tuple[str, bytes]]:
    files = [Path(p) for p in paths] if paths else sorted(
        p for p in DEFAULT_IMAGES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    return [(p.name, p.read_bytes()) for p in files]


def report(name: str, result: dict) -> None:
    errors = sum(result["errors"].values())
    print(
        f"{name:<28} ok {result['ok']:>5}  errors {errors:>4}  p50 {result['p50_ms']:>8.1f} ms  "
        f"p99 {result['p99_ms']:>8.1f} ms  {result['throughput_rps']:>7.2f} req/s  "
        f"mean batch {result['mean_batch']}  ({result['wall_s']} s)",
        flush=True,
    )
    if result["errors"]:
        print(f"{'':<28} errors: {result['errors']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory to serve (default: the bundled model)")
    parser.add_argument("--url", help="load this running server instead of starting two")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds per configuration")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched configuration's max_batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads in the server (0: torch's default); 1 is faster on a shared CPU")
    parser.add_argument("--images", nargs="*", default=[], help="images to send (default: the tiny fixture set)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return run_server(args)

    images = read_images(args.images)
    print(f"{args.clients} clients × {args.requests} requests, beam_size {args.beam_size}, {len(images)} images, "
          f"{os.cpu_count()} CPUs, torch threads {args.torch_threads or 'default'}", flush=True)
    results = {}
    if args.url:
        url = args.url if args.url.endswith("/") else args.url + "/"
        asyncio.run(warm_up(url, images, args.beam_size))
        results["url"] = asyncio.run(load(url, images, args.clients, args.requests, args.time_limit, args.beam_size))
        report(url, results["url"])
    else:
        configs = {
            f"batched (max_batch={args.max_batch})": (args.max_batch, args.max_wait_ms),
            "unbatched (max_batch=1)": (1, 0.0),
        }
        for name, (max_batch, max_wait_ms) in configs.items():
            server = ServerProcess(args.model, max_batch, max_wait_ms, args.device, args.torch_threads)
            try:
                server.wait_ready()
                asyncio.run(warm_up(server.url, images, args.beam_size))
                results[name] = asyncio.run(
                    load(server.url, images, args.clients, args.requests, args.time_limit, args.beam_size)
                )
            finally:
                server.stop()
            report(name, results[name])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = any(sum(r["errors"].values()) for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
