"""Every result table partkd writes: a label with a comma or a quote in it stays one CSV field (read back with the
csv module, each row has its header's field count) and one Markdown cell."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from partkd.bench.kd import CURVES, curves_csv, spread_csv
from partkd.train.results import Table, results_table, summarise

LABEL = 'Student (w/ KD, "tuned")'  # a comma and quotes


def rows_with(label: str) -> list[dict]:
    return [{"key": key, "model": model, "skeleton": "LQ, coco17", "train_op": 0.3, "op": 0.3, "seed": seed,
             "top1": top1, "top5": 0.9} for seed in (1, 2)
            for key, model, top1 in (("student_ce", "Student (w/o KD)", 0.5), ("student_pmsc_tuned", label, 0.6))]


def read_back(text: str) -> list[list[str]]:
    table = list(csv.reader(text.splitlines()))
    assert all(len(row) == len(table[0]) for row in table), table
    return table


def test_results_table_csv_keeps_a_label_with_a_comma_and_a_quote_as_one_field():
    _, text = results_table(rows_with(LABEL), "xsub")
    table = read_back(text)
    assert table[0] == ["model", "skeleton", "trained at OP", "OP", "top-1 (xsub)", "top-5 (xsub)",
                        "top-1 gain over w/o KD (points)"]
    assert table[2] == [LABEL, "LQ, coco17", "0.3", "0.3", "60.00", "90.00", "+10.00"]


def test_results_table_pairs_each_student_with_the_baseline_at_its_training_and_test_op():
    rows = [{"key": key, "model": key, "skeleton": "LQ coco17", "train_op": train_op, "op": op, "top1": top1,
             "top5": 1.0} for key, train_op, op, top1 in (
        ("teacher", 0.0, 0.0, 0.9), ("student_ce", 0.0, 0.0, 0.70), ("student_pmsc", 0.0, 0.0, 0.725),
        ("student_ce", 0.6, 0.6, 0.50), ("student_pmsc", 0.6, 0.6, 0.4875), ("student_pmsc", 0.3, 0.3, 0.6))]
    table = read_back(results_table(rows, "xsub")[1])
    assert [row[-1] for row in table[1:]] == ["", "", "+2.50", "", "-1.25", ""]  # none without its baseline
    assert len(read_back(results_table(rows[2:3], "xsub")[1])[0]) == 6  # no baseline: no gain column


def test_summary_csv_keeps_a_label_with_a_comma_and_a_quote_as_one_field():
    _, text = summarise(rows_with(LABEL))
    table = read_back(text)
    assert table[0] == ["seed", "model", "skeleton", "train_op", "op", "top1", "top5"]
    assert table[-1] == ["2", LABEL, "LQ, coco17", "0.3", "0.3", "0.600000", "0.900000"]


def test_curves_csv_keeps_a_student_key_with_a_comma_and_a_quote_as_one_field():
    key = 'student_pmsc_a,"b"@0.5'
    curves = {key: {name: np.arange(6, dtype=float).reshape(2, 3) for name in CURVES}}  # (seeds, epochs)
    table = read_back(curves_csv(curves))
    assert table[0][:4] == ["student", "epoch", "loss/ce_mean", "loss/ce_std"] and len(table[0]) == 2 + 2 * len(CURVES)
    assert [row[:2] for row in table[1:]] == [[key, "1"], [key, "2"], [key, "3"]]
    assert table[1][2:4] == ["1.5", "1.5"]  # epoch 1 over the seeds: mean and std of (0, 3)


def test_e_spread_csv_keeps_a_class_name_with_a_comma_and_a_quote_as_one_field():
    names = ['put on a hat, "cap"', "wave"]
    spreads = {1: {"entropy": np.array([0.5, 0.25]), "miss_range": np.array([0.1, 0.2])}}
    table = read_back(spread_csv(spreads, names))
    assert table == [["seed", "class", "entropy_over_log_p", "miss_rate_range"],
                     ["1", names[0], "0.500000", "0.100000"], ["1", "wave", "0.250000", "0.200000"]]


@pytest.mark.parametrize("label", [LABEL, "Student | piped"])
def test_markdown_tables_keep_a_label_in_one_cell(label):
    for markdown in (results_table(rows_with(label), "xsub")[0], summarise(rows_with(label))[0]):
        lines = [line for line in markdown.splitlines() if line.startswith("|")]
        cells = [len(line.replace("\\|", "").split("|")) for line in lines]
        assert len(set(cells)) == 1, markdown


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="a table row has 3 cells, its header 2"):
        Table.of(["a", "b"], [["1", "2", "3"]])
