from . import lightning_pb2 as _lightning_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureDetail(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[FailureDetail]
    NO_DETAIL: _ClassVar[FailureDetail]
    ONION_DECODE: _ClassVar[FailureDetail]
    LINK_NOT_ELIGIBLE: _ClassVar[FailureDetail]
    ON_CHAIN_TIMEOUT: _ClassVar[FailureDetail]
    HTLC_EXCEEDS_MAX: _ClassVar[FailureDetail]
    INSUFFICIENT_BALANCE: _ClassVar[FailureDetail]
    INCOMPLETE_FORWARD: _ClassVar[FailureDetail]
    HTLC_ADD_FAILED: _ClassVar[FailureDetail]
    FORWARDS_DISABLED: _ClassVar[FailureDetail]
    INVOICE_CANCELED: _ClassVar[FailureDetail]
    INVOICE_UNDERPAID: _ClassVar[FailureDetail]
    INVOICE_EXPIRY_TOO_SOON: _ClassVar[FailureDetail]
    INVOICE_NOT_OPEN: _ClassVar[FailureDetail]
    MPP_INVOICE_TIMEOUT: _ClassVar[FailureDetail]
    ADDRESS_MISMATCH: _ClassVar[FailureDetail]
    SET_TOTAL_MISMATCH: _ClassVar[FailureDetail]
    SET_TOTAL_TOO_LOW: _ClassVar[FailureDetail]
    SET_OVERPAID: _ClassVar[FailureDetail]
    UNKNOWN_INVOICE: _ClassVar[FailureDetail]
    INVALID_KEYSEND: _ClassVar[FailureDetail]
    MPP_IN_PROGRESS: _ClassVar[FailureDetail]
    CIRCULAR_ROUTE: _ClassVar[FailureDetail]
UNKNOWN: FailureDetail
NO_DETAIL: FailureDetail
ONION_DECODE: FailureDetail
LINK_NOT_ELIGIBLE: FailureDetail
ON_CHAIN_TIMEOUT: FailureDetail
HTLC_EXCEEDS_MAX: FailureDetail
INSUFFICIENT_BALANCE: FailureDetail
INCOMPLETE_FORWARD: FailureDetail
HTLC_ADD_FAILED: FailureDetail
FORWARDS_DISABLED: FailureDetail
INVOICE_CANCELED: FailureDetail
INVOICE_UNDERPAID: FailureDetail
INVOICE_EXPIRY_TOO_SOON: FailureDetail
INVOICE_NOT_OPEN: FailureDetail
MPP_INVOICE_TIMEOUT: FailureDetail
ADDRESS_MISMATCH: FailureDetail
SET_TOTAL_MISMATCH: FailureDetail
SET_TOTAL_TOO_LOW: FailureDetail
SET_OVERPAID: FailureDetail
UNKNOWN_INVOICE: FailureDetail
INVALID_KEYSEND: FailureDetail
MPP_IN_PROGRESS: FailureDetail
CIRCULAR_ROUTE: FailureDetail

class SendPaymentRequest(_message.Message):
    __slots__ = ("dest", "amt", "amt_msat", "payment_hash", "final_cltv_delta", "payment_addr", "payment_request", "timeout_seconds", "fee_limit_sat", "fee_limit_msat", "outgoing_chan_id", "outgoing_chan_ids", "last_hop_pubkey", "cltv_limit", "route_hints", "dest_custom_records", "allow_self_payment", "dest_features", "max_parts", "no_inflight_updates", "max_shard_size_msat", "amp", "time_pref")
    class DestCustomRecordsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    DEST_FIELD_NUMBER: _ClassVar[int]
    AMT_FIELD_NUMBER: _ClassVar[int]
    AMT_MSAT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    FINAL_CLTV_DELTA_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEE_LIMIT_SAT_FIELD_NUMBER: _ClassVar[int]
    FEE_LIMIT_MSAT_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_CHAN_ID_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_CHAN_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_HOP_PUBKEY_FIELD_NUMBER: _ClassVar[int]
    CLTV_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_HINTS_FIELD_NUMBER: _ClassVar[int]
    DEST_CUSTOM_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SELF_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    DEST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTS_FIELD_NUMBER: _ClassVar[int]
    NO_INFLIGHT_UPDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_SHARD_SIZE_MSAT_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    TIME_PREF_FIELD_NUMBER: _ClassVar[int]
    dest: bytes
    amt: int
    amt_msat: int
    payment_hash: bytes
    final_cltv_delta: int
    payment_addr: bytes
    payment_request: str
    timeout_seconds: int
    fee_limit_sat: int
    fee_limit_msat: int
    outgoing_chan_id: int
    outgoing_chan_ids: _containers.RepeatedScalarFieldContainer[int]
    last_hop_pubkey: bytes
    cltv_limit: int
    route_hints: _containers.RepeatedCompositeFieldContainer[_lightning_pb2.RouteHint]
    dest_custom_records: _containers.ScalarMap[int, bytes]
    allow_self_payment: bool
    dest_features: _containers.RepeatedScalarFieldContainer[_lightning_pb2.FeatureBit]
    max_parts: int
    no_inflight_updates: bool
    max_shard_size_msat: int
    amp: bool
    time_pref: float
    def __init__(self, dest: _Optional[bytes] = ..., amt: _Optional[int] = ..., amt_msat: _Optional[int] = ..., payment_hash: _Optional[bytes] = ..., final_cltv_delta: _Optional[int] = ..., payment_addr: _Optional[bytes] = ..., payment_request: _Optional[str] = ..., timeout_seconds: _Optional[int] = ..., fee_limit_sat: _Optional[int] = ..., fee_limit_msat: _Optional[int] = ..., outgoing_chan_id: _Optional[int] = ..., outgoing_chan_ids: _Optional[_Iterable[int]] = ..., last_hop_pubkey: _Optional[bytes] = ..., cltv_limit: _Optional[int] = ..., route_hints: _Optional[_Iterable[_Union[_lightning_pb2.RouteHint, _Mapping]]] = ..., dest_custom_records: _Optional[_Mapping[int, bytes]] = ..., allow_self_payment: _Optional[bool] = ..., dest_features: _Optional[_Iterable[_Union[_lightning_pb2.FeatureBit, str]]] = ..., max_parts: _Optional[int] = ..., no_inflight_updates: _Optional[bool] = ..., max_shard_size_msat: _Optional[int] = ..., amp: _Optional[bool] = ..., time_pref: _Optional[float] = ...) -> None: ...

class TrackPaymentRequest(_message.Message):
    __slots__ = ("payment_hash", "no_inflight_updates")
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    NO_INFLIGHT_UPDATES_FIELD_NUMBER: _ClassVar[int]
    payment_hash: bytes
    no_inflight_updates: bool
    def __init__(self, payment_hash: _Optional[bytes] = ..., no_inflight_updates: _Optional[bool] = ...) -> None: ...

class TrackPaymentsRequest(_message.Message):
    __slots__ = ("no_inflight_updates",)
    NO_INFLIGHT_UPDATES_FIELD_NUMBER: _ClassVar[int]
    no_inflight_updates: bool
    def __init__(self, no_inflight_updates: _Optional[bool] = ...) -> None: ...

class RouteFeeRequest(_message.Message):
    __slots__ = ("dest", "amt_sat")
    DEST_FIELD_NUMBER: _ClassVar[int]
    AMT_SAT_FIELD_NUMBER: _ClassVar[int]
    dest: bytes
    amt_sat: int
    def __init__(self, dest: _Optional[bytes] = ..., amt_sat: _Optional[int] = ...) -> None: ...

class RouteFeeResponse(_message.Message):
    __slots__ = ("routing_fee_msat", "time_lock_delay")
    ROUTING_FEE_MSAT_FIELD_NUMBER: _ClassVar[int]
    TIME_LOCK_DELAY_FIELD_NUMBER: _ClassVar[int]
    routing_fee_msat: int
    time_lock_delay: int
    def __init__(self, routing_fee_msat: _Optional[int] = ..., time_lock_delay: _Optional[int] = ...) -> None: ...

class SendToRouteRequest(_message.Message):
    __slots__ = ("payment_hash", "route", "skip_temp_err")
    PAYMENT_HASH_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SKIP_TEMP_ERR_FIELD_NUMBER: _ClassVar[int]
    payment_hash: bytes
    route: _lightning_pb2.Route
    skip_temp_err: bool
    def __init__(self, payment_hash: _Optional[bytes] = ..., route: _Optional[_Union[_lightning_pb2.Route, _Mapping]] = ..., skip_temp_err: _Optional[bool] = ...) -> None: ...

class SubscribeHtlcEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HtlcEvent(_message.Message):
    __slots__ = ("incoming_channel_id", "outgoing_channel_id", "incoming_htlc_id", "outgoing_htlc_id", "timestamp_ns", "event_type", "forward_event", "forward_fail_event", "settle_event", "link_fail_event", "subscribed_event", "final_htlc_event")
    class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[HtlcEvent.EventType]
        SEND: _ClassVar[HtlcEvent.EventType]
        RECEIVE: _ClassVar[HtlcEvent.EventType]
        FORWARD: _ClassVar[HtlcEvent.EventType]
    UNKNOWN: HtlcEvent.EventType
    SEND: HtlcEvent.EventType
    RECEIVE: HtlcEvent.EventType
    FORWARD: HtlcEvent.EventType
    INCOMING_CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    INCOMING_HTLC_ID_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_HTLC_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_EVENT_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FAIL_EVENT_FIELD_NUMBER: _ClassVar[int]
    SETTLE_EVENT_FIELD_NUMBER: _ClassVar[int]
    LINK_FAIL_EVENT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_EVENT_FIELD_NUMBER: _ClassVar[int]
    FINAL_HTLC_EVENT_FIELD_NUMBER: _ClassVar[int]
    incoming_channel_id: int
    outgoing_channel_id: int
    incoming_htlc_id: int
    outgoing_htlc_id: int
    timestamp_ns: int
    event_type: HtlcEvent.EventType
    forward_event: ForwardEvent
    forward_fail_event: ForwardFailEvent
    settle_event: SettleEvent
    link_fail_event: LinkFailEvent
    subscribed_event: SubscribedEvent
    final_htlc_event: FinalHtlcEvent
    def __init__(self, incoming_channel_id: _Optional[int] = ..., outgoing_channel_id: _Optional[int] = ..., incoming_htlc_id: _Optional[int] = ..., outgoing_htlc_id: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., event_type: _Optional[_Union[HtlcEvent.EventType, str]] = ..., forward_event: _Optional[_Union[ForwardEvent, _Mapping]] = ..., forward_fail_event: _Optional[_Union[ForwardFailEvent, _Mapping]] = ..., settle_event: _Optional[_Union[SettleEvent, _Mapping]] = ..., link_fail_event: _Optional[_Union[LinkFailEvent, _Mapping]] = ..., subscribed_event: _Optional[_Union[SubscribedEvent, _Mapping]] = ..., final_htlc_event: _Optional[_Union[FinalHtlcEvent, _Mapping]] = ...) -> None: ...

class HtlcInfo(_message.Message):
    __slots__ = ("incoming_timelock", "outgoing_timelock", "incoming_amt_msat", "outgoing_amt_msat")
    INCOMING_TIMELOCK_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_TIMELOCK_FIELD_NUMBER: _ClassVar[int]
    INCOMING_AMT_MSAT_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_AMT_MSAT_FIELD_NUMBER: _ClassVar[int]
    incoming_timelock: int
    outgoing_timelock: int
    incoming_amt_msat: int
    outgoing_amt_msat: int
    def __init__(self, incoming_timelock: _Optional[int] = ..., outgoing_timelock: _Optional[int] = ..., incoming_amt_msat: _Optional[int] = ..., outgoing_amt_msat: _Optional[int] = ...) -> None: ...

class ForwardEvent(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: HtlcInfo
    def __init__(self, info: _Optional[_Union[HtlcInfo, _Mapping]] = ...) -> None: ...

class ForwardFailEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SettleEvent(_message.Message):
    __slots__ = ("preimage",)
    PREIMAGE_FIELD_NUMBER: _ClassVar[int]
    preimage: bytes
    def __init__(self, preimage: _Optional[bytes] = ...) -> None: ...

class FinalHtlcEvent(_message.Message):
    __slots__ = ("settled", "offchain")
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    OFFCHAIN_FIELD_NUMBER: _ClassVar[int]
    settled: bool
    offchain: bool
    def __init__(self, settled: _Optional[bool] = ..., offchain: _Optional[bool] = ...) -> None: ...

class SubscribedEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LinkFailEvent(_message.Message):
    __slots__ = ("info", "wire_failure", "failure_detail", "failure_string")
    INFO_FIELD_NUMBER: _ClassVar[int]
    WIRE_FAILURE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    FAILURE_STRING_FIELD_NUMBER: _ClassVar[int]
    info: HtlcInfo
    wire_failure: _lightning_pb2.Failure.FailureCode
    failure_detail: FailureDetail
    failure_string: str
    def __init__(self, info: _Optional[_Union[HtlcInfo, _Mapping]] = ..., wire_failure: _Optional[_Union[_lightning_pb2.Failure.FailureCode, str]] = ..., failure_detail: _Optional[_Union[FailureDetail, str]] = ..., failure_string: _Optional[str] = ...) -> None: ...
