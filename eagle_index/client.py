"""Talk to the process that owns the catalog (see owner.py) through its JSON API."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from eagle_index.errors import CatalogError, EagleIndexError, InputError, NotFoundError
from eagle_index.owner import OwnerInfo
from eagle_index.results import CatalogStats, CohortSummary, Hit, ProbeResult, RetrievalEvaluation, SearchResult, StatusReport


class OwnerClient:
    def __init__(self, owner: OwnerInfo, token: str | None = None, timeout: float = 60.0):
        if not owner.url:
            raise CatalogError(f"the catalog is in use by {owner.describe()}, which serves no API; stop it first")
        self.owner = owner
        self.token = token  # the CLI's settings.token (env EAGLE_INDEX_TOKEN)
        self.timeout = timeout

    def _request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                 content_type: str | None = None):
        return json.loads(self._request_raw(method, path, params, body, content_type)[0])

    def _request_raw(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                     content_type: str | None = None) -> tuple[bytes, dict]:
        """(body bytes, response headers) of one API call; API errors become project errors."""
        url = f"{self.owner.url}/api/v1{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            error = NotFoundError if exc.code == 404 else InputError if exc.code == 400 else EagleIndexError
            raise error(message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise CatalogError(f"cannot reach {self.owner.describe()}: {exc}") from None

    def stats(self) -> dict:
        return self._request("GET", "/stats")

    def run_task(self, path: str, body: dict, progress=None, what: str = "the task"):
        """POST `body` to an endpoint that answers 202 with a task; poll it (reporting progress) until done.

        The finished task (its `result`, `meta`); `what` names the work in a failure (formatted with the 202 answer)."""
        import time

        started = self._request("POST", path, body=_json_body(body), content_type="application/json")
        while True:
            task = self._request("GET", f"/tasks/{_quoted(started['task'])}")
            if progress is not None and task["progress"]["total"]:
                progress(task["progress"]["done"], task["progress"]["total"], task["progress"]["message"] or "")
            if task["state"] == "failed":
                raise EagleIndexError(f"{what.format(**started)} failed on the server: {task['error']}")
            if task["state"] == "done":
                return task
            time.sleep(0.3)

    def schema_revision(self) -> tuple[str | None, str]:
        """(the catalog's schema revision, the newest) as the owner reports them in GET /status."""
        schema = self.status().get("schema") or {}
        return schema.get("current"), schema.get("head")

    def status(self) -> dict:
        return self._request("GET", "/status")

    def enqueue(self, paths: list[Path], patient: str | None) -> dict:
        body = json.dumps({"paths": [str(Path(p).resolve()) for p in paths], "patient": patient}).encode()
        return self._request("POST", "/jobs", body=body, content_type="application/json")

    def import_labels(self, table: Path, create_missing: bool) -> dict:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="create_missing"\r\n\r\n{str(create_missing).lower()}\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{Path(table).name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode() + Path(table).read_bytes() + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        return self._request("POST", "/labels", body=b"".join(parts), content_type=f"multipart/form-data; boundary={boundary}")


def owner_client(settings) -> OwnerClient | None:
    """A client for the running owner of `settings.data_dir` (sending `settings.token`), or None when no process holds it."""
    from eagle_index.owner import current_owner

    owner = current_owner(Path(settings.data_dir))
    return OwnerClient(owner, token=settings.token) if owner is not None else None


class _Report(dict):
    def as_dict(self) -> dict:
        return dict(self)


class RemoteService:
    """The catalog service of a running owner, over its JSON API, with the local service's methods.

    CLI commands get this instead of an `EagleService` while a daemon/server holds the catalog
    (see `eagle_index.interface.CatalogService` for the shared methods); anything else fails
    with a message that names the running process.
    """

    def __init__(self, client: OwnerClient):
        self.client = client

    def __enter__(self) -> "RemoteService":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def search(self, patient: str | None = None, vector=None, slides=None, k: int = 10, kind: str | None = None,
               signature: str | None = None, filters=None, explain: bool = False, vote: str | None = None,
               pairs: int = 5, store: bool = False, mpp: float | None = None) -> SearchResult:
        if slides:
            raise CatalogError(f"a search by slide files embeds them with the models here, but {self.client.owner.describe()} "
                               "holds the catalog; upload the slide in its web UI, or stop it first")
        body: dict = {"k": k, "kind": kind, "signature": signature, "explain": explain, "pairs": pairs, "vote": vote}
        if patient is not None:
            body["patient"] = patient
        if vector is not None:
            body["vector"] = [float(v) for v in np.asarray(vector, dtype=np.float64).reshape(-1)]
        if filters is not None:
            body["filters"] = filters.as_dict()
        data = self.client._request("POST", "/search", body=json.dumps({k: v for k, v in body.items() if v is not None}).encode(),
                                    content_type="application/json")
        return SearchResult.from_dict(data)

    def search_patient(self, external_id: str, k: int = 10, kind: str | None = None, signature: str | None = None,
                       filters=None, explain: bool = False, pairs: int = 5) -> tuple[Hit, ...]:
        return self.search(external_id, k=k, kind=kind, signature=signature, filters=filters, explain=explain, pairs=pairs).hits

    def stats(self) -> CatalogStats:
        return CatalogStats.from_dict(self.client.stats())

    def status(self) -> StatusReport:
        return StatusReport.from_dict(self.client.status())

    def schema_revision(self) -> tuple[str | None, str]:
        return self.client.schema_revision()

    @property
    def cohorts(self) -> "RemoteCohorts":
        return RemoteCohorts(self.client)

    @property
    def probes(self) -> "RemoteProbes":
        return RemoteProbes(self.client)

    @property
    def searcher(self) -> "RemoteSearcher":
        return RemoteSearcher(self.client)

    def import_labels(self, path: Path, create_missing: bool = False) -> _Report:
        return _Report(self.client.import_labels(path, create_missing))

    def enqueue(self, paths: list[str | Path], patient: str | None = None) -> dict:
        """Queue slide files inside the owner's ingest folders (its POST /jobs): {"jobs", "refused"}."""
        return self.client.enqueue([Path(p) for p in paths], patient)

    def set_label(self, patient: str, name: str, value: str | None, source: str = "web") -> dict:
        body = json.dumps({"name": name, "value": value}).encode()
        return self.client._request("POST", f"/patients/{urllib.parse.quote(patient, safe='')}/labels", body=body,
                                    content_type="application/json")["labels"]

    @property
    def regions(self) -> "RemoteRegions":
        return RemoteRegions(self.client)

    @property
    def annotations(self) -> "RemoteAnnotations":
        return RemoteAnnotations(self.client)

    def __getattr__(self, name: str):
        raise CatalogError(
            f"{name.replace('_', ' ')} needs the catalog, which {self.client.owner.describe()} holds; "
            "stop it first, or use its API"
        )


def _quoted(name: str) -> str:
    return urllib.parse.quote(str(name), safe="")


def _json_body(data: dict) -> bytes:
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


class _RemoteTopic:
    def __init__(self, client: OwnerClient):
        self.client = client

    def __getattr__(self, name: str):
        raise CatalogError(f"{name.replace('_', ' ')} is not served by {self.client.owner.describe()}'s API; stop it first")


class RemoteSearcher(_RemoteTopic):
    """`service.searcher` of a running owner: the read-only evaluations it serves."""

    def evaluate_retrieval(self, label: str, ks=(1, 3, 5), kind: str | None = None, signature: str | None = None,
                           cohort: str | None = None, exclude_same_site: bool = False, site_label: str = "site") -> RetrievalEvaluation:
        return RetrievalEvaluation.from_dict(self.client._request("GET", "/eval/retrieval", {
            "label": label, "k": ",".join(str(int(k)) for k in ks), "kind": kind, "signature": signature, "cohort": cohort,
            "exclude_site": "1" if exclude_same_site else None, "site_label": site_label}))


class RemoteCohorts(_RemoteTopic):
    """`service.cohorts` of a running owner (same methods and results as `CohortService`)."""

    def list(self) -> list[CohortSummary]:
        return [CohortSummary.from_dict(c) for c in self.client._request("GET", "/cohorts")]

    def show(self, name: str, limit: int | None = None) -> CohortSummary:
        return CohortSummary.from_dict(self.client._request("GET", f"/cohorts/{_quoted(name)}", {"limit": min(limit or 10000, 10000)}))

    def create(self, name: str, definition=None, replace: bool = False, **fields) -> CohortSummary:
        definition = definition if definition is not None else {k: v for k, v in fields.items() if v not in (None, (), [])}
        if hasattr(definition, "as_dict"):
            definition = definition.as_dict()
        for key in ("labels",):  # the API takes label filters as {name: [values]} or NAME=VALUE strings
            if isinstance(definition.get(key), tuple):
                definition[key] = list(definition[key])
        body = {"name": name, "definition": definition, "replace": replace}
        return CohortSummary.from_dict(self.client._request("POST", "/cohorts", body=_json_body(body), content_type="application/json"))

    def refresh(self, name: str) -> CohortSummary:
        return CohortSummary.from_dict(self.client._request("POST", f"/cohorts/{_quoted(name)}/refresh", body=b"{}",
                                                            content_type="application/json"))

    def delete(self, name: str) -> None:
        self.client._request("DELETE", f"/cohorts/{_quoted(name)}")

    def export(self, name: str, fmt: str, out: Path, kind: str | None = None, signature: str | None = None) -> dict:
        from eagle_index.atomic import atomic_write_bytes

        if signature is not None:
            raise InputError("--signature is not available while a server holds the catalog (its export uses the cohort's)")
        data, headers = self.client._request_raw("GET", f"/cohorts/{_quoted(name)}/export/{_quoted(fmt)}", {"kind": kind})
        atomic_write_bytes(Path(out), data, mkdir=False)
        return {"cohort": name, "format": fmt, "path": str(out), "members": int(headers.get("X-Export-Members", 0)),
                "rows": int(headers.get("X-Export-Rows", 0)), "notes": json.loads(headers.get("X-Export-Notes") or "[]")}

    def duplicates(self, threshold: float = 0.95, kind: str | None = None, signature: str | None = None,
                   cohort: str | None = None, **_) -> dict:
        return self.client._request("GET", "/quality/duplicates", {"threshold": threshold, "kind": kind, "cohort": cohort})

    def leakage(self, a: str, b: str, threshold: float = 0.95, kind: str | None = None, signature: str | None = None) -> dict:
        return self.client._request("GET", "/quality/leakage", {"a": a, "b": b, "threshold": threshold, "kind": kind})

    def umap(self, name: str, kind: str | None = None, signature: str | None = None, seed: int = 0) -> dict:
        """The owner's map of the cohort (computed and cached there); `path` is None: the file is the server's."""
        out = self.client._request("GET", f"/cohorts/{_quoted(name)}/map", {"kind": kind, "signature": signature, "seed": seed})
        for point in out.get("points", []):
            point.pop("cohorts", None)  # the map page's extra; `cohort umap` has the same points as without a server
        return {**out, "path": None}


class RemoteProbes(_RemoteTopic):
    """`service.probes` of a running owner (same methods and results as `ProbeService`)."""

    def list(self) -> list[ProbeResult]:
        return [ProbeResult.from_dict(p) for p in self.client._request("GET", "/probes")]

    def get(self, name: str) -> ProbeResult:
        return ProbeResult.from_dict(self.client._request("GET", f"/probes/{_quoted(name)}"))

    def delete(self, name: str) -> None:
        self.client._request("DELETE", f"/probes/{_quoted(name)}")

    def apply(self, name: str, cohort: str | None = None, top: int | None = 50, exclude_training: bool = False,
              signature: str | None = None, store: bool = True) -> dict:
        if not store:
            raise InputError("--no-store is not available while a server holds the catalog (its apply stores the scores)")
        body = {"cohort": cohort, "top": top or 10000, "exclude_training": exclude_training}
        return self.client._request("POST", f"/probes/{_quoted(name)}/apply", body=_json_body(body), content_type="application/json")

    def scores(self, name: str, top: int | None = None) -> list[dict]:
        page = self.client._request("GET", f"/probes/{_quoted(name)}/candidates", {"limit": min(top or 1000, 1000)})
        return page["candidates"]

    def train(self, label: str, kind: str | None = None, model: str = "logreg", folds: int = 5, seed: int = 0,
              progress=None, **options) -> ProbeResult:
        """Submitted as a server task (the server trains and stores it); polled until done, then its summary."""
        body = {"label": label, "kind": kind, "model": model, "folds": folds, "seed": seed,
                **{k: v for k, v in options.items() if k in ("name", "signature", "positive", "vs_rest", "cohort")}}
        task = self.client.run_task("/probes", body, progress, what="training probe {probe!r}")
        return self.get(task["meta"]["probe"])

    def fewshot(self, label: str, kind: str | None = None, ks=(1, 2, 4, 8, 16, 32), draws: int = 10, seed: int = 0,
                signature: str | None = None, positive: str | None = None, vs_rest: bool = False, cohort: str | None = None,
                progress=None) -> dict:
        """POST /fewshot (a server task), polled until done."""
        body = {"label": label, "kind": kind, "ks": [int(k) for k in ks], "draws": draws, "seed": seed, "signature": signature,
                "positive": positive, "vs_rest": vs_rest, "cohort": cohort}
        return self.client.run_task("/fewshot", body, progress, what="the few-shot curve")["result"]

    def compare(self, labels: list[str], kind: str | None = None, against: str = "chief", model: str = "logreg",
                against_model: str | None = None, folds: int = 5, seed: int = 0, signature: str | None = None,
                against_signature: str | None = None, positive: str | None = None, progress=None) -> dict:
        """POST /compare (a server task), polled until done."""
        body = {"labels": list(labels), "kind": kind, "against": against, "model": model, "against_model": against_model,
                "folds": folds, "seed": seed, "signature": signature, "against_signature": against_signature, "positive": positive}
        return self.client.run_task("/compare", body, progress, what="comparing probes")["result"]


class RemoteRegions:
    """`service.regions` of a running owner: region search through POST /api/v1/search/tiles."""

    def __init__(self, client: OwnerClient):
        self.client = client

    def search(self, query: dict, k: int = 20, per_patient: int = 3, filters=None, include_same_patient: bool = False,
               image: Path | None = None, mpp: float | None = None):
        from eagle_index.region_search import RegionSearchResult

        filters_dict = filters.as_dict() if filters is not None else {}
        if image is not None:
            image = Path(image)
            if not image.is_file():
                raise InputError(f"{image}: file not found")
            fields = {"k": k, "per_patient": per_patient, "include_same_patient": str(include_same_patient).lower(),
                      "filters": json.dumps(filters_dict)}
            if mpp is not None:
                fields["mpp"] = mpp
            boundary = uuid.uuid4().hex
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                     for name, value in fields.items()]
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{image.name}"\r\n'
                         "Content-Type: application/octet-stream\r\n\r\n".encode() + image.read_bytes() + b"\r\n")
            parts.append(f"--{boundary}--\r\n".encode())
            data = self.client._request("POST", "/search/tiles", body=b"".join(parts),
                                        content_type=f"multipart/form-data; boundary={boundary}")
        else:
            body = {**query, "k": k, "per_patient": per_patient, "include_same_patient": include_same_patient, "filters": filters_dict}
            data = self.client._request("POST", "/search/tiles", body=json.dumps(body).encode(), content_type="application/json")
        return RegionSearchResult.from_dict(data)


class RemoteAnnotations(_RemoteTopic):
    """`service.annotations` of a running owner (same methods and answers as `AnnotationService`)."""

    def _json(self, method: str, path: str, body: dict):
        return self.client._request(method, path, body=json.dumps(body).encode(), content_type="application/json")

    def of_slide(self, slide) -> dict:
        return self.client._request("GET", f"/slides/{_quoted(slide)}/annotations")

    def list(self, slide=None, limit: int | None = None) -> list[dict]:
        return self.client._request("GET", "/annotations", {"slide": slide, "limit": limit})["annotations"]

    def get(self, annotation_id) -> dict:
        return self.client._request("GET", f"/annotations/{_quoted(annotation_id)}")

    def create(self, slide, geometry, name: str | None = None, class_name: str | None = None, color=None,
               source: str = "viewer") -> dict:
        body = {"geometry": geometry, "name": name, "class_name": class_name, "color": color, "source": source}
        return self._json("POST", f"/slides/{_quoted(slide)}/annotations", body)

    def update(self, annotation_id, **fields) -> dict:
        return self._json("PUT", f"/annotations/{_quoted(annotation_id)}", fields)

    def delete(self, ids) -> list[int]:
        ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
        if not ids:
            raise InputError("give the id(s) of the annotations to delete")
        return self._json("POST", "/annotations/delete", {"ids": ids})["deleted"]

    def import_geojson(self, slide, path: Path | None = None, data=None, source: str | None = None) -> dict:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise InputError(f"{path}: not a regular file" if path.exists() else f"{path}: file not found")
            boundary = uuid.uuid4().hex
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                    "Content-Type: application/geo+json\r\n\r\n".encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
            return self.client._request("POST", f"/slides/{_quoted(slide)}/annotations/import", body=body,
                                        content_type=f"multipart/form-data; boundary={boundary}")
        return self._json("POST", f"/slides/{_quoted(slide)}/annotations/import", data)

    def export_geojson(self, slide) -> dict:
        data, _ = self.client._request_raw("GET", f"/slides/{_quoted(slide)}/annotations.geojson")
        return json.loads(data)


def service_for(settings, create: bool = True, read_only: bool = False):
    """An EagleService, or a RemoteService when another process owns the catalog. `read_only`: the
    command only reads (`stats`, `search`), so a local service opens a `CatalogSnapshot`."""
    client = owner_client(settings)
    if client is not None:
        return RemoteService(client)
    from eagle_index.service import EagleService

    return EagleService(settings, create=create, read_only=read_only)
