"""The blocking Client's watchdog on its own: fake probes, short intervals.

Waits poll with deadlines; the only sleeps stand in for a call in flight.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import inproc
import pytest

from node.client.watchdog import Watch, Watchdog
from node.errors import ClusterUnavailable

INTERVAL_S = 0.02


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    inproc.wait_until(predicate, 5.0, what, interval_s=0.001)


class Node:
    """Answers probes (or not) and records what the watchdog did to it."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.probes: list[str] = []
        self.abandoned: list[str] = []
        self.progress: list[tuple[int, int]] = []

    def probe(self, address: str, job_id: str) -> tuple[int, int] | None:
        self.probes.append(job_id)
        return (len(self.probes), 10) if self.answers else None

    def abandon(self, watch: Watch) -> None:
        self.abandoned.append(watch.address)


def test_a_short_call_is_never_probed() -> None:
    node = Node(answers=True)
    dog = Watchdog(node.probe, node.abandon, interval_s=10.0, failures=2)
    for i in range(100):
        with dog.watch("a:1", f"job-{i}", None) as watch:
            pass
    dog.close()
    assert node.probes == [] and not watch.abandoned


def test_a_long_call_on_a_live_node_is_probed_and_kept() -> None:
    node = Node(answers=True)
    dog = Watchdog(node.probe, node.abandon, interval_s=INTERVAL_S, failures=2)
    with dog.watch("a:1", "long", lambda done, total: node.progress.append((done, total))) as watch:
        wait_until(lambda: len(node.probes) >= 3, "three probes")
    dog.close()
    assert watch.known and not watch.abandoned and node.abandoned == []
    assert node.progress[:2] == [(1, 10), (2, 10)]


def test_a_silent_node_is_abandoned_after_the_allowed_misses() -> None:
    node = Node(answers=False)
    dog = Watchdog(node.probe, node.abandon, interval_s=INTERVAL_S, failures=3)
    with dog.watch("b:2", "stuck", None) as watch:
        wait_until(lambda: watch.abandoned, "the watch to be abandoned")
        assert node.abandoned == ["b:2"]
        assert len(node.probes) == 3 and not watch.known
    dog.close()


def test_one_answer_resets_the_miss_count() -> None:
    answers = [False, True, False, True, False, False]
    asked: list[bool] = []

    def probe(*args: object) -> tuple[int, int] | None:
        asked.append(answers[len(asked)])
        return (1, 2) if asked[-1] else None

    node = Node(answers=True)
    dog = Watchdog(probe, node.abandon, interval_s=INTERVAL_S, failures=2)
    with dog.watch("c:3", "flaky", None) as watch:
        wait_until(lambda: watch.abandoned, "the watch to be abandoned")
    dog.close()
    assert watch.known and node.abandoned == ["c:3"]
    assert len(asked) == 6  # only two misses in a row count


def test_close_stops_the_thread_and_refuses_new_watches() -> None:
    node = Node(answers=True)
    dog = Watchdog(node.probe, node.abandon, interval_s=INTERVAL_S, failures=2)
    with dog.watch("a:1", "x", None):
        pass
    threads = [t for t in threading.enumerate() if t.name == "distnode-watchdog"]
    dog.close()
    assert threads and not any(t.is_alive() for t in threads)
    with pytest.raises(ClusterUnavailable, match="closed"), dog.watch("a:1", "y", None):
        pass


def test_a_probe_that_raises_is_a_miss_and_the_thread_lives_on() -> None:
    calls: list[str] = []

    def probe(address: str, job_id: str) -> tuple[int, int] | None:
        calls.append(job_id)
        if job_id == "broken":
            raise OSError("certificate file vanished")
        return (1, 1)

    node = Node(answers=True)
    dog = Watchdog(probe, node.abandon, interval_s=INTERVAL_S, failures=2)
    with dog.watch("d:4", "broken", None) as broken:
        wait_until(lambda: broken.abandoned, "the raising probe to count as misses")
    with dog.watch("d:4", "fine", None) as fine:
        wait_until(lambda: calls.count("fine") >= 2, "probes after the failure")
    dog.close()
    assert fine.known and not fine.abandoned and node.abandoned == ["d:4"]


def test_a_progress_callback_that_raises_is_ignored() -> None:
    node = Node(answers=True)
    seen: list[tuple[int, int]] = []

    def on_progress(done: int, total: int) -> None:
        seen.append((done, total))
        raise ValueError("a user's bug")

    dog = Watchdog(node.probe, node.abandon, interval_s=INTERVAL_S, failures=2)
    with dog.watch("e:5", "job", on_progress) as watch:
        wait_until(lambda: len(seen) >= 3, "three progress calls")
    dog.close()
    assert watch.known and not watch.abandoned


def test_abandon_is_handed_the_watched_calls_channel() -> None:
    node = Node(answers=False)
    handed: list[object] = []
    token = object()
    dog = Watchdog(node.probe, lambda watch: handed.append(watch.channel), interval_s=INTERVAL_S, failures=1)
    with dog.watch("f:6", "job", None, channel=token) as watch:
        wait_until(lambda: watch.abandoned, "abandonment")
    dog.close()
    assert handed == [token]


def test_a_closed_client_refuses_to_submit() -> None:
    from node import Client

    client = Client(["127.0.0.1:1"])  # never dialled
    client.close()
    with pytest.raises(ClusterUnavailable, match="closed"):
        client.submit(op="sum", source="range:n=10")


def test_calls_due_at_once_are_probed_at_once() -> None:
    """Probes went one by one, each up to its timeout when the node is silent: with eight calls
    to a paused node watched, their deadlines and give-ups came seconds late. Calls due
    together are now probed together."""
    release, lock = threading.Event(), threading.Lock()
    under_way: list[str] = []

    def silent(address: str, job_id: str) -> None:
        with lock:
            under_way.append(job_id)
        release.wait(5)

    dog = Watchdog(silent, lambda watch: None, interval_s=INTERVAL_S, failures=100)
    try:
        with contextlib.ExitStack() as calls:
            for i in range(4):
                calls.enter_context(dog.watch("a:1", f"job-{i}", None))
            wait_until(lambda: len(set(under_way)) == 4, "the four calls probed at once")
            release.set()
    finally:
        release.set()
        dog.close()


def test_a_deadline_sooner_than_the_watchdogs_next_look_is_kept() -> None:
    """A new call woke the watchdog only if it slept past that call's first probe, so a deadline
    sooner than the thread's next look at another call waited for it: here 2 s instead of 0.05."""
    dog = Watchdog(lambda address, job_id: (0, 1), lambda watch: None, interval_s=2.0, failures=2)
    ended = threading.Event()
    try:
        with dog.watch("a:1", "first", None):
            time.sleep(0.1)  # a call in flight: the watchdog sleeps until its first probe, 2 s on
            with dog.watch("a:1", "timed", None, deadline_s=time.monotonic() + 0.05, on_deadline=ended.set):
                assert ended.wait(1.0), "the deadline waited for the other call's first probe"
    finally:
        dog.close()
