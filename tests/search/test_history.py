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
