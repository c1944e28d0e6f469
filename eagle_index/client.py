"""Talk to the process that owns the catalog (see owner.py) through its JSON API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from eagle_index.errors import CatalogError, EagleIndexError, InputError, NotFoundError
from eagle_index.owner import OwnerInfo


class OwnerClient:
    def __init__(self, owner: OwnerInfo, token: str | None = None, timeout: float = 60.0):
        if not owner.url:
            raise CatalogError(f"the catalog is in use by {owner.describe()}, which serves no API; stop it first")
        self.owner = owner
        self.token = token or os.environ.get("EAGLE_INDEX_TOKEN")
        self.timeout = timeout

    def _request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                 content_type: str | None = None):
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
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            error = NotFoundError if exc.code == 404 else InputError if exc.code == 400 else EagleIndexError
            raise error(message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise CatalogError(f"cannot reach {self.owner.describe()}: {exc}") from None

    def search(self, patient: str, k: int, kind: str, signature: str | None) -> list[dict]:
        return self._request("GET", "/search", {"patient": patient, "k": k, "kind": kind, "signature": signature})

    def stats(self) -> dict:
        return self._request("GET", "/stats")

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


def owner_client(data_dir: Path) -> OwnerClient | None:
    """A client for the running owner of `data_dir`, or None when no process holds it."""
    from eagle_index.owner import current_owner

    owner = current_owner(Path(data_dir))
    return OwnerClient(owner) if owner is not None else None


class _Report(dict):
    def as_dict(self) -> dict:
        return dict(self)


class RemoteService:
    """The subset of EagleService a running owner serves, with the same method names.

    CLI commands get this instead of an EagleService while a daemon/server holds the
    catalog; anything else fails with a message that names the running process.
    """

    REMOTE = ("search_patient", "stats", "status", "import_labels")

    def __init__(self, client: OwnerClient):
        self.client = client

    def __enter__(self) -> "RemoteService":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def search_patient(self, external_id: str, k: int = 10, kind: str = "eagle", signature: str | None = None, **filters) -> list[dict]:
        params = {"patient": external_id, "k": k, "kind": kind, "signature": signature}
        params.update({key: value for key, value in filters.items() if value not in (None, [], ())})
        return self.client._request("GET", "/search", params)

    def stats(self) -> dict:
        return self.client.stats()

    def status(self) -> dict:
        return self.client.status()

    def import_labels(self, path: Path, create_missing: bool = False) -> _Report:
        return _Report(self.client.import_labels(path, create_missing))

    @property
    def regions(self) -> "RemoteRegions":
        return RemoteRegions(self.client)

    def __getattr__(self, name: str):
        raise CatalogError(
            f"{name.replace('_', ' ')} needs the catalog, which {self.client.owner.describe()} holds; "
            "stop it first, or use its API"
        )


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


def service_for(settings, create: bool = True):
    """An EagleService, or a RemoteService when another process owns the catalog."""
    client = owner_client(settings.data_dir)
    if client is not None:
        return RemoteService(client)
    from eagle_index.service import EagleService

    return EagleService(settings, create=create)
