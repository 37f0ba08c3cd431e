"""history.csv survives crashes: a row cut short is dropped, everything before it is kept."""

from __future__ import annotations

from search.history import HistoryWriter, Record, read_history


def _record(i: int) -> Record:
    return Record(i, "random", i, 0.5, 1.0, 10.0, 0.3, 0.5, False, 0.1, float(i), (0.5, 0.25))


def test_row_cut_by_a_crash_is_dropped_and_appending_continues(tmp_path) -> None:
    path = tmp_path / "history.csv"
    writer = HistoryWriter(path)
    for i in range(3):
        writer.append(_record(i))
    writer.close()
    with path.open("a") as f:
        f.write("3,random,3,0.5,1.0")  # a crash in the middle of a row
    assert [r.index for r in read_history(path)] == [0, 1, 2]
    writer = HistoryWriter(path)
    writer.append(_record(3))
    writer.close()
    records = read_history(path)
    assert [r.index for r in records] == [0, 1, 2, 3] and records[3].keep == (0.5, 0.25)


def test_rungs_round_trip_and_rank_prefers_the_highest_rung(tmp_path) -> None:
    import dataclasses

    from search.history import rank

    path = tmp_path / "history.csv"
    writer = HistoryWriter(path)
    base = dataclasses.replace(_record(0), score="bn", reward=0.9)
    rescored = dataclasses.replace(base, rung=1, score="finetune:50+kd", accuracy=0.7, reward=0.7)
    for record in (base, rescored):
        writer.append(record)
    writer.close()
    assert read_history(path) == [base, rescored]
    # A ladder's verdict outranks a cheaper score's number: the rung-1 row is the best though 0.7 < 0.9.
    assert max(read_history(path), key=rank) == rescored


def test_a_history_of_the_layout_before_the_ladder_is_read_and_upgraded_on_resume(tmp_path) -> None:
    from search.history import COLUMNS, OLD_COLUMNS

    path = tmp_path / "history.csv"
    old = [",".join(OLD_COLUMNS), '0,random,0,0.5,1.0,10.0,0.3,0.5,0,0.1000,0.000,"[0.5, 0.25]"']
    path.write_text("\n".join(old) + "\n")
    assert read_history(path) == [_record(0)]  # read as rung 0, no score named
    writer = HistoryWriter(path)  # --resume appends: the file is rewritten in the new layout first
    writer.append(_record(1))
    writer.close()
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_history(path) == [_record(0), _record(1)]
