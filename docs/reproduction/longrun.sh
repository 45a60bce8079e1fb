#!/usr/bin/env bash
# The long reproduction run (sample_configs/mnist_reproduce.yaml), started or resumed in the
# background from a frozen copy of the code, so that work on the repository never changes the
# code a run is using. Run it whenever the run is not going (a session's start, a new machine).
#
#   docs/reproduction/longrun.sh start [THREADS] [-- EXTRA draw train ARGS]
#       start the run, or resume it from its last.pt; THREADS: 1 (default, beside other work) or 2
#       (nothing else running). EXTRA args go to `draw train`: to the new run's command at the first
#       start (e.g. mnist-cycle2's -- --init-from @mnist --epochs 55 --set train.decay_start=10
#       --set train.decay_epochs=45), to `draw train --resume` after (e.g. a chosen decay:
#       -- --epochs 200 --set train.decay_start=170 --set train.decay_epochs=30).
#       LONGRUN_FROM=epoch_060.pt: resume from that checkpoint of the run instead of last.pt.
#       LONGRUN_BRANCH=mnist-wsd: the first start of a run named by LONGRUN_NAME copies this run's
#       folder (checkpoints up to LONGRUN_FROM) and goes on from there, leaving the original as it was.
#   docs/reproduction/longrun.sh stop      ask it to stop (it saves last.pt after the current step)
#   docs/reproduction/longrun.sh status    is it running; its last lines
#   docs/reproduction/longrun.sh sync      copy its metrics.jsonl and log into docs/reproduction/
#
# Environment: LONGRUN_NAME (default mnist-wsd) is the run; LONGRUN_CONFIG (default
# sample_configs/mnist_reproduce.yaml, a path in the frozen code) is its recipe at the first start; LONGRUN_DIR (default /work/longrun) holds
# code-<commit>/ (the frozen copy, made from this repository's HEAD at the run's first start),
# runs/, and per run NAME.code.commit, NAME.log and NAME.pid (mnist-wsd, the first run, keeps the
# older names code.commit, longrun.log and longrun.pid); DRAW_DATA_DIR (default the shared data
# folder beside the repository) holds mnist/; PYTHON (default python3) has torch.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${LONGRUN_DIR:-/work/longrun}"
name="${LONGRUN_NAME:-mnist-wsd}"
export DRAW_DATA_DIR="${DRAW_DATA_DIR:-$(cd "$repo/.." && pwd)/shared/data}"
mkdir -p "$dir"
if [ "$name" = mnist-wsd ]; then
  log="$dir/longrun.log"; pidfile="$dir/longrun.pid"; commitfile="$dir/code.commit"
else
  log="$dir/$name.log"; pidfile="$dir/$name.pid"; commitfile="$dir/$name.code.commit"
fi

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-status}" in
start)
  threads="${2:-1}"
  shift $(( $# >= 2 ? 2 : $# ))
  [ "${1:-}" = "--" ] && shift
  if running; then echo "already running (pid $(cat "$pidfile"))"; exit 0; fi
  # The frozen code: the commit recorded at the first start, else this repository's HEAD.
  if [ -f "$commitfile" ]; then commit="$(cat "$commitfile")"; else commit="$(git -C "$repo" rev-parse HEAD)"; fi
  code="$dir/code-$commit"
  if [ ! -d "$code" ]; then
    rm -rf "$code.tmp" && mkdir -p "$code.tmp" && git -C "$repo" archive "$commit" | tar -x -C "$code.tmp" && mv "$code.tmp" "$code"
  fi
  echo "$commit" > "$commitfile"
  if [ -n "${LONGRUN_BRANCH:-}" ] && [ ! -d "$dir/runs/$name" ]; then
    # A branch: the other run's folder with its checkpoints up to LONGRUN_FROM (a real copy, so
    # that neither run's files change the other's).
    [ -n "${LONGRUN_FROM:-}" ] || { echo "LONGRUN_BRANCH needs LONGRUN_FROM (the checkpoint to go on from)" >&2; exit 2; }
    src="$dir/runs/$LONGRUN_BRANCH"
    [ -f "$src/checkpoints/$LONGRUN_FROM" ] || { echo "no $src/checkpoints/$LONGRUN_FROM" >&2; exit 2; }
    mkdir -p "$dir/runs/$name.tmp/checkpoints"
    cp -a "$src/config.yaml" "$src/metrics.jsonl" "$dir/runs/$name.tmp/"
    [ -d "$src/tb" ] && cp -a "$src/tb" "$dir/runs/$name.tmp/"
    for f in "$src"/checkpoints/epoch_*.pt; do
      [[ "$(basename "$f")" > "$LONGRUN_FROM" ]] || cp -a "$f" "$dir/runs/$name.tmp/checkpoints/"
    done
    mv "$dir/runs/$name.tmp" "$dir/runs/$name"
    echo "=== $(date -u +%FT%TZ) $name: a copy of $LONGRUN_BRANCH up to $LONGRUN_FROM" >> "$log"
  fi
  if [ -n "${LONGRUN_FROM:-}" ]; then  # go on from an earlier checkpoint (later ones are moved aside, not deleted)
    args=(train --resume "$dir/runs/$name/checkpoints/$LONGRUN_FROM" --runs-dir "$dir/runs" --threads "$threads" "$@")
  elif [ -f "$dir/runs/$name/checkpoints/last.pt" ]; then
    args=(train --resume "$name" --runs-dir "$dir/runs" --threads "$threads" "$@")
  else
    rm -rf "${dir:?}/runs/$name"  # a run that died before its first checkpoint
    args=(train --config "$code/${LONGRUN_CONFIG:-sample_configs/mnist_reproduce.yaml}" --name "$name" --runs-dir "$dir/runs" --threads "$threads" "$@")
  fi
  echo "=== $(date -u +%FT%TZ) code $commit: draw ${args[*]}" >> "$log"
  cd "$code"
  PYTHONPATH="$code" nohup "${PYTHON:-python3}" -m drawcli "${args[@]}" >> "$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  echo "started (pid $!); log: $log"
  ;;
stop)
  if running; then kill -INT "$(cat "$pidfile")"; echo "asked to stop; last.pt is saved after the current step"; else echo "not running"; fi
  ;;
status)
  if running; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; fi
  tail -n 5 "$log" 2>/dev/null || true
  ;;
sync)
  cp "$dir/runs/$name/metrics.jsonl" "$repo/docs/reproduction/$name.metrics.jsonl"
  cp "$log" "$repo/docs/reproduction/$name.log"
  echo "copied metrics.jsonl and the log of $name into docs/reproduction/"
  ;;
*)
  echo "usage: $0 start [THREADS] [-- ARGS] | stop | status | sync" >&2; exit 2
  ;;
esac
