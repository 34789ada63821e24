"""Depth network latency: PyTorch vs onnxruntime, milliseconds per drawing at batch 1.

    .venv/bin/python benchmarks/bench_depth.py [--preset full|tiny] [--rounds R] [--threads T] [--no-write]

Builds the preset's `DepthNet` (random weights: latency does not depend on them), exports it
with `cad3d.training.depth_export.export_depth_onnx` (1x3x256x256 -> 1x256x256, the MiDaS v2.1 small
contract) and times, on CPU (and CUDA when present):

* PyTorch: ``model(x)`` under ``torch.inference_mode`` on a 1x3x256x256 tensor;
* onnxruntime: ``session.run`` of the same input (CPU provider; CUDA provider when available);
* end to end: `DepthEstimator.predict` of a 256x256 drawing (preprocessing, run, resize back).

Best and median over ``rounds`` timed calls after warm-up (the machine may be shared: the best is
the least-disturbed figure). Writes the ``depth`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine_info, write_section  # noqa: E402

from cad3d.conversion.depth import DepthEstimator  # noqa: E402
from cad3d.training.depth_export import OnnxDepthWrapper, export_depth_onnx  # noqa: E402
from cad3d.models.depth_net import DepthNet  # noqa: E402
from cad3d.training.tasks.depth import DepthTask  # noqa: E402


def _time_ms(fn, rounds: int, warmup: int = 3, sync=None) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["full", "tiny"], default="full")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads (default: library defaults)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()

    import onnxruntime as ort

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = DepthTask.presets()[args.preset].model
    model = DepthNet(config).eval()
    params = sum(p.numel() for p in model.parameters())
    wrapper = OnnxDepthWrapper(model, config.image_size).eval()  # what the ONNX graph computes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export = export_depth_onnx(model, Path(tmp) / "cad3d_depth_256.onnx")
        x = torch.rand(1, 3, 256, 256)
        xs = x.numpy()
        with torch.inference_mode():
            rows.append(("PyTorch", "CPU", *_time_ms(lambda: wrapper(x), args.rounds)))
        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        cpu = ort.InferenceSession(str(export.path), opts, providers=["CPUExecutionProvider"])
        rows.append(("onnxruntime", "CPU", *_time_ms(lambda: cpu.run(None, {"image": xs}), args.rounds)))
        est = DepthEstimator(export.path, providers=["CPUExecutionProvider"])
        est.session = cpu
        drawing = np.ones((256, 256), dtype=np.float32)
        drawing[64:192, 64] = drawing[64:192, 191] = drawing[64, 64:192] = drawing[191, 64:192] = 0.0
        rows.append(("DepthEstimator.predict (end to end)", "CPU", *_time_ms(lambda: est.predict(drawing), args.rounds)))
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            gpu_wrapper, xg = wrapper.to(dev), x.to(dev)
            with torch.inference_mode():
                rows.append(("PyTorch", "CUDA", *_time_ms(lambda: gpu_wrapper(xg), args.rounds, sync=torch.cuda.synchronize)))
            if "CUDAExecutionProvider" in ort.get_available_providers():
                gpu = ort.InferenceSession(str(export.path), providers=["CUDAExecutionProvider"])
                rows.append(("onnxruntime", "CUDA", *_time_ms(lambda: gpu.run(None, {"image": xs}), args.rounds)))

    md = [
        "## Depth network: ms per drawing, batch 1, 1x3x256x256",
        "",
        f"Preset `{args.preset}` ({params / 1e6:.2f} M parameters, trained at {config.image_size} px); "
        f"ONNX opset 17, max |onnxruntime - PyTorch| {export.max_abs_diff:.1e}. "
        f"Best / median of {args.rounds} calls. `python benchmarks/bench_depth.py`.",
        "",
        "| runtime | device | best ms | median ms |",
        "| --- | --- | ---: | ---: |",
        *[f"| {name} | {dev} | {best:.2f} | {med:.2f} |" for name, dev, best, med in rows],
        "",
        f"Machine: {machine_info()}",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("depth", text)


if __name__ == "__main__":
    main()
