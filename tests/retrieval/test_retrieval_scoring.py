"""Retrieval scoring against numbers worked out by hand.

One query, k = 4 neighbours, K = 3 test classes:
  similarities  [0.9, 0.8, 0.5, 0.4]       distances 1 - c = [0.1, 0.2, 0.5, 0.6]
  classes       [  0,   1,   0,  -1]        (-1: a database class with no test class)
  min-max over the 4 distances, subtracted from 1: w = [1, 0.8, 0.2, 0]
  max  -> [1, 0.8, 0]     mean -> [0.6, 0.8, 0]     sum -> [1.2, 0.8, 0]
  rank_vote (offset 2): w_rank = [1/2, 1/3, 1/4, 1/5] -> [3/4, 1/3, 0]
"""
import pytest
import torch

from retclip.retrieval.scoring import minmax_weights, retrieval_scores

SIMS = torch.tensor([[0.9, 0.8, 0.5, 0.4]])
CLASSES = torch.tensor([[0, 1, 0, -1]])


@pytest.mark.parametrize(
    "aggregation,expected",
    [
        ("max", [1.0, 0.8, 0.0]),
        ("mean", [0.6, 0.8, 0.0]),
        ("sum", [1.2, 0.8, 0.0]),
        ("rank_vote", [0.75, 1.0 / 3.0, 0.0]),
    ],
)
def test_hand_numbers(aggregation, expected):
    out = retrieval_scores(SIMS, CLASSES, 3, aggregation=aggregation)
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_missing_neighbours_are_ignored():
    # the last two slots are missing (k > database): min-max runs over [0.9, 0.8] only
    sims = torch.tensor([[0.9, 0.8, -float("inf"), -float("inf")]])
    classes = torch.tensor([[2, 1, -1, -1]])
    out = retrieval_scores(sims, classes, 3)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 1.0]]))
    rank = retrieval_scores(sims, classes, 3, aggregation="rank_vote", rank_offset=1.0)
    torch.testing.assert_close(rank, torch.tensor([[0.0, 0.5, 1.0]]))


def test_equal_distances_give_every_neighbour_one():
    sims = torch.tensor([[0.7, 0.7, 0.7], [0.3, -float("inf"), -float("inf")],
                         [-float("inf")] * 3])
    w = minmax_weights(sims)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    out = retrieval_scores(sims, torch.tensor([[0, 1, 1], [1, -1, -1], [-1, -1, -1]]), 2, "mean")
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))


def test_scores_in_unit_interval_for_max_and_mean():
    torch.manual_seed(0)
    sims = torch.rand(50, 10).sort(1, descending=True).values
    classes = torch.randint(-1, 7, (50, 10))
    for agg in ("max", "mean"):
        out = retrieval_scores(sims, classes, 7, aggregation=agg)
        assert out.shape == (50, 7) and out.min() >= 0 and out.max() <= 1
        # classes nobody voted for score exactly 0
        voted = torch.zeros(50, 8, dtype=torch.bool).scatter_(1, classes.clamp_min(-1) % 8, True)
        assert (out[~voted[:, :7]] == 0).all()


def test_votes_report_neighbours():
    ids = torch.tensor([[11, 12, 13, 14]])
    out, votes = retrieval_scores(SIMS, CLASSES, 3, neighbour_ids=ids, return_votes=True)
    assert sorted(votes[0]) == [0, 1]
    assert [v["id"] for v in votes[0][0]] == [11, 13]
    assert votes[0][0][1]["weight"] == pytest.approx(0.2)
    assert votes[0][1][0]["similarity"] == pytest.approx(0.8)


def test_bad_arguments():
    valid = r"valid: \['max', 'mean', 'sum', 'rank_vote'\]"
    with pytest.raises(ValueError, match=r"AGGREGATION: unknown .*'softmax'; " + valid):
        retrieval_scores(SIMS, CLASSES, 3, aggregation="softmax")
    with pytest.raises(ValueError, match="rank_offset"):
        retrieval_scores(SIMS, CLASSES, 3, aggregation="rank_vote", rank_offset=0)
    with pytest.raises(ValueError, match="neighbour_classes must lie"):
        retrieval_scores(SIMS, CLASSES, 1)
    with pytest.raises(ValueError, match="both be \\(N, k\\)"):
        retrieval_scores(SIMS, CLASSES[:, :2], 3)
