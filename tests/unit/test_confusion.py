"""confusion.json keeps only the non-zero cells of a run's confusion matrices, and the report ranks the
off-diagonal ones."""

from __future__ import annotations

import json

from synthrec.contract import confusion


def test_only_non_zero_cells_are_stored_and_the_matrix_comes_back_whole() -> None:
    matrix = [[5, 0, 1], [0, 0, 0], [2, 0, 3]]
    doc = confusion.document(["a", "b", "c"], matrix, [[6, 0, 0], [0, 0, 0], [0, 0, 5]])
    assert doc["test"] == [[0, 0, 5], [0, 2, 1], [2, 0, 2], [2, 2, 3]]
    assert confusion.dense(doc["test"], 3) == matrix
    assert json.loads(json.dumps(doc)) == doc  # plain JSON


def test_a_thousand_classes_store_one_cell_per_image_at_most() -> None:
    classes = 1000
    cells = [[i, (i * 7) % classes, 1] for i in range(classes)]  # one test image per class
    doc = confusion.document([str(i) for i in range(classes)], confusion.dense(cells, classes), [])
    assert len(doc["test"]) == classes and len(json.dumps(doc)) < 40_000  # dense: over 2 MB


def test_the_most_confused_pairs_come_first_with_the_share_of_their_class_and_zero_shot_beside() -> None:
    test = [[6, 3, 1], [0, 10, 0], [4, 4, 2]]
    zero_shot = [[10, 0, 0], [2, 8, 0], [0, 9, 1]]
    pairs = confusion.most_confused(confusion.document(["cat", "dog", "fox"], test, zero_shot), limit=3)
    assert [(p.true, p.predicted, p.count, p.zero_shot_count) for p in pairs] == [
        ("fox", "cat", 4, 0),
        ("fox", "dog", 4, 9),
        ("cat", "dog", 3, 0),
    ]
    assert pairs[0].share == 40.0 and pairs[2].share == 30.0
