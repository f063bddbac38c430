"""Paired comparison (xs.Comparison): statistics against scipy, exactness, merge, state files."""

from __future__ import annotations

import importlib
import json
import math
import pickle

import numpy as np
import polars as pl
import pytest
from scipy import special, stats
from sklearn.metrics import log_loss

import xentstream as xs
from xentstream import cli


def _two_models(rng: np.random.Generator, n: int, classes: int = 4, gap: float = 0.03):
    """Labels and two probability models whose losses differ a little, row by row."""
    labels = rng.integers(0, classes, n)
    base = rng.dirichlet(np.ones(classes), n)
    onehot = np.eye(classes)[labels]
    model = (1 - gap) * base + gap * onehot
    # A second, noisier change so that some rows favour the baseline.
    noise = rng.dirichlet(np.ones(classes) * 5, n)
    model = 0.9 * model + 0.1 * noise
    return model, base, labels


def _row_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p[y] in plain float64 numpy (the SPEC's probs rule with eps clipping)."""
    eps = np.finfo(np.float64).eps
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1 - eps))


def test_matches_scipy_paired_t_test(rng):
    model, base, labels = _two_models(rng, 20_000)
    report = xs.Comparison(xs.CrossEntropy()).update(model, base, labels).compute()
    differences = _row_losses(model, labels) - _row_losses(base, labels)
    t_test = stats.ttest_rel(_row_losses(model, labels), _row_losses(base, labels))
    # scipy's ttest_rel: t = mean / (std(ddof=1) / sqrt(n)); ours is the same statistic.
    assert report.count == len(labels)
    assert math.isclose(report.difference, differences.mean(), rel_tol=1e-10)
    scipy_stderr = differences.mean() / t_test.statistic
    assert math.isclose(report.stderr, scipy_stderr, rel_tol=1e-9)
    assert math.isclose(report.z, t_test.statistic, rel_tol=1e-9)
    # Normal p-value against scipy's normal tail exactly, and against the t test's p-value
    # (t with 19999 degrees of freedom): within 1% of the p-value at this n.
    assert math.isclose(report.p_value, 2 * stats.norm.sf(abs(t_test.statistic)), rel_tol=1e-9)
    assert math.isclose(report.p_value, t_test.pvalue, rel_tol=1e-2)
    low, high = report.ci95
    z975 = stats.norm.ppf(0.975)
    assert math.isclose(low, differences.mean() - z975 * scipy_stderr, rel_tol=1e-9)
    assert math.isclose(high, differences.mean() + z975 * scipy_stderr, rel_tol=1e-9)
    assert report.model_better_rows == int((differences < 0).sum())
    assert report.baseline_better_rows == int((differences > 0).sum())
    assert math.isclose(report.model_better, float((differences < 0).mean()), rel_tol=1e-12)
    # Each model's own report: its loss is scikit-learn's log loss.
    assert math.isclose(report.model.loss, log_loss(labels, model), rel_tol=1e-10)
    assert math.isclose(report.baseline.loss, log_loss(labels, base), rel_tol=1e-10)


def test_small_p_value_where_the_t_test_agrees(rng):
    """A clear difference: both tests reject, the p-values are tiny on both sides."""
    model, base, labels = _two_models(rng, 4000, gap=0.3)
    report = xs.Comparison(xs.CrossEntropy()).update(model, base, labels).compute()
    t_test = stats.ttest_rel(_row_losses(model, labels), _row_losses(base, labels))
    assert report.difference < 0 and t_test.statistic < 0
    assert report.p_value < 1e-6 and t_test.pvalue < 1e-6
    assert "model is better" in report.verdict()


def test_sum_of_differences_is_exact(rng):
    """sum s (L_A - L_B) is math.fsum of the per-row weighted differences, exactly."""
    model, base, labels = _two_models(rng, 3000)
    weights = rng.uniform(0.0, 3.0, len(labels))
    comparison = xs.Comparison(xs.CrossEntropy()).update(model, base, labels, weights)
    # The per-row losses themselves are the kernels' (reduction="none"), so that only the
    # summation is under test here.
    a = xs.cross_entropy(model, labels, reduction="none")
    b = xs.cross_entropy(base, labels, reduction="none")
    report = comparison.compute()
    exact = math.fsum(weights * (a - b)) / math.fsum(weights)
    assert report.difference == exact


def test_weighted_statistics_against_numpy(rng):
    """Sample weights and class weights: the weighted (Kish) standard error of the loss,
    applied to the per-unit difference, in plain numpy."""
    n, classes = 5000, 3
    model, base, labels = _two_models(rng, n, classes)
    weights = rng.uniform(0.1, 2.0, n)
    class_weight = np.array([1.0, 2.0, 0.5])
    metric = xs.CrossEntropy(class_weight=class_weight)
    report = xs.Comparison(metric).update(model, base, labels, weights).compute()
    d = class_weight[labels]
    difference = d * (_row_losses(model, labels) - _row_losses(base, labels))
    a = weights * d
    v = difference / d
    mean = np.sum(a * v) / np.sum(a)
    variance = np.sum(a * (v - mean) ** 2) / np.sum(a)
    effective_n = np.sum(a) ** 2 / np.sum(a**2)
    stderr = math.sqrt(variance / (effective_n - 1))
    assert math.isclose(report.difference, mean, rel_tol=1e-10)
    assert math.isclose(report.stderr, stderr, rel_tol=1e-8)
    assert math.isclose(report.model_better, np.sum(a * (v < 0)) / np.sum(a), rel_tol=1e-12)
    # mean difference = difference of the two weighted mean losses (torch's denominator).
    assert math.isclose(report.difference, report.model.loss - report.baseline.loss, rel_tol=1e-9)


def test_ignored_rows_are_not_compared(rng):
    model, base, labels = _two_models(rng, 500)
    labels[::7] = -100
    report = xs.Comparison(xs.CrossEntropy(ignore_index=-100)).update(model, base, labels).compute()
    kept = labels != -100
    assert report.count == int(kept.sum())
    assert report.model.ignored == int((~kept).sum())
    differences = _row_losses(model[kept], labels[kept]) - _row_losses(base[kept], labels[kept])
    assert math.isclose(report.difference, differences.mean(), rel_tol=1e-10)
    assert math.isclose(
        report.stderr, differences.std(ddof=1) / math.sqrt(kept.sum()), rel_tol=1e-9
    )


@pytest.mark.parametrize("kind", ["binary", "multilabel", "logits"])
def test_other_kinds(rng, kind):
    n = 2000
    if kind == "binary":
        target = rng.integers(0, 2, n)
        a, b = rng.uniform(0.05, 0.95, n), rng.uniform(0.05, 0.95, n)
        metric = xs.BinaryCrossEntropy()
        rows_a = -(target * np.log(a) + (1 - target) * np.log1p(-a))
        rows_b = -(target * np.log(b) + (1 - target) * np.log1p(-b))
    elif kind == "multilabel":
        target = rng.integers(0, 2, (n, 3))
        a, b = rng.uniform(0.05, 0.95, (n, 3)), rng.uniform(0.05, 0.95, (n, 3))
        metric = xs.MultiLabelCrossEntropy()
        rows_a = -(target * np.log(a) + (1 - target) * np.log1p(-a)).sum(axis=1)
        rows_b = -(target * np.log(b) + (1 - target) * np.log1p(-b)).sum(axis=1)
    else:
        target = rng.integers(0, 5, n)
        a, b = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
        metric = xs.CrossEntropy(input="logits")
        log_a, log_b = special.log_softmax(a, axis=1), special.log_softmax(b, axis=1)
        rows_a = -log_a[np.arange(n), target]
        rows_b = -log_b[np.arange(n), target]
    report = xs.Comparison(metric).update(a, b, target).compute()
    t_test = stats.ttest_rel(rows_a, rows_b)
    assert math.isclose(report.difference, float(np.mean(rows_a - rows_b)), rel_tol=1e-9)
    assert math.isclose(report.z, t_test.statistic, rel_tol=1e-8)


def test_identical_models_tie_everywhere(rng):
    model, _, labels = _two_models(rng, 100)
    report = xs.Comparison(xs.CrossEntropy()).update(model, model, labels).compute()
    assert report.difference == 0.0 and report.stderr == 0.0
    assert report.z is None and report.p_value is None
    assert report.model_better == report.baseline_better == 0.0
    assert report.verdict() == "not enough rows to compare"


def test_bitwise_identical_for_any_split_and_merge_order(rng):
    model, base, labels = _two_models(rng, 6000)
    weights = rng.uniform(0.0, 2.0, len(labels))
    whole = xs.Comparison(xs.CrossEntropy()).update(model, base, labels, weights)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(labels)), size=7, replace=False))
        parts = []
        for start, stop in zip([0, *cuts], [*cuts, len(labels)], strict=True):
            part = xs.Comparison(xs.CrossEntropy())
            part.update(
                model[start:stop], base[start:stop], labels[start:stop], weights[start:stop]
            )
            parts.append(part)
        order = rng.permutation(len(parts))
        merged = xs.Comparison(xs.CrossEntropy())
        for index in order:
            merged.merge(parts[index])
        assert merged.state_dict()["sums"] == whole.state_dict()["sums"]
        assert merged.state_dict()["counts"] == whole.state_dict()["counts"]
        assert merged.compute().difference == whole.compute().difference
        assert merged.compute().stderr == whole.compute().stderr
        assert merged.compute().model.loss == whole.compute().model.loss


def test_bad_input_leaves_state_unchanged(rng):
    model, base, labels = _two_models(rng, 200)
    comparison = xs.Comparison(xs.CrossEntropy()).update(model[:100], base[:100], labels[:100])
    before = json.dumps(comparison.state_dict())
    with pytest.raises(ValueError, match="baseline_preds"):
        comparison.update(model[100:], base[100:199], labels[100:])
    bad = base[100:].copy()
    bad[17, 1] = np.nan
    with pytest.raises(ValueError, match=r"baseline_preds.*row 117"):
        comparison.update(model[100:], bad, labels[100:])
    with pytest.raises(ValueError, match="classes"):
        comparison.update(
            model[100:], base[100:, :3] / base[100:, :3].sum(1, keepdims=True), labels[100:] % 3
        )
    bad_model = model[100:].copy()
    bad_model[3, 0] = 1.5
    with pytest.raises(ValueError, match=r"preds.*row 103"):
        comparison.update(bad_model, base[100:], labels[100:])
    assert json.dumps(comparison.state_dict()) == before


def test_first_batch_rejected_keeps_the_class_count_open(rng):
    model, base, labels = _two_models(rng, 50, classes=4)
    comparison = xs.Comparison(xs.CrossEntropy())
    with pytest.raises(ValueError, match="classes"):
        comparison.update(model, base[:, :3] / base[:, :3].sum(1, keepdims=True), labels % 3)
    assert comparison.model.n_classes is None and comparison.baseline.n_classes is None
    three = base[:, :3] / base[:, :3].sum(1, keepdims=True)
    comparison.update(three, three, labels % 3)  # a 3-class stream is still possible
    assert comparison.compute().count == 50


def test_merge_refuses_other_configurations(rng):
    model, base, labels = _two_models(rng, 100)
    comparison = xs.Comparison(xs.CrossEntropy()).update(model, base, labels)
    before = json.dumps(comparison.state_dict())
    other = xs.Comparison(xs.CrossEntropy(label_smoothing=0.1)).update(model, base, labels)
    with pytest.raises(ValueError, match="label_smoothing"):
        comparison.merge(other)
    binary = xs.Comparison(xs.BinaryCrossEntropy()).update([0.5], [0.4], [1])
    with pytest.raises(TypeError, match="BinaryCrossEntropy"):
        comparison.merge(binary)
    with pytest.raises(TypeError, match="Comparison"):
        comparison.merge(xs.CrossEntropy())
    with pytest.raises(TypeError, match="metric"):
        xs.Comparison("multiclass")
    assert json.dumps(comparison.state_dict()) == before


def test_state_file_round_trip(rng, tmp_path):
    model, base, labels = _two_models(rng, 300)
    comparison = xs.Comparison(xs.CrossEntropy(window=10)).update(model, base, labels)
    path = tmp_path / "comparison.json"
    comparison.save(path)
    loaded = xs.load(path)
    assert isinstance(loaded, xs.Comparison)
    assert loaded.state_dict() == comparison.state_dict()
    assert loaded.compute().to_dict() == comparison.compute().to_dict()
    json.dumps(comparison.compute().to_dict(), allow_nan=False)
    # Continuing after a load gives the bits of an uninterrupted run.
    more = _two_models(rng, 50)
    loaded.update(*more)
    comparison.update(*more)
    assert loaded.state_dict() == comparison.state_dict()
    # Metrics still load through the same function.
    xs.CrossEntropy().update(model, labels).save(tmp_path / "metric.json")
    assert isinstance(xs.load(tmp_path / "metric.json"), xs.CrossEntropy)


def _edited(state, path, value):
    state = json.loads(json.dumps(state))
    node = state
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return state


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("version",), 2, "version"),
        (("version",), True, "version"),
        (("sums",), KeyError, "sums"),
        (("extra",), 1, "extra"),
        (("sums", "difference"), ["1.5", 0, 0, 0], "sums"),
        (("sums", "weight"), KeyError, "sums"),
        (("counts", "rows"), 299, "counts"),
        (("sums", "weight"), ["5", 0, 0, 0], "sums.weight"),
        (("sums", "weight_squared"), ["5", 0, 0, 0], "sums.weight_squared"),
        (("counts", "rows"), -1, "counts.rows"),
        (("counts", "model_better"), 10**6, "counts"),
        (("counts", "baseline_better"), "3", "counts.baseline_better"),
        (("model", "version"), 9, "model"),
        (("baseline", "config", "label_smoothing"), 0.5, "baseline"),
        (("model",), [], "model"),
    ],
)
def test_malformed_state_files_name_the_key(rng, tmp_path, path, value, needle):
    model, base, labels = _two_models(rng, 300)
    state = xs.Comparison(xs.CrossEntropy()).update(model, base, labels).state_dict()
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(_edited(state, path, value)))
    with pytest.raises(ValueError, match=needle) as error:
        xs.load(file)
    assert str(file) in str(error.value)


def test_scalars_and_text(rng):
    model, base, labels = _two_models(rng, 300)
    report = xs.Comparison(xs.CrossEntropy()).update(model, base, labels).compute()
    scalars = report.scalars("cmp/")
    assert scalars["cmp/difference"] == report.difference
    assert scalars["cmp/model/loss"] == report.model.loss
    assert "cmp/ci95_low" in scalars
    text = str(report)
    assert "difference" in text and "baseline" in text and "p_value" in text


# -- compare(): sources, lockstep, command line ---------------------------------------------


def _frame(rng, n=3000):
    model, base, labels = _two_models(rng, n)
    return (
        pl.DataFrame({"id": np.arange(n), "new": model, "old": base, "y": labels}),
        model,
        base,
        labels,
    )


def test_compare_a_frame_equals_updates(rng):
    frame, model, base, labels = _frame(rng)
    report = xs.compare(
        frame, xs.CrossEntropy(), preds="new", baseline_preds="old", target="y", batch_rows=700
    )
    direct = xs.Comparison(xs.CrossEntropy()).update(model, base, labels).compute()
    assert report.to_dict() == direct.to_dict()


def test_compare_two_sources_in_lockstep(rng, tmp_path):
    frame, model, base, labels = _frame(rng)
    frame.select("id", "new", "y").write_parquet(tmp_path / "new.parquet")
    # The baseline in two files of other sizes: batches are cut at other rows.
    frame.select("id", "old", "y")[:1100].write_parquet(tmp_path / "old-0.parquet")
    frame.select("id", "old", "y")[1100:].write_parquet(tmp_path / "old-1.parquet")
    comparison = xs.Comparison(xs.CrossEntropy())
    report = xs.compare(
        tmp_path / "new.parquet",
        comparison,
        preds="new",
        baseline_preds="old",
        target="y",
        baseline_source=str(tmp_path / "old-*.parquet"),
        row_id="id",
        batch_rows=700,
    )
    direct = xs.Comparison(xs.CrossEntropy()).update(model, base, labels)
    assert comparison.state_dict() == direct.state_dict()
    assert report.count == len(labels)


def test_compare_refuses_sources_of_other_rows(rng, tmp_path):
    frame, *_ = _frame(rng, 1000)
    frame.write_parquet(tmp_path / "new.parquet")
    shuffled = frame.with_columns(pl.col("id").shift(-1, fill_value=0))
    shuffled.write_parquet(tmp_path / "ids.parquet")
    relabel = pl.when(pl.col("id") == 600).then((pl.col("y") + 1) % 4).otherwise(pl.col("y"))
    frame.with_columns(relabel.alias("y")).write_parquet(tmp_path / "labels.parquet")
    frame[:999].write_parquet(tmp_path / "short.parquet")
    options = {"preds": "new", "baseline_preds": "old", "target": "y", "batch_rows": 256}
    with pytest.raises(ValueError, match=r"id: row 0"):
        xs.compare(
            tmp_path / "new.parquet",
            xs.CrossEntropy(),
            baseline_source=tmp_path / "ids.parquet",
            row_id="id",
            **options,
        )
    with pytest.raises(ValueError, match=r"y: row 600: the targets"):
        xs.compare(
            tmp_path / "new.parquet",
            xs.CrossEntropy(),
            baseline_source=tmp_path / "labels.parquet",
            **options,
        )
    with pytest.raises(ValueError, match="fewer rows"):
        xs.compare(
            tmp_path / "new.parquet",
            xs.CrossEntropy(),
            baseline_source=tmp_path / "short.parquet",
            **options,
        )
    with pytest.raises(ValueError, match="row_id"):
        xs.compare(tmp_path / "new.parquet", xs.CrossEntropy(), row_id="id", **options)


def test_compare_names_the_bad_column_and_row(rng):
    frame, *_ = _frame(rng, 1000)
    old = frame["old"].to_numpy().copy()
    old[777, 2] = -0.5
    frame = frame.with_columns(pl.Series("old", old))
    with pytest.raises(ValueError, match=r"old.*row 777"):
        xs.compare(
            frame, xs.CrossEntropy(), preds="new", baseline_preds="old", target="y", batch_rows=300
        )


def test_compare_iterable_of_tuples(rng):
    model, base, labels = _two_models(rng, 400)
    batches = [(model[:150], base[:150], labels[:150]), (model[150:], base[150:], labels[150:])]
    report = xs.compare(batches, xs.CrossEntropy())
    direct = xs.Comparison(xs.CrossEntropy()).update(model, base, labels).compute()
    assert report.to_dict() == direct.to_dict()


def test_command_line_compare(rng, tmp_path, capsys):
    frame, model, base, labels = _frame(rng, 2000)
    path = tmp_path / "preds.parquet"
    frame.write_parquet(path)
    state = tmp_path / "state.json"
    argv = ["compare", str(path), "--preds", "new", "--baseline-preds", "old", "--target", "y"]
    assert cli.main([*argv, "--format", "json", "--save-state", str(state)]) == 0
    shown = json.loads(capsys.readouterr().out)
    direct = xs.Comparison(xs.CrossEntropy()).update(model, base, labels)
    assert shown == json.loads(json.dumps(direct.compute().to_dict()))
    assert xs.load(state).state_dict() == direct.state_dict()
    assert cli.main(argv) == 0
    assert "p_value" in capsys.readouterr().out
    # merge of two shards' comparison states
    assert cli.main(["merge", str(state), str(state), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2 * len(labels)
    for bad, needle in [
        (["--baseline-preds", "nope"], "nope"),
        (["--row-id", "id"], "--row-id"),
        (["--input", "logits", "--task", "binary"], ""),
    ]:
        argv_bad = [*argv[:4], *argv[6:], *(bad if bad[0] == "--baseline-preds" else [])]
        if bad[0] != "--baseline-preds":
            argv_bad = [*argv, *bad]
        assert cli.main(argv_bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("xentstream: error:")
        assert needle in err


def test_compare_by_groups_equals_each_group_alone(rng):
    frame, model, base, labels = _frame(rng, 3000)
    groups = np.array(["a", "b", "c"])[rng.integers(0, 3, len(labels))].astype(object)
    groups[::11] = None
    frame = frame.with_columns(pl.Series("g", groups.tolist(), dtype=pl.String))
    result = xs.compare(
        frame,
        xs.CrossEntropy(calibration_bins=5),
        preds="new",
        baseline_preds="old",
        target="y",
        by="g",
        batch_rows=400,
    )
    assert isinstance(result, xs.GroupedComparison)
    assert list(result.groups) == [("a",), ("b",), ("c",), (None,)]  # sorted, null last
    overall = xs.Comparison(xs.CrossEntropy(calibration_bins=5)).update(model, base, labels)
    assert result.overall.to_dict() == overall.compute().to_dict()
    for (key,), report in result.groups.items():
        rows = np.array([g == key for g in groups])
        alone = xs.Comparison(xs.CrossEntropy()).update(model[rows], base[rows], labels[rows])
        assert report.to_dict() == alone.compute().to_dict()
    table = result.to_polars()
    assert table.height == 4 and table["count"].sum() == len(labels)
    json.dumps(result.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="by"):
        xs.compare([(model, base, labels)], xs.CrossEntropy(), by="g")


def test_command_line_compare_by(rng, tmp_path, capsys):
    frame, *_ = _frame(rng, 1000)
    frame = frame.with_columns((pl.col("id") % 3).alias("g"))
    path = tmp_path / "preds.parquet"
    frame.write_parquet(path)
    argv = ["compare", str(path), "--preds", "new", "--baseline-preds", "old", "--target", "y"]
    assert cli.main([*argv, "--by", "g", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [g["key"] for g in shown["groups"]] == [[0], [1], [2]]
    assert cli.main([*argv, "--by", "g"]) == 0
    assert "p_value" in capsys.readouterr().out
    assert cli.main([*argv, "--by", "g", "--save-state", str(tmp_path / "s.json")]) == 2
    assert "--save-state" in capsys.readouterr().err


def test_token_log_probabilities_against_scipy(rng):
    """Two language models' target log-probabilities on the same tokens, padding masked:
    the paired statistics of the per-token NLL difference, as scipy's paired t-test."""
    n = 4000
    model = np.log(rng.uniform(0.05, 1.0, n))
    baseline = np.log(np.clip(np.exp(model) * rng.uniform(0.8, 1.2, n), 1e-6, 1.0))
    mask = rng.random(n) < 0.9
    report = xs.Comparison(xs.TokenCrossEntropy()).update(model, baseline, mask).compute()
    differences = (baseline - model)[mask]  # NLL_A - NLL_B
    test = stats.ttest_rel(-model[mask], -baseline[mask])
    assert report.count == mask.sum()
    assert math.isclose(report.difference, math.fsum(differences) / mask.sum(), rel_tol=1e-12)
    assert math.isclose(report.stderr, stats.sem(differences), rel_tol=1e-9)
    assert math.isclose(report.z, test.statistic, rel_tol=1e-9)
    assert report.model.loss == xs.token_cross_entropy(model, mask)
    assert (
        report.baseline.perplexity
        == xs.TokenCrossEntropy().update(baseline, mask).compute().perplexity
    )
    # by= groups and a frame source: each group as its own comparison
    frame = pl.DataFrame({"a": model, "b": baseline, "m": mask, "g": rng.integers(0, 3, n)})
    grouped = xs.compare(
        frame,
        xs.TokenCrossEntropy(),
        preds="a",
        baseline_preds="b",
        target="m",
        by="g",
        batch_rows=999,
    )
    assert _dumped(grouped.overall) == _dumped(report)
    for (key,), group in grouped.groups.items():
        rows = frame["g"].to_numpy() == key
        alone = xs.Comparison(xs.TokenCrossEntropy())
        alone.update(model[rows], baseline[rows], mask[rows])
        assert _dumped(group) == _dumped(alone.compute())


def test_command_line_refuses_token_calibration(tmp_path, capsys):
    """Token values carry no distribution to calibrate: compare and evaluate refuse
    --calibration-bins with a clear line, no crash (the comparison itself works:
    tests/test_compare_tokens.py)."""
    path = tmp_path / "tokens.parquet"
    pl.DataFrame({"a": [-0.5, -1.0], "b": [-0.7, -0.2]}).write_parquet(path)
    common = [str(path), "--preds", "a", "--input", "target-logprob", "--calibration-bins", "5"]
    runs = [["compare", *common, "--baseline-preds", "b"], ["evaluate", *common]]
    for argv, needle in zip(runs, ["--calibration-bins"] * 2, strict=True):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("xentstream: error:") and needle in err


# -- the evaluation path: stream, checkpoints (Dask: tests/test_dask.py) --------------------

evaluation_module = importlib.import_module("xentstream.evaluation")
_COLUMNS = {"preds": "new", "baseline_preds": "old", "target": "y"}


def _dumped(report) -> str:
    """Every field of a (grouped) comparison report; floats by repr, so equal strings
    are equal bits."""
    return json.dumps(report.to_dict(), sort_keys=True)


@pytest.fixture
def every_batch(monkeypatch):
    """Write the checkpoint after every batch."""
    monkeypatch.setattr(evaluation_module, "CHECKPOINT_INTERVAL_S", 0.0)


def test_stream_yields_the_running_comparison(rng):
    frame, model, base, labels = _frame(rng)
    reports = list(xs.stream(frame, xs.Comparison(xs.CrossEntropy()), batch_rows=700, **_COLUMNS))
    assert [r.count for r in reports] == [700, 1400, 2100, 2800, 3000]
    for report, stop in zip(reports, [700, 1400, 2100, 2800, 3000], strict=True):
        prefix = xs.Comparison(xs.CrossEntropy()).update(model[:stop], base[:stop], labels[:stop])
        assert _dumped(report) == _dumped(prefix.compute())
    grouped = frame.with_columns(g=pl.col("id") % 3)
    running = list(
        xs.stream(grouped, xs.Comparison(xs.CrossEntropy()), by="g", batch_rows=1000, **_COLUMNS)
    )
    assert [type(r) for r in running] == [xs.GroupedComparison] * 3
    whole = xs.compare(grouped, xs.CrossEntropy(), by="g", **_COLUMNS)
    assert _dumped(running[-1]) == _dumped(whole)
    # evaluate of a comparison is compare
    assert _dumped(xs.evaluate(frame, xs.Comparison(xs.CrossEntropy()), **_COLUMNS)) == _dumped(
        xs.compare(frame, xs.CrossEntropy(), **_COLUMNS)
    )


def _interrupt_after(batches: int, source, comparison, **options) -> int:
    """Run ``stream`` for ``batches`` batches, then stop as a killed run would."""
    running = xs.stream(source, comparison, **options)
    for _ in range(batches):
        report = next(running)
    running.close()
    overall = report.overall if isinstance(report, xs.GroupedComparison) else report
    return overall.count + overall.model.ignored


@pytest.mark.usefixtures("every_batch")
@pytest.mark.parametrize("case", ["one-source", "by", "two-sources", "weighted-ignore-index"])
def test_checkpoint_interrupted_and_resumed_is_bitwise_equal(rng, tmp_path, case):
    frame, *_ = _frame(rng)
    frame = frame.with_columns(g=(pl.col("id") * 7) % 5, w=pl.Series(rng.uniform(0.1, 2, 3000)))
    source = tmp_path / "new.parquet"
    frame.write_parquet(source)
    metric = xs.CrossEntropy
    options = dict(_COLUMNS)
    if case == "by":
        options["by"] = "g"
    if case == "two-sources":
        frame.select("id", "old", "y")[:1300].write_parquet(tmp_path / "old-0.parquet")
        frame.select("id", "old", "y")[1300:].write_parquet(tmp_path / "old-1.parquet")
        options.update(baseline_source=str(tmp_path / "old-*.parquet"), row_id="id")
    if case == "weighted-ignore-index":
        options["sample_weight"] = "w"
        metric = lambda: xs.CrossEntropy(ignore_index=2)  # noqa: E731
    uninterrupted = xs.compare(source, metric(), batch_rows=256, **options)
    path = tmp_path / "run.ckpt"
    consumed = _interrupt_after(
        2, source, xs.Comparison(metric()), checkpoint=path, batch_rows=256, **options
    )
    assert consumed == 512
    saved = json.loads(path.read_text())
    assert saved["rows_consumed"] == 512
    assert saved["fingerprint"]["metric"] == "Comparison"
    assert saved["metric"]["format"] == "xentstream.comparison"
    assert (saved["groups"] is None) == (case != "by")
    # the rerun (another batch size: the split does not matter) starts where it stopped
    comparison = xs.Comparison(metric())
    resumed = list(xs.stream(source, comparison, checkpoint=path, batch_rows=500, **options))
    first = resumed[0].overall if case == "by" else resumed[0]
    assert first.count + first.model.ignored == 512 + 500
    assert len(resumed) == -(-(3000 - 512) // 500)
    assert _dumped(resumed[-1]) == _dumped(uninterrupted)
    assert json.loads(path.read_text())["rows_consumed"] == 3000
    # a rerun of a finished run reads everything from the checkpoint
    again = xs.compare(source, metric(), checkpoint=path, **options)
    assert _dumped(again) == _dumped(uninterrupted)
    assert comparison.rows_seen == 3000


@pytest.mark.usefixtures("every_batch")
def test_checkpoint_of_a_comparison_is_its_own(rng, tmp_path):
    frame, *_ = _frame(rng, 1000)
    source = tmp_path / "t.parquet"
    frame.write_parquet(source)
    path = tmp_path / "run.ckpt"
    xs.evaluate(source, xs.CrossEntropy(), preds="new", target="y", checkpoint=path)
    with pytest.raises(ValueError, match="written for another run"):
        xs.compare(source, xs.CrossEntropy(), checkpoint=path, **_COLUMNS)
    path.unlink()
    xs.compare(source, xs.CrossEntropy(), checkpoint=path, **_COLUMNS)
    with pytest.raises(ValueError, match=r"written for another run.*columns"):
        xs.compare(
            source, xs.CrossEntropy(), checkpoint=path, **{**_COLUMNS, "baseline_preds": "new"}
        )
    with pytest.raises(ValueError, match="written for another run"):
        xs.compare(source, xs.CrossEntropy(label_smoothing=0.1), checkpoint=path, **_COLUMNS)


@pytest.mark.usefixtures("every_batch")
def test_resumed_run_names_the_stream_row(rng, tmp_path):
    frame, *_ = _frame(rng, 2000)
    old = frame["old"].to_numpy().copy()
    old[1500, 1] = 1.5
    source = tmp_path / "t.parquet"
    frame.with_columns(pl.Series("old", old)).write_parquet(source)
    path = tmp_path / "run.ckpt"
    options = {"checkpoint": path, "batch_rows": 256, **_COLUMNS}
    assert _interrupt_after(2, source, xs.Comparison(xs.CrossEntropy()), **options) == 512
    comparison = xs.Comparison(xs.CrossEntropy())
    with pytest.raises(xs.DataError, match=r"old: row 1500") as raised:
        xs.compare(source, comparison, **options)
    assert raised.value.row == 1500
    # the batches before the bad one were kept, and saved
    assert comparison.rows_seen == json.loads(path.read_text())["rows_consumed"] == 1280


@pytest.mark.usefixtures("every_batch")
def test_checkpointed_iterable_of_tuples_resumes(rng, tmp_path):
    model, base, labels = _two_models(rng, 1000)
    cuts = range(0, 1000, 150)

    def batches():  # one-shot, as a generator is
        return ((model[i : i + 150], base[i : i + 150], labels[i : i + 150]) for i in cuts)

    path = tmp_path / "run.ckpt"
    with pytest.raises(ValueError, match="checkpoint_key"):
        xs.compare(batches(), xs.CrossEntropy(), checkpoint=path)
    options = {"checkpoint": path, "checkpoint_key": "pairs-v1"}
    assert _interrupt_after(3, batches(), xs.Comparison(xs.CrossEntropy()), **options) == 450
    resumed = xs.compare(batches(), xs.CrossEntropy(), **options)
    direct = xs.Comparison(xs.CrossEntropy()).update(model, base, labels)
    assert _dumped(resumed) == _dumped(direct.compute())


def test_comparison_arguments_need_a_comparison(rng):
    frame, *_ = _frame(rng, 100)
    for name, value in [("baseline_preds", "old"), ("row_id", "id"), ("baseline_source", frame)]:
        with pytest.raises(ValueError, match=f"^{name}: only for a comparison"):
            xs.evaluate(frame, xs.CrossEntropy(), preds="new", target="y", **{name: value})
    with pytest.raises(ValueError, match=r"^baseline_preds: required"):
        xs.evaluate(frame, xs.Comparison(xs.CrossEntropy()), preds="new", target="y")


def test_comparison_pickles_and_loads_like_a_metric(rng):
    model, base, labels = _two_models(rng, 300)
    comparison = xs.Comparison(xs.CrossEntropy()).update(model, base, labels)
    copy = pickle.loads(pickle.dumps(comparison))
    assert copy.state_dict() == comparison.state_dict()
    copy.update(model, base, labels)  # its lock was recreated
    assert copy.rows_seen == 600
    loaded = xs.Comparison(xs.CrossEntropy()).load_state_dict(comparison.state_dict())
    assert loaded.state_dict() == comparison.state_dict()
    other = xs.Comparison(xs.CrossEntropy(label_smoothing=0.1))
    before = other.state_dict()
    with pytest.raises(ValueError, match="load_state_dict: configurations differ"):
        other.load_state_dict(comparison.state_dict())
    assert other.state_dict() == before
