"""Evaluation numbers checked against small cases worked out by hand, and the figure builders
checked for the panels and traces they promise; no TensorFlow, no MLflow, a few seconds."""

from __future__ import annotations

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest

from workbench.measure import figures
from workbench.measure.evaluate import (
    evaluate,
    expected_calibration_error,
    most_confident_mistakes,
    training_summary,
)

CLASSES = ("a", "b", "c")
# Hand example: 8 images, supports a=4, b=2, c=2.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 2, 2, 1])
# Confusion (rows true, columns predicted):
#   a: [3, 1, 0]    b: [0, 1, 1]    c: [0, 1, 1]
# Column totals (predicted): a=3, b=3, c=2.


def one_hot_ish(predicted: np.ndarray, k: int = 3, top: float = 0.8) -> np.ndarray:
    probabilities = np.full((len(predicted), k), (1 - top) / (k - 1))
    probabilities[np.arange(len(predicted)), predicted] = top
    return probabilities


@pytest.fixture(autouse=True)
def close_new_figures():
    # The builders leave closing to the caller; here the caller is the test.
    before = set(plt.get_fignums())
    yield
    for number in set(plt.get_fignums()) - before:
        plt.close(number)


@pytest.fixture
def hand():
    return evaluate(Y_TRUE, one_hot_ish(Y_PRED), CLASSES)


def test_three_class_metrics_match_the_hand_computation(hand):
    m = hand.metrics
    assert m["test_accuracy"] == pytest.approx(5 / 8)          # 3 + 1 + 1 on the diagonal
    # a: TP 3, predicted 3, true 4 -> P 1, R 3/4, F1 2*(3/4)/(7/4) = 6/7
    # b: TP 1, predicted 3, true 2 -> P 1/3, R 1/2, F1 2*(1/6)/(5/6) = 2/5
    # c: TP 1, predicted 2, true 2 -> P 1/2, R 1/2, F1 1/2
    expected = {"a": (1, 3 / 4, 6 / 7), "b": (1 / 3, 1 / 2, 2 / 5), "c": (1 / 2, 1 / 2, 1 / 2)}
    for name, (precision, recall, f1) in expected.items():
        assert m[f"test_precision_{name}"] == pytest.approx(precision)
        assert m[f"test_recall_{name}"] == pytest.approx(recall)
        assert m[f"test_f1_{name}"] == pytest.approx(f1)
    # macro = plain mean over classes
    assert m["test_precision_macro"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)   # 11/18
    assert m["test_recall_macro"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)  # 7/12
    assert m["test_f1_macro"] == pytest.approx((6 / 7 + 2 / 5 + 1 / 2) / 3)      # 41/70
    # weighted = mean weighted by true support (4, 2, 2) / 8
    assert m["test_precision_weighted"] == pytest.approx((4 * 1 + 2 / 3 + 1) / 8)     # 17/24
    assert m["test_recall_weighted"] == pytest.approx(5 / 8)                          # = accuracy
    assert m["test_f1_weighted"] == pytest.approx((4 * 6 / 7 + 2 * 2 / 5 + 2 / 2) / 8)  # 183/280
    assert hand.confusion.tolist() == [[3, 1, 0], [0, 1, 1], [0, 1, 1]]


def test_metric_keys_are_exactly_the_promised_set_and_all_floats(hand):
    aggregates = {f"test_{m}_{a}" for m in ("precision", "recall", "f1") for a in ("macro", "weighted")}
    per_class = {f"test_{m}_{c}" for m in ("precision", "recall", "f1") for c in CLASSES}
    expected = {"test_accuracy", "test_roc_auc_ovr", "test_log_loss", "test_ece"} | aggregates | per_class
    assert set(hand.metrics) == expected
    assert all(type(v) is float for v in hand.metrics.values())
    assert set(evaluate(Y_TRUE, one_hot_ish(Y_PRED), CLASSES, prefix="val").metrics) == {
        key.replace("test_", "val_", 1) for key in expected}


def test_confusion_normalized_and_json(hand):
    assert hand.confusion_normalized == pytest.approx(np.array([[3 / 4, 1 / 4, 0], [0, 1 / 2, 1 / 2],
                                                                [0, 1 / 2, 1 / 2]]))
    doc = hand.confusion_json()
    assert doc["classes"] == ["a", "b", "c"]
    assert doc["matrix"] == [[3, 1, 0], [0, 1, 1], [0, 1, 1]]
    assert np.array(doc["matrix_normalized"]) == pytest.approx(hand.confusion_normalized)
    # A class never seen in y_true keeps an all-zero row rather than NaN.
    absent = evaluate(np.array([0, 1]), one_hot_ish(np.array([0, 2])), CLASSES)
    assert absent.confusion_normalized[2].tolist() == [0, 0, 0]
    assert absent.confusion_normalized[1].tolist() == [0, 0, 1]


def test_ece_on_four_predictions_by_hand():
    # confidences 0.70 (right), 0.72 (wrong) -> both in bin (10/15, 11/15]: acc 0.5, conf 0.71, gap 0.21
    # confidences 0.95 (right), 0.99 (right) -> both in bin (14/15, 1]:   acc 1.0, conf 0.97, gap 0.03
    # ECE = 2/4 * 0.21 + 2/4 * 0.03 = 0.12
    probabilities = np.array([[0.70, 0.30], [0.28, 0.72], [0.95, 0.05], [0.01, 0.99]])
    y_true = np.array([0, 0, 0, 1])
    assert expected_calibration_error(y_true, probabilities) == pytest.approx(0.12)
    # One bin: |mean accuracy - mean confidence| = |3/4 - 0.84| = 0.09, so the binning matters.
    assert expected_calibration_error(y_true, probabilities, bins=1) == pytest.approx(0.09)
    assert evaluate(y_true, probabilities, ("x", "y")).metrics["test_ece"] == pytest.approx(0.12)
    # Perfectly confident and always right: perfectly calibrated.
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_log_loss_matches_the_formula_and_stays_finite():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.5, 0.4, 0.1]])
    y_true = np.array([0, 1, 2, 1])
    by_hand = -(math.log(0.7) + math.log(0.6) + math.log(0.5) + math.log(0.4)) / 4
    assert evaluate(y_true, probabilities, CLASSES).metrics["test_log_loss"] == pytest.approx(by_hand)
    # Zero on the true class is clipped, not infinite; float32 rounding raises no "sum to one" warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = evaluate(np.array([0, 1]), np.array([[0.0, 1.0], [0.3, 0.7]], dtype="float32"),
                        ("x", "y")).metrics["test_log_loss"]
    assert math.isfinite(loss) and loss > 10


def test_roc_auc_binary_and_multiclass():
    # Classic 4-point example: of the 4 (positive, negative) pairs, 3 are ranked right -> 0.75.
    binary = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert evaluate(np.array([0, 0, 1, 1]), binary, ("no", "yes")).metrics["test_roc_auc_ovr"] == pytest.approx(0.75)
    perfect = np.eye(3)[Y_TRUE] * 0.9 + 0.1 / 3
    assert evaluate(Y_TRUE, perfect, CLASSES).metrics["test_roc_auc_ovr"] == pytest.approx(1.0)
    assert evaluate(np.array([0, 1]), np.array([[0.8, 0.2], [0.3, 0.7]]), ("x", "y")).metrics[
        "test_roc_auc_ovr"] == pytest.approx(1.0)


def test_a_class_absent_from_y_true_does_not_crash():
    # Class c never occurs: AUC is averaged over a and b only.
    # a vs rest: scores for a [0.6, 0.5 | 0.3, 0.55] -> pairs (0.6>0.3, 0.6>0.55, 0.5>0.3, 0.5<0.55) = 3/4
    # b vs rest: scores for b [0.3, 0.45 | 0.6, 0.4] -> b rows 0.6, 0.4 vs 0.3, 0.45: (y, y, y, n) = 3/4
    probabilities = np.array([[0.6, 0.3, 0.1], [0.5, 0.45, 0.05], [0.3, 0.6, 0.1], [0.55, 0.4, 0.05]])
    result = evaluate(np.array([0, 0, 1, 1]), probabilities, CLASSES)
    assert result.metrics["test_roc_auc_ovr"] == pytest.approx(0.75)
    assert result.metrics["test_recall_c"] == 0.0 and result.metrics["test_precision_c"] == 0.0
    assert all(math.isfinite(v) for v in result.metrics.values())
    # Only one class present: AUC is undefined, so its key is left out; the rest still computes.
    single = evaluate(np.array([1, 1]), probabilities[:2], CLASSES)
    assert "test_roc_auc_ovr" not in single.metrics
    assert single.metrics["test_accuracy"] == 0.0 and math.isfinite(single.metrics["test_log_loss"])


def test_bad_shapes_and_colliding_class_names_are_refused():
    with pytest.raises(ValueError, match="shape"):
        evaluate(Y_TRUE, one_hot_ish(Y_PRED), ("a", "b"))
    with pytest.raises(ValueError, match="collide"):
        evaluate(Y_TRUE, one_hot_ish(Y_PRED), ("a", "macro", "c"))


HISTORY = {
    "loss": [1.0, 0.6, 0.4, 0.3],
    "accuracy": [0.5, 0.7, 0.85, 0.95],
    "val_loss": [0.9, 0.7, 0.75, 0.9],
    "val_accuracy": [0.55, 0.7, 0.72, 0.7],
    "val_f1_macro": [0.5, 0.68, 0.71, 0.69],
}


def test_training_summary_on_a_handmade_history():
    summary = training_summary({**HISTORY, "phase_boundary": 3})
    assert summary == pytest.approx({
        "best_epoch": 3.0, "best_val_f1_macro": 0.71,        # epoch 3 (1-based) has the top val F1
        "final_train_accuracy": 0.95, "final_val_accuracy": 0.7,
        "overfit_gap": 0.25,                                  # 0.95 - 0.70
        "overfit_gap_loss": 0.6,                              # 0.90 - 0.30
    })
    by_loss = training_summary(HISTORY, monitor="val_loss")  # a loss: its lowest epoch
    assert by_loss["best_epoch"] == 2.0 and by_loss["best_val_loss"] == pytest.approx(0.7)
    # Ties go to the first epoch; NaN epochs are skipped; missing validation leaves keys out.
    assert training_summary({"val_f1_macro": [0.6, float("nan"), 0.6]})["best_epoch"] == 1.0
    assert training_summary({"loss": [1.0], "accuracy": [0.5]}) == {"final_train_accuracy": 0.5}


def test_most_confident_mistakes_order():
    probabilities = np.array([[0.6, 0.4],    # 0: true 1, wrong at 0.60
                              [0.1, 0.9],    # 1: true 1, right
                              [0.05, 0.95],  # 2: true 0, wrong at 0.95
                              [0.8, 0.2],    # 3: true 1, wrong at 0.80
                              [0.7, 0.3]])   # 4: true 0, right
    y_true = np.array([1, 1, 0, 1, 0])
    assert most_confident_mistakes(y_true, probabilities) == [2, 3, 0]
    assert most_confident_mistakes(y_true, probabilities, k=2) == [2, 3]
    assert most_confident_mistakes(np.array([1, 0]), probabilities[[1, 4]]) == []


# --- figures --------------------------------------------------------------------------------

def test_learning_curves_figures():
    mpl, fig = figures.learning_curves(HISTORY)
    # loss and accuracy x (train, val), plus validation macro-F1 (Keras logs no train F1)
    assert len(mpl.axes) == 3 and len(fig.data) == 5
    no_f1 = {k: v for k, v in HISTORY.items() if k != "val_f1_macro"}
    mpl, fig = figures.learning_curves(no_f1)
    assert len(mpl.axes) == 2 and len(fig.data) == 4
    assert len(fig.layout.shapes) == 0
    mpl, fig = figures.learning_curves({**HISTORY, "phase_boundary": 3})
    assert len(fig.layout.shapes) == 3 and {s.x0 for s in fig.layout.shapes} == {2.5}
    for ax in mpl.axes:
        assert "fine-tuning starts" in ax.get_legend_handles_labels()[1]
    # TrainResult keeps the boundary beside the history; passed directly it wins over the key.
    _, fig = figures.learning_curves({**HISTORY, "phase_boundary": [9]}, phase_boundary=4)
    assert {s.x0 for s in fig.layout.shapes} == {3.5}


def test_confusion_figures(hand):
    mpl, fig = figures.confusion(hand)
    assert len(mpl.axes) == 2
    # One heatmap: colour is the share of the true class, text the count and the share.
    assert [t.type for t in fig.data] == ["heatmap"]
    assert np.array(fig.data[0].customdata).tolist() == hand.confusion.tolist()
    assert np.allclose(np.array(fig.data[0].z), hand.confusion_normalized)
    assert list(fig.data[0].text[0]) == ["3<br>75%", "1<br>25%", "0<br>0%"]
    assert all(trace.texttemplate for trace in fig.data)
    # The report's side-by-side matrices are the same builder, one panel per run.
    both = figures.confusion_heatmaps({"run a": hand.confusion_json(), "run b": hand.confusion_json(), "none": None})
    assert [t.type for t in both.data] == ["heatmap", "heatmap"]
    assert [a.text for a in both.layout.annotations] == ["run a", "run b"]


def test_mistakes_grid_titles_and_empty_case():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (len(Y_TRUE), 8, 8, 3))          # float 0..255 is accepted
    probabilities = one_hot_ish(Y_PRED)
    probabilities[7] = [0.02, 0.97, 0.01]                           # the surest mistake
    mpl, fig = figures.mistakes_grid(images, Y_TRUE, probabilities, CLASSES)
    captions = [t.get_text() for t in mpl.axes[0].texts]
    assert len(captions) == 3 and len(fig.data) == 1                # three wrong predictions, one mosaic
    assert [a.text for a in fig.layout.annotations] == captions     # each title over its own tile
    assert captions[0] == "true c / pred b (0.97)"                  # the surest first
    assert mpl.axes[0].get_title() == "Most confident mistakes (3)"
    mosaic = mpl.axes[0].images[0].get_array()
    assert mosaic.shape[1] == 2 * (8 + 4) and mosaic.shape[0] == 2 * (8 + 6 + 4)   # 2 x 2 tiles of 8 px
    assert "true c / pred b (0.97)" in {a.text for a in fig.layout.annotations}
    mpl, fig = figures.mistakes_grid(images.astype("uint8"), Y_TRUE, probabilities, CLASSES, k=1)
    assert len(mpl.axes[0].texts) == 1

    mpl, fig = figures.mistakes_grid(images, Y_TRUE, one_hot_ish(Y_TRUE), CLASSES)
    assert len(mpl.axes) == 1 and "no mistakes" in mpl.axes[0].texts[0].get_text()
    assert len(fig.data) == 0 and "no mistakes" in fig.layout.annotations[0].text


def test_figure_pairs_and_offline_html(hand, tmp_path):
    pairs = figures.figure_pairs(hand, HISTORY)
    assert set(pairs) == {"learning_curves", "confusion_matrix"}
    images = np.zeros((len(Y_TRUE), 4, 4, 3), dtype=np.uint8)
    pairs = figures.figure_pairs(hand, HISTORY, images=images)
    assert set(pairs) == {"learning_curves", "confusion_matrix", "most_confident_mistakes"}

    path = figures.write_html_page({name: pair[1] for name, pair in pairs.items()},
                                   tmp_path / "nested" / "figures.html", title="run")
    html = path.read_text(encoding="utf-8")
    assert "plotly" in html
    # plotly.js itself is inlined: no <script src=...> to a CDN, so it opens offline. (The bundle
    # does mention cdn.plot.ly once, as the default topojson URL for geo maps, which we never draw.)
    assert 'src="https://cdn.plot.ly' not in html and "<script src=" not in html
    assert len(html) > 1_000_000
    assert html.count("plotly.js v") <= 2  # the library is inlined once, not once per figure


def test_matplotlib_halves_alone(hand):
    assert len(figures.confusion_matplotlib(hand).axes) == 2
    assert len(figures.learning_curves_matplotlib(HISTORY).axes) == 3
