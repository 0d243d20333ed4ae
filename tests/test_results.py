import json

from distforget.results import append_results, read_results, rows_from_record
from tests.factories import a_record as record


def test_a_record_becomes_the_trial_row_and_its_sweep_rows():
    rows = rows_from_record(record("t1"))
    assert [r["trial_id"] for r in rows] == ["t1", "t1~0"]
    assert rows[1]["parent_id"] == "t1" and rows[1]["source"] == "sweep"
    assert rows[1]["restore.alpha"] == 1.0 and rows[1]["forget.lr"] == 1e-3
    assert json.loads(rows[1]["recipe"])["alpha"] == 1.0 and rows[1]["forget_acc"] == 0.0


def test_append_never_duplicates_a_trial(tmp_path):
    path = str(tmp_path / "results.parquet")
    append_results(path, rows_from_record(record("t1")))
    append_results(path, rows_from_record(record("t1")))
    df = append_results(path, rows_from_record(record("t2", params={"forget.lr": "x"})))
    assert list(read_results(path)["trial_id"]) == ["t1", "t1~0", "t2", "t2~0"]
    assert len(df) == 4 and df["trial_id"].is_unique
    failed = append_results(path, [{"trial_id": "t3", "status": "failed", "source": "trial",
                                    "error": "boom"}])
    assert failed.set_index("trial_id").loc["t3", "error"] == "boom"


def test_the_node_a_trial_ran_on_is_a_column_of_its_rows_and_empty_outside_ray(tmp_path):
    path = str(tmp_path / "results.parquet")
    append_results(path, rows_from_record(record("t1")))  # an older record without node_id
    df = append_results(path, rows_from_record(record("t2", node_id="ab" * 28)))
    by_id = df.set_index("trial_id")["node_id"]
    assert by_id["t2"] == by_id["t2~0"] == "ab" * 28  # a sweep point ran where its trial ran
    assert by_id[["t1", "t1~0"]].isna().all()
    assert list(df.columns[:6]) == ["trial_id", "parent_id", "source", "status", "error",
                                    "node_id"]
