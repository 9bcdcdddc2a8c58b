"""app.logs in a child process (the root logger stays untouched here): every line is JSON,
job ids follow bind_job and asyncio tasks, uvicorn's and Celery's loggers come out as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, logging.config, sys, warnings
    import uvicorn.config
    # uvicorn's own dictConfig first, as the `uvicorn` command does before importing the app
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    from app.logs import bind_job, configure_logging
    # a library logger with its own plain handler, as torch._logging sets up
    logging.getLogger("torch").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("torch").propagate = False
    configure_logging("info", "api")
    configure_logging("info", "api")  # idempotent: still one line per record
    log = logging.getLogger("hetserve.test")
    log.debug("hidden")
    log.info("before %s", "bind")
    with bind_job("job-a"):
        log.info("inside", extra={"epoch": 3, "obj": object()})
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/healthz", "1.1", 200)
        logging.getLogger("celery.app.trace").warning("task done")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("boom")
    log.info("after")
    logging.getLogger("torch.onnx").warning("torchvision is not installed")
    warnings.warn("running as root", UserWarning)

    async def job(job_id):
        with bind_job(job_id):
            for step in range(3):
                log.info("step %d", step)
                await asyncio.sleep(0)

    async def main():
        await asyncio.gather(job("job-x"), job("job-y"))

    asyncio.run(main())
    """
)


def run_script() -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == ""
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_json_lines_with_job_id_from_every_logger():
    lines = run_script()
    by_msg = {line["msg"]: line for line in lines}
    assert "hidden" not in by_msg
    for line in lines:
        assert {"ts", "level", "logger", "msg", "process"} <= set(line)
        assert line["process"] == "api"
        assert line["ts"].endswith("+00:00")

    assert "job_id" not in by_msg["before bind"]
    assert "job_id" not in by_msg["after"]
    inside = by_msg["inside"]
    assert inside["job_id"] == "job-a" and inside["epoch"] == 3
    assert inside["obj"].startswith("<object object")
    access = by_msg['1.2.3.4:5 - "GET /healthz HTTP/1.1" 200']
    assert access["logger"] == "uvicorn.access" and access["job_id"] == "job-a"
    assert by_msg["task done"]["level"] == "WARNING" and by_msg["task done"]["job_id"] == "job-a"
    boom = by_msg["boom"]
    assert boom["level"] == "ERROR" and "ZeroDivisionError" in boom["exc"]
    assert by_msg["torchvision is not installed"]["logger"] == "torch.onnx"
    (warned,) = [line for line in lines if line["logger"] == "py.warnings"]
    assert "UserWarning: running as root" in warned["msg"]
    # one handler although configure_logging ran twice
    assert sum(1 for line in lines if line["msg"] == "inside") == 1


def test_concurrent_asyncio_tasks_keep_their_own_job_id():
    steps = [line for line in run_script() if line["msg"].startswith("step ")]
    assert len(steps) == 6
    # the two tasks interleave, yet each line carries the id its own task bound
    assert [line["job_id"] for line in steps] == ["job-x", "job-y"] * 3
