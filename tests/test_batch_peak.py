"""The head's peak for every row of a batch (``BatchForward.peaks``), and the batched samplers
(``Decoder``: ``generate_batch`` and the server) told it under Session's rules.

The head computes a batch's rows in units, each row's peak found per piece while its logits
are in cache: the logits must be bit for bit those of one whole product (the path without
peaks), every peak exactly ``np.argmax`` of its row (ties to the lowest id), the peak a row
gets in a batch the one it gets alone, and NaN rows left to the sampler's own scan.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_head_peak import TOKENS, VOCAB, _model

from smallmind import Engine
from smallmind.batch import Decoder
from smallmind.errors import NonFiniteError, SamplingError
from smallmind.models import _head
from smallmind.sampling import Sampler, SamplingParams
from smallmind.structured import compile_grammar

N_EMBD = 512  # 16 rows of activations outgrow a lane's stack: the head's slots of mm_scratch


def _head_rows(model, ws, rows: np.ndarray, n_threads: int, with_peaks: bool):
    n = len(rows)
    out = np.empty((n, VOCAB), np.float32)
    peaks = np.full(n, -7, np.intp) if with_peaks else None
    _head.lm_head(model.output, ws, 0, n, n_threads, model.output_norm_w, model.output_norm_b,
                  model.final_rmsnorm, model.config.final_logit_softcap, out, rows, peaks)
    return out, peaks


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("softcap", [0.0, 2.0])
@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_batch_rows_peaks_and_logits(kind, softcap, n_threads):
    rng = np.random.default_rng(3)
    # large weights: soft-capped, many logits reach the cap exactly, tied across units
    w = rng.normal(0, 3.0 if softcap else 0.5, size=(VOCAB, N_EMBD)).astype(np.float32)
    model = _model(w, kind, softcap, n_embd=N_EMBD)
    for n in (1, 2, 7, 16):
        batch = model.new_batch(max_seqs=n, capacity=16, n_threads=n_threads)
        try:
            ws = batch.workspace
            ws.arrays["x"][:ws.max_tokens] = rng.normal(0, 1, size=(ws.max_tokens, N_EMBD))
            rows = rng.permutation(ws.max_tokens)[:n].astype(np.intp)
            got, peaks = _head_rows(model, ws, rows, n_threads, True)
            for t in range(n if not softcap else 0):  # each row's of one whole one-row product
                np.testing.assert_array_equal(got[t], model.output.matmul(ws.arrays["xb"][t]))
            want, _ = _head_rows(model, ws, rows, n_threads, False)  # the path without peaks
            np.testing.assert_array_equal(got, want, err_msg=f"{n} rows")
            assert peaks.tolist() == [int(np.argmax(row)) for row in got]
            if softcap:
                assert all((row == row.max()).sum() > 1 for row in got)  # ties: the first wins
            for t in range(n):  # each row alone, as forward() runs it
                alone = _head.lm_head(model.output, ws, int(rows[t]), 1, n_threads, model.output_norm_w,
                                      None, True, softcap)
                np.testing.assert_array_equal(ws.arrays["logits"][0], got[t])
                assert alone == peaks[t]
        finally:
            batch.close()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_nan_row_has_no_peak_and_the_sampler_says_so(n_threads):
    w = np.random.default_rng(5).normal(0, 0.5, size=(VOCAB, N_EMBD)).astype(np.float32)
    model = _model(w, "q8_0", n_embd=N_EMBD)
    batch = model.new_batch(max_seqs=12, capacity=16, n_threads=n_threads)
    try:
        ws = batch.workspace
        ws.arrays["x"][:12] = np.random.default_rng(6).normal(0, 1, size=(12, N_EMBD))
        ws.arrays["x"][4, 7] = np.nan
        got, peaks = _head_rows(model, ws, np.arange(12, dtype=np.intp), n_threads, True)
        assert np.isnan(got[4]).all() and peaks[4] == -1
        assert [int(p) for i, p in enumerate(peaks) if i != 4] == \
            [int(np.argmax(row)) for i, row in enumerate(got) if i != 4]
        with pytest.raises(SamplingError, match="NaN"):
            Sampler(SamplingParams(temperature=0.0), VOCAB)._sample_at(got[4], None, int(peaks[4]))
        dec = Decoder(Engine(model, None), SamplingParams(temperature=0.0), [1], [1], 16)
        with pytest.raises(NonFiniteError):
            dec.step(got[4], int(peaks[4]))
    finally:
        batch.close()


def test_forward_batch_gives_each_sequence_its_peak():
    """Decode steps and prompt chunks of several sequences: each row's peak is the one its
    sequence's forward() alone finds, and np.argmax of its logits."""
    w = np.random.default_rng(7).normal(0, 0.5, size=(VOCAB, 64)).astype(np.float32)
    model = _model(w, "q8_0")
    prompts = [TOKENS, [9, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11]]
    states = [model.new_state(capacity=16) for _ in prompts]
    alone = [model.new_state(capacity=16) for _ in prompts]
    batch = model.new_batch(max_seqs=len(prompts), capacity=16)
    try:
        seqs = list(zip(states, prompts, strict=True))
        for _ in range(3):
            fwd = model.forward_batch(batch, seqs)
            assert fwd.peaks.tolist() == [int(np.argmax(row)) for row in fwd.logits]
            for (_, ids), s, peak in zip(seqs, alone, fwd.peaks, strict=True):
                assert model.forward(s, ids).peak == peak
            seqs = [(s, [int(p)]) for s, p in zip(states, fwd.peaks, strict=True)]
    finally:
        batch.close()
        for s in states + alone:
            s.close()


def _decoder(model, **params) -> Decoder:
    return Decoder(Engine(model, None), SamplingParams(temperature=0.0, **params), [3], [3, 5, 3], 16)


def test_decoder_uses_the_peak_and_drops_it_where_session_does():
    """A peak the head did not find (10, below the largest logit at 2) shows whether the
    sampler was told it: greedy takes it unless a rule of Session's drops it."""
    w = np.random.default_rng(8).normal(0, 0.5, size=(VOCAB, 64)).astype(np.float32)
    model = _model(w, "q8_0")
    x = np.zeros(VOCAB, np.float32)
    x[2], x[3], x[10] = 5.0, 4.0, 1.0
    assert _decoder(model).step(x.copy(), 10).token == 10       # told, and trusted
    assert _decoder(model).step(x.copy(), -1).token == 2        # not told: the scan
    assert _decoder(model).step(x.copy(), 2).token == 2
    # the penalties (3 is in the history) and a bias reaching the peak: the sampler drops it
    assert _decoder(model, repetition_penalty=1.5).step(x.copy(), 10).token == 2
    assert _decoder(model, logit_bias={10: 0.0}).step(x.copy(), 10).token == 2
    assert _decoder(model, logit_bias={4: -1.0}).step(x.copy(), 10).token == 10  # below it: kept


def test_decoder_drops_the_peak_under_a_constraint():
    engine = Engine.default()
    vocab = engine.config.vocab_size
    grammar = compile_grammar(engine.tokenizer, vocab, choices=["yes", "no"])
    x = np.random.default_rng(9).normal(0, 1, size=vocab).astype(np.float32)
    fake = int(np.argmax(x))  # the real peak, which the mask removes (not a start of yes / no)
    dec = Decoder(engine, SamplingParams(temperature=0.0), [1], [1], 16, grammar)
    try:
        masked = x.copy()
        dec.constraint.apply(masked)
        assert not np.isfinite(masked[fake])
        assert dec.step(x, fake).token == int(np.argmax(masked))
    finally:
        dec.close()
