"""Web odds and ends of issue 10, through the Flask app: upload errors name the user's file,
the 404 page loads no missing asset, the patient list page exists, messages use the page's words."""

from __future__ import annotations

import io
import time

import pytest


@pytest.fixture
def client(tmp_path):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from web import create_app

    service = EagleService(Settings(data_dir=tmp_path / "data", models="tiny", device="cpu"))
    app = create_app(service=service, owner={"role": "serve", "roots": []})
    yield app.test_client()
    service.close()


def _csrf(client) -> str:
    import re

    page = client.get("/search").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def test_a_failed_upload_names_the_users_file_not_the_server_copy(client):
    token = _csrf(client)
    response = client.post("/api/v1/search/upload", headers={"X-CSRF-Token": token},
                           data={"file": (io.BytesIO(b"not a slide at all"), "my-biopsy.tiff")},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_data(as_text=True)
    task_id = response.get_json()["task"]
    deadline = time.time() + 120
    while (task := client.get(f"/api/v1/tasks/{task_id}").get_json())["state"] not in ("done", "failed"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert task["state"] == "failed" and "my-biopsy.tiff" in task["error"], task
    assert "uploads" not in task["error"] and "/" not in task["error"].split(":")[0], task


def test_a_failed_label_upload_names_the_users_file(client):
    token = _csrf(client)
    response = client.post("/api/v1/labels", headers={"X-CSRF-Token": token},
                           data={"file": (io.BytesIO(b"NAME,TISSUE\nP1,a\n"), "clinic.csv")}, content_type="multipart/form-data")
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "clinic.csv" in message and "labels-" not in message and "uploads" not in message, message


def test_the_404_page_references_only_existing_assets(client):
    import re

    response = client.get("/no/such/page", headers={"Accept": "text/html"})
    assert response.status_code == 404
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', response.get_data(as_text=True)):
        assert client.get(asset).status_code == 200, asset


def test_the_patients_page_is_in_the_nav(client):
    page = client.get("/patients")
    assert page.status_code == 200 and 'id="patient-rows"' in page.get_data(as_text=True)
    assert 'href="/patients"' in client.get("/search").get_data(as_text=True)


def test_web_messages_name_the_form_fields_not_cli_flags():
    from web.errors import page_words

    assert page_words("--vs-rest needs --positive (the class to keep)") == \
        "“positive class vs all other values” needs “Positive class” (the class to keep)"
    assert "--" not in page_words("patient 'X' has no 'eagle' vector (it has: chief; choose one with --kind)")
    assert page_words("cohort 'A' already exists (use `cohort refresh` or --replace)") == \
        "cohort 'A' already exists (refresh it, or choose another name)"
    assert page_words("the loaded models give signature s1, but the archive's tiles were made with s2: load those models "
                      "(--models / --weights-dir)").endswith("s2: start the server with those models")
