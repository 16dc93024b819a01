import numpy as np
import pytest

from skebrm._pairs import check_pairs, conflicting_pairs


def test_indexes_pairs_in_order_of_first_appearance():
    pid = np.array(["b", "a", "a", "b"])
    chosen = np.array([False, True, False, True])
    idx_c, idx_r = check_pairs(pid, chosen, 4)
    np.testing.assert_array_equal(idx_c, [3, 1])
    np.testing.assert_array_equal(idx_r, [0, 2])


def test_conflict_filter_drops_exactly_the_misordered_and_tied_pairs():
    #        pair 0 ok   pair 1 tie  pair 2 misordered  pair 3 ok
    y = np.array([2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 5.0, -1.0])
    pid = np.repeat(np.arange(4), 2)
    chosen = np.tile([True, False], 4)
    idx_c, idx_r = check_pairs(pid, chosen, 8)
    np.testing.assert_array_equal(conflicting_pairs(y, idx_c, idx_r), [False, True, True, False])


@pytest.mark.parametrize(
    ("pid", "chosen", "match"),
    [
        ([0, 0, 1], [1, 0, 1], "exactly two rows; pair_id 1 appears on 1"),
        ([0, 0, 0, 0], [1, 0, 1, 0], "exactly two rows; pair_id 0 appears on 4"),
        ([0, 0, 1, 1], [1, 1, 1, 0], "one chosen and one rejected row; pair_id 0 has 2"),
        ([0, 0, 1, 1], [0, 0, 1, 0], "pair_id 0 has 0 chosen"),
        ([0, 0, 1, 1], [2, 0, 1, 0], "chosen must be boolean"),
    ],
)
def test_bad_pairs(pid, chosen, match):
    with pytest.raises(ValueError, match=match):
        check_pairs(np.array(pid), np.array(chosen), len(pid))


def test_misaligned_and_one_sided_metadata():
    with pytest.raises(ValueError, match=r"pair_id must have shape \(4,\)"):
        check_pairs([0, 0], [1, 0, 1, 0], 4)
    with pytest.raises(ValueError, match="chosen was given without pair_id"):
        check_pairs(None, [1, 0], 2)
    with pytest.raises(ValueError, match="pair_id was given without chosen"):
        check_pairs([0, 0], None, 2)
