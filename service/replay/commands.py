"""The command lines of the replay package: `messplus replay` and `messplus pretrain`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ..checks import validate_tenant
from ..config import TENANT_KNOBS, PredictorConfig
from ..errors import ConfigError
from ..trace import Trace
from . import run as replay_run
from .drivers import GrpcDriver
from .outputs import format_table, write_outputs
from .pretrain import pretrain
from .run import POLICY_KEYS, Condition, Outage, ReplaySetup, TenantOverrides, replay


def add_commands(sub: Any) -> None:
    """Register `messplus replay` and `messplus pretrain`."""
    p = sub.add_parser("replay", help="replay routing traces through the router; baselines, summary.json, plots",
                       description=replay_run.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", action="append", required=True, help="trace CSV; repeat to concatenate (drift)")
    p.add_argument("--alpha", action="append", type=_finite, required=True, help="SLA target; repeat for a sweep")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--out", required=True, help="output folder (summary.json, runs/, *.png)")
    p.add_argument("--feedback-rate", type=_finite, default=1.0, help="fraction of requests given feedback")
    p.add_argument("--feedback-delay", type=int, default=0, help="feedback arrives this many requests late")
    p.add_argument("--outage", action="append", default=[], metavar="MODEL:START:END",
                   help="model unavailable in [START, END): two integers = request indices, else fractions of "
                        "the replayed stream; MODEL @cheapest = the cheapest single model meeting alpha")
    p.add_argument("--warm-start", type=_finite, default=0.0, metavar="F",
                   help="train the heads offline on a random fraction F of the prompts, replay the rest")
    p.add_argument("--first", type=int, default=0, metavar="N",
                   help="replay only the first N requests of each seed's stream (a tenant's first day; 0: all)")
    p.add_argument("--order", choices=("shuffle", "source", "file"), default="shuffle",
                   help="stream order within each trace: seeded shuffle (default), by source_benchmark, as in the file")
    p.add_argument("--flat-costs", action="store_true",
                   help="give the router one price per model (its mean cost) instead of the trace's price list "
                        "(per request plus per input token)")
    for knob in TENANT_KNOBS:  # the tenant's knobs, as config.TenantConfig declares them
        p.add_argument(f"--{knob.name.replace('_', '-')}", type=int if knob.type == "int" else _finite,
                       dest=knob.name, help=f"tenant {knob.name}: {knob.metadata['help']} (default {knob.default})")
    p.add_argument("--no-reference", action="store_true", help="skip the MESS+ reference runs")
    p.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="simulate N router replicas on one shared state (Route round-robin, Feedback to a random "
                        "one); default: one router on a state of its own")
    p.add_argument("--sync-lag", type=int, default=0, metavar="L",
                   help="with --replicas: every replica sees the label log L requests late (default 0)")
    p.add_argument("--grpc", metavar="ADDR[,ADDR...]",
                   help="route through running services (Route/Feedback) at HOST:PORT; several replicas of one "
                        "shared state: Route round-robin, Feedback to a random one")
    p.add_argument("--tenant", help="the service tenant to drive with --grpc (default: default)")
    p.add_argument("--tls-ca", metavar="PEM", help="with --grpc: the CA that signed the routers' certificates (TLS); "
                                                   "a bearer token comes from $MESSPLUS_TOKEN")
    p.add_argument("--tls-server-name", metavar="NAME", default="",
                   help="with --tls-ca: the name the routers' certificates carry when it is not the address's host "
                        "(a Service's DNS name, reached through a port-forward to 127.0.0.1)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows of each trace file")
    p.add_argument("--models", help="comma-separated trace models to route among (default: all of the trace's)")
    _encoder_args(p, cache_default="var/embeddings")
    p.add_argument("--encoder-dir", default="var", help="folder of the exported ONNX encoder (default var)")
    p.add_argument("--onnx", help="use this ONNX encoder file instead")
    p.add_argument("--max-tokens", type=int, default=PredictorConfig().max_tokens)
    p.add_argument("--threads", type=int, default=0, help="encoder threads (0: all cores)")
    p.set_defaults(func=_cmd_replay)

    q = sub.add_parser("pretrain", help="warm-start the service's predictor heads from a trace's labels")
    q.add_argument("--trace", action="append", required=True, help="trace CSV; repeat for several")
    q.add_argument("--config", help="the service's TOML config (default: $MESSPLUS_CONFIG, else the embedded one)")
    q.add_argument("--state-dir", help="the service's state folder (default: the config's state.dir)")
    q.add_argument("--seed", type=int, default=0, help="seed of the training order")
    q.add_argument("--limit", type=int, default=0, help="only the first N rows of each trace file")
    _encoder_args(q, cache_default=None)
    q.set_defaults(func=_cmd_pretrain)


def _finite(text: str) -> float:
    """argparse's float takes "inf" and "nan", which no setting means."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _encoder_args(p: argparse.ArgumentParser, cache_default: str | None) -> None:
    p.add_argument("--cache-dir", default=cache_default,
                   help="prompt embedding cache (default: var/embeddings; pretrain: STATE_DIR/embeddings)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def embed_prompts(trace: Trace, onnx: Path, max_tokens: int, threads: int, cache_dir: Path | None,
                  progress: bool, tokenizer: str = "") -> np.ndarray:
    """The trace's prompt embeddings by the ONNX encoder at `onnx` (and `tokenizer`, "" = the weights
    package's), through the embedding cache."""
    from ..encoder import Encoder, default_model_dir
    from ..trace import embed_trace, file_sha256

    onnx = Path(onnx).expanduser()
    vocab = Path(tokenizer).expanduser() if tokenizer else default_model_dir() / "tokenizer.json"
    encoder = Encoder.load(onnx, vocab, max_tokens=max_tokens, threads=threads or None)
    key = f"{file_sha256(onnx)}:{max_tokens}"  # the package's tokenizer goes with its weights (the ONNX file's hash)
    if tokenizer:  # another one tokenises otherwise: its embeddings are others
        key += f":{file_sha256(vocab)}"
    return embed_trace(trace, encoder, key, cache_dir, progress=progress)


def _say(msg: str) -> None:
    print(f"messplus: {msg}", file=sys.stderr, flush=True)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ..encoder import ensure_exported
    from ..trace import load_traces

    if not all(0 < a < 1 for a in args.alpha) or args.seeds < 1 or not 0 <= args.feedback_rate <= 1 \
            or args.feedback_delay < 0 or not 0 <= args.warm_start < 1 or args.limit < 0 or args.replicas < 0 \
            or args.sync_lag < 0 or args.first < 0:
        raise SystemExit("messplus replay: need 0 < alpha < 1, seeds >= 1, 0 <= feedback-rate <= 1, "
                         "feedback-delay >= 0, 0 <= warm-start < 1, limit >= 0, replicas >= 0, sync-lag >= 0, "
                         "first >= 0")
    if args.sync_lag and not args.replicas:
        raise SystemExit("messplus replay: --sync-lag needs --replicas")
    if args.grpc is None and (args.tenant is not None or args.tls_ca or args.tls_server_name):
        raise SystemExit("messplus replay: --tenant, --tls-ca and --tls-server-name drive a running service: they "
                         "need --grpc")
    if args.tls_server_name and not args.tls_ca:
        raise SystemExit("messplus replay: --tls-server-name needs TLS: give --tls-ca")
    addrs = [a.strip() for a in (args.grpc or "").split(",") if a.strip()]
    if args.grpc is not None and not addrs:
        raise SystemExit("messplus replay: --grpc needs HOST:PORT (several: comma-separated)")
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        twice = sorted({m for m in models if models.count(m) > 1})
        if not models or twice:
            raise SystemExit("messplus replay: --models needs distinct trace model names"
                             + (f" ({', '.join(twice)} given twice)" if twice else ""))
    cond = Condition(feedback_rate=args.feedback_rate, feedback_delay=args.feedback_delay,
                     outages=tuple(Outage.parse(o) for o in args.outage), warm_start=args.warm_start,
                     order=args.order, flat_costs=args.flat_costs, replicas=args.replicas, sync_lag=args.sync_lag,
                     first=args.first)
    setup = ReplaySetup(alphas=tuple(args.alpha), seeds=tuple(range(args.seeds)), cond=cond,
                        policy=TenantOverrides(**{k: getattr(args, k) for k in POLICY_KEYS}),
                        reference=not args.no_reference, progress=not args.quiet)
    try:  # the knobs as the service would check them in a config
        validate_tenant(setup.policy.tenant(args.alpha[0], 0), TENANT_KNOBS)
    except ConfigError as e:
        raise SystemExit(f"messplus replay: --{e.key.replace('_', '-')}: {e.problem}") from None
    started = time.perf_counter()
    trace = load_traces(args.trace, limit=args.limit)
    if models is not None:
        trace = trace.select_models(models)
    driver = None
    if addrs:
        if args.warm_start or len(args.alpha) != 1 or args.seeds != 1:
            raise SystemExit("messplus replay --grpc: one alpha, one seed, no --warm-start (restart the service "
                             "between runs; to warm-start it, `messplus pretrain` it on other prompts than the ones "
                             "replayed: pretrain learns every row it is given)")
        if any(getattr(args, k) is not None for k in POLICY_KEYS):
            raise SystemExit(f"messplus replay --grpc: the policy ({', '.join(POLICY_KEYS)}) is the service tenant's; "
                             "set it in its config")
        if args.flat_costs:
            raise SystemExit("messplus replay --grpc: the prices are the service's; set them in its config")
        if args.replicas:
            raise SystemExit("messplus replay --grpc: the replicas are the addresses given; --replicas simulates "
                             "them in process")
        tenant = args.tenant or "default"
        try:
            ca = Path(args.tls_ca).expanduser().read_bytes() if args.tls_ca else None
            driver = GrpcDriver(addrs, tenant, trace.models, ca=ca, token=os.environ.get("MESSPLUS_TOKEN", ""),
                                server_name=args.tls_server_name)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"messplus replay --grpc: {exc}") from None
        except grpc.RpcError as exc:
            raise SystemExit(f"messplus replay --grpc: {exc.code().name}: {exc.details()}") from None
        if abs(driver.alpha - args.alpha[0]) > 1e-9:
            raise SystemExit(f"messplus replay --grpc: tenant {tenant!r} has alpha {driver.alpha}, not "
                             f"{args.alpha[0]}")
        trace = trace.select_models(driver.trace_models)
    emb = None
    if driver is None or setup.reference:
        onnx = Path(args.onnx) if args.onnx else ensure_exported(Path(args.encoder_dir), _say)
        cache = Path(args.cache_dir) if args.cache_dir else None
        emb = embed_prompts(trace, onnx, args.max_tokens, args.threads, cache, not args.quiet)
    _say(f"{trace.name}: {len(trace)} prompts, {len(trace.models)} models; ready in "
         f"{time.perf_counter() - started:.1f}s")
    curves: dict[float, dict[str, Any]] = {}
    try:
        summary = replay(trace, emb, setup, grpc_driver=driver, curves=curves)
    except grpc.RpcError as exc:  # the service refused or went away mid-stream
        raise SystemExit(f"messplus replay --grpc: {exc.code().name}: {exc.details()}") from None
    finally:
        if driver is not None:
            driver.close()
    for path in write_outputs(Path(args.out), summary, curves, plots=not args.no_plots):
        _say(f"wrote {path}")
    print(format_table(summary))
    _say(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .. import config
    from ..encoder import ensure_exported
    from ..trace import load_traces

    cfg = config.load(args.config)
    if args.state_dir:
        cfg = replace(cfg, state=replace(cfg.state, dir=args.state_dir))
    trace = load_traces(args.trace, limit=args.limit)
    onnx = Path(cfg.predictor.onnx) if cfg.predictor.onnx else ensure_exported(cfg.state_dir, _say)
    cache = Path(args.cache_dir) if args.cache_dir else cfg.state_dir / "embeddings"
    emb = embed_prompts(trace, onnx, cfg.predictor.max_tokens, cfg.predictor.threads, cache, not args.quiet,
                        cfg.predictor.tokenizer)  # the service's own tokenizer, as serve loads it
    result = pretrain(cfg, trace, emb, seed=args.seed)
    print(json.dumps(result, indent=1))
    return 0
