"""`make demo` runs end to end: generated slides -> tiny models -> catalog -> search."""

from eagle_index.config import Settings
from eagle_index.demo import run_demo


def test_demo_finds_same_tissue_type_first(tmp_path):
    lines = []
    result = run_demo(Settings(data_dir=tmp_path, models="tiny", device="cpu"), patients=6, echo=lines.append)
    assert result["stats"]["patients"] == 6 and result["stats"]["vectors"]["eagle"] == 6
    assert result["hits"][0]["labels"]["TISSUE"] == "dense"  # DEMO-001's type
    again = run_demo(Settings(data_dir=tmp_path, models="tiny", device="cpu"), patients=6, echo=lines.append)
    assert again["ingest"]["ingested"] == [] and len(again["ingest"]["skipped"]) == 8
