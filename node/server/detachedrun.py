"""A detached job's run on the leader, tried until it ends one way or another.

The ledger (ledger.py) drives each detached job the table shows queued or
running; this is one drive's loop. A run is tried again:
- while the leader's `--max-jobs` are taken by attached jobs (a slot frees);
- when the run it joined (an attached submit's of the same job id) ended
  as it joined, because that run's last caller had just gone (RunAbandoned;
  jobs.py keeps a run while anyone waits for it): the job is still wanted,
  so it gets a run of its own, where before it stayed queued until an
  election.
Before each try the job's record is read again: a job cancelled while it
waited for a slot is not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from node.core.job import Job
from node.errors import ClusterUnavailable, InvalidJob, JobCancelled, JobError, LimitExceeded, RunAbandoned

if TYPE_CHECKING:
    from node.server.api import Outcome

#: After the leader's max-jobs refused a detached run, try again this much later.
BUSY_RETRY_S = 0.05

Run = Callable[[str, Job], Awaitable["Outcome"]]


async def run_to_end(run: Run, job_id: str, job: Job, wanted: Callable[[], bool]) -> Outcome | str | None:
    """The job's outcome; or why it failed, for its record; or None if this drive stops here:
    the node is no longer the leader (the next one resumes the job), or the job was
    cancelled (`wanted` says no: its record is final)."""
    while wanted():
        try:
            return await run(job_id, job)
        except LimitExceeded as exc:
            if not str(exc).startswith("max-jobs"):
                return str(exc)
            await asyncio.sleep(BUSY_RETRY_S)  # attached jobs fill the leader: wait for a slot
        except RunAbandoned:
            continue  # the attached run it joined ended with its last caller: a run of its own
        except (ClusterUnavailable, JobCancelled):
            return None
        except (InvalidJob, JobError) as exc:
            return str(exc)
    return None
