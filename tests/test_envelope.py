"""The job envelope: every job gets the same lines, the runtime, and the retry decision."""

from __future__ import annotations

import pytest

from sensormeter.errors import RetryableReportError
from sensormeter.logs import capture_logs
from sensormeter.reporter import ChunkResult
from sensormeter.runtime import Runtime
from sensormeter.tasks.envelope import JobRun, run_job


def events(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["event"], e["log_level"]) for e in logs if str(e["event"]).startswith("job.")]


class TestRunJob:
    def test_a_body_gets_the_runtime_and_its_figures_are_logged_and_returned(
        self, runtime: Runtime
    ) -> None:
        """Outside RQ there is no job id and this is the final attempt; the dict is the result."""
        seen: list[JobRun] = []

        def body(run: JobRun) -> dict[str, object]:
            seen.append(run)
            return {"jobs": 3}

        with capture_logs() as logs:
            assert run_job("some_job", body, hour="2026-11-29T04") == {"jobs": 3}
        [run] = seen
        assert (run.runtime, run.job_id, run.final_attempt) == (runtime, None, True)
        assert events(logs) == [("job.started", "info"), ("job.completed", "info")]
        completed = logs[-1]
        assert (completed["job"], completed["hour"], completed["jobs"]) == (
            "some_job",
            "2026-11-29T04",
            3,
        )

    def test_a_body_that_raises_is_logged_as_failed_and_raised_again(
        self, runtime: Runtime
    ) -> None:
        """Whatever the body raises, the job.failed line names it, and RQ sees the exception."""

        def body(run: JobRun) -> None:
            raise KeyError("boom")

        with capture_logs() as logs, pytest.raises(KeyError):
            run_job("some_job", body)
        failed = logs[-1]
        assert (failed["event"], failed["log_level"], failed["error_type"]) == (
            "job.failed",
            "error",
            "KeyError",
        )
        assert failed["will_retry"] is False

    def test_a_chunk_with_transient_failures_is_retried(self, runtime: Runtime) -> None:
        """A report body whose rows are still pending makes the envelope raise for RQ's retry."""

        def body(run: JobRun) -> ChunkResult:
            result = ChunkResult()
            result.values = {"a": 1}
            result.statuses = {"a": "pending"}
            result.errors = {"a": "APIError: down"}
            return result

        with capture_logs() as logs, pytest.raises(RetryableReportError):
            run_job("process_meter_report", body, organizations=1)
        line = logs[-1]
        assert (line["event"], line["unsettled_examples"], line["error"]) == (
            "job.retrying",
            ["a"],
            "APIError: down",
        )
