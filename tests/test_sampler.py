"""PKSampler: P×K structure, disjoint ranks, determinism, resumable position."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from data.sampler import PKSampler, SeededBatches

# 10 identities with 1..7 images each (some fewer than K)
PIDS = [pid for pid in range(10) for _ in range(1 + pid % 7)]


def batches(sampler: PKSampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_pk_structure_and_replacement() -> None:
    s = PKSampler(PIDS, P=4, K=3, seed=0)
    out = batches(s)
    assert len(out) == len(s) > 0
    for b in out:
        assert len(b) == 12
        ids = [PIDS[i] for i in b]
        counts = Counter(ids)
        assert len(counts) == 4 and set(counts.values()) == {3}
        # each identity's K images are consecutive, as batch-hard mining expects nothing else of order
        assert all(len(set(ids[j * 3:(j + 1) * 3])) == 1 for j in range(4))
    # identity 0 has one image, fewer than K: it is drawn K times (with replacement)
    with_zero = [b for b in out if PIDS[b[0]] == 0 or 0 in {PIDS[i] for i in b}]
    assert with_zero and all(Counter(b)[0] == 3 for b in with_zero)


def test_epoch_uses_images_of_large_identities_without_repeats() -> None:
    s = PKSampler(PIDS, P=2, K=2, seed=1)
    size = Counter(PIDS)
    seen = Counter(i for b in batches(s) for i in b if size[PIDS[i]] >= 2)
    assert max(seen.values()) == 1   # identities with >= K images: each image at most once per epoch


def test_deterministic_and_epoch_reshuffle() -> None:
    a, b = PKSampler(PIDS, 4, 2, seed=5), PKSampler(PIDS, 4, 2, seed=5)
    assert batches(a) == batches(b)
    first = batches(a)
    a.set_epoch(1)
    assert batches(a) != first
    assert batches(PKSampler(PIDS, 4, 2, seed=6)) != first


def test_ranks_disjoint_and_cover_the_global_batch() -> None:
    full = batches(PKSampler(PIDS, 4, 2, seed=3))
    ranks = [batches(PKSampler(PIDS, 4, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(full)
    for step, whole in enumerate(full):
        ids0 = {PIDS[i] for i in ranks[0][step]}
        ids1 = {PIDS[i] for i in ranks[1][step]}
        assert len(ids0) == len(ids1) == 2 and not ids0 & ids1
        assert ranks[0][step] + ranks[1][step] == whole


def test_resume_position_continues_exactly() -> None:
    straight = PKSampler(PIDS, 4, 2, seed=9)
    straight.set_epoch(2)
    expected = batches(straight)
    s = PKSampler(PIDS, 4, 2, seed=9)
    s.set_epoch(2)
    for _ in range(2):
        s.advance()
    state = s.state_dict()
    resumed = PKSampler(PIDS, 4, 2, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the trainer calls this at the top of the epoch; it must not rewind
    assert batches(resumed) == expected[2:]
    resumed.set_epoch(3)
    assert resumed.batch == 0 and len(batches(resumed)) == len(resumed)


def test_seeded_batches_depend_only_on_position() -> None:
    s = PKSampler(PIDS, 4, 2, seed=0)
    whole = list(SeededBatches(s))
    s.advance(3)
    assert list(SeededBatches(s)) == whole[3:]
    seeds = [seed for b in whole for _, seed in b]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("kwargs, message", [
    (dict(P=3, K=2, world_size=2), "split evenly"),
    (dict(P=20, K=2), "only 10 identities"),
    (dict(P=4, K=2, rank=2, world_size=2), "rank 2"),
])
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PKSampler(PIDS, seed=0, **kwargs)


def test_state_from_other_settings_is_refused() -> None:
    state = PKSampler(PIDS, 4, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="K=2"):
        PKSampler(PIDS, 4, 3, seed=0).load_state_dict(state)
    assert np.isfinite(state["epoch"])


def test_groups_give_every_batch_an_equal_share_of_each_dataset() -> None:
    """Two datasets, the second with 3 times the identities: by default batches follow the identities
    (mostly the second dataset); balanced, every batch holds P // 2 of each, the odd one in turn."""
    pids = [pid for pid in range(40) for _ in range(4)]
    groups = [0 if pid < 10 else 1 for pid in pids]
    plain = PKSampler(pids, P=5, K=2, seed=0).plan(0)
    share = [sum(groups[i] == 0 for i in b[:, 0]) for b in plain]
    assert np.mean(share) < 2
    balanced = PKSampler(pids, P=5, K=2, seed=0, groups=groups)
    plan = balanced.plan(0)
    first = [int(sum(groups[i] == 0 for i in b[:, 0])) for b in plan]
    assert first[:4] == [3, 2, 3, 2] and len(plan) == 8  # the first dataset's 20 chunks run out first
    for b in plan:
        assert len({pids[i] for i in b[:, 0]}) == 5
    assert np.array_equal(plan, PKSampler(pids, P=5, K=2, seed=0, groups=groups).plan(0))  # deterministic
    with pytest.raises(ValueError, match="dataset 1 has only 2 identities"):
        PKSampler(pids[:8] + pids[40:], P=6, K=2, groups=groups[:8] + groups[40:])
