"""``hetserve.Client``: the Python client of the hetserve REST API.

Why one module of ~580 lines: one method per route, kept in the order of the API's
routers, so a route and its method are found by the same name.

One method per route; answers are the API's JSON objects (typed as TypedDicts in
``hetserve._types``), predictions a :class:`PredictResult` with numpy arrays. Every
failure raises: :class:`ApiError` (and its subclasses per status) for an error answer,
:class:`ConnectionFailed` when the service cannot be reached.

Dependencies: httpx; numpy only for array inputs/outputs, imported when first needed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx

from hetserve._types import (
    TERMINAL_STATUSES,
    Alias,
    Dataset,
    Job,
    JobEvent,
    LabelIssues,
    Model,
    NoiseReport,
    Predictive,
    PredictResult,
)
from hetserve.errors import ConnectionFailed, HetserveError, error_for

if TYPE_CHECKING:  # numpy is optional for the client: imported on first use
    from numpy.typing import ArrayLike

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
# The events stream sends a keep-alive comment every 15 s: a longer silence is a dead stream.
EVENTS_READ_TIMEOUT_S = 60.0

PathLike = str | os.PathLike[str]
ProgressCallback = Callable[[Job], Any]


def _id(value: str) -> str:
    """A path segment: ids and alias names are URL-safe, but never trust that blindly."""
    return quote(str(value), safe="")


class Client:
    """A connection to one hetserve service.

    >>> from hetserve import Client
    >>> client = Client("http://127.0.0.1:8000", key="…")   # doctest: +SKIP

    ``url`` defaults to ``$HETSERVE_URL``, else http://127.0.0.1:8000; ``key`` to
    ``$HETSERVE_API_KEY``. ``transport`` (an ``httpx.BaseTransport``) replaces the
    network, e.g. ``httpx.MockTransport`` in tests. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        from hetserve import __version__

        self.url = (url or os.environ.get("HETSERVE_URL") or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get("HETSERVE_API_KEY")
        all_headers = {"User-Agent": f"hetserve-client/{__version__}", **(headers or {})}
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            base_url=self.url, headers=all_headers, timeout=timeout, transport=transport
        )

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call; an error status raises :class:`ApiError`, a network failure
        :class:`ConnectionFailed`. Returns the httpx response."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, str(exc) or type(exc).__name__) from None
        _raise_for_status(response, method, path)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` while the API process is up."""
        return cast(dict[str, Any], self._json("GET", "/healthz"))

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: store and broker status; raises :class:`ServiceUnavailable`
        (503) when either is down."""
        return cast(dict[str, Any], self._json("GET", "/readyz"))

    # ------------------------------------------------------------------ datasets

    def upload_dataset(
        self,
        file: PathLike | bytes | IO[bytes],
        *,
        filename: str | None = None,
        name: str | None = None,
        image_size: int | None = None,
        grayscale: bool | None = None,
    ) -> Dataset:
        """Upload a ``.npz``, ``.csv`` or ``.zip`` of image folders (``POST /v1/datasets``).

        ``file`` is a path, the file's bytes or a binary file object; with bytes or a
        file object give ``filename`` (its extension tells the format). ``image_size``
        and ``grayscale`` apply to ``.zip`` images.
        """
        form: dict[str, str] = {}
        if name is not None:
            form["name"] = name
        if image_size is not None:
            form["image_size"] = str(image_size)
        if grayscale is not None:
            form["grayscale"] = "true" if grayscale else "false"
        if isinstance(file, str | os.PathLike):
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            with path.open("rb") as f:
                files = {"file": (filename or path.name, f)}
                return cast(Dataset, self._json("POST", "/v1/datasets", files=files, data=form))
        if filename is None:
            filename = getattr(file, "name", None)
            if not isinstance(filename, str):
                raise ValueError("give filename= (e.g. 'data.npz') with bytes or a file object")
            filename = Path(filename).name
        return cast(
            Dataset, self._json("POST", "/v1/datasets", files={"file": (filename, file)}, data=form)
        )

    def upload_arrays(
        self,
        x_train: ArrayLike,
        y_train: ArrayLike,
        *,
        x_val: ArrayLike | None = None,
        y_val: ArrayLike | None = None,
        x_test: ArrayLike | None = None,
        y_test: ArrayLike | None = None,
        class_names: Sequence[str] | None = None,
        name: str = "arrays.npz",
    ) -> Dataset:
        """Upload in-memory arrays (anything ``numpy.asarray`` takes) as an ``.npz``
        dataset: ``x_*`` ``[N, ...]`` features or images, ``y_*`` ``[N]`` class indices
        (or ``[N, K]`` 0/1 for multilabel). Needs numpy."""
        import numpy as np

        arrays = {"x_train": np.asarray(x_train), "y_train": np.asarray(y_train)}
        for key, value in (("x_val", x_val), ("y_val", y_val), ("x_test", x_test),
                           ("y_test", y_test)):  # fmt: skip
            if value is not None:
                arrays[key] = np.asarray(value)
        if class_names is not None:
            arrays["class_names"] = np.asarray([str(c) for c in class_names])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle: bool
        filename = name if name.endswith(".npz") else f"{name}.npz"
        return self.upload_dataset(buffer.getvalue(), filename=filename, name=name)

    def register_dataset(self, uri: str) -> Dataset:
        """Register a dataset that stays where it is (``POST /v1/datasets`` with
        ``{"uri": "file:///…"}`` or ``"s3://bucket/prefix"``): an ``.npz`` or an
        image-folder tree under one of the service's ``HETSERVE_DATASET_ROOTS``
        (otherwise 403)."""
        return cast(Dataset, self._json("POST", "/v1/datasets", json={"uri": uri}))

    def list_datasets(self, *, limit: int = 100, offset: int = 0) -> list[Dataset]:
        """Datasets, newest first."""
        return cast(
            list[Dataset],
            self._json("GET", "/v1/datasets", params={"limit": limit, "offset": offset}),
        )

    def get_dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self._json("GET", f"/v1/datasets/{_id(dataset_id)}"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Remove a dataset; :class:`ConflictError` while jobs use it."""
        self.request("DELETE", f"/v1/datasets/{_id(dataset_id)}")

    def correct_from_model(
        self,
        dataset_id: str,
        model_id: str,
        action: str,
        *,
        top: int | None = None,
        name: str | None = None,
    ) -> Dataset:
        """A new dataset from ``dataset_id`` and a model's findings: ``action``
        ``"relabel"`` gives the ``top`` most suspect flagged rows (default: every flagged
        row) their suggested class, ``"drop"`` leaves them out. The model must have been
        trained on ``dataset_id``. The answer's ``lineage`` records it all."""
        body: dict[str, Any] = {"model_id": model_id, "action": action}
        body |= {k: v for k, v in (("top", top), ("name", name)) if v is not None}
        url = f"/v1/datasets/{_id(dataset_id)}/corrections/from-model"
        return cast(Dataset, self._json("POST", url, json=body))

    def correct_from_csv(
        self, dataset_id: str, corrections: PathLike | bytes, *, name: str | None = None
    ) -> Dataset:
        """A new dataset from ``dataset_id`` with the labels of a CSV of ``index,label``
        lines (a path or the bytes; ``label`` a class name or index) replaced.
        :class:`UnprocessableError` (422) naming the line for a bad correction."""
        data = (
            bytes(corrections)
            if isinstance(corrections, bytes | bytearray)
            else Path(corrections).read_bytes()
        )
        form = {"name": name} if name is not None else {}
        url = f"/v1/datasets/{_id(dataset_id)}/corrections"
        files = {"file": ("corrections.csv", data)}
        return cast(Dataset, self._json("POST", url, files=files, data=form))

    # ------------------------------------------------------------------ jobs

    def submit_job(self, spec: Mapping[str, Any] | None = None, **fields: Any) -> Job:
        """Submit a training job (``POST /v1/jobs``) and return it (status ``queued``).

        ``spec`` is the job spec (``dataset_id``, ``head``, ``backbone``, ``train``,
        ``compare_baseline``, …); keyword arguments are merged over it, sections
        (``head={...}``) key by key::

            client.submit_job(dataset_id=ds["id"], head={"kind": "het", "num_factors": 4},
                              train={"epochs": 10}, compare_baseline=True)
        """
        body: dict[str, Any] = json.loads(json.dumps(dict(spec or {})))  # a deep copy
        for key, value in fields.items():
            if isinstance(value, Mapping) and isinstance(body.get(key), dict):
                body[key].update(value)
            else:
                body[key] = value
        return cast(Job, self._json("POST", "/v1/jobs", json=body))

    def get_job(self, job_id: str) -> Job:
        """A job with its per-epoch ``history``."""
        return cast(Job, self._json("GET", f"/v1/jobs/{_id(job_id)}"))

    def list_jobs(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs, newest first; ``status`` filters (queued, running, succeeded, failed,
        cancelled)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return cast(list[Job], self._json("GET", "/v1/jobs", params=params))

    def cancel_job(self, job_id: str) -> Job:
        """Ask a job to stop (cooperative); :class:`ConflictError` if it already ended."""
        return cast(Job, self._json("POST", f"/v1/jobs/{_id(job_id)}/cancel"))

    def delete_job(self, job_id: str, *, models: bool = False) -> None:
        """Delete an ended job with its history and checkpoints (``DELETE /v1/jobs/{id}``).
        :class:`ConflictError` while it is queued or running (cancel it first), when it
        has models and ``models`` is false, or when an alias points at one of them.
        ``models=True`` deletes the job's models too."""
        params = {"models": "true"} if models else None
        self.request("DELETE", f"/v1/jobs/{_id(job_id)}", params=params)

    def job_events(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's server-sent events (``GET /v1/jobs/{id}/events``) until the stream
        ends: ``progress`` events on every change, then one ``end`` with the whole job.
        ``timeout``: give up (``TimeoutError``) after that many seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v1/jobs/{_id(job_id)}/events"
        read_timeout = httpx.Timeout(self._http.timeout.connect, read=EVENTS_READ_TIMEOUT_S)
        try:
            with self._http.stream("GET", path, timeout=read_timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response, "GET", path)
                event, data = "message", []
                for line in response.iter_lines():
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id}: no end within {timeout} s")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        yield JobEvent(event, json.loads("\n".join(data)))
                        event, data = "message", []
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, str(exc) or type(exc).__name__) from None

    def wait(
        self,
        job_id: str,
        on_progress: ProgressCallback | None = None,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job ends; return it (with ``history``, ``metrics``,
        ``model_id``). Whatever the final status: check ``job["status"]``.

        ``on_progress(job)`` is called on every change (status, epoch, fraction, phase).
        Follows the server-sent events; if the stream is unavailable or breaks, polls
        ``GET /v1/jobs/{id}`` every ``poll_interval`` seconds instead. ``timeout``
        raises ``TimeoutError``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None

        def report(job: Job) -> None:
            nonlocal last
            key = (job.get("status"), json.dumps(job.get("progress"), sort_keys=True))
            if on_progress is not None and key != last:
                on_progress(job)
            last = key

        try:
            for event in self.job_events(job_id, timeout=timeout):
                report(event.job)
                if event.event == "end" or event.job.get("status") in TERMINAL_STATUSES:
                    break
        except (httpx.HTTPError, ConnectionFailed, ValueError):
            pass  # no stream, or it broke: polling below gets to the end all the same
        except HetserveError as exc:
            if getattr(exc, "status_code", None) in (401, 404):
                raise
        while True:
            job = self.get_job(job_id)
            report(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_interval)

    # ------------------------------------------------------------------ models

    def list_models(
        self, *, role: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Model]:
        """Registered models, newest first; ``role`` ``"model"`` or ``"baseline"``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if role is not None:
            params["role"] = role
        return cast(list[Model], self._json("GET", "/v1/models", params=params))

    def get_model(self, model_id: str) -> Model:
        """One model, by id or alias."""
        return cast(Model, self._json("GET", f"/v1/models/{_id(model_id)}"))

    def delete_model(self, model_id: str) -> None:
        """Remove a model (by id); :class:`ConflictError` while an alias points at it."""
        self.request("DELETE", f"/v1/models/{_id(model_id)}")

    def download_onnx(self, model_id: str, path: PathLike) -> Path:
        """Save the model's self-contained ONNX file to ``path`` (a folder: ``<id>.onnx``
        inside it) and return the file's path. The bytes are checked against the
        service's SHA-256."""
        url = f"/v1/models/{_id(model_id)}/onnx"
        target = Path(path)
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response, "GET", url)
                if target.is_dir():
                    target = target / _filename(response, f"{model_id}.onnx")
                partial = target.with_name(f".{target.name}.part")
                digest = hashlib.sha256()
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
                expected = response.headers.get("x-onnx-sha256")
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, str(exc) or type(exc).__name__) from None
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise HetserveError(f"{url}: SHA-256 mismatch, the download is corrupt")
        partial.replace(target)
        return target

    def noise(self, model_id: str) -> NoiseReport:
        """The model's label-noise report over its training inputs: most confused class
        pairs (flip rate, latent correlation), the flip matrix (None when K is large),
        the noise std by class."""
        return cast(NoiseReport, self._json("GET", f"/v1/models/{_id(model_id)}/noise"))

    def label_issues(
        self,
        model_id: str,
        limit: int | None = None,
        *,
        offset: int = 0,
        flagged: bool = False,
        given: int | None = None,
        suggested: int | None = None,
    ) -> LabelIssues:
        """Training rows the model thinks are mislabeled, most likely first; ``index``
        is the row of the uploaded ``x_train``. ``limit`` caps the ``issues`` listed
        (``num_flagged`` counts them all), ``offset`` pages; ``flagged`` keeps the
        flagged rows only, ``given`` / ``suggested`` one class pair (``num_matching``
        counts the rows that match)."""
        params = _issue_filters(limit, offset, flagged, given, suggested)
        return cast(
            LabelIssues,
            self._json("GET", f"/v1/models/{_id(model_id)}/label-issues", params=params),
        )

    def export_label_issues(
        self,
        model_id: str,
        path: PathLike,
        limit: int | None = None,
        *,
        offset: int = 0,
        flagged: bool = False,
        given: int | None = None,
        suggested: int | None = None,
    ) -> Path:
        """Save the label issues as CSV (``index, file, given, given_name, suggested,
        suggested_name, score, flagged``; every matching row unless ``limit``) to
        ``path``, streamed; return the path."""
        url = f"/v1/models/{_id(model_id)}/label-issues"
        params = _issue_filters(limit, offset, flagged, given, suggested) | {"format": "csv"}
        target = Path(path)
        partial = target.with_name(f".{target.name}.part")
        try:
            with self._http.stream("GET", url, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response, "GET", url)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ConnectionFailed(self.url, str(exc) or type(exc).__name__) from None
        partial.replace(target)
        return target

    # ------------------------------------------------------------------ aliases

    def set_alias(self, name: str, model_id: str) -> Alias:
        """Point alias ``name`` at a model (create or move)."""
        return cast(
            Alias, self._json("PUT", f"/v1/aliases/{_id(name)}", json={"model_id": model_id})
        )

    def list_aliases(self) -> list[Alias]:
        return cast(list[Alias], self._json("GET", "/v1/aliases"))

    def delete_alias(self, name: str) -> None:
        """Remove an alias (the model stays)."""
        self.request("DELETE", f"/v1/aliases/{_id(name)}")

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        model_id: str,
        inputs: Any = None,
        *,
        images: Sequence[PathLike | bytes] | None = None,
        mc_samples: int | None = None,
        seed: int | None = None,
        predictive: Predictive | None = None,
        top_k: int | None = None,
        correlated_pairs: bool = False,
    ) -> PredictResult:
        """Predict with uncertainty (``POST /v1/models/{id}/predict``; id or alias).

        Give exactly one of ``inputs`` (array-like ``[N, *input_shape]``: a numpy array or
        nested lists) or ``images`` (paths or encoded PNG/JPEG bytes, image models).
        ``mc_samples`` S (default: the model's), ``seed`` for reproducible draws,
        ``predictive`` ``"marginal"`` (the MC predictive, default) or ``"noise_free"``
        (softmax of the mean logits; no sampling, the sampled-only fields are None),
        ``top_k`` to list the k most probable classes per row, ``correlated_pairs`` for
        each row's most correlated class pairs.
        """
        if (inputs is None) == (images is None):
            raise ValueError("give exactly one of inputs= or images=")
        body: dict[str, Any] = {}
        if inputs is not None:
            body["inputs"] = _to_list(inputs)
        else:
            body["images"] = [_image_b64(image) for image in images or ()]
        optional = {"mc_samples": mc_samples, "seed": seed, "predictive": predictive,
                    "top_k": top_k}  # fmt: skip
        body |= {k: v for k, v in optional.items() if v is not None}
        if correlated_pairs:
            body["correlated_pairs"] = True
        answer = self._json("POST", f"/v1/models/{_id(model_id)}/predict", json=body)
        return PredictResult(
            model_id=answer["model_id"],
            mc_samples=answer.get("mc_samples", 0),
            predictive=answer.get("predictive", predictive),
            rows=answer["predictions"],
        )


def _issue_filters(
    limit: int | None, offset: int, flagged: bool, given: int | None, suggested: int | None
) -> dict[str, Any]:
    """The query of the label-issues route: only what differs from its defaults."""
    params: dict[str, Any] = {"limit": limit, "given": given, "suggested": suggested}
    params = {k: v for k, v in params.items() if v is not None}
    if offset:
        params["offset"] = offset
    if flagged:
        params["flagged"] = "true"
    return params


def _raise_for_status(response: httpx.Response, method: str, path: str) -> None:
    if response.status_code < 400:
        return
    try:
        payload = response.json()
        detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    except ValueError:
        detail = response.text or response.reason_phrase
    raise error_for(response.status_code, detail, method, path)


def _filename(response: httpx.Response, default: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename" and value.strip('"'):
            return Path(value.strip('"')).name
    return default


def _to_list(value: Any) -> Any:
    """numpy arrays and scalars to plain lists/numbers, through any nesting of sequences."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_to_list(v) for v in value]
    return value


def _image_b64(image: PathLike | bytes) -> str:
    data = bytes(image) if isinstance(image, bytes | bytearray) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")
