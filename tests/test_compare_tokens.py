"""Paired comparisons of two language models' tokens, in Python and on the command line.

Expected values: scipy's paired t-test on per-token loss differences that numpy float64
(tests/reference.py) computes, the clustered standard error written out in float64
(reference.clustered_stderr), and the one-model ``evaluate`` command's own report.
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from reference import clustered_stderr, multiclass_rows
from scipy import stats

import xentstream as xs
from xentstream import cli

_LN2 = math.log(2.0)


def _dumped(report) -> str:
    """Every field of a report; floats by repr, so equal strings are equal bits."""
    return json.dumps(report.to_dict(), sort_keys=True)


@pytest.fixture
def two_models(tmp_path, rng):
    """Two models' target log-probabilities on the same tokens: documents, bytes, padding."""
    n = 3000
    model = -rng.exponential(1.5, size=n)
    baseline = np.minimum(model + rng.normal(0.1, 0.4, size=n), 0.0)
    frame = pl.DataFrame(
        {
            "lp_a": model,
            "lp_b": baseline,
            "mask": rng.random(n) > 0.1,
            "doc": [f"d{k:02d}" for k in rng.integers(0, 30, size=n)],
            "bytes": rng.integers(1, 5, size=n),
            "split": rng.integers(0, 3, size=n),
        }
    )
    path = tmp_path / "tokens.parquet"
    frame.write_parquet(path)
    return path, frame


def _run(capsys, argv: list[str]) -> dict:
    assert cli.main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_compare_command_on_token_logprobs_against_scipy(two_models, capsys):
    """`compare --input target-logprob --document --units`: the paired statistics of the
    per-token NLL differences are scipy's paired t-test; each model's report is what
    `evaluate` of that model alone reports, bit for bit (clustered errors, bits per
    byte, the per-document table)."""
    path, frame = two_models
    mask = frame["mask"].to_numpy()
    nll_a, nll_b = -frame["lp_a"].to_numpy()[mask], -frame["lp_b"].to_numpy()[mask]
    columns = ["--input", "target-logprob", "--target", "mask", "--document", "doc"]
    columns += ["--units", "bytes", "--per-class", "--format", "json"]
    shown = _run(
        capsys,
        ["compare", str(path), "--preds", "lp_a", "--baseline-preds", "lp_b", *columns],
    )
    differences = nll_a - nll_b
    test = stats.ttest_rel(nll_a, nll_b)
    assert shown["count"] == mask.sum()
    assert math.isclose(shown["difference"], differences.mean(), rel_tol=1e-12)
    assert math.isclose(shown["stderr"], stats.sem(differences), rel_tol=1e-9)
    assert math.isclose(shown["z"], test.statistic, rel_tol=1e-9)
    assert shown["model_better_rows"] == np.count_nonzero(differences < 0)
    # Each model alone, through evaluate: the same report, bit for bit.
    for side, column in (("model", "lp_a"), ("baseline", "lp_b")):
        alone = _run(capsys, ["evaluate", str(path), "--preds", column, *columns])
        assert json.dumps(shown[side], sort_keys=True) == json.dumps(alone, sort_keys=True)
    # ... and against float64 formulas: documents as clusters, bits per byte.
    kept = frame.filter(pl.col("mask"))
    per_doc = (
        kept.with_columns(d=pl.Series(differences))
        .group_by("doc")
        .agg(pl.col("d").sum(), pl.len().cast(pl.Float64).alias("tokens"))
    )
    paired = clustered_stderr(per_doc["d"].to_numpy(), per_doc["tokens"].to_numpy())
    assert math.isclose(shown["clustered_stderr"], paired, rel_tol=1e-9)
    # The verdict's interval and p-value: the clustered ones (scipy's normal law).
    low, high = stats.norm.interval(0.95, loc=differences.mean(), scale=paired)
    assert np.allclose(shown["clustered_ci95"], [low, high], rtol=1e-9)
    expected_p = 2 * stats.norm.sf(abs(differences.mean()) / paired)
    assert math.isclose(shown["clustered_p_value"], expected_p, rel_tol=1e-6)
    for side, nll in (("model", nll_a), ("baseline", nll_b)):
        per_doc = (
            kept.with_columns(nll=pl.Series(nll))
            .group_by("doc")
            .agg(pl.col("nll").sum(), pl.len().cast(pl.Float64).alias("tokens"))
        )
        expected = clustered_stderr(per_doc["nll"].to_numpy(), per_doc["tokens"].to_numpy())
        assert math.isclose(shown[side]["clustered_stderr"], expected, rel_tol=1e-9)
        bits = nll.sum() / (_LN2 * kept["bytes"].sum())
        assert math.isclose(shown[side]["bits_per_unit"], bits, rel_tol=1e-12)
        assert shown[side]["unit"] == "byte"
        assert shown[side]["documents"] == per_doc.height


def test_compare_table_shows_the_documents_side_by_side(two_models, capsys):
    """The table: each model's document statistics side by side and, with --per-class,
    one row per document: both losses and their difference (numpy's per-document
    means of the masked tokens)."""
    path, frame = two_models
    argv = ["compare", str(path), "--preds", "lp_a", "--baseline-preds", "lp_b"]
    argv += ["--input", "target-logprob", "--target", "mask", "--document", "doc"]
    argv += ["--units", "bytes", "--per-class"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for label in ("clustered_stderr", "document_perplexity", "bits_per_byte", "model_loss"):
        assert label in out
    assert out.count("clustered_stderr") == 2  # the difference's, and each model's row
    assert "nats per token, documents as clusters" in out  # the verdict's honest interval
    report = xs.compare(
        path,
        xs.TokenCrossEntropy(per_document=True),
        preds="lp_a",
        baseline_preds="lp_b",
        target="mask",
        document="doc",
    )
    table = report.per_document
    kept = frame.filter(pl.col("mask"))
    for column, side in (("lp_a", "model_loss"), ("lp_b", "baseline_loss")):
        means = kept.group_by("doc").agg((-pl.col(column)).mean()).sort("doc")
        assert table["document"].to_list() == means["doc"].to_list()
        np.testing.assert_allclose(table[side].to_numpy(), means[column].to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(
        table["difference"].to_numpy(),
        table["model_loss"].to_numpy() - table["baseline_loss"].to_numpy(),
    )
    assert (
        report.per_document is not None
        and xs.compare(
            path, xs.TokenCrossEntropy(), preds="lp_a", baseline_preds="lp_b", document="doc"
        ).per_document
        is None
    )  # without per_document=True: no table


def test_grouped_and_two_source_token_comparisons_are_bitwise(two_models, tmp_path):
    """by= groups: each group's comparison (its documents' clustered errors too) is the
    comparison of its rows alone; a baseline in another file (no mask: every token)
    gives the bits of the one-file comparison."""
    path, frame = two_models
    options = {"preds": "lp_a", "baseline_preds": "lp_b", "document": "doc", "units": "bytes"}
    metric = xs.TokenCrossEntropy(unit="byte")
    grouped = xs.compare(path, metric, by="split", target="mask", batch_rows=700, **options)
    for (key,), group in grouped.groups.items():
        rows = frame.filter(pl.col("split") == key)
        alone = xs.Comparison(xs.TokenCrossEntropy(unit="byte")).update(
            rows["lp_a"].to_numpy(),
            rows["lp_b"].to_numpy(),
            rows["mask"].to_numpy(),
            document=rows["doc"].to_list(),
            units=rows["bytes"].to_numpy(),
        )
        assert group.model.clustered_stderr is not None
        assert _dumped(group) == _dumped(alone.compute())
    baseline_path = tmp_path / "baseline.parquet"
    frame.select("lp_b").write_parquet(baseline_path)
    one_file = xs.compare(path, metric, batch_rows=500, **options)
    two_files = xs.compare(path, metric, baseline_source=baseline_path, batch_rows=333, **options)
    assert _dumped(two_files) == _dumped(one_file)
    assert one_file.count == frame.height
    plain = xs.compare(path, metric, preds="lp_a", baseline_preds="lp_b", units="bytes")
    assert plain.clustered_stderr is None and plain.model.bits_per_unit is not None


def test_compare_command_on_token_logits_against_scipy(tmp_path, rng, capsys):
    """(T, V) logits per row and T token ids, -100 padding: the multiclass task over
    tokens; the paired statistics are scipy's paired t-test on the per-token
    differences of numpy float64 cross-entropies."""
    rows, length, vocab = 60, 12, 9
    logits_a = rng.normal(0.0, 2.0, size=(rows, length, vocab))
    logits_b = logits_a + rng.normal(0.0, 1.0, size=logits_a.shape)
    tokens = rng.integers(0, vocab, size=(rows, length))
    tokens[rng.random(tokens.shape) < 0.15] = -100
    frame = pl.DataFrame(
        {
            "a": pl.Series(logits_a, dtype=pl.Array(pl.Float64, (length, vocab))),
            "b": pl.Series(logits_b, dtype=pl.Array(pl.Float64, (length, vocab))),
            "tokens": pl.Series(tokens, dtype=pl.Array(pl.Int64, length)),
        }
    )
    path = tmp_path / "lm.parquet"
    frame.write_parquet(path)
    argv = ["compare", str(path), "--preds", "a", "--baseline-preds", "b", "--target", "tokens"]
    argv += ["--input", "logits", "--ignore-index", "-100"]
    shown = _run(capsys, [*argv, "--format", "json", "--batch-rows", "7"])
    kept = tokens != -100
    loss_a = multiclass_rows(logits_a, tokens, input="logits", ignore_index=-100).losses[kept]
    loss_b = multiclass_rows(logits_b, tokens, input="logits", ignore_index=-100).losses[kept]
    test = stats.ttest_rel(loss_a, loss_b)
    assert shown["count"] == kept.sum()
    assert math.isclose(shown["difference"], (loss_a - loss_b).mean(), rel_tol=1e-9)
    assert math.isclose(shown["stderr"], stats.sem(loss_a - loss_b), rel_tol=1e-9)
    assert math.isclose(shown["z"], test.statistic, rel_tol=1e-9)
    assert math.isclose(shown["model"]["loss"], loss_a.mean(), rel_tol=1e-12)
    # Documents belong to the tokens task of target log-probabilities, as in evaluate.
    assert cli.main([*argv, "--document", "tokens"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--document: applies to --input target-logprob" in err


def test_bad_token_comparisons_are_refused_and_change_nothing():
    """Side columns for a metric without them, and documents in some batches only:
    a ValueError naming the column, the comparison unchanged."""
    plain = xs.Comparison(xs.CrossEntropy())
    with pytest.raises(ValueError, match=r"^document: a comparison of CrossEntropy takes no"):
        plain.update([[0.6, 0.4]], [[0.5, 0.5]], [0], document=["d"])
    assert plain.rows_seen == 0
    tokens = xs.Comparison(xs.TokenCrossEntropy())
    tokens.update([-0.5, -1.0], [-0.7, -0.2], None, document=["a", "b"])
    before = _dumped(tokens.compute())
    with pytest.raises(ValueError, match=r"^doc_id: the rows before had document ids"):
        tokens.update([-0.5], [-0.7], None, document_name="doc_id")
    with pytest.raises(ValueError, match=r"^lp_b: row 2: log-probability 0.5 is positive"):
        tokens.update([-0.5], [0.5], None, document=["a"], baseline_name="lp_b")
    assert _dumped(tokens.compute()) == before


def test_compare_help_examples_are_commands_it_takes(capsys):
    """Every example of `compare --help` parses as a compare command line."""
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    shown = capsys.readouterr().out
    examples = shown.split("examples:\n", 1)[1].replace("\\\n", " ")
    commands = [line.split() for line in examples.splitlines() if "xentstream compare" in line]
    assert len(commands) == 5 and any("target-logprob" in c for c in commands)
    assert any("--dask" in c for c in commands)
    for words in commands:
        parsed = cli._parser().parse_args(words[1:])
        assert parsed.command == "compare" and parsed.preds and parsed.baseline_preds
