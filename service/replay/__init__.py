"""`messplus replay` and `messplus pretrain`: routing traces replayed through the router core, and what a
replay is measured against. The second driver of routing/, beside server/.

    run.py        conditions, the stream loop, summaries        drivers.py   in process, or a running service
    baselines.py  the reference points (LP oracles)              pretrain.py  heads trained on logged labels
    outputs.py    summary.json, arrays, table                    plots.py     the PNGs
    replicas.py   N routers on one shared state (--replicas)
    commands.py   the command lines
"""

from .commands import add_commands, embed_prompts
from .drivers import GrpcDriver, InProcess, Step, match_models
from .outputs import format_table, write_outputs
from .pretrain import pretrain, service_models, train_heads
from .replicas import Replicas
from .run import (POLICY_KEYS, Condition, Outage, ReplaySetup, RunArrays, TenantOverrides, replay, run_stream,
                  run_summary, split_stream)

__all__ = ["POLICY_KEYS", "Condition", "GrpcDriver", "InProcess", "Outage", "Replicas", "ReplaySetup", "RunArrays",
           "Step", "TenantOverrides", "add_commands", "embed_prompts", "format_table", "match_models", "pretrain",
           "replay", "run_stream", "run_summary", "service_models", "split_stream", "train_heads", "write_outputs"]
