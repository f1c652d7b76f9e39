"""The leader's answers kept by job id, so a client that retries gets the same answer
instead of a second run; bounded by entries and by bytes, oldest out first."""

from __future__ import annotations

import collections

from node.core.job import Job
from node.server.api import Outcome

#: Answers kept: at most this many, and at most this many bytes of results.
#: Vector answers are megabytes each; a retry comes seconds after its failure,
#: so the newest few are what matter. The byte bound keeps an idle leader
#: small after a burst of them, and lets their buffers be reused: each answer
#: held is fresh memory the next job must fault in (about 4 ms per 8 MB answer
#: on a 2-core VM). An evicted job that is retried runs again, with the same
#: answer bit for bit.
ANSWER_CACHE_ENTRIES = 10_000
ANSWER_CACHE_BYTES = 16 << 20


class AnswerCache:
    def __init__(self) -> None:
        self._answers: collections.OrderedDict[str, tuple[Job, Outcome]] = collections.OrderedDict()
        self._bytes = 0

    def get(self, job_id: str) -> tuple[Job, Outcome] | None:
        return self._answers.get(job_id)

    def remember(self, job_id: str, job: Job, outcome: Outcome) -> None:
        """Keep the answer for retries, oldest out first when over either bound."""
        old = self._answers.pop(job_id, None)
        if old is not None:
            self._bytes -= old[1].result.nbytes
        self._answers[job_id] = (job, outcome)
        self._bytes += outcome.result.nbytes
        while len(self._answers) > ANSWER_CACHE_ENTRIES or self._bytes > ANSWER_CACHE_BYTES:
            _, (_, evicted) = self._answers.popitem(last=False)
            self._bytes -= evicted.result.nbytes
