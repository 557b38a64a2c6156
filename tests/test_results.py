"""Results as a person reads them: charts that draw from one epoch, readable numbers, words for how a run
ended, mistakes captioned true label first, the LR finder's suggestion marked, a run reopened from its folder."""

import shutil
from pathlib import Path

from models.metrics import classification_report
from trainer.lr_finder import LRFinderResult, falls_clearly
from trainer.train import EpochStats
from ui import results

OLD_RUN = Path(__file__).parent / "fixtures" / "old-run"


def stats(epoch: int, lr=(0.0025000000000000001, 0.002)) -> EpochStats:
    return EpochStats(epoch, "all", 1.0 / epoch, 0.5 + epoch / 10, 1.2 / epoch, 0.4 + epoch / 10, list(lr), 3.21)


def test_one_epoch_already_draws_points_on_whole_epoch_ticks():
    update = results.epoch_update([stats(1)], planned=[0.0025, 0.002, 0.0015, 0.001])
    for name in ("loss_plot", "acc_plot"):
        figure = update[name]
        assert [t.name for t in figure.data] == ["train", "validation"]
        assert all("markers" in t.mode and len(t.x) == 1 for t in figure.data)  # a single epoch is visible
        assert figure.layout.xaxis.dtick == 1 and figure.layout.xaxis.tickmode == "linear"
    assert update["acc_plot"].layout.yaxis.tickformat == ".0%"
    assert [t.line.dash for t in update["loss_plot"].data] == ["dash", "solid"]


def test_the_epoch_table_reads_as_people_write_numbers():
    row = results.epoch_table([stats(2)]).iloc[0].to_dict()
    assert row["lr"] == "0.0025" and row["val acc"] == "60.0%" and row["train loss"] == "0.5000"
    assert row["seconds"] == "3.2"


def test_the_used_lr_is_drawn_over_a_wider_planned_band_so_both_show():
    figure = results.epoch_update([stats(1), stats(2)], planned=[0.0025, 0.002, 0.0015, 0.001])["lr_plot"]
    planned, used = figure.data
    assert (planned.name, used.name) == ("planned", "used")
    assert planned.line.width > used.line.width and len(used.y) == 4
    assert len(figure.layout.shapes) == 2  # the epoch boundaries


def test_how_a_run_ended_is_said_in_words():
    report = classification_report([0, 1, 1], [0, 1, 0], ["a", "b"], loss=0.5)
    base = {"val": report, "best_epoch": 2, "epochs_run": 3, "test": None, "note": "honest caveat"}
    assert "Cancelled: the best model so far was kept." in results.metrics_markdown({**base, "stopped": "cancelled"})
    assert "Stopped at the time limit" in results.metrics_markdown({**base, "stopped": "time limit"})
    text = results.metrics_markdown({**base, "stopped": None})
    assert text.startswith("**Validation accuracy 66.7%**") and "Cancelled" not in text


def test_mistakes_are_the_most_confident_first_with_the_true_label_leading(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    shown = results.mistakes([["a.jpg", 0, 1, 0.6], ["b.jpg", 1, 1, 0.9], ["c.jpg", 1, 0, 0.95]], ["ramen", "sushi"],
                             tmp_path)
    assert [caption for _, caption in shown] == ["true sushi, predicted ramen 95%", "true ramen, predicted sushi 60%"]


def test_the_finder_marks_its_suggestion_on_a_log_axis_and_says_when_it_has_no_clear_answer():
    lrs = [1e-7 * 10 ** (i / 10) for i in range(60)]
    falling = [2.0 - i / 40 if i < 40 else 1.0 + (i - 40) for i in range(60)]
    figure, text = results.finder_update(LRFinderResult(lrs, falling, lrs[30], clear=falls_clearly(falling)))
    assert figure.layout.xaxis.type == "log" and figure.data[1].name == "suggested"
    assert figure.data[1].x == (lrs[30],) and text.startswith("**Suggested LR: ")
    flat = [1.0] * 50 + [1.0 + i for i in range(10)]
    _, text = results.finder_update(LRFinderResult(lrs, flat, lrs[20], clear=falls_clearly(flat)))
    assert text.startswith("**No clear answer:** the loss hardly fell anywhere in the sweep")
    assert "))" not in text


def test_a_run_reopened_from_its_folder_shows_every_result(tmp_path):
    run = shutil.copytree(OLD_RUN, tmp_path / "run")  # written before predictions were kept
    update = results.run_update(run)
    assert set(update) == {"epoch_table", "loss_plot", "acc_plot", "lr_plot", "metrics", "per_class", "confusion",
                           "misclassified"}
    assert len(update["epoch_table"]) == len(update["loss_plot"].data[0].x) >= 1
    assert update["metrics"].startswith("**Validation accuracy") and update["misclassified"] == []
    assert [t.name for t in update["lr_plot"].data] == ["planned", "used"]
