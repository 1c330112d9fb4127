"""The task protocol's shared helpers."""

from superalign.tasks import get_task, split_examples


def test_split_examples_spreads_n_over_levels_the_first_taking_the_rest():
    task = get_task("arithmetic")
    got = split_examples(task, "test", 7, [1, 2, 3], seed=4)
    assert [ex.difficulty for ex in got] == [1, 1, 1, 2, 2, 3, 3]
    assert got[:3] == task.examples("test", 3, 1, seed=4)
    assert got[5:] == task.examples("test", 2, 3, seed=4)
    assert split_examples(task, "train", 5, [None], seed=1) == task.examples("train", 5, seed=1)
