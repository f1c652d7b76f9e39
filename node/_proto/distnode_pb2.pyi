from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VoteRequest(_message.Message):
    __slots__ = ("term", "candidate_id", "pre_vote")
    TERM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    term: int
    candidate_id: str
    pre_vote: bool
    def __init__(self, term: _Optional[int] = ..., candidate_id: _Optional[str] = ..., pre_vote: _Optional[bool] = ...) -> None: ...

class VoteReply(_message.Message):
    __slots__ = ("term", "granted", "voter_id")
    TERM_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    VOTER_ID_FIELD_NUMBER: _ClassVar[int]
    term: int
    granted: bool
    voter_id: str
    def __init__(self, term: _Optional[int] = ..., granted: _Optional[bool] = ..., voter_id: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("term", "leader_id", "leader_address", "beacon_key", "seq")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BEACON_KEY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    term: int
    leader_id: str
    leader_address: str
    beacon_key: bytes
    seq: int
    def __init__(self, term: _Optional[int] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., beacon_key: _Optional[bytes] = ..., seq: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("term", "node_id", "role", "seq")
    TERM_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    term: int
    node_id: str
    role: str
    seq: int
    def __init__(self, term: _Optional[int] = ..., node_id: _Optional[str] = ..., role: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("job_id", "op", "source", "map", "axis", "bins", "range_lo", "range_hi")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    RANGE_LO_FIELD_NUMBER: _ClassVar[int]
    RANGE_HI_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    op: str
    source: str
    map: str
    axis: int
    bins: int
    range_lo: float
    range_hi: float
    def __init__(self, job_id: _Optional[str] = ..., op: _Optional[str] = ..., source: _Optional[str] = ..., map: _Optional[str] = ..., axis: _Optional[int] = ..., bins: _Optional[int] = ..., range_lo: _Optional[float] = ..., range_hi: _Optional[float] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("job", "forwarded")
    JOB_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    job: JobSpec
    forwarded: bool
    def __init__(self, job: _Optional[_Union[JobSpec, _Mapping]] = ..., forwarded: _Optional[bool] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("job_id", "op", "result", "shards", "nodes", "elapsed_ms", "leader", "term", "leader_address")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    op: str
    result: Tensor
    shards: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    elapsed_ms: float
    leader: str
    term: int
    leader_address: str
    def __init__(self, job_id: _Optional[str] = ..., op: _Optional[str] = ..., result: _Optional[_Union[Tensor, _Mapping]] = ..., shards: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., elapsed_ms: _Optional[float] = ..., leader: _Optional[str] = ..., term: _Optional[int] = ..., leader_address: _Optional[str] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("index", "start", "stop")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    index: int
    start: int
    stop: int
    def __init__(self, index: _Optional[int] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class ComputeRequest(_message.Message):
    __slots__ = ("job", "shards", "reduce_to", "term", "leader_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_TO_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    job: JobSpec
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    reduce_to: str
    term: int
    leader_id: str
    def __init__(self, job: _Optional[_Union[JobSpec, _Mapping]] = ..., shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ..., reduce_to: _Optional[str] = ..., term: _Optional[int] = ..., leader_id: _Optional[str] = ...) -> None: ...

class ComputeReply(_message.Message):
    __slots__ = ("shards_sent",)
    SHARDS_SENT_FIELD_NUMBER: _ClassVar[int]
    shards_sent: int
    def __init__(self, shards_sent: _Optional[int] = ...) -> None: ...

class Partial(_message.Message):
    __slots__ = ("job_id", "shard", "node_id", "state")
    class StateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    shard: int
    node_id: str
    state: _containers.MessageMap[str, Tensor]
    def __init__(self, job_id: _Optional[str] = ..., shard: _Optional[int] = ..., node_id: _Optional[str] = ..., state: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class ReduceReply(_message.Message):
    __slots__ = ("accepted", "dropped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class ProgressRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ProgressReply(_message.Message):
    __slots__ = ("known", "shards_done", "shards_total")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    known: bool
    shards_done: int
    shards_total: int
    def __init__(self, known: _Optional[bool] = ..., shards_done: _Optional[int] = ..., shards_total: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("id", "address", "role", "term", "alive", "last_heartbeat_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    role: str
    term: int
    alive: bool
    last_heartbeat_ms: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., alive: _Optional[bool] = ..., last_heartbeat_ms: _Optional[float] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node_id", "role", "term", "leader_id", "leader_address", "nodes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    term: int
    leader_id: str
    leader_address: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...
