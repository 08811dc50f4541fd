from pathlib import Path

import pytest

from sowa_lib.data.references import draw_references
from sowa_lib.data.sample import Sample


def _train(n: int, category: str = "bottle", dataset: str = "mvtec") -> list[Sample]:
    root = Path("/data/mvtec")
    return [Sample(root / category / "train" / "good" / f"{i:03d}.png", None, 0, category, "good", "train", dataset, root)
            for i in reversed(range(n))]


def test_same_key_same_files_independent_of_listing_order():
    a = draw_references(_train(20), 4, seed=3)
    b = draw_references(list(reversed(_train(20))), 4, seed=3)
    assert [s.relpath for s in a] == [s.relpath for s in b]
    assert len({s.relpath for s in a}) == 4  # without replacement


def test_seeds_and_categories_give_different_draws():
    draws = {tuple(s.relpath.split("/")[-1] for s in draw_references(_train(50), 4, seed=s)) for s in range(5)}
    assert len(draws) > 1
    other = draw_references(_train(50, category="cable"), 4, seed=0)
    assert [s.relpath.split("/")[-1] for s in other] != [s.relpath.split("/")[-1] for s in draw_references(_train(50), 4, seed=0)]


def test_replacement_allows_duplicates_and_zero_shot_is_empty():
    picks = draw_references(_train(2), 8, seed=0, replacement=True)
    assert len(picks) == 8 and len({p.relpath for p in picks}) <= 2
    assert draw_references(_train(5), 0, seed=0) == []
    with pytest.raises(ValueError, match="without replacement"):
        draw_references(_train(2), 3, seed=0)


def test_only_normal_images_are_references():
    train = _train(4) + [Sample(Path("/d/x.png"), Path("/d/x_mask.png"), 1, "bottle", "crack", "train", "mvtec", Path("/d"))]
    for seed in range(10):
        assert all(s.label == 0 for s in draw_references(train, 4, seed=seed))
