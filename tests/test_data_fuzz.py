"""Hostile and mutated dataset files: only ever `DatasetError` or a listed `data check` problem.

The fuzz cases are seeded (same cases every run) and counted per kind; a case "escapes" when a
loader, the index or `CAD2D3DDataset.__getitem__` raises anything but DatasetError, when
`check_dataset` raises at all, or when it reports no problem (for a file other than the manifest:
no problem naming it) where a loader refused the file.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cad3d.cli import main
from cad3d.data.check import check_dataset
from cad3d.data.dataset import (
    CAD2D3DDataset,
    index_dataset,
    load_cameras,
    load_dense_points,
    load_depth,
    load_drawing,
    load_points,
)
from cad3d.data.synth import create_synthetic_training_data
from cad3d.errors import DatasetError

STEM = "synthetic_0001"
CASES_PER_KIND = 150


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "data"
    create_synthetic_training_data(out, 3, num_points=128, image_size=64, dense_points=512, seed=2, workers=1,
                                   progress=False)
    return out


@pytest.fixture()
def work(small_dataset, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(small_dataset, d)
    return d


# -- hand-made hostile files ---------------------------------------------------------------------
def png_bytes(width: int, height: int, rows: bytes, color_type: int = 0, bit_depth: int = 8) -> bytes:
    """A PNG with any IHDR (valid checksums) and the given raw scanlines, compressed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def npy_with_header(header: str, payload: bytes = b"") -> bytes:
    text = header.encode("latin1")
    pad = (64 - (10 + len(text) + 1) % 64) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def test_png_over_the_decompression_bomb_limit_and_the_pixel_cap(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(30000, 30000, b"\x00" * 100))  # 900 Mpx: over twice PIL's limit
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(10000, 7000, b"\x00" * 100))  # 70 Mpx: under PIL's limit, over ours
    for path in (bomb, big):
        with pytest.raises(DatasetError, match=f"{path.name}: image too large"):
            load_drawing(path, 64)


def test_an_elongated_png_is_shrunk_before_padding_with_bounded_memory(tmp_path):
    """60000x8 pixels in a few hundred bytes used to be padded to a 60000^2 square (3.6 GB)."""
    rows = b"".join(b"\x00" + b"\xff" * 30000 + b"\x00" * 30000 for _ in range(8))  # white left, black right
    path = tmp_path / "long.png"
    path.write_bytes(png_bytes(60000, 8, rows))
    assert path.stat().st_size < 1000
    normal = tmp_path / "normal.png"
    normal.write_bytes(png_bytes(256, 256, b"".join(b"\x00" + b"\xff" * 256 for _ in range(256))))
    code = (
        "import json, resource; from cad3d.data.dataset import load_drawing\n"
        f"load_drawing({str(normal)!r}, 256); base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"a = load_drawing({str(path)!r}, 256)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rows = a.min(axis=1) < 0.5\n"
        "print(json.dumps({'shape': a.shape, 'ink_rows': rows.nonzero()[0].tolist(), 'extra_kb': peak - base,\n"
        "                  'left': float(a[rows][:, :100].mean()), 'right': float(a[rows][:, 156:].mean())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [256, 256]
    assert result["ink_rows"] in ([127], [128])  # one thin line across the middle, paper above and below
    assert result["left"] > 0.9 and result["right"] < 0.2  # the white and black halves, in proportion
    assert result["extra_kb"] < 100_000  # peak memory above loading a normal drawing
    with pytest.raises(DatasetError, match="too elongated"):
        load_drawing(path)  # full size would need the 60000^2 square


def test_npy_header_claiming_billions_of_rows_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3000000000, 3), }",
                                     b"\x00" * 12))
    with pytest.raises(DatasetError, match="huge.npy: corrupt or truncated .npy: its header says shape"):
        load_points(path)
    for header, match in (
        ("{'descr': '|O', 'fortran_order': False, 'shape': (1, 3), }", "plain numeric"),
        ("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 3), }", "wrong dtype"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }", "negative shape"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': 'abc', }", "corrupt or unreadable"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 300 + ")" * 300 + "), }", "corrupt"),
    ):
        path.write_bytes(npy_with_header(header, b"\x00" * 12))
        with pytest.raises(DatasetError, match=match):
            load_points(path)


def test_hostile_files_in_a_dataset_are_listed_by_check_and_named_by_training(work, capsys):
    (work / "images" / f"{STEM}.png").write_bytes(png_bytes(30000, 30000, b"\x00" * 100))
    billions = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3000000000, 3), }", b"\x00" * 12)
    (work / "pointclouds" / "synthetic_0002.npy").write_bytes(billions)
    (work / "dense" / "synthetic_0000.npy").write_bytes(billions)
    report = check_dataset(work)
    assert report.counts() == {"oversized file": 1, "corrupt file": 2}
    assert main(["data", "check", str(work)]) == 1
    out = capsys.readouterr().out
    assert "oversized file: 1" in out and f"{STEM}.png: image too large" in out
    ds = CAD2D3DDataset(work, image_size=64, num_points=32)
    with pytest.raises(DatasetError, match=f"{STEM}.png: image too large"):
        ds[1]
    with pytest.raises(DatasetError, match="synthetic_0002.npy: corrupt or truncated"):
        ds[2]


HOSTILE_MANIFEST_SAMPLES = {
    "samples is a number": 5,
    "samples is null": None,
    "samples is a string": "synthetic_0001",
    "samples is an object": {"stem": "synthetic_0001"},
}
HOSTILE_STEMS = {
    "stem is a list": ["synthetic_0001"],
    "stem is null": None,
    "stem is a number": 12,
    "stem is empty": "",
    "stem climbs out": "../../outside/x",
    "stem is dot-dot": "..",
    "stem is absolute": "/etc/passwd",
    "stem has a separator": "sub/synthetic_0001",
    "stem has a backslash": "..\\x",
    "stem has a NUL": "synthetic\x000001",
    "stem is a lone surrogate": "\ud800",
    "stem is too long": "x" * 300,
}


def hostile_manifests(base: dict):
    for name, value in HOSTILE_MANIFEST_SAMPLES.items():
        yield name, {**base, "samples": value}
    for name, value in HOSTILE_STEMS.items():
        samples = [dict(e) for e in base["samples"]]
        samples[1]["stem"] = value
        yield name, {**base, "samples": samples}
    samples = [dict(e) for e in base["samples"]]
    samples[0]["split"] = ["train"]
    yield "split is a list", {**base, "samples": samples}
    yield "version is newer", {**base, "version": 99}
    yield "version is text", {**base, "version": "2"}
    yield "manifest is a list", [base]
    yield "deeply nested", "[" * 100000 + "]" * 100000
    yield "over-long integer", '{"samples": [], "version": ' + "1" * 5000 + "}"


def test_hostile_manifests_are_dataset_errors_and_listed_problems(work, tmp_path, capsys):
    outside = tmp_path / "outside"
    (outside / "images").mkdir(parents=True)
    shutil.copy(work / "images" / f"{STEM}.png", outside / "images" / "x.png")
    base = json.loads((work / "manifest.json").read_text())
    names = []
    for name, manifest in hostile_manifests(base):
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        (work / "manifest.json").write_text(text)
        with pytest.raises(DatasetError, match="manifest.json"):
            index_dataset(work)
        with pytest.raises(DatasetError, match="manifest.json"):
            CAD2D3DDataset(work)
        report = check_dataset(work)
        assert not report.ok and any("manifest.json" in m for _, m in report.problems), name
        assert set(report.counts()) <= {"corrupt manifest", "invalid manifest entry", "unlisted sample"}, name
        capsys.readouterr()
        assert main(["data", "check", str(work)]) == 1
        assert "manifest.json" in capsys.readouterr().out
        names.append(name)
    assert len(names) == len(HOSTILE_MANIFEST_SAMPLES) + len(HOSTILE_STEMS) + 6
    # Every bad entry of a manifest is listed, not only the first.
    samples = [dict(e, stem=s) for e, s in zip(base["samples"], ("../a", "/b", ["c"]))]
    (work / "manifest.json").write_text(json.dumps({**base, "samples": samples}))
    assert check_dataset(work).counts()["invalid manifest entry"] == 3


# -- seeded mutation fuzzing ---------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    op = rng.integers(4)
    if op == 0:  # flip a few bytes, anywhere
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
    elif op == 1:  # flip bytes in the header region
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(min(len(b), 128)))] = int(rng.integers(256))
    elif op == 2:  # truncate
        del b[int(rng.integers(len(b))):]
    else:  # duplicate a slice (lengthens chunks and arrays)
        i, j = sorted(int(x) for x in rng.integers(len(b), size=2))
        b[j:j] = b[i:j]
    return bytes(b)


HOSTILE_VALUES = (None, -1, 0, 1e308, float("nan"), "x", "../x", [], [[1, 2]], {}, True, 2**70, "\ud800",
                  [1.0, 2.0], [[1.0, 0.0, 0.0]] * 3, list(range(4)))


def mutate_json(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace one value anywhere in the JSON tree with a hostile one (half the cases), or the
    bytes themselves (the other half)."""
    if rng.random() < 0.5:
        return mutate_bytes(data, rng)
    tree = json.loads(data)
    node, slots = tree, []
    while isinstance(node, (dict, list)) and node:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = keys[int(rng.integers(len(keys)))]
        slots.append((node, key))
        if rng.random() < 0.3:
            break
        node = node[key]
    parent, key = slots[int(rng.integers(len(slots)))]
    parent[key] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
    return json.dumps(tree).encode()


def mutate_png(data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes (most cases) or a re-checksummed IHDR with random size, depth and colour type."""
    if rng.random() < 0.7:
        return mutate_bytes(data, rng)
    w, h = (int(2 ** rng.uniform(0, 31)) for _ in range(2))
    depth, color = int(rng.choice([1, 2, 4, 8, 16])), int(rng.choice([0, 2, 3, 4, 6]))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    new = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return data[:8] + new + data[8 + 25:]


def mutate_npy(data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes (most cases) or a rewritten header with a hostile shape, dtype or order."""
    if rng.random() < 0.6:
        return mutate_bytes(data, rng)
    descr = str(rng.choice(["<f4", "<f2", ">f8", "|O", "<c8", "|V12", "<U3", "<i8", "|b1", "<f4"]))
    shape = rng.choice(["(3000000000, 3)", "(-5, 3)", "(0, 3)", "(128,)", "(3, 128)", "(2, 64, 3)", "()",
                        "(128, 3)", "(1, 2**62)", "'x'", "(" * 50 + ")" * 50])
    fortran = bool(rng.random() < 0.3)
    header_len = struct.unpack("<H", data[8:10])[0]
    payload = data[10 + header_len:]
    return npy_with_header(f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}", payload)


KINDS = {
    # kind: (file, mutation, loader of that file)
    "png": ("images/{}.png", mutate_png, lambda d, p: load_drawing(p, 64)),
    "points npy": ("pointclouds/{}.npy", mutate_npy, lambda d, p: load_points(p)),
    "depth npy": ("depth/{}.npy", mutate_npy, lambda d, p: load_depth(p)),
    "dense npy": ("dense/{}.npy", mutate_npy, lambda d, p: load_dense_points(d, STEM, fallback=False)),
    "meta json": ("meta/{}.json", mutate_json, lambda d, p: load_cameras(p)),
    "manifest json": ("manifest.json", mutate_json, lambda d, p: index_dataset(d)),
}


def run_case(root: Path, kind: str, data: bytes) -> str | None:
    """Write ``data`` as the file of ``kind`` and load it every way; the escape, if any."""
    pattern, _, loader = KINDS[kind]
    path = root / pattern.format(STEM)
    path.write_bytes(data)
    refused = False
    try:
        loader(root, path)
    except DatasetError:
        refused = True
    except Exception as exc:  # noqa: BLE001 - the point of the test
        return f"loader: {type(exc).__name__}: {exc}"[:300]
    try:
        ds = CAD2D3DDataset(root, image_size=64, num_points=32, augment=True, seed=1)
        for epoch in range(3):  # augmentation reads the cameras (a mirror, half the time)
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                try:
                    ds[i]
                except DatasetError:
                    pass
    except DatasetError:
        pass
    except Exception as exc:  # noqa: BLE001
        return f"dataset: {type(exc).__name__}: {exc}"[:300]
    try:
        report = check_dataset(root)
    except Exception as exc:  # noqa: BLE001
        return f"check: {type(exc).__name__}: {exc}"[:300]
    if refused and report.ok:
        return f"check: lists no problem, but the loader refused {path.name}"
    # An emptied manifest is reported through its consequence (samples in no manifest).
    if refused and kind != "manifest json" and not any(path.name in m for _, m in report.problems):
        return f"check: lists nothing about {path.name}, which the loader refused"
    return None


@pytest.mark.parametrize("kind", list(KINDS))
def test_fuzzed_files_only_give_dataset_errors_or_check_problems(work, kind, capsys):
    pattern, mutate, _ = KINDS[kind]
    path = work / pattern.format(STEM)
    pristine = path.read_bytes()
    rng = np.random.default_rng([13, list(KINDS).index(kind)])
    escapes, outcomes = [], Counter()
    for case in range(CASES_PER_KIND):
        data = mutate(pristine, rng)
        escape = run_case(work, kind, data)
        outcomes["escaped" if escape else "contained"] += 1
        if escape:
            escapes.append((case, escape))
        path.write_bytes(pristine)
    with capsys.disabled():
        print(f"\nfuzz {kind}: {sum(outcomes.values())} cases, {outcomes['escaped']} escaped")
    assert not escapes, escapes[:5]
