"""UDP heartbeats (node/server/beacons.py, node/server/heartbeats.py).

Three layers: the sealed wire format on bytes; a listener and a sender on real
127.0.0.1 sockets (grants, replays, forged answers); and in-process clusters,
where idle heartbeats must leave gRPC, come back to it when a follower stops
answering datagrams, and leave it again once the follower listens anew.
Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from inproc import InProcessCluster, StartCluster, poll

from node import AsyncClient
from node._proto import distnode_pb2 as pb
from node.server import beacons
from node.server.beacons import BEAT, REPLY, BeaconListener, BeaconSender, seal, unseal
from node.server.daemon import Daemon
from node.server.heartbeats import HeartbeatLink

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# ---- the wire format ------------------------------------------------------------------------


def test_seal_then_unseal_gives_the_payload_back() -> None:
    payload = pb.HeartbeatRequest(term=7, leader_id="n1", seq=3).SerializeToString()
    assert unseal(KEY, BEAT, seal(KEY, BEAT, payload)) == payload


def test_any_flipped_byte_is_rejected() -> None:
    sealed = seal(KEY, BEAT, b"payload bytes")
    for i in range(len(sealed)):
        forged = bytearray(sealed)
        forged[i] ^= 0x01
        assert unseal(KEY, BEAT, bytes(forged)) is None, f"byte {i} flipped went through"


def test_wrong_key_kind_or_size_is_rejected() -> None:
    sealed = seal(KEY, BEAT, b"x")
    assert unseal(OTHER_KEY, BEAT, sealed) is None
    assert unseal(KEY, REPLY, sealed) is None  # a beat cannot pass for a reply
    assert unseal(KEY, BEAT, sealed[:-1]) is None
    assert unseal(KEY, BEAT, b"") is None
    assert unseal(KEY, BEAT, seal(KEY, BEAT, b"x" * beacons.MAX_DATAGRAM_BYTES)) is None


@given(st.binary(max_size=200))
def test_garbage_never_unseals_or_raises(data: bytes) -> None:
    assert unseal(KEY, BEAT, data) is None
    assert unseal(KEY, REPLY, data) is None


# ---- a listener and a sender on real sockets ------------------------------------------------


class Follower:
    """A BeaconListener answering as a follower in term 3 would."""

    def __init__(self) -> None:
        self.beats: list[Any] = []
        self.listener: BeaconListener | None = None
        self.port = 0

    def on_beat(self, beat: Any, reply: Any) -> None:
        self.beats.append(beat)
        reply(pb.HeartbeatReply(term=beat.term, node_id="n2", role="follower"))

    async def start(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.listener = await beacons.listen(f"127.0.0.1:{self.port}", self.port, self.on_beat)
        assert self.listener is not None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def follower() -> Any:
    f = Follower()
    await f.start()
    yield f
    assert f.listener is not None
    f.listener.close()


async def make_sender(address: str, replies: list[Any], key: bytes = KEY) -> BeaconSender:
    sender = await beacons.connect(address, key, replies.append)
    assert sender is not None
    return sender


def beat(term: int = 3, leader: str = "n1") -> Any:
    return pb.HeartbeatRequest(term=term, leader_id=leader, leader_address="127.0.0.1:1")


async def test_without_a_grant_beats_are_dropped(follower: Follower) -> None:
    replies: list[Any] = []
    sender = await make_sender(follower.address, replies)
    sender.send(1, beat())
    assert follower.listener is not None
    await poll(lambda: follower.listener.dropped == 1, 5.0, "the beat dropped")  # type: ignore[union-attr]
    assert follower.beats == [] and replies == [] and not sender.answering
    sender.close()


async def test_granted_beats_are_answered_and_replays_dropped(follower: Follower) -> None:
    assert follower.listener is not None
    follower.listener.grant("n1", 3, KEY)
    replies: list[Any] = []
    sender = await make_sender(follower.address, replies)
    sender.send(1, beat())
    await poll(lambda: len(replies) == 1, 5.0, "the first answer")
    assert sender.answering and replies[0].seq == 1 and replies[0].node_id == "n2"
    assert [(b.term, b.leader_id, b.seq) for b in follower.beats] == [(3, "n1", 1)]

    # A recording of beat 1, sent again from elsewhere, is not taken.
    recorded = seal(KEY, BEAT, pb.HeartbeatRequest(term=3, leader_id="n1", seq=1).SerializeToString())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.sendto(recorded, ("127.0.0.1", follower.port))
    await poll(lambda: follower.listener.dropped == 1, 5.0, "the replay dropped")  # type: ignore[union-attr]

    sender.send(2, beat())
    await poll(lambda: len(replies) == 2, 5.0, "the second answer")
    assert len(follower.beats) == 2 and follower.listener.taken == 2
    sender.close()


async def test_beats_of_another_term_or_leader_are_dropped(follower: Follower) -> None:
    assert follower.listener is not None
    follower.listener.grant("n1", 3, KEY)
    replies: list[Any] = []
    sender = await make_sender(follower.address, replies)
    sender.send(1, beat(term=4))
    sender.send(2, beat(leader="n3"))
    await poll(lambda: follower.listener.dropped == 2, 5.0, "both dropped")  # type: ignore[union-attr]
    assert follower.beats == [] and replies == []
    sender.close()


async def test_a_new_grant_replaces_the_old_key(follower: Follower) -> None:
    assert follower.listener is not None
    follower.listener.grant("n1", 3, KEY)
    follower.listener.grant("n1", 4, OTHER_KEY)  # a new term's leader
    replies: list[Any] = []
    old = await make_sender(follower.address, replies, KEY)
    old.send(1, beat(term=3))
    await poll(lambda: follower.listener.dropped == 1, 5.0, "the old key's beat dropped")  # type: ignore[union-attr]
    new = await make_sender(follower.address, replies, OTHER_KEY)
    new.send(1, beat(term=4))
    await poll(lambda: len(replies) == 1, 5.0, "the new key's answer")
    assert new.answering and not old.answering
    old.close()
    new.close()


async def test_sender_takes_each_answer_once_and_only_under_its_key() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        replies: list[Any] = []
        sender = await make_sender(f"127.0.0.1:{peer.getsockname()[1]}", replies)
        sender.send(1, beat())
        loop = asyncio.get_running_loop()
        _, leader_addr = await asyncio.wait_for(loop.sock_recvfrom(peer, 1024), 5.0)

        def answer(seq: int, key: bytes = KEY) -> None:
            reply = pb.HeartbeatReply(term=3, node_id="n2", role="follower", seq=seq)
            peer.sendto(seal(key, REPLY, reply.SerializeToString()), leader_addr)

        answer(1, OTHER_KEY)  # forged: not our key
        answer(2)  # an answer to a beat never sent
        answer(1)
        answer(1)  # the same answer replayed
        await poll(lambda: len(replies) + sender.rejected == 4, 5.0, "four answers judged")
        assert [r.seq for r in replies] == [1] and sender.rejected == 3
        sender.send(2, beat())
        answer(2)
        await poll(lambda: len(replies) == 2, 5.0, "the second genuine answer")
        assert [r.seq for r in replies] == [1, 2] and sender.answering
        # Out of order, each once: a follower writing its journal answers a later bare beat at
        # once while its answer to the entries before it waits for the write.
        for seq in (3, 4):
            sender.send(seq, beat())
        answer(4)
        answer(3)
        answer(3)
        await poll(lambda: len(replies) + sender.rejected == 8, 5.0, "three more answers judged")
        assert [r.seq for r in replies] == [1, 2, 4, 3] and sender.rejected == 4 and sender.answering
        for seq in range(5, 6 + beacons.REPLY_WINDOW):
            sender.send(seq, beat())
        answer(5)  # REPLY_WINDOW beats back: too old to take
        answer(5 + beacons.REPLY_WINDOW)
        await poll(lambda: len(replies) + sender.rejected == 10, 5.0, "two more answers judged")
        assert replies[-1].seq == 5 + beacons.REPLY_WINDOW and sender.rejected == 5
        sender.close()


async def test_through_many_beats_a_leader_takes_each_answer_once_and_holds_only_its_window() -> None:
    """Replies replayed at once, later within the window, and after it, through five windows
    of beats: each genuine one taken once, every replay refused, and what the sender holds to
    tell them apart stays within the window (forgetting costs one step a reply, not a pass
    over everything held)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        replies: list[Any] = []
        sender = await make_sender(f"127.0.0.1:{peer.getsockname()[1]}", replies)

        def answer(seq: int) -> None:  # handed to the sender as its socket would
            reply = pb.HeartbeatReply(term=3, node_id="n2", role="follower", seq=seq)
            sender.datagram_received(seal(KEY, REPLY, reply.SerializeToString()), None)

        beats = 5 * beacons.REPLY_WINDOW
        late = beacons.REPLY_WINDOW // 2
        held = sender._taken
        for seq in range(1, beats + 1):
            sender.send(seq, beat())
            answer(seq)
            answer(seq)  # replayed at once
            if seq > late:
                answer(seq - late)  # replayed while still in the window
            if seq > beacons.REPLY_WINDOW:
                answer(seq - beacons.REPLY_WINDOW)  # replayed as it leaves the window
            assert len(sender._taken) <= beacons.REPLY_WINDOW
        assert sender._taken is held  # forgotten in place, never copied
        assert [r.seq for r in replies] == list(range(1, beats + 1))
        assert sender.rejected == beats + (beats - late) + (beats - beacons.REPLY_WINDOW)
        sender.close()


async def test_answers_out_of_order_are_each_taken_once_and_what_is_held_stays_bounded() -> None:
    """Beats go in groups whose answers come back in reverse, through five windows: each is
    taken once, its replay refused, and the sender holds at most two windows of seqs (one
    taken late sits behind later ones until those leave the window)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        replies: list[Any] = []
        sender = await make_sender(f"127.0.0.1:{peer.getsockname()[1]}", replies)

        def answer(seq: int) -> None:
            reply = pb.HeartbeatReply(term=3, node_id="n2", role="follower", seq=seq)
            sender.datagram_received(seal(KEY, REPLY, reply.SerializeToString()), None)

        group, taken = 16, []
        for first in range(1, 5 * beacons.REPLY_WINDOW, group):
            seqs = list(range(first, first + group))
            for seq in seqs:
                sender.send(seq, beat())
            for seq in reversed(seqs):
                answer(seq)
                answer(seq)
            taken += reversed(seqs)
            assert len(sender._taken) <= 2 * beacons.REPLY_WINDOW
        assert [r.seq for r in replies] == taken and sender.rejected == len(taken)
        answer(taken[-1])  # the newest, replayed after all that
        assert len(replies) == len(taken) and sender.rejected == len(taken) + 1
        sender.close()


async def test_nobody_listening_is_no_answer_and_no_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    replies: list[Any] = []
    sender = await make_sender(f"127.0.0.1:{port}", replies)  # closed: ICMP "unreachable" comes back
    for seq in range(1, 4):
        sender.send(seq, beat())
        await asyncio.sleep(0.01)
    assert replies == [] and not sender.answering and sender.sent_seq == 3
    sender.close()


async def test_a_taken_udp_port_means_no_listener(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert await beacons.listen(f"127.0.0.1:{port}", port, lambda beat: beat) is None
    assert f"UDP heartbeats off: cannot bind udp 127.0.0.1:{port}" in caplog.text


# ---- in-process clusters --------------------------------------------------------------------


def links(cluster: InProcessCluster, leader: Daemon) -> list[HeartbeatLink]:
    found = [leader.heartbeats.link(a) for a in leader.config.peers]
    assert all(link is not None for link in found)
    return found  # type: ignore[return-value]


async def test_idle_heartbeats_leave_grpc(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    await poll(lambda: all(link.on_udp for link in links(cluster, leader)), 5.0, "both links on UDP")
    grpc_before = [link.sent_grpc for link in links(cluster, leader)]
    udp_before = [link.sent_udp for link in links(cluster, leader)]
    await poll(lambda: all(link.sent_udp >= n + 30 for link, n in zip(links(cluster, leader), udp_before, strict=True)),
               10.0, "30 more beats to each follower")
    grpc_after = [link.sent_grpc for link in links(cluster, leader)]
    # A reply later than one beat (10 ms here, with three daemons and the test on one
    # event loop) sends the next beat on gRPC too: the fallback at work. Without UDP
    # all 30 would go on gRPC; a stall of the shared loop may cost a few.
    extra = [after - before for before, after in zip(grpc_before, grpc_after, strict=True)]
    assert all(n <= 3 for n in extra), f"beats went on gRPC while UDP answered: {grpc_before} -> {grpc_after}"
    followers = [d for d in cluster.daemons if d is not leader]
    assert all(d.beacons is not None and d.beacons.taken >= 30 for d in followers)
    assert all(d.election.term == term and d.election.leader == leader.node_id for d in cluster.daemons)


async def test_a_follower_deaf_to_udp_is_kept_on_grpc_then_taken_back(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    await poll(lambda: all(link.on_udp for link in links(cluster, leader)), 5.0, "both links on UDP")
    deaf = next(d for d in cluster.daemons if d is not leader)
    link = leader.heartbeats.link(deaf.config.address)
    assert link is not None and deaf.beacons is not None
    deaf.beacons.close()  # its datagrams now go nowhere
    grpc_before = link.sent_grpc
    # Ten times the election timeout: without the gRPC fallback the follower would campaign.
    await poll(lambda: link.sent_grpc >= grpc_before + 40, 10.0, "40 beats on gRPC")
    assert not link.on_udp
    assert all(d.election.term == term and d.election.leader == leader.node_id for d in cluster.daemons)
    assert deaf.election.role.value == "follower"

    # Listening again, with no key until the next gRPC beat grants one.
    deaf.beacons = await beacons.listen(deaf.config.listen, deaf.port, deaf.beat_reply)
    await poll(lambda: link.on_udp, 5.0, "the link back on UDP")
    assert deaf.beacons is not None and deaf.beacons.taken >= 1
    assert all(d.election.term == term for d in cluster.daemons)


async def test_udp_heartbeats_off_means_grpc_only(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, udp_heartbeats=False)
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    await poll(lambda: all(link.sent_grpc >= 20 for link in links(cluster, leader)), 10.0, "20 gRPC beats each")
    assert all(link.sent_udp == 0 and link.key is None for link in links(cluster, leader))
    assert all(d.beacons is None for d in cluster.daemons)
    assert all(d.election.term == term for d in cluster.daemons)


async def test_a_new_leader_draws_a_new_key(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    first = await cluster.wait_for_leader()
    await poll(lambda: all(link.on_udp for link in links(cluster, first)), 5.0, "first leader on UDP")
    old_key = links(cluster, first)[0].key
    first.stop()  # the others elect a new leader, which must not reuse the key
    await poll(lambda: any(d.is_leader for d in cluster.daemons if d is not first), 10.0, "a new leader")
    second = next(d for d in cluster.daemons if d is not first and d.is_leader)
    await poll(lambda: (link := second.heartbeats.link(next(
        d.config.address for d in cluster.daemons if d not in (first, second)))) is not None and link.on_udp,
        5.0, "the new leader's link to the remaining follower on UDP")
    new_link = second.heartbeats.link(next(d.config.address for d in cluster.daemons if d not in (first, second)))
    assert new_link is not None and new_link.key is not None and new_link.key != old_key


async def test_small_log_entries_go_by_datagram_and_large_ones_by_the_stream(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    await poll(lambda: all(link.on_udp for link in links(cluster, leader)), 5.0, "both links on UDP")
    by_datagram = sum(link.entries_udp for link in links(cluster, leader))
    async with AsyncClient(cluster.addresses) as client:
        small = [await client.submit(op="sum", source="values:1,2,3", detach=True) for _ in range(5)]
        assert [(await client.result(job, wait=10)).result for job in small] == [6] * 5
        assert sum(link.entries_udp for link in links(cluster, leader)) > by_datagram, "no entry went by datagram"

        # A record bigger than one datagram: its entries must take the stream.
        by_datagram = sum(link.entries_udp for link in links(cluster, leader))
        big = await client.submit(op="sum", source="values:" + ",".join(["1"] * 800), detach=True)
        assert (await client.result(big, wait=10)).result == 800
        assert sum(link.entries_udp for link in links(cluster, leader)) == by_datagram
    for job in [*small, big]:  # every node stored and applied them, whichever way they came
        await poll(lambda job=job: all((r := d.ledger.table.get(job)) is not None and r.state == "done"
                                       for d in cluster.daemons), 5.0, f"{job} done on every node")


async def test_an_idle_leader_is_quiet_and_a_running_job_brings_the_full_beat_back(
    start_cluster: StartCluster,
) -> None:
    """Beats thin only while no job runs (the core's rule is tested in test_election_rules):
    a job needs its workers' deaths seen at the full beat."""
    # FAST beats every 20 ms; thinned to 30 ms while idle. Elections wait 300-600 ms, so a
    # stall of this host (100+ ms under load) does not move the leadership between the checks.
    cluster = await start_cluster(3, idle_heartbeat_ms=30, election_ms_min=300, election_ms_max=600)
    leader = await cluster.wait_for_leader()
    beat_ticks = leader.config.heartbeat_ticks
    assert leader.config.idle_heartbeat_ticks > beat_ticks
    await poll(lambda: leader.election.quiet and leader.election.ticks_until_due() > beat_ticks, 5.0,
               "an idle leader waiting longer than one beat")
    async with AsyncClient(cluster.addresses) as client:
        job = asyncio.create_task(client.submit(op="sum", source="random:n=5e7,seed=1"))
        await poll(lambda: not leader.election.quiet, 10.0, "the leader busy while the job runs")
        assert leader.election.ticks_until_due() <= beat_ticks
        await job
    await poll(lambda: leader.election.quiet, 5.0, "quiet again once the job ended")
