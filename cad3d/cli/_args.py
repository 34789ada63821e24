"""argparse ``type=`` helpers for numeric flags.

A bad value raises `argparse.ArgumentTypeError`; argparse then prints the usage line and
``argument --flag: <message>`` and exits with 2 (a usage error) — no traceback, and no
value silently replaced.
"""

from __future__ import annotations

import argparse
import math

MAX_SAMPLING_STEPS = 1000  # diffusion sampling steps: more is never useful and only slow


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer (>= 0), got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def sampling_steps(text: str) -> int:
    """Diffusion sampling steps: an integer from 1 to `MAX_SAMPLING_STEPS`."""
    value = positive_int(text)
    if value > MAX_SAMPLING_STEPS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SAMPLING_STEPS}, got {text}")
    return value


def strength(text: str) -> float:
    """How far the diffusion path noises its start: a number in (0, 1]."""
    value = positive_float(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def model_weight_options(parser) -> None:
    """Where the converter's weights come from, and its device (convert, eval, serve)."""
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--vit", default=None, metavar="PATH",
                        help="ViT checkpoint (default: trained_models/vit/final_model.pth when it exists)")
    parser.add_argument("--diffusion", default=None, metavar="PATH",
                        help="diffusion checkpoint (default: trained_models/diffusion/diffusion_best.pth when it exists)")
    parser.add_argument("--refine", default=None, metavar="PATH",
                        help="retrieve-then-refine checkpoint (default: trained_models/refine/refine_best.pth when it exists)")
    parser.add_argument("--depth-model", default=None, help="ONNX depth model (default: the first known file in --models-dir)")
    parser.add_argument("--models-dir", default="models", help="folder searched for ONNX depth models (default models/)")


def converter_options(parser) -> None:
    """The options of the commands that convert batches of drawings (convert, eval): sampling,
    batching and the weights to load (see `make_converter`)."""
    parser.add_argument("--steps", type=sampling_steps, default=50,
                        help=f"diffusion sampling steps of the fast sampler, 1 to {MAX_SAMPLING_STEPS} (default 50)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: model's)")
    parser.add_argument("--strength", type=strength, default=None,
                        help="the diffusion path starts from the refine answer (or the layered depth lift) noised to "
                             "this fraction of the schedule, in (0, 1]; 1 = sample from pure noise (default: the "
                             "converter's, 0.01)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="drawings per model call (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same clouds)")
    model_weight_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_converter(args):
    """The `HybridCAD3DConverter` of `converter_options` (inference only: no learning)."""
    from cad3d.conversion.converter import (DEFAULT_DIFFUSION_PATH, DEFAULT_REFINE_PATH, DEFAULT_REFINE_STRENGTH,
                                            DEFAULT_VIT_PATH, HybridCAD3DConverter, weights_path)

    return HybridCAD3DConverter(
        device=args.device, vit_model_path=weights_path(args.vit, DEFAULT_VIT_PATH),
        diffusion_model_path=weights_path(args.diffusion, DEFAULT_DIFFUSION_PATH),
        depth_model_path=args.depth_model, models_dir=args.models_dir, enable_learning=False,
        refine_model_path=weights_path(args.refine, DEFAULT_REFINE_PATH),
        refine_strength=DEFAULT_REFINE_STRENGTH if args.strength is None else args.strength,
    )
