"""benchmarks.ml1m_id_only: MovieLens-1M rewritten as ID-only CSV logs for the generic adapter."""
import json

from benchmarks import ml1m_id_only


def test_ids_domains_and_labels(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::25::16::70072\n3::M::56::16::55117\n", "latin-1")
    (src / "ratings.dat").write_text("1::1193::5::978300760\n2::661::3::978302109\n3::914::4::978301968\n", "latin-1")
    assert ml1m_id_only.main(["--input", str(src), "--output", str(tmp_path / "out")]) == 0
    # Age 1 -> d0, 25 -> d1, 56 -> d2; a rating >= 4 is a click.
    assert (tmp_path / "out" / "events.csv").read_text().splitlines() == [
        "user_id,item_id,domain,label,timestamp", "1,1193,d0,1,978300760", "2,661,d1,0,978302109",
        "3,914,d2,1,978301968"]
    assert json.loads((tmp_path / "out" / "mapping.json").read_text()) == ml1m_id_only.MAPPING
    assert ml1m_id_only.main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "x")]) == 1
