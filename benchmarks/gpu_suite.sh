#!/usr/bin/env bash
# One command that checks and measures the service on a CUDA machine, each part independent of the
# others (a failed part is reported and the rest still run):
#
#   tests    the gpu-marked tests (graph capture and fallback, Mimi graphs, fused step, kernels), in
#            TEST_WORKERS processes (default 4) where pytest-xdist is installed
#   engine   benchmarks/bench_engine.py in-process (extra arguments: $ENGINE_ARGS)
#   http     `csm-serve serve --config` of serve_config.yaml with the csm-1b-random preset, behind
#            HAProxy as in production (INGRESS=proxy: Ray's Python proxy) (API keys and the rate
#            limiter on, as in production, the limit far above the load of the one benchmark key),
#            then benchmarks/bench_http.py through Ray Serve over HTTP; the replica's
#            time to ready is recorded; the summary is merged into the engine results as "http";
#            each server's stop ends with `ray stop --force` (every Ray process on the machine)
#   ws       benchmarks/bench_ws.py against the same server (WebSocket text-in, long-form)
#   kernel-tests  the gpu-marked tests of the Triton kernels alone (not a default part)
#   kernel-bench  the graphed decode step under its kernel settings (bench_fused_linear.py variants
#            and sampler sections) and the Mimi decode with the channels-last SEANet kernel and with
#            StreamingStack (bench_mimi_stream.py) (not a default part); `step-bench` and
#            `seanet-bench` run one of the two. Each runs under a timeout. STEP_VARIANTS: the
#            settings step-bench times (bench_fused_linear.py VARIANTS, comma-separated).
#   startup  benchmarks/bench_startup.py: engine-process starts with empty Triton caches, the kernels
#            compiled ahead on threads and processes, after the load and early, each start's
#            compiles logged (STARTUP_PHASES; not a default part)
#   ready-cold  `csm-serve serve` as for http, with Triton's and torch's caches emptied first: the
#            seconds to a healthy /health and the engine's own account of its start (/info's
#            engine.startup), then stop (not a default part)
#   routing-ab  a flood through the whole service (bench_http.py --neighbour ROUTING_FLOOD, default 600:
#            one key's streams at once, then another key's one) with the model deployment's router
#            backoff as shipped and with Ray's default (25 ms to 0.5 s), each a fresh server, in turns
#            (ROUTING_REPEATS, default 1; more bench_http.py arguments: ROUTING_ARGS; not a default part)
#   prefill-ab  the engine with its prompts prefilled apart (`--no-prefill-in-step`, the default carries
#            them in the step) and with its prefills attending through the decode kernel
#            (`--no-prefill-in-step --prefill-attention kernel`) against the defaults, in turns (ab_engine.py flags; not a default part; AB_REPEATS, default 1)
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [tests] [engine] [http] [ws] [kernel-tests] [kernel-bench]
#   (default: the first four)
#   SMOKE=1 bash benchmarks/gpu_suite.sh /tmp/suite                       (CPU, tiny model, small)
#   VARIANT=name: http/ws results and logs named with it (e.g. INGRESS=proxy VARIANT=proxy);
#   SERVE_ARGS / SERVE_DEPLOYMENTS: YAML replacing the application's args / a deployment's options
#   (e.g. SERVE_DEPLOYMENTS='{TTSModel: {max_ongoing_requests: 384}}' SERVE_ARGS='{engine: {max_waiting: 256}}');
#   HOLD_S=n: keep the server up n s after the load, watched by the health monitor;
#   PYSPY_S=n (PYSPY_AT_S=m): py-spy records each ingress replica and the model replica for n s, m s
#   into the load (raw samples, pyspy-<deployment>-<pid>.txt; where py-spy is installed);
#   ARCHIVE=file.tgz: pack OUT_DIR into one file after every part (a run cut short keeps what finished).
#
# Results land in OUT_DIR as <date>-<gpu>.json (engine, with "http"), <date>-<gpu>-http.json,
# -ws.json, the plots, and the logs of every part.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output directory}; shift
mkdir -p "$OUT"
PARTS=${*:-tests engine http ws}
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATE=$(date -u +%F)
if [ "${SMOKE:-0}" = 1 ]; then
  TAG=cpu-smoke
else
  TAG=$($PY -c "import re, torch; print(re.sub(r'\W+', '-', torch.cuda.get_device_name(0)).strip('-').lower())")
fi
ENGINE_JSON="$OUT/$DATE-$TAG.json"
PORT=${PORT:-8000}
URL="http://127.0.0.1:$PORT"
KEY=bench-$RANDOM$RANDOM
KEY2=neighbour-$RANDOM$RANDOM  # a second caller, for bench_http's --neighbour phase
# ARCHIVE=file.tgz: the whole output directory packed into one file as well (for transports that
# bring back a handful of files), again after every part, so a run cut short keeps what finished.
pack() {
  [ -n "${ARCHIVE:-}" ] || return 0
  tar czf "$ARCHIVE.part" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv "$ARCHIVE.part" "$ARCHIVE"
}
status() { echo "== $1: $2" | tee -a "$OUT/suite-status.txt"; pack; }
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }

# The gpu-marked tests spend most of their time compiling kernels on the host, so they run in
# TEST_WORKERS processes sharing the GPU (default 4) where pytest-xdist is installed, else in one.
WORKERS=()
if [ "${TEST_WORKERS:-4}" -gt 1 ] && $PY -c "import xdist" 2>/dev/null; then
  WORKERS=(-n "${TEST_WORKERS:-4}")
fi

if has tests; then
  # Modules that need test-only packages the GPU image may lack (openai, schemathesis, ...) fail to
  # collect there; the gpu-marked ones run regardless. -rA names every test and its outcome.
  $PY -m pytest -q -rA "${WORKERS[@]}" -m gpu -p no:cacheprovider --continue-on-collection-errors tests 2>&1 \
    | tee "$OUT/gpu-tests.log" | tail -15
  status tests "exit ${PIPESTATUS[0]}"
fi

if has kernel-tests; then
  timeout -s KILL "${KERNEL_TESTS_TIMEOUT_S:-420}" $PY -m pytest -q -rA "${WORKERS[@]}" -m gpu -p no:cacheprovider \
    tests/test_engine_kernels.py tests/test_window_attention.py \
    tests/test_mimi_stream.py tests/test_mimi_stream_graphs.py tests/test_mimi_stream_seanet_kernel.py \
    2>&1 | tee "$OUT/kernel-tests.log" | tail -15
  status kernel-tests "exit ${PIPESTATUS[0]}"
fi

if has kernel-bench || has step-bench; then
  OUT="$OUT" timeout -s KILL "${STEP_BENCH_TIMEOUT_S:-330}" $PY benchmarks/bench_fused_linear.py \
    --skip cold,step,reduce,tiles --step-batches 1,16,128 --variant-batches 1,16,128 \
    --variants "${STEP_VARIANTS:-shipped,sampler_sorted,cublas}" 2>&1 | tee "$OUT/step-variants.log" | tail -8
  status step-variants "exit ${PIPESTATUS[0]}"
fi

if has kernel-bench || has seanet-bench; then
  OUT="$OUT" timeout -s KILL "${SEANET_BENCH_TIMEOUT_S:-240}" $PY benchmarks/bench_mimi_stream.py --parts full-cuda \
    --modes cuda-graphs --dtypes bfloat16 --batches 1,128,256 --frames 1,8 --seanet stack,kernel 2>&1 \
    | tee "$OUT/seanet-kernel.log" | tail -8
  status seanet-kernel "exit ${PIPESTATUS[0]}"
fi

if has prefill-ab; then
  OUT="$OUT" timeout -s KILL "${PREFILL_AB_TIMEOUT_S:-560}" $PY benchmarks/ab_engine.py flags \
    --repeats "${AB_REPEATS:-1}" --arm shipped="" --arm apart="--no-prefill-in-step" \
    --arm kernel="--no-prefill-in-step --prefill-attention kernel" -- --max-slots 256 --streams 128 --churn 128,256 \
    --churn-s 6 --skip correctness,prefill,bs1,hf,step 2>&1 | tee "$OUT/prefill-ab.log" | tail -12
  status prefill-ab "exit ${PIPESTATUS[0]}"
fi

if has startup; then
  STARTUP_ARGS=(--phases "${STARTUP_PHASES:-ahead,ahead-warm,ahead-processes,ahead-early}")
  [ "${SMOKE:-0}" = 1 ] && STARTUP_ARGS=(--model tiny-random --max-batch-size 4 --phases "${STARTUP_PHASES:-cold,warm}")
  OUT="$OUT" timeout -s KILL "${STARTUP_TIMEOUT_S:-500}" $PY benchmarks/bench_startup.py --out "$OUT/startup" --compile-log \
    "${STARTUP_ARGS[@]}" 2>&1 | tee "$OUT/startup.log" | grep '^{' | cut -c1-600
  status startup "exit ${PIPESTATUS[0]}"
  cp "$OUT/startup/startup.json" "$OUT/$DATE-$TAG-startup.json" 2>/dev/null
fi

if has engine; then
  if [ "${SMOKE:-0}" = 1 ]; then ENGINE_ARGS="--smoke ${ENGINE_ARGS:-}"; fi
  # shellcheck disable=SC2086
  $PY benchmarks/bench_engine.py --out "$OUT" ${ENGINE_ARGS:-} 2>&1 | tee "$OUT/engine.log" | tail -25
  status engine "exit ${PIPESTATUS[0]}"
  [ "${SMOKE:-0}" = 1 ] && [ -f "$OUT/$DATE-cpu-engine-smoke.json" ] && cp "$OUT/$DATE-cpu-engine-smoke.json" "$ENGINE_JSON"
fi

start_server() {
  # serve_config.yaml as shipped, but the random full-size model and a local voices directory
  # (or, with SMOKE=1, the local CPU config); API keys on, from the environment.
  $PY - "$OUT/serve-config.yaml" "$PORT" <<'EOF'
import os, sys, yaml
path, port = sys.argv[1], int(sys.argv[2])
smoke = os.environ.get("SMOKE") == "1"
cfg = yaml.safe_load(open("configs/serve/local.yaml" if smoke else "serve_config.yaml"))
cfg["http_options"]["port"] = port
cfg["http_options"]["host"] = "127.0.0.1"
app = cfg["applications"][0]
# One client key drives the whole load: keep the limiter in the path, but far above the load.
app["args"]["api"] = {
    **app["args"].get("api", {}),
    "voices_dir": "/tmp/csm-voices",
    "auth_required": True,
    "rate_limit_per_minute": 10_000_000,
}
if not smoke:
    app["args"]["model"] = "csm-1b-random"
    app["args"].update(yaml.safe_load(os.environ.get("SERVE_ARGS", "{}")) or {})
# SERVE_DEPLOYMENTS: a YAML mapping of deployment name to options replacing the shipped ones.
overrides = yaml.safe_load(os.environ.get("SERVE_DEPLOYMENTS", "{}")) or {}
for d in app["deployments"]:
    if d["name"] == "APIIngress" and os.environ.get("INGRESS_REPLICAS"):
        d["num_replicas"] = int(os.environ["INGRESS_REPLICAS"])
    d.update(overrides.get(d["name"], {}))
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
print(yaml.safe_dump(app["args"]))
EOF
  # A server stopped just before (another variant) may still answer for a few seconds.
  for _ in $(seq 1 30); do curl -s -m 1 -o /dev/null "$URL/health" || break; sleep 1; done
  T0=$(date +%s%N)
  # The launcher users run (the draining runner); the config binds loopback, so the ingress is named.
  # The ingress replicas' draining period at a stop (30 s by default, for a load balancer to stop
  # routing to them) only delays the next variant here: nothing routes to a benchmark's server then.
  CSM_API_KEYS=$KEY,$KEY2 RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray} \
    RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=${RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S:-2} setsid $PY -m serve_app.cli serve --config "$OUT/serve-config.yaml" \
    --ingress "${INGRESS:-haproxy}" --drain-timeout 5 >"$OUT/serve${VARIANT:+-$VARIANT}.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 1 ${READY_TIMEOUT_S:-400}); do
    if curl -sf "$URL/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 $SERVE_PID 2>/dev/null; then break; fi
    sleep 1
  done
  READY_S=$($PY -c "import sys; print(round((int(sys.argv[1]) - int(sys.argv[2])) / 1e9, 1))" "$(date +%s%N)" "$T0")
  if curl -sf "$URL/health" >/dev/null 2>&1; then
    status serve "healthy after ${READY_S} s"
    # With the engine's own account of its start (imports, load, compile-ahead, capture).
    curl -s -m 10 -H "authorization: Bearer $KEY" "$URL/info" | $PY -c "
import json, sys
try:
    startup = json.load(sys.stdin).get('engine', {}).get('startup')
except ValueError:
    startup = None
print(json.dumps({'command': sys.argv[2], 'serve_run_to_healthy_s': float(sys.argv[1]), 'engine_startup': startup}))" \
      "$READY_S" "bash benchmarks/gpu_suite.sh OUT $PARTS" >"$OUT/ready${VARIANT:+-$VARIANT}.json"
    return 0
  fi
  status serve "not healthy after ${READY_S} s"
  tail -40 "$OUT/serve${VARIANT:+-$VARIANT}.log"
  return 1
}

stop_server() {
  [ -n "${MONITOR_PID:-}" ] && kill "$MONITOR_PID" 2>/dev/null
  [ -n "${SAMPLER_PID:-}" ] && kill "$SAMPLER_PID" 2>/dev/null
  MONITOR_PID= SAMPLER_PID=
  [ -n "${SERVE_PID:-}" ] || return 0
  kill -INT -- -"$SERVE_PID" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 1; done
  kill -KILL -- -"$SERVE_PID" 2>/dev/null
  pkill -x haproxy 2>/dev/null  # in case HAProxy outlived a killed server
  # Ray's workers (the Serve controller, the replicas) run in process groups of their own: after a
  # killed launcher they lived on for up to a minute, holding the GPU and CPU while the next
  # variant started. `ray stop` ends every Ray process on the machine.
  $PY -m ray.scripts.scripts stop --force >/dev/null 2>&1
  for _ in $(seq 1 30); do pgrep -f '^ray::' >/dev/null || break; sleep 1; done
  SERVE_PID=
}
trap stop_server EXIT

monitor_health() {
  # While the benchmarks run: /health and /info every 2 s; when /health fails or takes over 5 s,
  # or the engine has been in one loop iteration for over 2 s, the GPU's load
  # and processes, the model replica's threads (CPU per thread) and its Python stacks (py-spy,
  # where installed) go to
  # $OUT/stalls.txt, at most once per 15 s. The replica's own watchdog also dumps its stacks
  # into serve.log when its event loop blocks for 10 s.
  local log="$OUT/stalls${VARIANT:+-$VARIANT}.txt" last=0
  while sleep 2; do
    local t0 code stuck
    t0=$(date +%s)
    code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$URL/health")
    # The engine loop's current iteration (milliseconds, normally) from /info.
    stuck=$(curl -s -m 5 -H "authorization: Bearer $KEY" "$URL/info" | $PY -c \
      "import json, sys; print(int(json.load(sys.stdin).get('engine', {}).get('iteration_s', 0) > 2))" 2>/dev/null)
    [ "$code" = 200 ] && [ "${stuck:-0}" = 0 ] && continue
    [ $(( $(date +%s) - last )) -lt 15 ] && continue
    last=$(date +%s)
    local pid
    pid=$(pgrep -f 'ServeReplica:csm:TTSModel' | head -1)
    # The engine's loop thread runs in the replica's child process (engine_process: true), else in it.
    local engine_pid
    engine_pid=$([ -n "$pid" ] && pgrep -P "$pid" -f 'serve_app.engine.process' | head -1)
    {
      echo "== $(date -u +%T) /health answered $code after $(( $(date +%s) - t0 )) s, engine stuck: ${stuck:-?}; model replica pid ${pid:-?}"
      command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw,clocks.sm --format=csv \
        && nvidia-smi --query-compute-apps=pid,used_memory --format=csv
      [ -n "$pid" ] && top -b -H -n 1 -p "$pid${engine_pid:+,$engine_pid}" | head -35
      for p in $pid $engine_pid; do
        command -v py-spy >/dev/null && timeout 20 py-spy dump --pid "$p" 2>&1 | head -150
      done
      # Native frames of the engine's loop thread: which CUDA call it waits in.
      [ -n "$pid" ] && command -v py-spy >/dev/null && timeout 30 py-spy dump --native --pid "${engine_pid:-$pid}" 2>&1 \
        | awk '/csm-engine-loop|_run_user_code_event_loop/{p=1} /^Thread/ && !/csm-engine-loop|_run_user_code_event_loop/{p=0} p' | head -120
    } >>"$log" 2>&1
  done
}

gpu_sampler() {
  # The GPU's utilisation, clocks and power once a second while a server runs (a stall shows as
  # seconds of 100 % with no progress, or as an idle GPU with the host waiting on it).
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,clocks.sm,power.draw,memory.used,clocks_event_reasons.active \
    --format=csv -l 1 >"$OUT/gpu-samples${VARIANT:+-$VARIANT}.csv" 2>&1
}

record_replicas() {
  # PYSPY_S=n: where the replicas' threads spend n s of the load (py-spy raw samples, idle included;
  # a model replica's engine child process with it).
  [ "${PYSPY_S:-0}" -gt 0 ] && command -v py-spy >/dev/null || return 0
  local pid name
  for pid in $(pgrep -f 'ServeReplica:csm:(APIIngress|TTSModel)'); do
    name=$(ps -o args= -p "$pid" | grep -o 'APIIngress\|TTSModel' | head -1)
    (sleep "${PYSPY_AT_S:-0}"; timeout $((PYSPY_S + 30)) py-spy record --nonblocking --idle --threads --subprocesses -r 200 \
      -d "$PYSPY_S" -f raw -o "$OUT/pyspy${VARIANT:+-$VARIANT}-$name-$pid.txt" --pid "$pid" >/dev/null 2>&1) &
  done
}

if has ready-cold; then
  rm -rf "${TRITON_CACHE_DIR:-$HOME/.triton/cache}" "/tmp/torchinductor_$(id -un)"
  if VARIANT=cold start_server; then
    cp "$OUT/ready-cold.json" "$OUT/$DATE-$TAG-ready-cold.json"
    cat "$OUT/ready-cold.json"
  fi
  stop_server
fi

if has http || has ws; then
  if start_server; then
    record_replicas
    monitor_health &
    MONITOR_PID=$!
    gpu_sampler &
    SAMPLER_PID=$!
    if has http; then
      if [ "${SMOKE:-0}" = 1 ]; then
        HTTP_ARGS="--streams 1,2 --window-s 4 --burst 4 --idle-trials 4 --poisson-s 4 --audio-ms 1600 ${HTTP_ARGS:-}"
      fi
      # shellcheck disable=SC2086
      # A variant (INGRESS=proxy VARIANT=proxy, ...) gets files of its own and is not
      # merged into the engine results.
      MERGE=--merge; [ -n "${VARIANT:-}" ] && MERGE=
      $PY benchmarks/bench_http.py --url "$URL" --api-key "$KEY" --neighbour-key "$KEY2" --out "$OUT" --name "$DATE-$TAG-http${VARIANT:+-$VARIANT}" \
        --engine-json "$ENGINE_JSON" $MERGE --notes "csm-serve serve --config serve_config.yaml --ingress ${INGRESS:-haproxy}, model csm-1b-random" \
        ${HTTP_ARGS:-} 2>&1 | tee "$OUT/http${VARIANT:+-$VARIANT}.log" | tail -12
      status http "exit ${PIPESTATUS[0]}"
    fi
    if has ws && [ -f benchmarks/bench_ws.py ]; then
      [ "${SMOKE:-0}" = 1 ] && WS_ARGS="--ttfa-trials 2 --longform-s 8 ${WS_ARGS:-}"
      # shellcheck disable=SC2086
      $PY benchmarks/bench_ws.py --url "$URL" --api-key "$KEY" --out "$OUT" --name "$DATE-$TAG-ws" \
        ${WS_ARGS:-} 2>&1 | tee "$OUT/ws.log" | tail -12
      status ws "exit ${PIPESTATUS[0]}"
    fi
    if [ "${HOLD_S:-0}" -gt 0 ]; then
      # Keep the server (and the health monitor) up a while after the load, e.g. to see a replica recover.
      sleep "$HOLD_S"
      status hold "after ${HOLD_S} s: /health $(curl -s -o /dev/null -m 10 -w '%{http_code}' "$URL/health")"
    fi
    cp "$OUT/ready${VARIANT:+-$VARIANT}.json" "$OUT/$DATE-$TAG-ready${VARIANT:+-$VARIANT}.json" 2>/dev/null
  fi
  stop_server
fi
if has routing-ab; then
  # Ray's default backoff put back on the model deployment (`request_router_config`) in one arm.
  RAY_DEFAULT_ROUTER='{TTSModel: {request_router_config: {initial_backoff_s: 0.025, max_backoff_s: 0.5}}}'
  [ "${SMOKE:-0}" = 1 ] && ROUTING_ARGS="--audio-ms 800 ${ROUTING_ARGS:-}"
  for rep in $(seq 1 "${ROUTING_REPEATS:-1}"); do
    suffix=""; [ "${ROUTING_REPEATS:-1}" -gt 1 ] && suffix="-$rep"
    for arm in ray-default shipped; do
      overrides="{}"; [ "$arm" = ray-default ] && overrides=$RAY_DEFAULT_ROUTER
      if VARIANT=routing-$arm SERVE_DEPLOYMENTS=$overrides start_server; then
        $PY benchmarks/bench_http.py --url "$URL" --api-key "$KEY" --neighbour-key "$KEY2" --out "$OUT" \
          --name "$DATE-$TAG-http-routing-$arm$suffix" --idle-trials 2 --burst 0 --streams= \
          --neighbour "${ROUTING_FLOOD:-600}" --neighbour-after-s 0.3 \
          --notes "routing-ab $arm: csm-serve serve --config serve_config.yaml, model csm-1b-random" \
          ${ROUTING_ARGS:-} 2>&1 | tee -a "$OUT/http-routing-$arm.log" | grep '^neighbour' | cut -c1-400
        status "routing-ab $arm" "exit ${PIPESTATUS[0]}"
      fi
      stop_server
    done
  done
fi

cat "$OUT/suite-status.txt"
if [ -n "${ARCHIVE:-}" ]; then
  pack && echo "packed $OUT into $ARCHIVE"
fi
