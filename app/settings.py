"""All service settings in one place: environment variables prefixed HETSERVE_."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from core.settings import KernelSettings


def default_ort_intra_op_threads(cores: int, api_processes: int) -> int:
    """onnxruntime threads per call: the process's share of the cores less its event loop."""
    return max(1, cores // max(1, api_processes) - 1)


def default_api_workers() -> int:
    """API processes by default: one per two cores (under load each keeps about two busy,
    its event loop and its onnxruntime call), but two on two cores, where a single event
    loop is the limit at small K (bench/serve_load.py), and one on one core."""
    cores = os.cpu_count() or 1
    return max(min(2, cores), cores // 2)


class Settings(KernelSettings):
    """Every setting of the service; the training code's own (the HET kernel's) are
    inherited from core.settings, which models/ reads without importing app."""

    model_config = SettingsConfigDict(env_prefix="HETSERVE_", env_file=None, extra="ignore")

    # -- where things live ---------------------------------------------------
    data_dir: Path = Field(
        Path("var"), description="artifacts, SQLite file, embedded broker, API key"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/hetserve.db"
    )
    broker_url: str | None = Field(
        None, description="Celery broker; default an embedded sqla+sqlite broker"
    )
    result_backend: str | None = Field(
        None, description="Celery result backend; default the database"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = Field(
        0,
        ge=0,
        description="API processes `hetserve up` starts (uvicorn --workers), each with its"
        " own event loop, sessions and batcher; 0: one per two CPU cores, at least min(2, cores)",
    )

    # -- auth -----------------------------------------------------------------
    api_keys: str | None = Field(
        None,
        description="comma-separated bearer keys, `key:predict` for a predict-only key;"
        " unset (and no keys file): one generated key",
    )
    api_keys_file: Path | None = Field(
        None, description="a file of keys (same syntax, also one a line), re-read when it changes"
    )
    auth_failure_limit: int = Field(
        30,
        ge=1,
        description="wrong keys from one client address per window before 429 (for requests "
        "without a valid key: a valid key is served)",
    )
    auth_failure_window_s: float = 60.0

    # -- uploads and jobs --------------------------------------------------------
    max_upload_bytes: int = 256 * 1024 * 1024
    max_json_body_bytes: int = 4 * 1024 * 1024  # every other route but predict
    max_expanded_bytes: int = Field(
        1 << 30, ge=1, description="what one upload may expand to in memory (arrays, images)"
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, description="uploads one API process decodes at once; others wait"
    )
    decode_wait_s: float = 30.0  # an upload waits this long for a decode slot, then 503
    dataset_roots: str | None = Field(
        None,
        description="comma-separated absolute folders (and s3://bucket/prefix roots, with the"
        " s3 extra) whose datasets may be registered by reference (POST /v1/datasets {uri});"
        " unset: registration by reference is off",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="API and worker: the S3 endpoint of s3:// datasets (MinIO, a local"
        " S3-compatible server); unset: AWS. Credentials: the standard AWS_* variables",
    )
    dataset_sample_decode: int = Field(
        32, ge=1, description="images a registration by reference decodes to check them"
    )
    loader_workers: int = Field(
        2, ge=0, description="worker: DataLoader processes streaming an image-folder dataset"
    )
    weights_dir: str | None = Field(
        None,
        description="worker: folder of pretrained backbone state dicts; a relative"
        " backbone.weights is read from it, and when set every backbone.weights file must"
        " lie inside it",
    )
    job_time_limit_s: int = 6 * 3600
    max_job_attempts: int = Field(5, ge=1, description="deliveries of one job before it fails")
    # Must exceed job_time_limit_s (celery#5935). Redis: the job of a worker killed
    # outright (SIGKILL, a lost host) is redelivered only after it, plus up to
    # app.broker.REDIS_RESTORE_INTERVAL_S (10 s) for a running worker to look; the sweeper
    # leaves it (an unacknowledged message names no worker, so it cannot tell a dead
    # worker's from one still training). A SIGTERMed worker hands its job back at once.
    broker_visibility_timeout_s: int = 12 * 3600
    broker_key_prefix: str | None = Field(
        None, description="Redis broker: prefix of every key (several deployments, one Redis)"
    )
    broker_polling_interval_s: float = (
        0.2  # embedded (sqla+sqlite) broker: how often the worker polls
    )
    cancel_poll_interval_s: float = 1.0  # worker reads the job's cancel flag at most this often
    store_retry_max_s: float = Field(
        30.0, gt=0, description="worker, store down: longest wait between reconnect attempts"
    )
    sweep_interval_s: float = Field(
        300.0, ge=0, description="worker: re-queue stranded jobs this often (0: at start only)"
    )
    sweep_grace_s: float = Field(
        60.0, ge=0, description="a job must be this old before the sweeper may re-queue it"
    )
    min_free_bytes: int = Field(
        1 << 30, ge=0, description="/readyz reports disk_space low below this many free bytes"
    )
    auto_migrate: bool = True  # the API runs `alembic upgrade head` on start
    gc_grace_s: float = Field(
        3600.0,
        ge=0,
        description="hetserve gc: an unreferenced artifact or temporary file must be this old",
    )

    # -- serving -------------------------------------------------------------------
    max_request_bytes: int = 32 * 1024 * 1024
    max_batch_rows: int = 1024
    max_mc_samples: int = 10_000
    session_cache_size: int = 8
    ort_intra_op_threads: int = 0  # 0: max(1, cores // API processes - 1)
    ort_inter_op_threads: int = 1
    batching: bool = True
    max_batch_size: int = 64
    max_queue_delay_ms: float = 5.0
    inference_threads: int = 4  # threads running onnxruntime calls off the event loop
    model_lookup_ttl_s: float = 1.0  # how long an API process reuses a model/alias lookup

    log_level: str = "INFO"

    @property
    def dataset_root_list(self) -> list[str]:
        return [r.strip() for r in (self.dataset_roots or "").split(",") if r.strip()]

    @property
    def resolved_api_workers(self) -> int:
        return self.api_workers or default_api_workers()

    @property
    def resolved_ort_intra_op_threads(self) -> int:
        """``HETSERVE_ORT_INTRA_OP_THREADS``, or for 0 the default for this machine."""
        return self.ort_intra_op_threads or default_ort_intra_op_threads(
            os.cpu_count() or 1, self.resolved_api_workers
        )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hetserve.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
