"""Geometry ops against brute-force references (numpy loops, scipy cKDTree, ray casting)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from cad3d.geometry import (
    OrthoCamera,
    ball_query,
    chamfer_distance,
    cpu_kernels,
    denormalize,
    depth_to_points,
    f_score,
    farthest_point_sample,
    farthest_point_sample_reference,
    group_points,
    knn,
    nearest_neighbors,
    normalize,
    sample_surface,
    soft_voxelize,
    three_view_cameras,
    voxelize,
)
from cad3d.geometry.camera import ISO_FORWARD

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rand(gen, *shape, dtype=torch.float64):
    return torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def _clouds(gen):
    """(name, a (B,N,3), b (B,M,3)) cases: random N != M, duplicates, single points."""
    a = _rand(gen, 2, 70, 3)
    b = _rand(gen, 2, 45, 3)
    dup = torch.cat([a[:, :10], a[:, :10], a[:, :5]], dim=1)  # exact duplicates inside a cloud
    return [
        ("random", a, b),
        ("duplicates", dup, a[:, 5:30]),
        ("identical", a, a.clone()),
        ("single_a", a[:, :1], b),
        ("single_both", a[:, :1], b[:, :1]),
    ]


# ----------------------------------------------------------------------------- nearest / chamfer
def test_nearest_neighbors_matches_kdtree(gen):
    for name, a, b in _clouds(gen):
        for chunk in (None, 1, 7):
            nn = nearest_neighbors(a, b, chunk_size=chunk)
            assert nn.sq_dist_ab.shape == a.shape[:2] and nn.idx_ba.shape == b.shape[:2]
            for i in range(a.shape[0]):
                d_ab, _ = cKDTree(b[i].numpy()).query(a[i].numpy())
                d_ba, _ = cKDTree(a[i].numpy()).query(b[i].numpy())
                np.testing.assert_allclose(nn.sq_dist_ab[i].numpy(), d_ab**2, atol=1e-12, err_msg=name)
                np.testing.assert_allclose(nn.sq_dist_ba[i].numpy(), d_ba**2, atol=1e-12, err_msg=name)
                # indices point at a neighbour at that distance (any of several duplicates)
                got = ((a[i] - b[i][nn.idx_ab[i]]) ** 2).sum(-1).numpy()
                np.testing.assert_allclose(got, d_ab**2, atol=1e-12)


def _chamfer_brute(a, b, norm):
    d = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)  # (B, N, M)
    d_ab, d_ba = d.min(2), d.min(1)
    if norm == "l1":
        d_ab, d_ba = np.sqrt(d_ab), np.sqrt(d_ba)
    return d_ab.mean(1) + d_ba.mean(1)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_chamfer_matches_brute_force_and_reductions(gen, norm):
    for name, a, b in _clouds(gen):
        ref = _chamfer_brute(a.numpy(), b.numpy(), norm)  # (B,)
        per = chamfer_distance(a, b, norm=norm, reduction="none", chunk_size=5)
        np.testing.assert_allclose(per.numpy(), ref, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(chamfer_distance(a, b, norm=norm).item(), ref.mean(), atol=1e-10)
        np.testing.assert_allclose(chamfer_distance(a, b, norm=norm, reduction="sum").item(), ref.sum(), atol=1e-10)
        # unbatched input -> scalar
        one = chamfer_distance(a[0], b[0], norm=norm, reduction="none")
        assert one.dim() == 0 and abs(one.item() - ref[0]) < 1e-10


def test_chamfer_chunked_equals_dense_float32(gen):
    a, b = _rand(gen, 3, 200, 3, dtype=torch.float32), _rand(gen, 3, 150, 3, dtype=torch.float32)
    dense = chamfer_distance(a, b, reduction="none", chunk_size=10_000)
    for chunk in (1, 16, 199):
        torch.testing.assert_close(chamfer_distance(a, b, reduction="none", chunk_size=chunk), dense, rtol=0, atol=0)
    ref = _chamfer_brute(a.double().numpy(), b.double().numpy(), "l2")
    np.testing.assert_allclose(dense.numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_chamfer_gradcheck(gen, norm):
    a = _rand(gen, 2, 6, 3).requires_grad_()
    b = _rand(gen, 2, 4, 3).requires_grad_()
    f = lambda a, b: chamfer_distance(a, b, norm=norm, reduction="none", chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, b), eps=1e-6, atol=1e-6)


def test_chamfer_gradient_finite_with_duplicates():
    a = torch.zeros(1, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    for norm in ("l2", "l1"):
        (ga, gb) = torch.autograd.grad(chamfer_distance(a, b, norm=norm), (a, b))
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all()


@pytest.mark.parametrize("device", DEVICES)
def test_chamfer_device_and_float32(device):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 300, 3, generator=g).to(device)
    b = (torch.rand(2, 257, 3, generator=g) + 10.0).to(device)  # far from the origin
    got = chamfer_distance(a, b, reduction="none", chunk_size=64).cpu().double().numpy()
    ref = _chamfer_brute(a.cpu().double().numpy(), b.cpu().double().numpy(), "l2")
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_f_score_matches_brute_force(gen):
    pred = _rand(gen, 2, 80, 3)
    gt = pred[:, :60] + 0.03 * _rand(gen, 2, 60, 3)
    for tau in (None, 0.02, torch.tensor([0.01, 0.05], dtype=torch.float64)):
        f, p, r = f_score(pred, gt, tau)
        for i in range(2):
            g = gt[i].numpy()
            t = (0.01 * np.linalg.norm(g.max(0) - g.min(0))) if tau is None else float(torch.as_tensor(tau).expand(2)[i])
            d_pg, _ = cKDTree(g).query(pred[i].numpy())
            d_gp, _ = cKDTree(pred[i].numpy()).query(g)
            pp, rr = (d_pg < t).mean(), (d_gp < t).mean()
            ff = 2 * pp * rr / (pp + rr) if pp + rr > 0 else 0.0
            np.testing.assert_allclose([f[i].item(), p[i].item(), r[i].item()], [ff, pp, rr], atol=1e-12)
    f, p, r = f_score(pred[0], pred[0] + 5.0, 0.1)  # nothing matches
    assert f.item() == p.item() == r.item() == 0.0


# ----------------------------------------------------------------------------- FPS
def _fps_naive(p: np.ndarray, m: int, start: int = 0) -> np.ndarray:
    idx, dist = [start], np.full(len(p), np.inf)
    for _ in range(m - 1):
        dist = np.minimum(dist, ((p - p[idx[-1]]) ** 2).sum(1))
        idx.append(int(dist.argmax()))
    return np.array(idx)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("device", DEVICES)
def test_fps_picks_true_farthest(gen, device, backend):
    x = _rand(gen, 3, 150, 3)  # N = 150: not a square, exercises block padding
    for start in ("first", 17):
        got = farthest_point_sample(x.to(device), 40, start=start, backend=backend).cpu()
        assert got.shape == (3, 40) and got.dtype == torch.long
        for i in range(3):
            np.testing.assert_array_equal(got[i].numpy(), _fps_naive(x[i].numpy(), 40, 0 if start == "first" else start))
    # float32 too, and deterministic
    x32 = x.float().to(device)
    a, b = farthest_point_sample(x32, 50, backend=backend), farthest_point_sample(x32, 50, backend=backend)
    assert torch.equal(a, b)
    np.testing.assert_array_equal(a[1].cpu().numpy(), _fps_naive(x32[1].cpu().numpy(), 50))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_fps_degenerate(gen, backend):
    fps = functools.partial(farthest_point_sample, backend=backend)
    x = _rand(gen, 20, 3)
    full = fps(x, 20)  # unbatched, m = N: a permutation
    assert full.shape == (20,) and sorted(full.tolist()) == list(range(20))
    assert fps(x[:1], 1).tolist() == [0]
    same = torch.zeros(2, 9, 3)  # all duplicates: ties go to the lowest index
    np.testing.assert_array_equal(fps(same, 4).numpy(), [[0, 0, 0, 0]] * 2)
    dup = torch.cat([x[:5], x[:5]])  # 5 distinct points, 10 entries
    got = fps(dup, 7).tolist()
    assert got == _fps_naive(dup.numpy(), 7).tolist() and len({tuple(dup[i].tolist()) for i in got[:5]}) == 5
    with pytest.raises(ValueError):  # more samples than points
        fps(x, 21)
    with pytest.raises(ValueError):
        fps(x, 3, start=20)
    with pytest.raises(ValueError):
        fps(x, 0)


def _fps_cases(gen):
    """(name, cloud (B, N, 3), m) clouds on which the kernels must equal the torch loop."""
    x = _rand(gen, 4, 300, 3, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)  # 216 points
    perm = torch.randperm(216, generator=gen)
    plates = x.clone()  # CAD-like: points on 3 parallel planes and a line, many equal coordinates
    plates[:, :100, 2], plates[:, 100:200, 2], plates[:, 200:, :2] = 0.25, -0.5, 0.0
    return [
        ("random", x, 64),
        ("float64", x.double(), 64),
        ("half", x.half(), 40),
        ("bfloat16", x.bfloat16(), 40),
        ("duplicates", torch.cat([x[:, :20], x[:, :20], x[:, :7]], dim=1), 40),  # m > 20 distinct points
        ("all_equal", torch.full((2, 50, 3), 0.3), 10),
        ("m_equals_n", x[:, :97], 97),
        ("grid_ties", grid[:, perm].expand(3, -1, -1), 120),  # many exactly equal distances
        ("plates", plates, 150),
        ("non_contiguous", x.transpose(1, 2).contiguous().transpose(1, 2)[:, ::2], 50),
        ("far_from_origin", x.double() * 1e-3 + 1e3, 30),
        ("single_cloud_unbatched", x[0], 60),
    ]


def test_fps_numba_equals_reference(gen, monkeypatch):
    for name, x, m in _fps_cases(gen):
        for start in ("first", 5):
            ref = farthest_point_sample_reference(x, m, start=start)
            got = farthest_point_sample(x, m, start=start, backend="numba")
            assert got.dtype == torch.long and got.shape == ref.shape, name
            assert torch.equal(got, ref), name
    # a larger cloud: several kd-tree levels, uneven leaves; batch slices on several threads
    big = _rand(gen, 5, 3000, 3, dtype=torch.float32) ** 3
    ref = farthest_point_sample_reference(big, 700).numpy()
    monkeypatch.setattr(cpu_kernels, "MIN_THREAD_WORK", 1)  # threads even for this small a job
    for threads in (1, 3):
        np.testing.assert_array_equal(cpu_kernels.fps(big.numpy(), 700, 0, threads=threads), ref)


def test_ops_without_numba_use_the_torch_code(gen, monkeypatch):
    """When the CPU kernels cannot load, every op still answers (with the torch code)."""
    import cad3d.geometry.fps as fps_mod
    import cad3d.geometry.neighbors as nb_mod

    monkeypatch.setattr(fps_mod, "cpu_kernels", lambda: None)
    monkeypatch.setattr(nb_mod, "cpu_kernels", lambda: None)
    x = _rand(gen, 2, 80, 3)
    assert torch.equal(farthest_point_sample(x, 20), farthest_point_sample_reference(x, 20))
    with pytest.raises(ImportError):
        farthest_point_sample(x, 20, backend="numba")
    assert torch.equal(knn(x, x, 4)[1], knn(x, x, 4, backend="torch")[1])
    assert torch.equal(ball_query(x, x, 0.3, 4), ball_query(x, x, 0.3, 4, backend="torch"))


_TRITON_CHECK = """
import torch
from cad3d.geometry import fps_cuda
from cad3d.geometry.fps import farthest_point_sample, farthest_point_sample_reference
import tests.test_geometry as t

cases = {name: (x, m) for name, x, m in t._fps_cases(torch.Generator().manual_seed(5))}
for name in ("random", "float64", "duplicates", "grid_ties", "non_contiguous", "single_cloud_unbatched"):
    x, m = cases[name]
    x, m = x[..., :120, :], min(m, 30)
    got = farthest_point_sample(x, m, start=3, backend="triton")
    assert torch.equal(got, farthest_point_sample_reference(x, m, start=3)), name
fps_cuda.TILE = 32  # 120 points = 4 tiles, the last one partial: the tiled path
for name in ("random", "grid_ties"):
    x = cases[name][0][:2, :120]
    assert torch.equal(farthest_point_sample(x, 30, backend="triton"), farthest_point_sample_reference(x, 30)), name
print("triton-interpreter-ok")
"""


@pytest.mark.slow
def test_fps_triton_interpreted_equals_reference():
    """The CUDA kernel, run on CPU tensors by the Triton interpreter (in a fresh process: the
    interpreter must be on before triton is imported), in registers and tiled."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _TRITON_CHECK], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "triton-interpreter-ok" in proc.stdout, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- knn / ball query
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_knn_matches_kdtree(gen, backend):
    q, r = _rand(gen, 2, 33, 3), _rand(gen, 2, 50, 3)
    for chunk in (None, 4):
        d, idx = knn(q, r, 5, chunk_size=chunk, backend=backend)
        assert d.shape == idx.shape == (2, 33, 5)
        for i in range(2):
            dd, ii = cKDTree(r[i].numpy()).query(q[i].numpy(), k=5)
            np.testing.assert_allclose(d[i].numpy(), dd**2, atol=1e-12)
            np.testing.assert_array_equal(idx[i].numpy(), ii)
    d1, i1 = knn(q[0], r[0], 50, backend=backend)  # k = N, unbatched
    assert d1.shape == (33, 50) and (d1[:, 1:] >= d1[:, :-1]).all()
    assert (i1.sort(dim=1).values == torch.arange(50)).all()
    # gradient flows to both clouds
    qq, rr = q.clone().requires_grad_(), r.clone().requires_grad_()
    knn(qq, rr, 3, backend=backend)[0].sum().backward()
    assert qq.grad.abs().sum() > 0 and rr.grad.abs().sum() > 0


def test_knn_cpu_kernel_ties_and_dtypes(gen):
    """Exact ties (a grid) come out by (distance, index), as a stable sort of brute force;
    float32 / half / mixed inputs and non-contiguous views give the float32 brute force."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(1, -1, 3)  # (1, 125, 3)
    r = grid[:, torch.randperm(125, generator=gen)].expand(2, -1, -1)
    q = r[:, ::7] + 0.5 * (torch.arange(2.0).view(2, 1, 1))  # on grid points and on cell centres
    for qq, rr in ((q, r), (q.half(), r), (q.transpose(1, 2).contiguous().transpose(1, 2), r)):
        d, idx = knn(qq, rr, 9)
        d_full = (qq.float().unsqueeze(2) - rr.float().unsqueeze(1)).square().sum(-1)  # (B, S, N)
        ref = torch.sort(d_full, dim=2, stable=True).indices[..., :9]
        assert torch.equal(idx, ref)
        torch.testing.assert_close(d.float(), torch.gather(d_full, 2, ref))


def test_cpu_kernels_threads_split_the_same(gen, monkeypatch):
    """Slicing the queries (and clouds) over threads changes nothing."""
    monkeypatch.setattr(cpu_kernels, "MIN_THREAD_WORK", 1)
    q, r = _rand(gen, 3, 40, 3, dtype=torch.float32).numpy(), _rand(gen, 3, 90, 3, dtype=torch.float32).numpy()
    for threads in (2, 5):
        np.testing.assert_array_equal(cpu_kernels.knn(q, r, 7, threads=threads), cpu_kernels.knn(q, r, 7, threads=1))
        np.testing.assert_array_equal(cpu_kernels.ball_query(q, r, 0.4, 7, threads=threads), cpu_kernels.ball_query(q, r, 0.4, 7, threads=1))
        np.testing.assert_array_equal(cpu_kernels.fps(r, 30, 2, threads=threads), cpu_kernels.fps(r, 30, 2, threads=1))


def _ball_naive(q, r, radius, k):
    out = np.zeros((len(q), k), dtype=np.int64)
    for s, c in enumerate(q):
        inside = [j for j in range(len(r)) if ((r[j] - c) ** 2).sum() < radius**2][:k]
        if not inside:
            inside = [int(((r - c) ** 2).sum(1).argmin())]
        out[s] = inside + [inside[0]] * (k - len(inside))
    return out


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_ball_query_matches_brute_force(gen, backend):
    r = _rand(gen, 2, 60, 3)
    q = torch.cat([r[:, :10], _rand(gen, 2, 5, 3) * 3], dim=1)  # some centres far outside: empty balls
    for radius, k in ((0.3, 4), (0.6, 8), (5.0, 70)):
        for chunk in (None, 3):
            got = ball_query(q, r, radius, k, chunk_size=chunk, backend=backend)
            assert got.shape == (2, 15, k)
            for i in range(2):
                np.testing.assert_array_equal(got[i].numpy(), _ball_naive(q[i].numpy(), r[i].numpy(), radius, k))
    # float32 and the torch code agree point for point (same differences, same threshold)
    q32, r32 = q.float(), r.float()
    assert torch.equal(ball_query(q32, r32, 0.45, 6, backend=backend), ball_query(q32, r32, 0.45, 6, backend="torch"))


def test_group_points(gen):
    x = _rand(gen, 2, 10, 4)
    idx = torch.randint(0, 10, (2, 3, 5), generator=gen)
    g = group_points(x, idx)
    assert g.shape == (2, 3, 5, 4)
    for b in range(2):
        torch.testing.assert_close(g[b], x[b][idx[b]])
    assert group_points(x, idx[:, :, 0]).shape == (2, 3, 4)


# ----------------------------------------------------------------------------- voxels
def test_voxelize_counts(gen):
    p = _rand(gen, 2, 300, 3, dtype=torch.float32) * 1.2  # some points fall outside the cube
    p[0, 0] = torch.tensor([1.0, -1.0, 1.0])  # boundary: last / first voxel
    res = 8
    occ = voxelize(p, res)
    assert occ.shape == (2, res, res, res) and occ.dtype == torch.float32
    for b in range(2):
        pts = p[b].numpy()
        keep = (np.abs(pts) <= 1).all(1)
        ijk = np.clip(np.floor((pts[keep] + 1) * res / 2).astype(int), 0, res - 1)
        ref = np.zeros((res,) * 3)
        ref[tuple(ijk.T)] = 1
        np.testing.assert_array_equal(occ[b].numpy(), ref)
    assert occ[0, res - 1, 0, res - 1] == 1
    assert voxelize(p[0], res).shape == (res, res, res)


def _soft_brute(p, res, sigma):
    c = -1 + (np.arange(res) + 0.5) * 2 / res
    grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)  # (R^3, 3)
    d2 = ((p[:, :, None, :] - grid[None, None]) ** 2).sum(-1)  # (B, N, R^3)
    dens = np.exp(-d2 / (2 * sigma**2)).sum(1)
    return (1 - np.exp(-dens)).reshape(p.shape[0], res, res, res)


def test_soft_voxelize_matches_dense_and_chunks(gen):
    p = _rand(gen, 2, 40, 3)
    ref = _soft_brute(p.numpy(), 6, 0.2)
    for chunk in (None, 7):
        np.testing.assert_allclose(soft_voxelize(p, 6, 0.2, chunk_size=chunk).numpy(), ref, atol=1e-12)
    occ = soft_voxelize(p[0].float(), 6)  # default sigma, unbatched, float32
    assert occ.shape == (6, 6, 6) and occ.dtype == torch.float32 and (occ >= 0).all() and (occ < 1).all()


def test_soft_voxelize_gradcheck(gen):
    p = _rand(gen, 1, 5, 3).requires_grad_()
    # chunk_size=2 -> several checkpointed chunks in the backward pass
    assert torch.autograd.gradcheck(lambda x: soft_voxelize(x, 4, 0.3, chunk_size=2), (p,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- normalize
def test_normalize_round_trip(gen):
    pts = _rand(gen, 3, 50, 3) * 7 + 4
    pn, center, scale = normalize(pts)
    assert center.shape == (3, 3) and scale.shape == (3,)
    torch.testing.assert_close(pn.norm(dim=-1).amax(1), torch.ones(3, dtype=pts.dtype))
    torch.testing.assert_close((pn.amax(1) + pn.amin(1)) / 2, torch.zeros(3, 3, dtype=pts.dtype))
    torch.testing.assert_close(denormalize(pn, center, scale), pts)
    arr = pts[0].numpy().astype(np.float32)
    an, ac, asc = normalize(arr)
    assert isinstance(an, np.ndarray) and an.dtype == np.float32 and ac.shape == (3,) and asc.shape == ()
    np.testing.assert_allclose(denormalize(an, ac, asc), arr, rtol=1e-6, atol=1e-5)
    one, c1, s1 = normalize(np.ones((1, 3)))  # a single point: scale 1, no division by zero
    assert s1 == 1.0 and np.allclose(one, 0)


# ----------------------------------------------------------------------------- meshes
def _closest_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Brute-force point-to-surface distance over all triangles (no rtree needed)."""
    tri = mesh.triangles  # (F, 3, 3)
    f, n = len(tri), len(points)
    closest = trimesh.triangles.closest_point(np.repeat(tri[None], n, 0).reshape(-1, 3, 3), np.repeat(points, f, 0))
    return np.linalg.norm(closest - np.repeat(points, f, 0), axis=1).reshape(n, f).min(1)


def test_sample_surface_on_mesh_and_deterministic():
    mesh = trimesh.creation.cylinder(radius=0.5, height=1.2, sections=16)
    pts, faces, normals = sample_surface(mesh, 400, np.random.default_rng(3), return_faces=True, return_normals=True)
    assert pts.shape == (400, 3) and pts.dtype == np.float32 and faces.shape == (400,) and normals.shape == (400, 3)
    assert _closest_distance(mesh, pts.astype(np.float64)).max() < 1e-6
    np.testing.assert_array_equal(pts, sample_surface(mesh, 400, np.random.default_rng(3)))
    assert not np.array_equal(pts, sample_surface(mesh, 400, np.random.default_rng(4)))
    # area weighting: a 1 x 1 x 4 box puts 16/18 of the area on its long sides
    box = trimesh.creation.box((1.0, 1.0, 4.0))
    p = sample_surface(box, 9000, 0)
    on_caps = np.isclose(np.abs(p[:, 2]), 2.0, atol=1e-6).mean()
    assert abs(on_caps - 2 / 18) < 0.02
    with pytest.raises(ValueError):
        sample_surface(trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=[[0, 1, 2]]), 5, 0)


def _ray_cast_depth(mesh: trimesh.Trimesh, cam: OrthoCamera, pixels: np.ndarray) -> np.ndarray:
    """Depth c_z at pixel centres by Moller-Trumbore against every triangle; 0 = miss."""
    uv = pixels[:, ::-1] + 0.5  # (P, 2) (u=column, v=row)
    origin = cam.unproject(uv, np.zeros(len(uv)))  # (P, 3) on the view plane, depth 0
    direction = cam.forward  # (3,) unit
    tri = mesh.triangles  # (F, 3, 3)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    h = np.cross(direction, e2)  # (F, 3)
    det = (e1 * h).sum(1)  # (F,)
    ok = np.abs(det) > 1e-12
    s = origin[:, None, :] - tri[None, :, 0]  # (P, F, 3)
    u = (s * h).sum(-1) / np.where(ok, det, 1)
    qv = np.cross(s, e1[None])  # (P, F, 3)
    v = (qv @ direction) / np.where(ok, det, 1)
    t = (qv * e2[None]).sum(-1) / np.where(ok, det, 1)
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    t = np.where(hit, t, np.inf).min(1)
    return np.where(np.isfinite(t), t, 0.0)


def _render_depth(mesh, cams, size):
    depth = np.zeros(size)
    for cam in cams:
        r0, c0, vh, vw = cam.viewport
        ii, jj = np.mgrid[r0 : r0 + vh, c0 : c0 + vw]
        pix = np.stack([ii.ravel(), jj.ravel()], 1)
        depth[ii.ravel(), jj.ravel()] = _ray_cast_depth(mesh, cam, pix)
    return depth


def test_depth_to_points_lands_on_surface():
    box = trimesh.creation.box((0.8, 0.6, 0.5))
    cam = OrthoCamera.looking(ISO_FORWARD, image_size=(48, 48))
    depth = _render_depth(box, [cam], (48, 48)).astype(np.float32)
    assert (depth > 0).sum() > 200
    pts = depth_to_points(depth, cam)
    assert pts.shape == ((depth > 0).sum(), 3) and pts.dtype == np.float32
    assert _closest_distance(box, pts.astype(np.float64)).max() < 1.0 / cam.scale
    # the points re-project onto the pixel centres they came from, at the stored depth
    uv, z = cam.project(pts)
    ii, jj = np.nonzero(depth > 0)
    np.testing.assert_allclose(uv, np.stack([jj + 0.5, ii + 0.5], 1), atol=1e-3)
    np.testing.assert_allclose(z, depth[ii, jj], atol=1e-5)
    # torch path: same points, differentiable w.r.t. depth; mask selects pixels
    dt = torch.tensor(depth, dtype=torch.float64, requires_grad=True)
    pt = depth_to_points(dt, cam)
    np.testing.assert_allclose(pt.detach().numpy(), pts, atol=1e-5)
    pt.sum().backward()
    assert dt.grad[depth > 0].abs().min() > 0
    mask = np.zeros_like(depth, dtype=bool)
    mask[:24] = True
    assert len(depth_to_points(depth, cam, mask=mask)) == ((depth > 0) & mask).sum()
    with pytest.raises(ValueError):
        depth_to_points(depth[:10], cam)


def test_depth_to_points_three_view_sheet():
    box = trimesh.creation.box((0.9, 0.5, 0.4))
    cams = three_view_cameras((64, 64))
    depth = _render_depth(box, cams, (64, 64))
    pts = depth_to_points(depth, cams)
    assert pts.shape == ((depth > 0).sum(), 3)
    assert _closest_distance(box, pts.astype(np.float64)).max() < 1.0 / min(c.scale for c in cams)
    # every view contributes, and the front view (looking +y) sees the face y = -0.25
    front = depth_to_points(depth, cams[:1])
    assert len(front) > 50 and np.allclose(front[:, 1], -0.25, atol=1e-5)
