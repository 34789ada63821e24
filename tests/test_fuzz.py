"""Seeded fuzz of what users hand us: mutated checkpoints only ever give `CheckpointError`, and
hostile drawings only ever a per-file `ConversionError`, with memory bounded and the good drawings
of the same batch still converted."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import subprocess
import sys
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cad3d.cli import main
from cad3d.errors import CheckpointError, ConversionError
from cad3d.training.checkpoint import CheckpointManager
from cad3d.training.checkpoint_io import MANIFEST_NAME, build_metadata, load_checkpoint, read_metadata
from cad3d.training.tasks.base import CheckpointSchema

SCHEMA = CheckpointSchema(model="toy", module_keys={"model": "state_dict"}, epoch_file="toy_epoch_{epoch}.pth",
                          last_file="toy_last.pth", best_file="toy_best.pth")
CASES_PER_FORMAT = 150


def checkpoint_bytes(legacy: bool) -> bytes:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    payload = {"epoch": 1, "global_step": 3, "state_dict": model.state_dict(),
               "cad3d_meta": build_metadata(task="toy", file_kind="last", epoch=1, global_step=3, metrics={"val_loss": 0.5}),
               "cad3d_resume": {"epoch": 2, "rng": torch.zeros(4, dtype=torch.uint8)}}
    buf = io.BytesIO()
    torch.save(payload, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random damage: a bit flip, a truncation, or several random bytes."""
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "bytes"])
    if kind == "flip":
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[: rng.randrange(len(b))]
    else:
        for _ in range(rng.randint(2, 10)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    return kind, bytes(b)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_mutated_checkpoints_only_ever_give_checkpoint_error(fmt, tmp_path):
    """Each mutated file is read as a listed file (hash in the manifest), as an unlisted one
    (zip CRC / unpickling) and for metadata only; a resume search over it never crashes."""
    rng = random.Random(1234 if fmt == "zip" else 4321)
    good = checkpoint_bytes(legacy=fmt == "legacy")
    escaped, kinds, calls = [], Counter(), 0
    listed, unlisted = tmp_path / "listed", tmp_path / "unlisted"
    for folder in (listed, unlisted):
        folder.mkdir()
    warnings.simplefilter("ignore")  # pytest restores the filters after the test
    for case in range(CASES_PER_FORMAT):
        kind, data = mutate(good, rng)
        if data == good:
            continue
        kinds[kind] += 1
        (unlisted / "toy_last.pth").write_bytes(data)
        (listed / "toy_last.pth").write_bytes(data)
        manifest = {"schema_version": 1, "files": {"toy_last.pth": {"sha256": hashlib.sha256(good).hexdigest()}}}
        (listed / MANIFEST_NAME).write_text(json.dumps(manifest))
        attempts = [lambda: load_checkpoint(unlisted / "toy_last.pth"), lambda: load_checkpoint(listed / "toy_last.pth"),
                    lambda: read_metadata(unlisted / "toy_last.pth"),
                    lambda: CheckpointManager(unlisted, SCHEMA, is_writer=False).resume_choice()]
        for attempt in attempts:
            calls += 1
            try:
                attempt()
            except CheckpointError:
                pass
            except BaseException as exc:  # noqa: BLE001 - what the test is looking for
                escaped.append((case, kind, type(exc).__name__, str(exc)[:100]))
        with pytest.raises(CheckpointError, match="sha256"):  # a listed file with other bytes is never used
            load_checkpoint(listed / "toy_last.pth")
    print(f"{fmt}: {sum(kinds.values())} mutated files ({dict(kinds)}), {calls} reads, {len(escaped)} escaped")
    assert not escaped, escaped[:5]
    assert sum(kinds.values()) > 0.9 * CASES_PER_FORMAT


def test_legacy_pickle_reproducer_is_a_checkpoint_error_everywhere(tmp_path, capsys, monkeypatch):
    """The issue's reproducer, through every command that reads checkpoints."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    bad = folder / "vae_last.pth"
    bad.write_bytes(b"\x80\x02a.")
    for fn in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointError, match="vae_last.pth: truncated or corrupt"):
            fn(bad)
    for argv in (["ckpt", "verify", str(folder)], ["ckpt", "inspect", str(bad)],
                 ["ckpt", "prune", str(folder), "--keep-last", "1", "--model", "vae"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if argv[1] != "prune":
            assert code == 1, argv
    assert main(["ckpt", "ls", str(folder)]) == 0
    assert "corrupt" in capsys.readouterr().out
    drawing = tmp_path / "d.png"
    Image.fromarray(sketch()).save(drawing)
    assert main(["convert", str(drawing), "-o", str(tmp_path / "out"), "--vit", str(bad), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vae_last.pth" in err[0] and "corrupt" in err[0]


# -- hostile drawings --------------------------------------------------------------------------
def sketch(h: int = 64, w: int = 96) -> np.ndarray:
    a = np.full((h, w), 255, np.uint8)
    a[10:50, 20] = a[10:50, 80] = 0
    a[10, 20:81] = a[50, 20:81] = 0
    return a


def png_bytes(w: int, h: int, *, rows: bytes | None = None, color_type: int = 0) -> bytes:
    """A PNG written by hand, so its header can claim any size (rows default to white)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    raw = rows if rows is not None else b"".join(b"\x00" + b"\xff" * w for _ in range(h))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def wide_png() -> bytes:
    """The issue's case: 60000x8 pixels in a few hundred bytes (a black line across white)."""
    return png_bytes(60000, 8, rows=b"".join(b"\x00" + (b"\x00" if y == 4 else b"\xff") * 60000 for y in range(8)))


def crafted_drawings(folder: Path) -> dict[str, Path]:
    """Hostile files by design: extreme aspect, bomb-sized headers, zero sizes, wrong modes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "wide": wide_png(),
        "tall": png_bytes(8, 40000),
        "bomb_header": png_bytes(100_000, 100_000, rows=b""),
        "just_over_cap": png_bytes(9000, 9000, rows=b""),
        "zero_width": png_bytes(0, 64, rows=b""),
        "zero_height": png_bytes(64, 0, rows=b""),
        "empty": b"",
        "text": b"hello, not an image",
        "truncated": png_bytes(64, 64)[:60],
    }
    paths = {name: folder / f"{name}.png" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    buf = io.BytesIO()
    Image.fromarray(sketch()).convert("CMYK").save(buf, format="JPEG")
    paths["cmyk"] = folder / "cmyk.jpg"
    paths["cmyk"].write_bytes(buf.getvalue())
    paths["float"] = folder / "float.tif"
    Image.fromarray(sketch().astype(np.float32)).save(paths["float"])
    paths["folder"] = folder / "folder.png"
    paths["folder"].mkdir()
    return paths


def test_crafted_hostile_drawings_are_per_file_errors(tmp_path):
    from cad3d.conversion.drawing import read_drawing

    causes = {"wide": "too elongated", "tall": "too elongated", "bomb_header": "too large", "just_over_cap": "too large",
              "zero_width": "", "zero_height": "", "empty": "empty file", "text": "not an image",
              "truncated": "", "cmyk": "unsupported image mode", "float": "unsupported image mode", "folder": "folder"}
    for name, path in crafted_drawings(tmp_path).items():
        with pytest.raises(ConversionError) as info:
            read_drawing(path)
        assert str(path) in str(info.value) and causes[name] in str(info.value), (name, info.value)


def mutated_images(folder: Path, rng: random.Random, per_format: int) -> list[Path]:
    bases = []
    for fmt, mode in [("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("BMP", "RGB"), ("GIF", "P"), ("TIFF", "L"),
                      ("WEBP", "RGB"), ("PNG", "1")]:
        buf = io.BytesIO()
        Image.fromarray(sketch()).convert(mode).save(buf, format=fmt)
        bases.append((fmt.lower(), buf.getvalue()))
    paths = []
    for ext, data in bases:
        for i in range(per_format):
            b = bytearray(data)
            if rng.random() < 0.3:  # header fields (sizes, modes) live in the first bytes
                for _ in range(2):
                    b[rng.randrange(min(40, len(b)))] = rng.randrange(256)
            else:
                b = bytearray(mutate(bytes(b), rng)[1])
            path = folder / f"{ext}_{i}.{ext}"
            path.write_bytes(bytes(b))
            paths.append(path)
    return paths


def test_mutated_drawings_only_ever_give_conversion_error(tmp_path):
    from cad3d.conversion.drawing import read_drawing

    paths = mutated_images(tmp_path, random.Random(99), per_format=40)
    escaped, read_ok = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about damaged EXIF/TIFF tags
        for path in paths:
            try:
                read_drawing(path)
                read_ok += 1
            except ConversionError as exc:
                assert path.name in str(exc)
            except BaseException as exc:  # noqa: BLE001 - what the test is looking for
                escaped.append((path.name, type(exc).__name__, str(exc)[:100]))
    print(f"drawings: {len(paths)} mutated files, {read_ok} still readable, {len(escaped)} escaped")
    assert not escaped, escaped[:5]


def test_a_hostile_batch_still_converts_its_good_drawings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no trained weights here: the geometric path
    inputs = tmp_path / "in"
    hostile = crafted_drawings(inputs)
    hostile.pop("folder").rmdir()  # a folder inside an input folder is not an input
    good = [inputs / "good_a.png", inputs / "good_b.png"]
    for p in good:
        Image.fromarray(sketch()).save(p)
    code = main(["convert", str(inputs), "-o", str(tmp_path / "out"), "--num-points", "128", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and f"converted 2, failed {len(hostile)}" in out
    assert all((tmp_path / "out" / f"{p.stem}.ply").is_file() for p in good)
    assert len(err.strip().splitlines()) == len(hostile) and "Traceback" not in err


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from Linux /proc")
def test_the_wide_png_is_refused_with_bounded_memory(tmp_path):
    """Peak memory of reading the 60000x8 PNG in a fresh process (it used to pad to 60000²)."""
    path = tmp_path / "wide.png"
    path.write_bytes(wide_png())
    assert path.stat().st_size < 1000
    # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, from before exec).
    code = ("import sys\nfrom cad3d.conversion.drawing import read_drawing\nfrom cad3d.errors import ConversionError\n"
            "try:\n    read_drawing(sys.argv[1])\nexcept ConversionError as exc:\n    print('refused:', exc)\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines[0].startswith("refused:") and "elongated" in lines[0], proc.stdout + proc.stderr
    peak_mib = int(lines[-1]) / 1024  # KiB
    print(f"peak memory reading a {path.stat().st_size}-byte 60000x8 PNG: {peak_mib:.0f} MiB")
    assert peak_mib < 300
