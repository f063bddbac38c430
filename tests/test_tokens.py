"""The token kind (issue 20): target log-probabilities, documents, units, standard errors.

Expected values come from torch (a real ``log_softmax`` gather), ``math.fsum`` /
``fractions`` and plain float64 numpy written out here, never from xentstream.
"""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest
from reference import clustered_stderr as _clustered
from reference import exact_mean, exact_sum

import xentstream as xs

torch = pytest.importorskip("torch")

_Z95 = NormalDist().inv_cdf(0.975)


def _torch_dump(rng: np.random.Generator, rows: int, vocab: int, dtype=torch.float64):
    """Logits, targets, and the target log-probabilities, gathered by torch."""
    logits = torch.from_numpy(rng.normal(0.0, 2.0, size=(rows, vocab))).to(dtype)
    target = torch.from_numpy(rng.integers(0, vocab, size=rows))
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    return logits, target, logprobs


def _per_document(lp, docs, weights=None, units=None):
    """Per-document (sum s L, sum s, sum s u), by plain Python loops over the rows."""
    weights = np.ones(len(lp)) if weights is None else np.asarray(weights, float)
    units = np.zeros(len(lp)) if units is None else np.asarray(units, float)
    keys = sorted(set(docs.tolist()))
    out = {}
    for key in keys:
        rows = [i for i in range(len(lp)) if docs[i] == key]
        out[key] = (
            math.fsum(weights[i] * -float(lp[i]) for i in rows),
            math.fsum(weights[i] for i in rows),
            math.fsum(weights[i] * units[i] for i in rows),
        )
    return out


# -- the loss against torch and exact references -----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_the_exact_mean_of_torch_target_logprobs(rng, dtype) -> None:
    logits, target, logprobs = _torch_dump(rng, 3000, 37, dtype)
    values = logprobs.numpy()
    report = xs.TokenCrossEntropy().update(values).compute()
    terms = [-float(v) for v in values]
    assert report.loss == exact_mean(terms, [1.0] * len(terms))
    assert report.loss_sum == math.fsum(terms)
    assert report.count == 3000
    torch_loss = torch.nn.functional.cross_entropy(logits.double(), target).item()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert report.loss == pytest.approx(torch_loss, rel=tolerance)
    assert report.perplexity == pytest.approx(math.exp(torch_loss), rel=tolerance)
    assert report.bits == pytest.approx(torch_loss / math.log(2.0), rel=tolerance)


def test_logits_and_target_logprobs_give_the_same_perplexity(rng) -> None:
    logits, target, logprobs = _torch_dump(rng, 2000, 50)
    full = xs.CrossEntropy(input="logits").update(logits.numpy(), target.numpy()).compute()
    tokens = xs.TokenCrossEntropy().update(logprobs.numpy()).compute()
    assert tokens.loss == pytest.approx(full.loss, rel=1e-12)
    assert tokens.perplexity == pytest.approx(full.perplexity, rel=1e-12)
    assert tokens.stderr == pytest.approx(full.stderr, rel=1e-9)


def test_nll_input_is_the_negated_logprob(rng) -> None:
    _, _, logprobs = _torch_dump(rng, 500, 11)
    lp = logprobs.numpy()
    a = xs.TokenCrossEntropy().update(lp).compute()
    b = xs.TokenCrossEntropy(input="nll").update(-lp).compute()
    assert a == b


def test_sample_weights_and_mask(rng) -> None:
    lp = -rng.exponential(2.0, size=1000)
    weights = rng.uniform(0.0, 3.0, size=1000)
    mask = rng.random(1000) > 0.2
    lp_with_padding = np.where(mask, lp, np.nan)  # padding values are never looked at
    report = xs.TokenCrossEntropy().update(lp_with_padding, mask, weights).compute()
    kept = np.flatnonzero(mask)
    numerator = [weights[i] * -lp[i] for i in kept]
    denominator = [weights[i] for i in kept]
    assert report.loss == exact_mean(numerator, denominator)
    assert report.count == kept.size
    assert report.ignored == 1000 - kept.size
    assert report.weight_sum == math.fsum(denominator)
    # per-token stderr: Kish's effective n and the weighted variance (report.py)
    mean = float(exact_sum(numerator) / exact_sum(denominator))
    variance = math.fsum(weights[i] * (-lp[i] - mean) ** 2 for i in kept) / math.fsum(denominator)
    n_eff = math.fsum(denominator) ** 2 / math.fsum(weights[i] ** 2 for i in kept)
    assert report.stderr == pytest.approx(math.sqrt(variance / (n_eff - 1)), rel=1e-9)
    assert xs.token_cross_entropy(lp_with_padding, mask, sample_weight=weights) == report.loss


def test_integer_mask_and_functional_sum(rng) -> None:
    lp = -rng.exponential(1.0, size=64)
    mask = (rng.random(64) > 0.5).astype(np.int8)
    expected = math.fsum(-lp[i] for i in range(64) if mask[i])
    assert xs.token_cross_entropy(lp, mask, reduction="sum") == expected
    assert xs.TokenCrossEntropy().update(lp, mask).compute().loss_sum == expected


# -- documents ------------------------------------------------------------------------------


def test_documents_against_plain_formulas(rng) -> None:
    n = 1500
    lp = -rng.exponential(2.0, size=n)
    docs = rng.integers(0, 37, size=n)  # interleaved: documents are not contiguous
    units = rng.integers(1, 6, size=n).astype(float)
    report = (
        xs.TokenCrossEntropy(per_document=True).update(lp, document=docs, units=units).compute()
    )
    per_doc = _per_document(lp, docs, units=units)
    a = np.array([v[0] for v in per_doc.values()])
    b = np.array([v[1] for v in per_doc.values()])
    u = np.array([v[2] for v in per_doc.values()])
    assert report.documents == len(per_doc)
    assert report.clustered_stderr == pytest.approx(_clustered(a, b), rel=1e-9)
    assert report.document_perplexity == pytest.approx(
        math.fsum(math.exp(x / y) for x, y in zip(a, b, strict=True)) / len(a), rel=1e-12
    )
    assert report.bits_per_unit == exact_mean(-lp, units) / math.log(2.0)
    assert report.bits_per_unit_stderr == pytest.approx(_clustered(a, u) / math.log(2.0), rel=1e-9)
    table = report.per_document
    assert table["document"].to_list() == sorted(per_doc)
    assert table["tokens"].to_list() == [int(np.sum(docs == k)) for k in sorted(per_doc)]
    assert table["loss"].to_numpy() == pytest.approx(a / b, rel=1e-15)
    assert table["perplexity"].to_numpy() == pytest.approx(np.exp(a / b), rel=1e-14)
    assert table["bits_per_unit"].to_numpy() == pytest.approx(a / u / math.log(2), rel=1e-14)


def test_one_token_documents_give_the_per_token_stderr(rng) -> None:
    lp = -rng.exponential(1.0, size=400)
    report = xs.TokenCrossEntropy().update(lp, document=np.arange(400)).compute()
    assert report.clustered_stderr == pytest.approx(report.stderr, rel=1e-9)


def test_string_documents_weights_and_mask(rng) -> None:
    n = 600
    lp = -rng.exponential(1.5, size=n)
    docs = np.array([f"doc-{k}" for k in rng.integers(0, 12, size=n)], dtype=object)
    weights = rng.uniform(0.5, 2.0, size=n)
    mask = rng.random(n) > 0.1
    report = (
        xs.TokenCrossEntropy(per_document=True)
        .update(lp, mask, weights, document=docs.tolist())
        .compute()
    )
    kept = np.flatnonzero(mask)
    per_doc = _per_document(lp[kept], docs[kept], weights=weights[kept])
    a = np.array([v[0] for v in per_doc.values()])
    b = np.array([v[1] for v in per_doc.values()])
    assert report.clustered_stderr == pytest.approx(_clustered(a, b), rel=1e-9)
    table = report.per_document
    assert table["document"].to_list() == sorted(per_doc)
    assert sum(table["ignored"].to_list()) == n - kept.size


def test_bits_per_unit_without_documents_is_the_delta_method(rng) -> None:
    n = 800
    lp = -rng.exponential(1.0, size=n)
    units = rng.integers(1, 8, size=n).astype(float)
    weights = rng.uniform(0.1, 2.0, size=n)
    report = xs.TokenCrossEntropy(unit="byte").update(lp, None, weights, units=units).compute()
    loss_terms = weights * -lp
    unit_terms = weights * units
    ratio = float(exact_sum(loss_terms) / exact_sum(unit_terms))
    assert report.bits_per_unit == ratio / math.log(2.0)
    residuals = [x - ratio * y for x, y in zip(loss_terms, unit_terms, strict=True)]
    expected = math.sqrt(n / (n - 1) * math.fsum(r * r for r in residuals)) / math.fsum(unit_terms)
    assert report.bits_per_unit_stderr == pytest.approx(expected / math.log(2.0), rel=1e-9)
    assert report.units == math.fsum(unit_terms)
    assert report.clustered_stderr is None and report.documents is None


def test_clustered_stderr_covers_where_the_per_token_one_does_not() -> None:
    """Synthetic correlated documents: each has its own scale of the token losses."""
    rng = np.random.default_rng(20)
    mean_loss, spread, n_docs, repeats = 2.0, 0.6, 40, 300
    covered = {"stderr": 0, "clustered_stderr": 0}
    for _ in range(repeats):
        lengths = rng.integers(30, 70, size=n_docs)
        # E[loss] = mean_loss for every token: a lognormal document scale of mean 1.
        scale = np.exp(spread * rng.normal(size=n_docs) - spread**2 / 2)
        docs = np.repeat(np.arange(n_docs), lengths)
        nll = mean_loss * scale[docs] * rng.exponential(1.0, size=docs.size)
        report = xs.TokenCrossEntropy(input="nll").update(nll, document=docs).compute()
        for name in covered:
            half = _Z95 * getattr(report, name)
            covered[name] += abs(report.loss - mean_loss) <= half
    coverage = {name: count / repeats for name, count in covered.items()}
    assert 0.88 <= coverage["clustered_stderr"] <= 0.99, coverage
    assert coverage["stderr"] <= 0.75, coverage


# -- exactness: splits, merges, state files -----------------------------------------------


def _stream(rng, n=5000, docs=25):
    lp = -rng.exponential(2.0, size=n)
    return (
        lp,
        rng.random(n) > 0.05,
        rng.uniform(0.0, 2.0, size=n),
        rng.integers(0, docs, size=n),
        rng.integers(1, 5, size=n).astype(float),
    )


def _metric(parts, **options):
    metric = xs.TokenCrossEntropy(per_document=True, **options)
    for lp, mask, weights, docs, units in parts:
        metric.update(lp, mask, weights, document=docs, units=units)
    return metric


def _split(columns, cuts):
    bounds = [0, *cuts, len(columns[0])]
    return [tuple(c[a:b] for c in columns) for a, b in itertools.pairwise(bounds)]


def _same(a: xs.Report, b: xs.Report) -> None:
    assert a == b
    assert a.per_document.equals(b.per_document)


def test_bitwise_for_any_split_and_merge_order(rng) -> None:
    columns = _stream(rng)
    one = _metric([columns])
    report = one.compute()
    for cuts in ([1], [17, 18, 4000], sorted(rng.choice(4999, 30, replace=False) + 1)):
        parts = _split(columns, list(cuts))
        _same(_metric(parts).compute(), report)
        shards = [_metric([part]) for part in parts]
        order = rng.permutation(len(shards))
        merged = xs.TokenCrossEntropy(per_document=True)
        for index in order:
            merged.merge(shards[index])
        _same(merged.compute(), report)
    assert report.clustered_stderr is not None and report.bits_per_unit_stderr is not None


def test_state_file_round_trip(tmp_path, rng) -> None:
    columns = _stream(rng, n=800, docs=9)
    metric = _metric(_split(columns, [300]))
    path = tmp_path / "state.json"
    metric.save(path)
    loaded = xs.load(path)
    assert isinstance(loaded, xs.TokenCrossEntropy)
    _same(loaded.compute(), metric.compute())
    assert json.loads(path.read_text())["documents"][0].keys() == {"key", "sums", "counts"}
    # resumed: the loaded state plus the rest equals one pass
    rest = _split(_stream(np.random.default_rng(1), n=300, docs=4), [])
    loaded.update(*rest[0][:3], document=rest[0][3], units=rest[0][4])
    metric.update(*rest[0][:3], document=rest[0][3], units=rest[0][4])
    _same(loaded.compute(), metric.compute())


def test_state_file_with_inconsistent_documents_is_refused(rng) -> None:
    state = _metric([_stream(rng, n=100, docs=3)]).state_dict()
    state["documents"][0]["counts"][0] += 1
    with pytest.raises(ValueError, match="documents: hold"):
        xs.Metric.from_state_dict(state)
    state = _metric([_stream(rng, n=100, docs=3)]).state_dict()
    state["documents"].append(dict(state["documents"][0]))
    with pytest.raises(ValueError, match="appears twice"):
        xs.Metric.from_state_dict(state)
    state = _metric([_stream(rng, n=100, docs=3)]).state_dict()
    del state["unit_sums"]["units"]
    with pytest.raises(ValueError, match="unit_sums"):
        xs.Metric.from_state_dict(state)


def test_documents_must_be_given_always_or_never(rng) -> None:
    lp = -rng.exponential(1.0, size=10)
    metric = xs.TokenCrossEntropy().update(lp, document=np.zeros(10, int))
    before = metric.state_dict()
    with pytest.raises(ValueError, match="every batch needs them"):
        metric.update(lp)
    assert metric.state_dict() == before
    plain = xs.TokenCrossEntropy().update(lp)
    with pytest.raises(ValueError, match="document ids"):
        plain.update(lp, document=np.zeros(10, int))
    with pytest.raises(ValueError, match="rows with document ids and rows without"):
        plain.merge(metric)


def test_window_loss_is_the_exact_mean_of_the_last_tokens(rng) -> None:
    lp = -rng.exponential(1.0, size=300)
    mask = rng.random(300) > 0.3
    metric = xs.TokenCrossEntropy(window=50)
    metric.update(lp[:200], mask[:200]).update(lp[200:], mask[200:])
    last = [-lp[i] for i in np.flatnonzero(mask)[-50:]]
    assert metric.compute().window_loss == float(Fraction(exact_sum(last)) / 50)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input", "value", "rule"),
    [
        ("logprobs", float("nan"), "NaN"),
        ("logprobs", 0.5, "positive"),
        ("logprobs", float("inf"), r"\+inf"),
        ("logprobs", float("-inf"), "-inf"),
        ("nll", -0.5, "negative"),
        ("nll", float("inf"), r"\+inf"),
    ],
)
def test_bad_values_name_the_stream_row(input, value, rule) -> None:
    good = np.full(10, -0.5 if input == "logprobs" else 0.5)
    bad = good.copy()
    bad[7] = value
    metric = xs.TokenCrossEntropy(input=input).update(good)
    before = metric.state_dict()
    with pytest.raises(ValueError, match=rf"^preds: row 17: .*{rule}"):
        metric.update(bad, document=None)
    assert metric.state_dict() == before
    assert xs.TokenCrossEntropy(input=input, validate=False).update(bad).compute().count == 10


def test_bad_side_columns() -> None:
    lp = np.full(6, -1.0)
    metric = xs.TokenCrossEntropy()
    with pytest.raises(ValueError, match=r"^sample_weight: row 2: weight -1\.0"):
        metric.update(lp, None, [1, 1, -1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"^units: row 3: units nan"):
        metric.update(lp, units=[1, 1, 1, np.nan, 1, 1])
    with pytest.raises(ValueError, match=r"^target: row 1: mask value 2 is not 0 or 1"):
        metric.update(lp, [1, 2, 1, 1, 1, 1])
    with pytest.raises(TypeError, match="mask must be bool"):
        metric.update(lp, [0.5] * 6)
    with pytest.raises(ValueError, match="does not match"):
        metric.update(lp, units=[1, 2])
    with pytest.raises(ValueError, match="document ids for 6"):
        metric.update(lp, document=[1, 2])
    with pytest.raises(ValueError, match="row 4: value is null"):
        metric.update(lp, document=["a", "b", "c", "d", None, "f"])
    with pytest.raises(TypeError, match="neither an integer nor a string"):
        metric.update(lp, document=["a", "b", "c", "d", 1.5, "f"])
    with pytest.raises(TypeError, match="mix integers and strings"):
        metric.update(lp, document=["a", 1, "c", "d", "e", "f"])
    with pytest.raises(ValueError, match="input: must be one of"):
        xs.TokenCrossEntropy(input="logits")
    assert metric.rows_seen == 0


def test_masked_rows_only_and_empty_batches() -> None:
    metric = xs.TokenCrossEntropy()
    metric.update(np.empty(0))
    assert metric.rows_seen == 0
    report = metric.update([-1.0, -2.0], [False, False], document=[3, 3]).compute()
    assert report.count == 0 and report.ignored == 2
    assert math.isnan(report.loss) and report.documents == 0


# -- evaluate, stream, checkpoints, Dask, the command line --------------------------------


@pytest.fixture
def token_file(tmp_path, rng):
    n = 4000
    frame = pl.DataFrame(
        {
            "lp": -rng.exponential(2.0, size=n),
            "doc_id": [f"d{k}" for k in rng.integers(0, 40, size=n)],
            "bytes": rng.integers(1, 4, size=n),
            "pad": rng.random(n) > 0.05,
            "split": rng.integers(0, 3, size=n),
        }
    )
    path = tmp_path / "tokens.parquet"
    frame.write_parquet(path)
    return path, frame


def _direct(frame, **options):
    metric = xs.TokenCrossEntropy(per_document=True, **options)
    return metric.update(
        frame["lp"].to_numpy(),
        frame["pad"].to_numpy(),
        document=frame["doc_id"].to_list(),
        units=frame["bytes"].to_numpy(),
    )


def _columns():
    return {"preds": "lp", "target": "pad", "document": "doc_id", "units": "bytes"}


def test_evaluate_and_stream_equal_one_update(token_file) -> None:
    path, frame = token_file
    expected = _direct(frame).compute()
    report = xs.evaluate(
        path, xs.TokenCrossEntropy(per_document=True), batch_rows=333, **_columns()
    )
    _same(report, expected)
    reports = list(
        xs.stream(path, xs.TokenCrossEntropy(per_document=True), batch_rows=1000, **_columns())
    )
    assert [r.count + r.ignored for r in reports] == [1000, 2000, 3000, 4000]
    _same(reports[-1], expected)
    grouped = xs.evaluate(path, xs.TokenCrossEntropy(), by="split", batch_rows=500, **_columns())
    assert grouped.overall.clustered_stderr == expected.clustered_stderr
    for (split,), group in grouped.groups.items():
        rows = frame.filter(pl.col("split") == split)
        alone = xs.TokenCrossEntropy().update(
            rows["lp"].to_numpy(),
            rows["pad"].to_numpy(),
            document=rows["doc_id"].to_list(),
            units=rows["bytes"].to_numpy(),
        )
        assert group == alone.compute()  # per group: its documents, clustered errors
        assert group.clustered_stderr is not None and group.documents > 1


def test_evaluate_checks_side_columns(token_file) -> None:
    path, _ = token_file
    with pytest.raises(ValueError, match="document: a column name, for a metric that takes"):
        xs.evaluate(path, xs.CrossEntropy(), preds="lp", target="pad", document="doc_id")
    with pytest.raises(ValueError, match="nope: no such column"):
        xs.evaluate(path, xs.TokenCrossEntropy(), preds="lp", document="nope")
    bad = pl.read_parquet(path).with_columns(
        pl.when(pl.int_range(pl.len()) == 2500).then(-1).otherwise(pl.col("bytes")).alias("bytes")
    )
    with pytest.raises(ValueError, match=r"^bytes: row 2500: units -1\.0"):
        xs.evaluate(bad, xs.TokenCrossEntropy(), batch_rows=1000, **_columns())
    nulls = pl.read_parquet(path).with_columns(
        pl.when(pl.int_range(pl.len()) == 1234).then(None).otherwise("doc_id").alias("doc_id")
    )
    with pytest.raises(ValueError, match=r"^doc_id: row 1234: value is null"):
        xs.evaluate(nulls, xs.TokenCrossEntropy(), batch_rows=1000, **_columns())


def test_checkpoint_resumes_bitwise(token_file, tmp_path) -> None:
    path, frame = token_file
    checkpoint = tmp_path / "run.ckpt"
    options = {"batch_rows": 700, "checkpoint": checkpoint, **_columns()}
    for seen, _ in enumerate(xs.stream(path, xs.TokenCrossEntropy(per_document=True), **options)):
        if seen == 2:
            break  # stopped after three batches; the checkpoint holds them (or nothing yet)
    resumed = xs.evaluate(path, xs.TokenCrossEntropy(per_document=True), **options)
    _same(resumed, _direct(frame).compute())
    assert json.loads(checkpoint.read_text())["rows_consumed"] == 4000


def test_dask_equals_one_process(token_file) -> None:
    pytest.importorskip("dask")
    from xentstream import dask as xd

    path, frame = token_file
    report = xd.evaluate(
        path,
        xs.TokenCrossEntropy(per_document=True),
        partition_rows=900,
        scheduler="sync",
        **_columns(),
    )
    _same(report, _direct(frame).compute())
    options = {"by": "split", "batch_rows": 600, **_columns()}
    grouped = xd.evaluate(
        path, xs.TokenCrossEntropy(), partition_rows=700, scheduler="sync", **options
    )
    assert grouped.groups == xs.evaluate(path, xs.TokenCrossEntropy(), **options).groups


def test_command_line(token_file, tmp_path, capsys) -> None:
    from xentstream.cli import main

    path, frame = token_file
    argv = ["evaluate", str(path), "--input", "target-logprob", "--preds", "lp"]
    argv += ["--target", "pad", "--document", "doc_id", "--units", "bytes", "--no-progress"]
    assert main([*argv, "--format", "json", "--save-state", str(tmp_path / "s.json")]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = _direct(frame, unit="byte").compute()
    for name in ("loss", "perplexity", "stderr", "clustered_stderr", "bits_per_unit"):
        assert shown[name] == getattr(expected, name), name
    assert shown["bits_per_unit_stderr"] == expected.bits_per_unit_stderr
    assert main(argv) == 0
    table = capsys.readouterr().out
    for label in ("perplexity", "stderr", "clustered_stderr", "bits_per_byte ", "documents"):
        assert label in table
    assert main(["merge", str(tmp_path / "s.json"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == expected.loss
    assert main(["evaluate", str(path), "--preds", "lp", "--no-progress"]) == 2
    assert "--target is required" in capsys.readouterr().err
    nll = tmp_path / "nll.parquet"
    pl.read_parquet(path).with_columns(pl.col("lp") * -1).write_parquet(nll)
    assert main(["evaluate", str(nll), "--input", "target-nll", *argv[4:]]) == 0
    assert capsys.readouterr().out == table
    assert main(["evaluate", str(nll), *argv[2:]]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--input target-nll for token" in error[0], error


def test_per_position_curve(tmp_path, rng, capsys) -> None:
    """Loss by token position: ``by=`` on a position column, drawn as a curve by --plot."""
    from xentstream.cli import main

    pytest.importorskip("matplotlib")
    docs, length = 30, 40
    position = np.tile(np.arange(length), docs)
    # later positions are easier (more context): the curve must show it
    nll = rng.exponential(1.0, size=docs * length) * (3.0 - 2.0 * position / length)
    frame = pl.DataFrame({"nll": nll, "pos": position, "doc": np.repeat(np.arange(docs), length)})
    path = tmp_path / "positions.parquet"
    frame.write_parquet(path)
    grouped = xs.evaluate(
        path, xs.TokenCrossEntropy(input="nll"), preds="nll", document="doc", by="pos"
    )
    assert [key for (key,) in grouped.groups] == list(range(length))
    for (key,), report in grouped.groups.items():
        assert report.loss == exact_mean(nll[position == key], [1.0] * docs)
    plot = tmp_path / "curve.png"
    argv = ["evaluate", str(path), "--input", "target-nll", "--preds", "nll", "--by", "pos"]
    assert main([*argv, "--document", "doc", "--plot", str(plot), "--no-progress"]) == 0
    capsys.readouterr()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
