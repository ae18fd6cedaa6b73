from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplorationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLORATION_MODE_DEFAULT: _ClassVar[ExplorationMode]
    EXPLORATION_MODE_NEVER: _ClassVar[ExplorationMode]
    EXPLORATION_MODE_ALWAYS: _ClassVar[ExplorationMode]
EXPLORATION_MODE_DEFAULT: ExplorationMode
EXPLORATION_MODE_NEVER: ExplorationMode
EXPLORATION_MODE_ALWAYS: ExplorationMode

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Chat(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class RouteOverrides(_message.Message):
    __slots__ = ("allowed_models", "excluded_models", "exploration")
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    excluded_models: _containers.RepeatedScalarFieldContainer[str]
    exploration: ExplorationMode
    def __init__(self, allowed_models: _Optional[_Iterable[str]] = ..., excluded_models: _Optional[_Iterable[str]] = ..., exploration: _Optional[_Union[ExplorationMode, str]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("tenant", "text", "chat", "request_id", "overrides")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    text: str
    chat: Chat
    request_id: str
    overrides: RouteOverrides
    def __init__(self, tenant: _Optional[str] = ..., text: _Optional[str] = ..., chat: _Optional[_Union[Chat, _Mapping]] = ..., request_id: _Optional[str] = ..., overrides: _Optional[_Union[RouteOverrides, _Mapping]] = ...) -> None: ...

class ModelPrediction(_message.Message):
    __slots__ = ("model", "p_hat", "cost", "cost_raw", "available")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    P_HAT_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_RAW_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    model: str
    p_hat: float
    cost: float
    cost_raw: float
    available: bool
    def __init__(self, model: _Optional[str] = ..., p_hat: _Optional[float] = ..., cost: _Optional[float] = ..., cost_raw: _Optional[float] = ..., available: _Optional[bool] = ...) -> None: ...

class RouteReply(_message.Message):
    __slots__ = ("request_id", "model", "exploration", "explored_models", "predictions", "queue", "cost", "cost_raw", "alpha", "tenant_request_index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_MODELS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_RAW_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TENANT_REQUEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    exploration: bool
    explored_models: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedCompositeFieldContainer[ModelPrediction]
    queue: float
    cost: float
    cost_raw: float
    alpha: float
    tenant_request_index: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., exploration: _Optional[bool] = ..., explored_models: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[_Union[ModelPrediction, _Mapping]]] = ..., queue: _Optional[float] = ..., cost: _Optional[float] = ..., cost_raw: _Optional[float] = ..., alpha: _Optional[float] = ..., tenant_request_index: _Optional[int] = ...) -> None: ...

class ModelSatisfaction(_message.Message):
    __slots__ = ("model", "satisfaction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SATISFACTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    satisfaction: float
    def __init__(self, model: _Optional[str] = ..., satisfaction: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("tenant", "request_id", "satisfaction", "labels")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SATISFACTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    request_id: str
    satisfaction: float
    labels: _containers.RepeatedCompositeFieldContainer[ModelSatisfaction]
    def __init__(self, tenant: _Optional[str] = ..., request_id: _Optional[str] = ..., satisfaction: _Optional[float] = ..., labels: _Optional[_Iterable[_Union[ModelSatisfaction, _Mapping]]] = ...) -> None: ...

class FeedbackReply(_message.Message):
    __slots__ = ("request_id", "duplicate", "labels_applied", "labels_duplicate", "queue", "queue_updated")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    LABELS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_UPDATED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    duplicate: bool
    labels_applied: int
    labels_duplicate: int
    queue: float
    queue_updated: bool
    def __init__(self, request_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., labels_applied: _Optional[int] = ..., labels_duplicate: _Optional[int] = ..., queue: _Optional[float] = ..., queue_updated: _Optional[bool] = ...) -> None: ...

class SamplingParameters(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("tenant", "text", "chat", "request_id", "overrides", "sampling")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    text: str
    chat: Chat
    request_id: str
    overrides: RouteOverrides
    sampling: SamplingParameters
    def __init__(self, tenant: _Optional[str] = ..., text: _Optional[str] = ..., chat: _Optional[_Union[Chat, _Mapping]] = ..., request_id: _Optional[str] = ..., overrides: _Optional[_Union[RouteOverrides, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ...) -> None: ...

class ModelAnswer(_message.Message):
    __slots__ = ("model", "text", "error", "latency_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    error: str
    latency_ms: float
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., error: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class GenerateDone(_message.Message):
    __slots__ = ("served_model", "cost", "cost_raw")
    SERVED_MODEL_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_RAW_FIELD_NUMBER: _ClassVar[int]
    served_model: str
    cost: float
    cost_raw: float
    def __init__(self, served_model: _Optional[str] = ..., cost: _Optional[float] = ..., cost_raw: _Optional[float] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("route", "text", "answer", "done")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    route: RouteReply
    text: str
    answer: ModelAnswer
    done: GenerateDone
    def __init__(self, route: _Optional[_Union[RouteReply, _Mapping]] = ..., text: _Optional[str] = ..., answer: _Optional[_Union[ModelAnswer, _Mapping]] = ..., done: _Optional[_Union[GenerateDone, _Mapping]] = ...) -> None: ...

class SlaStatusRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ModelShare(_message.Message):
    __slots__ = ("model", "served", "share", "invoked")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    INVOKED_FIELD_NUMBER: _ClassVar[int]
    model: str
    served: int
    share: float
    invoked: int
    def __init__(self, model: _Optional[str] = ..., served: _Optional[int] = ..., share: _Optional[float] = ..., invoked: _Optional[int] = ...) -> None: ...

class SlaStatusReply(_message.Message):
    __slots__ = ("tenant", "alpha", "queue", "requests", "labelled", "satisfaction", "mean_cost", "mean_cost_raw", "exploration_steps", "models", "sla_met")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    SATISFACTION_FIELD_NUMBER: _ClassVar[int]
    MEAN_COST_FIELD_NUMBER: _ClassVar[int]
    MEAN_COST_RAW_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SLA_MET_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    alpha: float
    queue: float
    requests: int
    labelled: int
    satisfaction: float
    mean_cost: float
    mean_cost_raw: float
    exploration_steps: int
    models: _containers.RepeatedCompositeFieldContainer[ModelShare]
    sla_met: bool
    def __init__(self, tenant: _Optional[str] = ..., alpha: _Optional[float] = ..., queue: _Optional[float] = ..., requests: _Optional[int] = ..., labelled: _Optional[int] = ..., satisfaction: _Optional[float] = ..., mean_cost: _Optional[float] = ..., mean_cost_raw: _Optional[float] = ..., exploration_steps: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelShare, _Mapping]]] = ..., sla_met: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ZooModel(_message.Message):
    __slots__ = ("name", "triton_model", "cost", "cost_raw", "available")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRITON_MODEL_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_RAW_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    triton_model: str
    cost: float
    cost_raw: float
    available: bool
    def __init__(self, name: _Optional[str] = ..., triton_model: _Optional[str] = ..., cost: _Optional[float] = ..., cost_raw: _Optional[float] = ..., available: _Optional[bool] = ...) -> None: ...

class ListModelsReply(_message.Message):
    __slots__ = ("models", "cost_unit", "triton")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    COST_UNIT_FIELD_NUMBER: _ClassVar[int]
    TRITON_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ZooModel]
    cost_unit: str
    triton: TritonStatus
    def __init__(self, models: _Optional[_Iterable[_Union[ZooModel, _Mapping]]] = ..., cost_unit: _Optional[str] = ..., triton: _Optional[_Union[TritonStatus, _Mapping]] = ...) -> None: ...

class TritonStatus(_message.Message):
    __slots__ = ("address", "reachable", "state", "problem")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    address: str
    reachable: bool
    state: str
    problem: str
    def __init__(self, address: _Optional[str] = ..., reachable: _Optional[bool] = ..., state: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...
