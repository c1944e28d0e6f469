"""Schema changes only through Alembic; an old catalog upgrades in place with every row kept."""

import numpy as np
import pytest
from sqlalchemy import text

from eagle_index.errors import CatalogError
from eagle_index.service import EagleService
from eagle_index.store import schema
from eagle_index.store.catalog import Catalog


def _old_catalog(settings):
    settings.catalog_path.parent.mkdir(parents=True)
    engine = schema.make_engine(settings.catalog_url)
    schema.upgrade(engine, "0001")
    vec = np.arange(1, 5, dtype=np.float32)
    with engine.begin() as conn:
        for i, pid in enumerate(["P1", "P2"], start=1):
            conn.execute(text("INSERT INTO patients (id, external_id) VALUES (nextval('patient_id_seq'), :p)"), {"p": pid})
            conn.execute(
                text("INSERT INTO vectors (id, patient_id, kind, signature, dim, vector) VALUES (nextval('vector_id_seq'), :i, 'eagle', 'sig', 4, :v)"),
                {"i": i, "v": (vec * i).tobytes()},
            )
        conn.execute(text("INSERT INTO labels (id, patient_id, name, value) VALUES (nextval('label_id_seq'), 1, 'MSI', 'high')"))
        conn.execute(text("INSERT INTO slides (id, patient_id, name, fingerprint, status) VALUES (nextval('slide_id_seq'), 1, 's1', 'fp1', 'done')"))
    engine.dispose()


def test_old_catalog_is_refused_until_upgraded(settings):
    _old_catalog(settings)
    with pytest.raises(CatalogError, match="eagle-index db upgrade"):
        Catalog.open(settings.catalog_path)


def test_upgrade_keeps_every_row_and_backfills_vector_sets(settings):
    _old_catalog(settings)
    engine = schema.make_engine(settings.catalog_url)
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    engine.dispose()
    with EagleService(settings) as service:
        stats = service.stats()
        assert (stats["patients"], stats["slides"], stats["labels"], stats["vectors"]) == (2, 1, 1, {"eagle": 2})
        assert stats["vector_sets"][0]["generation"] == 1
        ids, matrix = service.catalog.load_vectors("eagle", "sig")
        np.testing.assert_array_equal(matrix[1], np.arange(1, 5, dtype=np.float32) * 2)
        assert service.catalog.labels_of([1]) == {1: {"MSI": "high"}}
        hits = service.search_patient("P1", k=5, kind="eagle")
        assert [h.patient for h in hits] == ["P2"]
        # new rows after the upgrade get fresh ids from the sequences
        def _tx(session):
            assert service.catalog.patient_id(session, "P3", create=True) == 3

        service.catalog.write(_tx)


def test_cli_db_upgrade_in_place(settings, capsys):
    from eagle_index.cli import main

    _old_catalog(settings)
    with pytest.raises(SystemExit) as exit_info:
        main(["db", "upgrade", "--data-dir", str(settings.data_dir)])
    assert exit_info.value.code in (0, None)
    assert f"0001 -> {schema.head_revision()}" in capsys.readouterr().out


def test_models_match_head_revision(settings):
    """The ORM models and the revisions describe the same tables and columns."""
    from eagle_index.store.models import Base

    Catalog.open(settings.catalog_path).close()
    engine = schema.make_engine(settings.catalog_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT table_name, column_name FROM information_schema.columns")).all()
    engine.dispose()
    in_db: dict[str, set[str]] = {}
    for table, column in rows:
        in_db.setdefault(table, set()).add(column)
    for table in Base.metadata.sorted_tables:
        assert in_db.get(table.name) == {c.name for c in table.columns}, table.name


def test_0004_catalog_upgrades_keeping_rows_and_tiles_are_backfilled_from_artifacts(tmp_path):
    """A catalog made before tile tokens (revision 0004, slides already embedded) upgrades in place,
    keeps every row, and `reindex` fills the tile tokens in from the slide artifacts."""
    from alembic import command

    from eagle_index.config import Settings
    from eagle_index.store import tiles_repo
    from slide_fixtures import write_pyramidal_tiff

    settings = Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")
    slides = [write_pyramidal_tiff(tmp_path / f"P{i}.tiff", mpp=2.0, size_um=(4 * 448.0, 3 * 448.0),
                                   tissue_boxes_um=[(0.0, 0.0, 4 * 448.0, 3 * 448.0)], seed=i).path for i in range(2)]
    with EagleService(settings) as service:
        service.ingest(slides)
        before = service.stats()
        expected = {s.signature: s.count for s in tiles_repo.tile_sets(service.catalog)}
    engine = schema.make_engine(settings.catalog_url)
    config = schema.alembic_config(engine)
    with engine.begin() as conn:  # the same catalog as version 0004 wrote it: no tile tables
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    assert schema.current_revision(engine) == "0004"
    engine.dispose()
    with pytest.raises(CatalogError, match="db upgrade"):
        Catalog.open(settings.catalog_path)
    engine = schema.make_engine(settings.catalog_url)
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    engine.dispose()
    with EagleService(settings) as service:
        assert service.stats() == before  # every patient, slide, vector and set kept
        assert tiles_repo.tile_sets(service.catalog) == []
        out = service.reindex()
        tiles = [o for o in out if o["kind"] == "tiles"]
        assert {t["signature"]: t["count"] for t in tiles} == expected == {service.models.signature("eagle"): 24}
        result = service.regions.search({"patient": "P0", "tile": 1}, k=3)
        assert [p.patient for p in result.patients] == ["P1"]


def test_0005_catalog_upgrades_to_annotations_keeping_rows_and_downgrades(settings):
    """Revision 0006 adds the annotations table to a 0005 catalog in place (every row kept); its downgrade drops it."""
    from alembic import command

    settings.catalog_path.parent.mkdir(parents=True)
    engine = schema.make_engine(settings.catalog_url)
    schema.upgrade(engine, "0005")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patients (id, external_id) VALUES (nextval('patient_id_seq'), 'P1')"))
        conn.execute(text("INSERT INTO slides (id, patient_id, name, fingerprint, status, mpp) "
                          "VALUES (nextval('slide_id_seq'), 1, 's1', 'fp1', 'done', 0.5)"))
    schema.upgrade(engine)
    assert schema.current_revision(engine) == "0006"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM slides")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM annotations")).scalar() == 0
    engine.dispose()
    with EagleService(settings) as service:
        made = service.annotations.create("s1", {"type": "Point", "coordinates": [10, 20]}, name="here")
        assert made["id"] == 1 and made["bbox_um"] == [5.0, 10.0, 5.0, 10.0]
    engine = schema.make_engine(settings.catalog_url)
    config = schema.alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(text("SELECT table_name FROM information_schema.tables"))}
    assert "annotations" not in tables and "slides" in tables
    engine.dispose()
