"""`cad3d serve`: the web app (Gradio) on http://127.0.0.1:PORT until Ctrl-C."""

from __future__ import annotations

import time

from cad3d.cli._args import (
    model_weight_options,
    non_negative_int,
    positive_float,
    positive_int,
)
from cad3d.cli._help import DESCRIPTIONS


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the web app: convert drawings in a browser", description=DESCRIPTIONS["serve"])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                       "0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=non_negative_int, default=7860, help="port (default 7860; 0 = any free port)")
    model_weight_options(p)
    p.add_argument("--eval-dir", default="outputs/eval", help="evaluation shown in the second tab (default outputs/eval)")
    p.add_argument("--runs-dir", default="trained_models", help="training runs whose loss curves are shown "
                                                               "(default trained_models/)")
    p.add_argument("--max-files", type=positive_int, default=6, help="drawings per conversion (default 6)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=positive_int, default=16_000_000,
                   help="largest drawing in pixels (default 16,000,000: 4000x4000)")
    p.add_argument("--examples", type=non_negative_int, default=3, help="example drawings offered (default 3)")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    import socket

    from cad3d.app.server import launch
    from cad3d.app.service import AppConfig, ConversionService
    from cad3d.errors import Cad3dError

    t0 = time.perf_counter()
    config = AppConfig(models_dir=args.models_dir, vit=args.vit, diffusion=args.diffusion, refine=args.refine, depth_model=args.depth_model,
                       device=args.device, eval_dir=args.eval_dir, runs_dir=args.runs_dir, max_files=args.max_files,
                       max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, num_examples=args.examples)
    service = ConversionService(config)
    try:
        port = args.port
        if port == 0:
            with socket.socket() as s:
                s.bind((args.host, 0))
                port = s.getsockname()[1]
        try:
            demo, url = launch(service, host=args.host, port=port, examples=service.make_examples())
        except OSError as exc:
            raise Cad3dError(f"cannot serve on {args.host}:{port} ({exc})") from None
        print(f"cad3d: serving on {url} (ready in {time.perf_counter() - t0:.1f} s; Ctrl-C stops)", flush=True)
        try:
            demo.block_thread()
        finally:
            demo.close()
    finally:
        service.close()
    return 0
