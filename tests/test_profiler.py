"""Profiler tests: aggregation arithmetic, table layout, Chrome traces, context handling,
and allocation measurement."""
from __future__ import annotations

import json
import re
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind
from smallmind.errors import ShapeError
from smallmind.profiler import AllocMeter, Profiler, current_profiler, profile

events_strategy = st.lists(
    st.tuples(st.sampled_from(["matmul", "attention", "rmsnorm", "matmul.qkv", "sample"]),
              st.one_of(st.none(), st.integers(0, 12)),
              st.integers(1, 10**7),        # duration ns
              st.integers(0, 10**6),        # bytes
              st.integers(0, 3)),           # tokens
    min_size=1, max_size=60)


def filled(events) -> Profiler:
    prof = Profiler(track_alloc=False)
    t = 1_000_000
    for op, layer, dur, nbytes, tokens in events:
        prof.record(op, layer=layer, start_ns=t, dur_ns=dur, alloc_bytes=nbytes, tokens=tokens)
        t += dur
    return prof


def table_rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


@given(events=events_strategy, by=st.sampled_from(["op", "kind", "layer", "op_layer"]))
def test_summary_matches_a_direct_aggregation(events, by):
    prof = filled(events)
    rows = prof.summary(by=by)
    key = {"op": lambda e: (e[0],), "kind": lambda e: (e[0].split(".")[0],),
           "layer": lambda e: (e[1],), "op_layer": lambda e: e[:2]}[by]
    expected: dict[tuple, list[int]] = {}
    for e in events:
        acc = expected.setdefault(key(e), [0, 0, 0])
        acc[0] += 1
        acc[1] += e[2]
        acc[2] += e[3]
    assert len(rows) == len(expected)
    total = sum(e[2] for e in events)
    for row in rows:
        k = {"op": (row["op"],), "kind": (row["op"],), "layer": (row["layer"],),
             "op_layer": (row["op"], row["layer"])}[by]
        calls, dur, nbytes = expected[k]
        assert row["calls"] == calls
        assert row["total_ms"] == pytest.approx(dur / 1e6)
        assert row["mean_us"] == pytest.approx(dur / calls / 1e3)
        assert row["alloc_bytes"] == nbytes
        assert row["bytes_per_call"] == pytest.approx(nbytes / calls)
        assert row["percent"] == pytest.approx(100 * dur / total)
    assert sum(r["percent"] for r in rows) == pytest.approx(100.0)
    times = [r["total_ms"] for r in rows]
    assert times == sorted(times, reverse=True)
    assert prof.total_ms == pytest.approx(total / 1e6)
    assert prof.tokens == sum(e[4] for e in events)


def test_table_is_sorted_by_time_and_percentages_sum_to_100():
    prof = Profiler(track_alloc=False)
    for layer in range(3):
        prof.record("matmul", layer=layer, start_ns=0, dur_ns=5_000_000, alloc_bytes=4096)
        prof.record("attention", layer=layer, start_ns=0, dur_ns=2_000_000)
        prof.record("rmsnorm", layer=layer, start_ns=0, dur_ns=300_000, alloc_bytes=10)
    prof.record("sample", start_ns=0, dur_ns=100_000, tokens=1)
    table = prof.table()
    rows = table_rows(table)
    assert [r[0] for r in rows] == ["matmul", "attention", "rmsnorm", "sample", "**total**"]
    assert rows[0][1] == "3" and rows[0][2] == "15.000" and rows[0][4] == "5000.00"
    assert rows[0][5] == "12.0 KiB" and rows[0][6] == "4.0 KiB"
    percents = [float(r[3].rstrip("%")) for r in rows[:-1]]
    assert sum(percents) == pytest.approx(100.0, abs=0.2)
    assert percents == sorted(percents, reverse=True)
    assert ", 1 token" in table

    by_layer = table_rows(prof.table(by="layer", sort="name"))
    assert [r[0] for r in by_layer] == ["-", "0", "1", "2", "**total**"]
    limited = table_rows(prof.table(by="op_layer", limit=2))
    assert limited[0][0].startswith("matmul @ ") and limited[2][0] == "(8 more)"
    assert sum(float(r[3].rstrip("%")) for r in limited[:-1]) == pytest.approx(100.0, abs=0.2)


def test_bad_table_arguments():
    prof = filled([("matmul", 0, 10, 0, 0)])
    with pytest.raises(ValueError, match="by"):
        prof.table(by="kernel")
    with pytest.raises(ValueError, match="sort"):
        prof.summary(sort="fastest")


def test_empty_profiler_table():
    prof = Profiler(track_alloc=False)
    assert prof.summary() == []
    assert "**total**" in prof.table()
    assert prof.total_ms == 0 and prof.tokens == 0


def test_record_block_lays_steps_back_to_back():
    prof = Profiler(track_alloc=False)
    names = ["attn_norm", "qkv", "attention", "out_proj", "ffn"]
    durations = np.array([100, 2000, 1500, 700, 4000], np.int64)
    prof.record_block(4, names, durations, start_ns=10_000)
    events = prof.events
    assert [e[0] for e in events] == names
    assert all(e[1] == 4 for e in events)
    starts = [e[2] for e in events]
    assert starts == (10_000 + np.concatenate([[0], np.cumsum(durations)[:-1]])).tolist()
    assert [e[3] for e in events] == durations.tolist()
    with pytest.raises(ShapeError, match="durations_ns"):
        prof.record_block(0, names, durations[:3], start_ns=0)


def test_chrome_trace_is_valid_json_with_complete_events(tmp_path):
    prof = Profiler(track_alloc=False)
    prof.record("matmul.qkv", layer=2, start_ns=5_000_000, dur_ns=1_500, alloc_bytes=64)
    prof.record("sample", start_ns=4_000_000, dur_ns=2_000_000, tokens=1)
    path = prof.to_chrome_trace(tmp_path / "trace.json")
    data = json.loads(path.read_text())
    complete = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == 2
    for e in complete:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= e.keys()
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert {"layer", "bytes"} <= e["args"].keys()
    first, second = complete  # sorted by start
    assert first["cat"] == "sample" and first["ts"] == 0 and first["dur"] == 2000.0
    assert second["cat"] == "matmul" and second["name"].startswith("matmul.qkv")
    assert second["ts"] == pytest.approx(1000.0) and second["dur"] == pytest.approx(1.5)
    assert second["args"] == {"layer": 2, "bytes": 64}
    meta = [e for e in data["traceEvents"] if e["ph"] == "M"]
    assert all("name" in e["args"] for e in meta)


def test_profile_installs_and_restores_the_current_profiler():
    assert current_profiler() is None  # the fast path engine code checks
    with profile(track_alloc=False) as outer:
        assert current_profiler() is outer and outer.active
        outer.record("a", start_ns=0, dur_ns=10)
        with smallmind.profile(track_alloc=False) as inner:
            assert current_profiler() is inner and inner is not outer
            inner.record("b", start_ns=0, dur_ns=20)
        assert current_profiler() is outer
        assert [e[0] for e in inner.events] == ["b"]
        assert [e[0] for e in outer.events] == ["a", "b"]  # the inner block's events join
    assert current_profiler() is None and not outer.active
    with pytest.raises(RuntimeError):
        with outer:
            with outer:
                pass
    assert current_profiler() is None


def test_profile_restores_on_exceptions_and_is_per_thread():
    with pytest.raises(KeyError):
        with profile(track_alloc=False):
            raise KeyError("x")
    assert current_profiler() is None
    seen = []
    with profile(track_alloc=False):
        t = threading.Thread(target=lambda: seen.append(current_profiler()))
        t.start()
        t.join()
    assert seen == [None]


def test_wall_time_and_reentry():
    prof = profile(track_alloc=False)
    with prof:
        pass
    first = prof.wall_ms
    assert first >= 0
    with prof:
        prof.record("x", start_ns=0, dur_ns=1, tokens=2)
    assert prof.wall_ms >= first and prof.tokens == 2
    assert "tok/s" in prof.table() or prof.wall_ms == 0


def test_alloc_meter_sees_numpy_allocations_and_nests():
    was_tracing = tracemalloc.is_tracing()
    meter = AllocMeter()
    meter.start()
    try:
        meter.begin()
        a = np.ones(100_000, np.float64)      # 800 KB, kept
        meter.begin()
        b = np.ones(50_000, np.float64)       # 400 KB, freed inside the inner span
        del b
        inner = meter.end()
        c = np.ones(10_000, np.float64)       # 80 KB
        outer = meter.end()
        del a, c
    finally:
        meter.stop()
    assert 400_000 <= inner < 450_000
    # the outer span held a (800 KB) plus, at the inner peak, b (400 KB)
    assert 1_200_000 <= outer < 1_300_000
    assert tracemalloc.is_tracing() == was_tracing
    with pytest.raises(RuntimeError):
        AllocMeter().end()


def test_span_records_time_and_bytes():
    with profile() as prof:
        with prof.span("matmul", layer=1):
            x = np.zeros(200_000, np.float32)  # 800 KB
            del x
        with prof.span("sample", tokens=1):
            pass
    (op, layer, start, dur, nbytes, tokens), (op2, *_rest, tokens2) = prof.events
    assert (op, layer, op2, tokens, tokens2) == ("matmul", 1, "sample", 0, 1)
    assert dur > 0 and 800_000 <= nbytes < 900_000
    assert re.search(r"\| matmul\s+\|", prof.table())


def test_tracemalloc_left_as_found():
    was = tracemalloc.is_tracing()
    with profile():
        assert tracemalloc.is_tracing()
    assert tracemalloc.is_tracing() == was
    with profile(track_alloc=False) as prof:
        assert prof.alloc_meter is None
        with prof.span("x"):
            pass
    assert prof.events[0][4] == 0


@pytest.mark.parametrize("track_alloc", [False, True])
def test_profile_of_generate_adds_up_to_the_wall_time(track_alloc):
    engine = smallmind.Engine.from_config(smallmind.ModelConfig(arch="llama", n_layer=3))
    engine.generate("ab", max_new_tokens=2, seed=0)  # first-call costs out of the way
    with profile(track_alloc=track_alloc) as prof:
        engine.generate("abc", max_new_tokens=12, seed=0)
    rows = table_rows(prof.table())
    by_name = {r[0]: r for r in rows}
    for name in ("attn_norm", "qkv_matmul", "rope", "attention", "down_matmul", "lm_head",
                 "sampling", "python.forward", "untracked", "**wall**"):
        assert name in by_name, name
    wall = float(by_name["**wall**"][2])
    parts = sum(float(r[2]) for r in rows[:-1])
    assert parts == pytest.approx(wall, rel=0.05)
    assert wall == pytest.approx(prof.wall_ms, abs=0.01)
    assert float(by_name["untracked"][2]) >= 0
    # every row that allocated also took time; the layer's steps allocate nothing
    for r in prof.summary():
        assert r["total_ms"] > 0 or r["alloc_bytes"] == 0, r
    steps = [r for r in prof.summary(by="op_layer") if r["layer"] is not None]
    assert {r["layer"] for r in steps} == {0, 1, 2}
    assert all(r["alloc_bytes"] == 0 for r in steps)


def test_overhead_records_what_inner_events_do_not_cover():
    prof = Profiler(track_alloc=False)
    with prof.overhead("python.outer"):
        prof.record("kernel", start_ns=0, dur_ns=10**12)  # longer than the block itself
        with prof.span("inner"):
            pass
    outer = [e for e in prof.events if e[0] == "python.outer"]
    assert len(outer) == 1 and outer[0][3] == 0  # clipped, never negative
