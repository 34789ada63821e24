"""`HybridCAD3DConverter`: drawings in, point clouds out, with whatever weights exist.

Paths, best first: ``diffusion`` (the image-conditioned DDPM, fast DDIM sampler, started from
the refine answer or the depth lift) -> ``vit`` (direct point prediction) -> ``refine`` (the most
similar training part's cloud, chosen among a few and aligned to the drawing by a trained
network: `cad3d.models.refiner`) -> ``depth`` (an ONNX depth model, ours or a user's MiDaS file,
lifted with the drawing's camera) -> ``geometric`` (the silhouette inflated, or a sheet's visual
hull; needs nothing). ``method="auto"`` takes the trained path with the best validation score
stored with its weights (the order above when none is stored), and the visual hull for a
three-view sheet; every result says which path ran, which weights it used and whether they were
trained (graceful degradation: missing files are fine, corrupt ones are errors).

Continuous learning (``enable_learning=True``): `learn(image, points)` adds the pair to the
diffusion model's replay buffer and fine-tunes it through the training engine on the new pair
mixed with replayed ones; `save()` writes ``trained_models/hybrid/continuous_learning.pth``
through the checkpoint manager, loadable like any diffusion checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from cad3d.conversion.drawing import as_drawing
from cad3d.conversion.fallback import drawing_cameras, frame_part, geometric_fallback, normalize_cloud
from cad3d.conversion.outputs import ConversionResult
from cad3d.data.dataset import choose_points
from cad3d.devices import resolve_device
from cad3d.errors import ConversionError
from cad3d.geometry.transforms import resample_points
from cad3d.models.depth_contract import find_depth_model
from cad3d.training.loader import load_trained

log = logging.getLogger(__name__)

METHODS = ("diffusion", "vit", "refine", "depth", "geometric")
DEFAULT_LEARNING_PATH = Path("trained_models/hybrid/continuous_learning.pth")
DEFAULT_VIT_PATH = Path("trained_models/vit/final_model.pth")  # where `cad3d train vit` puts it
DEFAULT_DIFFUSION_PATH = Path("trained_models/diffusion/diffusion_best.pth")
DEFAULT_REFINE_PATH = Path("trained_models/refine/refine_best.pth")  # where `cad3d train refine` puts it
# Where the diffusion path's start is noised to (a fraction of the schedule): the best of the CPU run's
# val sweep (README, "Results").
DEFAULT_REFINE_STRENGTH = 0.01
_CPU_CLOUDS_PER_CALL = 32  # diffusion clouds per sampling call on the CPU (benchmarks/RESULTS.md, convert_profile)


def weights_path(given, default):
    """The checkpoint to load: the user's path as given (a missing one is warned about), else the
    default one if it exists, else None (that path is simply not available)."""
    if given is not None:
        return given
    return default if Path(default).is_file() else None


def _existing(path) -> Optional[Path]:
    return Path(path) if path is not None and Path(path).is_file() else None


class HybridCAD3DConverter:
    """Convert drawings with the best available model (see the module docstring).

    Args:
        device: "auto" (CUDA if available), "cpu" or "cuda".
        vit_model_path: a ViT checkpoint (``final_model.pth``); None or a missing file = no ViT.
        diffusion_model_path: a diffusion checkpoint; None or missing = no trained diffusion
            (with ``enable_learning`` an untrained model is built so `learn` can teach it).
        enable_learning: keep a diffusion model and its replay buffer for `learn`/`save`.
        depth_model_path: an ONNX depth model; None = the first known file in ``models_dir``.
        num_points: default points per cloud; None = each path's own (the diffusion model's and
            the ViT's trained point counts, 4096 for depth lifting and the geometric fallback).
        learning_path: where `save` writes (default trained_models/hybrid/continuous_learning.pth).
        refine_strength: the diffusion path starts from the refine path's answer (a single view,
            with a refine model) or the layered depth lift, noised to this fraction of the
            schedule (SDEdit); 1 samples from pure noise. The default, 0.01, is the best of
            0.01..0.2 on the CPU run's val split, the smallest tried: the tiny diffusion model
            makes its start worse the more it may change it (README, "Results").
        refine_model_path: a retrieve-then-refine checkpoint (``refine_best.pth``); None or a
            missing file = no such path.
    """

    def __init__(
        self,
        device: str | torch.device = "auto",
        vit_model_path: str | os.PathLike | None = None,
        diffusion_model_path: str | os.PathLike | None = None,
        enable_learning: bool = True,
        *,
        depth_model_path: str | os.PathLike | None = None,
        models_dir: str | os.PathLike = "models",
        num_points: int | None = None,
        learning_path: str | os.PathLike = DEFAULT_LEARNING_PATH,
        seed: int = 0,
        refine_strength: float = DEFAULT_REFINE_STRENGTH,
        refine_model_path: str | os.PathLike | None = None,
    ):
        self.device = resolve_device(device)
        self.num_points = None if num_points is None else int(num_points)
        self.enable_learning = bool(enable_learning)
        self.learning_path = Path(learning_path)
        self.seed = int(seed)
        if not 0.0 < refine_strength <= 1.0:
            raise ValueError(f"refine_strength must be in (0, 1], got {refine_strength}")
        self.refine_strength = float(refine_strength)
        self.weights: dict[str, str] = {}
        self.trained: dict[str, bool] = {m: False for m in METHODS}  # geometric has no weights at all

        self.scores: dict[str, float] = {}  # validation Chamfer-L2 stored with each path's weights
        self.vit = self._load_model("vit", vit_model_path, "ViT")
        self.refiner = self._load_model("refine", refine_model_path, "refine")

        self.diffusion = None
        self._diffusion_payload: Optional[dict] = None  # what `save` publishes
        self._diffusion_path: Optional[Path] = None
        diff_path = _existing(diffusion_model_path)
        if diffusion_model_path is not None and diff_path is None:
            warnings.warn(f"{diffusion_model_path}: diffusion checkpoint not found; "
                          + ("using initial weights" if enable_learning else "converting without diffusion"), stacklevel=2)
        if diff_path is None and enable_learning and self.learning_path.is_file():
            diff_path = self.learning_path  # continue what earlier sessions learned
        self._learner = None  # the training facade `learn` fine-tunes through
        if diff_path is not None:
            trained = load_trained(diff_path, kind="diffusion")
            self.diffusion = trained.model.to(self.device)
            self._diffusion_payload, self._diffusion_path = trained.payload, diff_path
            self.weights["diffusion"], self.trained["diffusion"] = str(diff_path), True
            self._record_score("diffusion", trained.metadata)
        elif enable_learning:
            from cad3d.models.diffusion_model import create_diffusion_model

            self.diffusion = create_diffusion_model(device=self.device).eval()
            self.weights["diffusion"] = "initial"

        self.depth = None
        from cad3d.conversion.depth import DepthEstimator

        depth_path = _existing(depth_model_path) if depth_model_path is not None else find_depth_model(models_dir)
        if depth_model_path is not None and depth_path is None:
            warnings.warn(f"{depth_model_path}: depth model not found; converting without depth lifting", stacklevel=2)
        if depth_path is not None:
            self.depth = DepthEstimator(depth_path)
            self.weights["depth"], self.trained["depth"] = str(depth_path), True
            if self.depth.val_chamfer is not None:
                self.scores["depth"] = float(self.depth.val_chamfer)

    # -- choosing a path -----------------------------------------------------------------
    def available_methods(self) -> list[str]:
        """Paths that can run now, best first (untrained diffusion only if asked for by name)."""
        have = {"diffusion": self.diffusion is not None, "vit": self.vit is not None,
                "refine": self.refiner is not None, "depth": self.depth is not None, "geometric": True}
        return [m for m in METHODS if have[m]]

    def _load_model(self, method: str, given, what: str):
        """The trained model of checkpoint ``given`` for path ``method`` (recording its weights and
        stored score), or None when no file was given; a given file that is missing is warned about."""
        path = _existing(given)
        if given is not None and path is None:
            warnings.warn(f"{given}: {what} checkpoint not found; converting without it", stacklevel=3)
        if path is None:
            return None
        trained = load_trained(path, kind=method)
        self.weights[method], self.trained[method] = str(path), True
        self._record_score(method, trained.metadata)
        return trained.model.to(self.device)

    def _record_score(self, method: str, metadata: dict) -> None:
        value = (metadata.get("metrics") or {}).get("val_chamfer")
        if isinstance(value, (int, float)) and np.isfinite(value):
            self.scores[method] = float(value)

    def resolve_method(self, method: str = "auto") -> str:
        """``auto``: the trained path with the lowest validation Chamfer stored with its weights;
        when no path has one, the first trained path of diffusion > vit > refine > depth > geometric."""
        if method == "auto":
            trained = [m for m in self.available_methods() if self.trained[m]]
            scored = [m for m in trained if m in self.scores]
            if scored:
                return min(scored, key=lambda m: self.scores[m])
            return next(iter(trained), "geometric")
        if method not in METHODS:
            raise ConversionError(f"unknown method {method!r}; choose from auto, {', '.join(METHODS)}")
        if method not in self.available_methods():
            raise ConversionError(f"method {method!r} is not available: no {method} model was loaded")
        return method

    # -- converting ----------------------------------------------------------------------
    def convert(self, drawing, method: str = "auto", *, num_points: int | None = None, steps: int = 50,
                guidance: float | None = None, seed: int | None = None) -> ConversionResult:
        """One drawing (a path, or an (H, W) array in [0, 1] with 1 = paper) -> its cloud."""
        return self.convert_batch([drawing], method, num_points=num_points, steps=steps, guidance=guidance, seed=seed)[0]

    def convert_batch(self, drawings: Sequence, method: str = "auto", *, num_points: int | None = None,
                      steps: int = 50, guidance: float | None = None, seed: int | None = None) -> list[ConversionResult]:
        """Several drawings in one model call (batched on the GPU). Inputs as in `convert`.

        A drawing's randomness comes from ``seed`` and its own pixels alone, so the same drawing
        and seed give the same cloud whatever else shares the batch. ``auto`` answers a
        three-view sheet with the visual hull of its panels (`auto_method`)."""
        fixed = None if method == "auto" else self.resolve_method(method)
        seed = self.seed if seed is None else int(seed)
        sources = [str(d) if isinstance(d, (str, os.PathLike)) else None for d in drawings]
        # Sheets keep their layout (their cameras say where each view is); a single view is framed
        # like the training drawings (border, title block and notes left out).
        images = [as_drawing(d, 256) for d in drawings]
        cameras = [drawing_cameras(img) for img in images]  # found once: sheets are costly to read
        images = [img if len(cams) > 1 else frame_part(img) for img, cams in zip(images, cameras)]
        chosen = [fixed or self.auto_method(cams) for cams in cameras]
        results: list[Optional[ConversionResult]] = [None] * len(images)
        for m in dict.fromkeys(chosen):  # one model call per path, in the order of first use
            idx = [i for i, c in enumerate(chosen) if c == m]
            done = self._convert(m, [images[i] for i in idx], [cameras[i] for i in idx], num_points, steps,
                                 guidance, seed)
            for i, (points, seconds) in zip(idx, done):
                results[i] = ConversionResult(points=points, method=m, trained=self.trained[m],
                                              weights={m: self.weights.get(m, "none")}, seconds=seconds,
                                              source=sources[i])
        return results

    def auto_method(self, cameras: list) -> str:
        """The path ``auto`` takes for a drawing with these cameras: for a three-view sheet the
        visual hull of its panels (``geometric``: exact for every outline, and far ahead of the
        learned paths, trained on iso views, on the README's three-view tracks), else
        `resolve_method` ("auto")."""
        return "geometric" if len(cameras) > 1 else self.resolve_method("auto")

    def _convert(self, chosen: str, images: list, cameras: list, num_points, steps, guidance, seed) -> list[tuple]:
        """Path ``chosen`` on read drawings: [(points (n, 3) float32, seconds per drawing)]."""
        n_pts = num_points or self.num_points or self.native_points(chosen)
        rngs = [np.random.default_rng([seed, zlib.crc32(np.round(img * 255).astype(np.uint8).tobytes())])
                for img in images]
        t0 = time.perf_counter()
        if chosen == "diffusion":
            clouds = self._run_diffusion(images, n_pts, steps, guidance, rngs, cameras)
        elif chosen == "vit":
            clouds = self._run_vit(images)
        elif chosen == "refine":
            clouds = self._run_refine(images)
        elif chosen == "depth":
            clouds = [self._lift_depth(img, n_pts, rng, cams) for img, rng, cams in zip(images, rngs, cameras)]
        else:
            clouds = [geometric_fallback(img, n_pts, rng, cams) for img, rng, cams in zip(images, rngs, cameras)]
        # Every path answers with exactly n_pts distinct points (subset, or documented upsampling).
        clouds = [c if len(c) == n_pts else resample_points(c, n_pts, rng) for c, rng in zip(clouds, rngs)]
        per = (time.perf_counter() - t0) / max(len(images), 1)
        return [(c, per) for c in clouds]

    def native_points(self, method: str) -> int:
        """The point count a path makes without resampling."""
        if method == "diffusion":
            return int(self.diffusion.config.num_points)
        if method == "vit":
            return int(self.vit.config.num_points)
        if method == "refine":
            return int(self.refiner.config.index_points)
        return 4096

    def _batch_tensor(self, images: list[np.ndarray], size: int) -> torch.Tensor:
        from PIL import Image

        out = []
        for img in images:
            if img.shape != (size, size):
                img = np.asarray(Image.fromarray((img * 255).astype(np.uint8), "L").resize((size, size), Image.BILINEAR),
                                 dtype=np.float32) / 255.0
            out.append(torch.from_numpy(np.ascontiguousarray(img)).expand(3, -1, -1))
        return torch.stack(out).to(self.device)  # (B, 3, size, size)

    def _run_diffusion(self, images, n_pts, steps, guidance, rngs, cameras) -> list[np.ndarray]:
        # One joint sample of n_pts points per drawing, reading the drawing at each point's
        # projection under its cameras (iso, or a sheet's panels). Each drawing's starting noise
        # comes from its own generator and DDIM is deterministic given it, so a cloud does not
        # depend on its batch. It starts from the refine path's answer or the layered depth lift
        # (`_start_clouds`), noised to `refine_strength` (SDEdit): it refines instead of inventing.
        from cad3d.geometry.camera import grid_projections

        model = self.diffusion
        x = self._batch_tensor(images, model.config.image_size)  # (B, 3, S, S)
        grids = [grid_projections(cams) for cams in cameras]
        cams = torch.from_numpy(np.stack([g for g, _ in grids])).to(self.device)  # (B, V, 2, 4)
        views = torch.from_numpy(np.stack([v for _, v in grids])).to(self.device)  # (B, V)
        gens = [torch.Generator().manual_seed(int(rng.integers(2**62))) for rng in rngs]
        x_T = torch.stack([torch.randn(n_pts, 3, generator=g) for g in gens]).to(self.device)  # (B, N, 3)
        init, strength = self._start_clouds(images, n_pts, rngs, cameras), self.refine_strength
        if init is not None:
            init = torch.from_numpy(np.stack(init)).to(self.device)  # (B, N, 3)
        # On the CPU a call holds at most _CPU_CLOUDS_PER_CALL clouds (larger batches were slower
        # per cloud there: cache-bound).
        per_call = len(images) if self.device.type != "cpu" else _CPU_CLOUDS_PER_CALL
        out = [model.sample(x[i:i + per_call], steps=steps, guidance=guidance, x_T=x_T[i:i + per_call],
                            cams=cams[i:i + per_call], views=views[i:i + per_call],
                            init=None if init is None else init[i:i + per_call], strength=strength)
               for i in range(0, len(images), per_call)]
        return list(torch.cat(out).float().cpu().numpy())  # B x (N, 3)

    def _start_clouds(self, images, n_pts, rngs, cameras) -> Optional[list[np.ndarray]]:
        """Where the diffusion path starts (before noising to ``refine_strength``): for a single
        view the retrieve-then-refine answer when a refine model is loaded (the closest start: a
        training part stretched to the drawing), else the layered depth lift (sheets too); None
        (pure noise) when some drawing has neither."""
        if self.refine_strength >= 1.0:
            return None
        single = [len(cams) == 1 and self.refiner is not None for cams in cameras]
        layered = self.depth is not None and self.depth.layered
        if not layered and not all(single):
            return None
        picked = [i for i, s in enumerate(single) if s]
        refined = dict(zip(picked, self._run_refine([images[i] for i in picked]))) if picked else {}
        starts = []
        for i, (img, rng, cams) in enumerate(zip(images, rngs, cameras)):
            c = refined[i] if i in refined else self._lift_depth(img, n_pts, rng, cams)
            starts.append(c if len(c) == n_pts else resample_points(c, n_pts, rng))
        return starts

    def _run_vit(self, images) -> list[np.ndarray]:
        x = self._batch_tensor(images, self.vit.config.image_size)
        return list(self.vit.predict_points(x).float().cpu().numpy())  # B x (N, 3)

    def _run_refine(self, images) -> list[np.ndarray]:
        x = self._batch_tensor(images, self.refiner.config.image_size)[:, 0]  # (B, S, S)
        return list(self.refiner(x)["points"].float().cpu().numpy())  # B x (P, 3)

    def _lift_depth(self, image, n_pts, rng, cameras) -> np.ndarray:
        from cad3d.conversion.depth import lift_drawing

        if self.depth.layered:  # every surface crossing of every pixel's ray, an even surface sample
            from cad3d.data.layers import sample_layers

            try:
                return normalize_cloud(sample_layers(self.depth.predict_layers(image), cameras, n_pts, rng))
            except ValueError:
                raise ConversionError("the depth model sees no part in this drawing") from None
        cloud = lift_drawing(image, self.depth.predict(image), camera=cameras)  # one point per pixel
        # Robust: a few pixels lifted to the clipped ends of the depth range would otherwise set the
        # scale (30 test drawings of the 1000-part CPU run: Chamfer 0.045 instead of 0.106).
        return normalize_cloud(resample_points(cloud, n_pts, rng), robust=True)

    # -- continuous learning -------------------------------------------------------------
    def _learning_trainer(self):
        """The training facade around the converter's own diffusion model and replay buffer."""
        if self._learner is None:
            from cad3d.training.trainers import DiffusionTrainer

            self._learner = DiffusionTrainer(model=self.diffusion, device=str(self.device), progress=False)
            if self._diffusion_payload is not None:
                from cad3d.training.tasks.diffusion import DiffusionTask

                replay = DiffusionTask.replay_state(self._diffusion_path, self._diffusion_payload)
                if replay is not None:
                    self._learner.replay_buffer.load_state_dict(replay)
        return self._learner

    @property
    def replay_buffer(self):
        """The pairs `learn` replays (loaded with the diffusion weights, grown by `learn`)."""
        if self.diffusion is None:
            raise ConversionError("no diffusion model: nothing to replay")
        return self._learning_trainer().replay_buffer

    def learn(self, image, points, *, steps: int = 10, replay: int = 3, lr: float = 1e-4) -> dict:
        """Add (drawing, cloud) to the replay buffer and fine-tune the diffusion model through the
        training engine: ``steps`` steps, each on the new pair plus ``replay`` pairs drawn from
        the buffer, so that old shapes are not forgotten. Returns the engine's report."""
        if not self.enable_learning or self.diffusion is None:
            raise ConversionError("learning is disabled (enable_learning=False)")
        from cad3d.training.checkpoint_io import load_checkpoint
        from cad3d.training.tasks.diffusion import DiffusionTask

        learner = self._learning_trainer()
        model = self.diffusion
        img = self._batch_tensor([as_drawing(image, 256)], model.config.image_size)[0].cpu()  # (3, S, S)
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.isfinite(pts).all():
            raise ConversionError(f"points must be a finite (N, 3) array, got shape {pts.shape}")
        pts = torch.from_numpy(choose_points(pts, model.config.num_points, np.random.default_rng(self.seed)))
        learner.replay_buffer.add(img[None], pts[None])
        with tempfile.TemporaryDirectory(prefix="cad3d_learn_") as tmp:
            # One pair per epoch, so `steps` epochs; the pair joined the buffer once, above.
            report = learner.train([(img, pts)], None, epochs=steps, replay_ratio=float(replay),
                                          offer_to_replay=False, out_dir=tmp, batch_size=1, lr=lr,
                                          handle_signals=False, progress=False, keep_last=1)
            # The engine's own checkpoint of the fine-tuned model is what `save` publishes.
            payload = load_checkpoint(Path(tmp) / DiffusionTask.schema.last_file)
            # The buffer travels inside the published file (its run-state file stays in tmp).
            payload.pop("cad3d_run_state", None)
            self._diffusion_payload = {**payload, "replay_buffer": learner.replay_buffer.state_dict()}
        self.diffusion = learner.model.eval()
        self.trained["diffusion"] = True
        self.weights["diffusion"] = "continuous learning"
        return report

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Publish the diffusion model as it now is (weights, optimizer, replay buffer, metadata)
        to ``continuous_learning.pth`` through the checkpoint manager; it loads like any
        diffusion checkpoint (`load_trained`, ``diffusion_model_path``)."""
        if self._diffusion_payload is None:
            raise ConversionError("nothing to save: no diffusion weights were loaded or learned (call learn() first)")
        import dataclasses

        from cad3d.training.checkpoint import CheckpointManager
        from cad3d.training.tasks.diffusion import DiffusionTask

        path = Path(path) if path is not None else self.learning_path
        schema = dataclasses.replace(DiffusionTask.schema, last_file=path.name, best_file=None)
        payload = {k: v for k, v in self._diffusion_payload.items() if k != "cad3d_run_state"}
        payload["replay_buffer"] = self.replay_buffer.state_dict()  # carried inside this one file
        meta = payload.get("cad3d_meta") or {}
        saved = CheckpointManager(path.parent, schema).save_last(
            payload, epoch=int(meta.get("epoch") or 0), global_step=int(meta.get("global_step") or 0),
            metrics=meta.get("metrics") or {})
        return Path(saved)
