"""The pages. Each is a template plus one JavaScript module that talks to the JSON API;
the server renders no data into scripts (CSP forbids inline scripts), only into escaped
HTML and `data-` attributes."""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for

from web.api.params import service
from web.security import csrf_token, record_failure, safe_next, token_matches, token_required

ui = Blueprint("ui", __name__, template_folder="templates", static_folder=None)

PAGES = [("ui.search", "Search"), ("ui.patients", "Patients"), ("ui.cohorts", "Cohorts"), ("ui.probes", "Probes"), ("ui.ingestion", "Ingestion")]


@ui.app_context_processor
def _nav():
    return {"nav_pages": PAGES}


@ui.get("/")
def index():
    return redirect(url_for("ui.search"))


@ui.get("/search")
def search():
    return render_template("search.html", page="search", title="Search", patient=request.args.get("patient", "")[:200])


@ui.get("/patients")
def patients():
    return render_template("patients.html", page="patients", title="Patients", q=request.args.get("q", "")[:200])


@ui.get("/patients/<patient>")
def patient(patient: str):
    service().browse.patient_id(patient)  # an unknown patient is a 404 page (NotFoundError), not an empty patient page
    return render_template("patient.html", page="patient", title=f"Patient {patient}", patient=patient)


@ui.get("/cohorts")
def cohorts():
    return render_template("cohorts.html", page="cohorts", title="Cohorts")


@ui.get("/probes")
def probes():
    return render_template("probes.html", page="probes", title="Probes")


@ui.get("/ingestion")
def ingestion():
    roots = [str(r) for r in current_app.config["EAGLE_OWNER"].get("roots", [])]
    return render_template("ingestion.html", page="ingestion", title="Ingestion", roots=roots)


@ui.route("/login", methods=["GET", "POST"])
def login():
    target = safe_next(request.values.get("next"))
    if not token_required():
        return redirect(target)
    error = None
    if request.method == "POST":  # CSRF was checked before this runs (web.security)
        if token_matches(request.form.get("token", "")):
            session.clear()
            session["auth"] = True
            csrf_token()
            return redirect(target)
        record_failure()
        error = "That access token is not right."
    status = 401 if error else 200
    return render_template("login.html", page="login", title="Log in", next=target, error=error), status


@ui.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("ui.login") if token_required() else url_for("ui.search"))


@ui.get("/compare")
def compare():
    """Two patients side by side (`?query=ID&hit=ID`): viewers with overlays and the matching tile pairs."""
    query, hit = request.args.get("query", "").strip()[:200], request.args.get("hit", "").strip()[:200]
    if not (query and hit):  # nothing to compare yet: say how to choose two patients, call no API
        return render_template("compare.html", page="compare", title="Compare", query=query, hit=hit, empty=True)
    for name in (query, hit):
        service().browse.patient_id(name)  # an unknown patient is a 404 page
    return render_template("compare.html", page="compare", title=f"Compare {query} and {hit}", query=query, hit=hit, empty=False)
