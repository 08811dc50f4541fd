import numpy as np
import pytest
import torch
from scipy import ndimage

from sowa_lib import ops


def test_knn_distance_matches_brute_force_in_chunks():
    g = torch.Generator().manual_seed(0)
    query, memory = torch.randn(37, 5, generator=g), torch.randn(11, 5, generator=g)
    for metric in ("cosine", "l2"):
        dist, idx = ops.knn_distance(query, memory, k=3, metric=metric, chunk=4)
        full = torch.stack([torch.tensor([
            (1 - torch.dot(q, m) / (q.norm() * m.norm())).item() if metric == "cosine" else (q - m).norm().item()
            for m in memory]) for q in query])
        expected, expected_idx = full.sort(dim=1)
        torch.testing.assert_close(dist, expected[:, :3], atol=1e-5, rtol=1e-5)
        assert torch.equal(idx, expected_idx[:, :3])


def test_knn_distance_rejects_empty_memory():
    with pytest.raises(ValueError, match="set_references"):
        ops.knn_distance(torch.ones(2, 3), torch.empty(0, 3))


def test_memory_bank_pools_all_references_and_scales():
    # one layer, two references with two tokens each; the query token equals a token of reference 2
    refs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    bank = ops.MemoryBank(metric="cosine", scale=0.5)
    bank.set([refs])
    query = torch.tensor([[[2.0, 2.0], [0.0, -1.0]]])
    (dist,) = bank.distances([query])
    # token 1 matches [1,1] exactly; token 2 ([0,-1]) is orthogonal to [1,0] and [-1,0]: cos 0 at best
    torch.testing.assert_close(dist, torch.tensor([[0.0, 0.5]]), atol=1e-6, rtol=0)


def test_tokens_to_grid_row_major():
    tokens = torch.arange(6 * 4, dtype=torch.float32).reshape(1, 4, 6)
    grid = ops.tokens_to_grid(tokens)
    assert grid.shape == (1, 6, 2, 2)
    assert grid[0, :, 0, 1].tolist() == tokens[0, 1].tolist()
    assert ops.tokens_to_grid(torch.arange(9.0).reshape(1, 9))[0, 1, 2] == 5
    with pytest.raises(ValueError):
        ops.tokens_to_grid(torch.zeros(1, 8))


@pytest.mark.parametrize("sigma,size", [(4.0, 40), (1.5, 9), (4.0, 5)])
def test_gaussian_blur_equals_scipy(sigma, size):
    maps = np.random.default_rng(1).random((3, size, size + 3)).astype(np.float32)
    expected = np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma) for m in maps])
    got = ops.gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_resize_maps_keeps_corners_with_align_corners():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out = ops.resize_maps(maps, 5, align_corners=True)
    assert out.shape == (1, 5, 5)
    assert out[0, 0, 0] == 0 and out[0, -1, -1] == 3 and out[0, 0, 2] == 0.5


def test_minmax():
    torch.testing.assert_close(ops.minmax(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0.0, 1.0, 0.5]))
    assert ops.minmax(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]


def test_knn_l2_chunks_large_banks_to_the_block_limit(monkeypatch):
    g = torch.Generator().manual_seed(1)
    query, bank = torch.randn(9, 4, generator=g), torch.randn(7, 4, generator=g)
    monkeypatch.setattr(ops, "DISTANCE_BLOCK_ELEMENTS", 14)  # two query rows per block
    distances, indices = ops.knn_l2(query, bank, k=2)
    expected = torch.cdist(query, bank).topk(2, dim=1, largest=False)
    torch.testing.assert_close(distances, expected.values)
    assert torch.equal(indices, expected.indices)


def test_greedy_coreset_keeps_the_farthest_points():
    g = torch.Generator().manual_seed(0)
    cluster = 0.1 * torch.randn(200, 8, generator=g)
    outliers = torch.eye(8)[:4] * 10.0
    points = torch.cat([cluster, outliers])
    for projection_dim in (None, 4):
        picked = ops.greedy_coreset(points, 4, projection_dim=projection_dim, seed=1)
        assert sorted(picked.tolist()) == [200, 201, 202, 203]
    assert torch.equal(ops.greedy_coreset(points, 500), torch.arange(204))
