#!/usr/bin/env bash
# Published-protocol cells too slow for a CPU, run side by side on one GPU machine. Each run is
# `clrun paper=$EXP method=M scenario=S seed=N` with the preset's settings untouched (device=auto picks the
# GPU), one process per run, JOBS at a time, in the order of CELLS (all seeds of a cell together, so the cells
# that finish are whole; the longest first). Runs still going at DEADLINE seconds are stopped. The default is
# van de Ven's 10 permuted-MNIST cells that two CPU cores could not afford (online EWC, joint, class-IL but
# LwF's, iCaRL); the README's later seeds of LwF and of the domain-IL cells came from
# CELLS="lwf task_il 3 4, lwf domain_il 3 4, ..." (mnist.sh gives the whole list). A-GEM's GEM row is
# `EXP=agem2019/perm_mnist CELLS="gem domain_il"`.
# Start CUDA MPS first (`nvidia-cuda-mps-control -d`, same CUDA_MPS_PIPE_DIRECTORY for the daemon and the runs):
# on one H100, 15 runs side by side took 1.7-3.6 minutes each under MPS, and 1.6-1.8x as long without it
# (time-sliced contexts); on one H200, 15 side by side took 2.1-5.7 minutes (LwF task-IL the longest).
#
#   CLRUN_DATA=DIR bash scripts/device/gpu_cells.sh /tmp/runs
#
# SEEDS="3 4" picks other seeds; a cell may name its own after the scenario ("lwf class_il 5 6").
# EXTRA="iters=20 benchmark.n_tasks=2" adds overrides (a quick check of the script itself). Then
# `clrun-report /tmp/runs ... --compare-paper`. On the lent device machine hydra-core,
# omegaconf, antlr4 and quadprog travel as wheels in .whl/ and MNIST as .mnist/MNIST/raw/*.gz (both
# git-ignored); the script installs / unpacks them when hydra is missing / CLRUN_DATA is unset.
set -u
RUNS=${1:-/tmp/runs}
JOBS=${JOBS:-15}
EXP=${EXP:-vandeven2019/perm_mnist}  # a paper preset
CELLS=${CELLS:-"joint task_il, joint domain_il, joint class_il, icarl class_il, naive class_il,
  ewc class_il, si class_il, online_ewc task_il, online_ewc domain_il, online_ewc class_il"}
DEADLINE=${DEADLINE:-86400}  # the lent machine's 10-minute calls used 495
T0=$(date +%s)
END=$((T0 + DEADLINE))
REPO=$(cd "$(dirname "$0")/../.." && pwd)
LOG=${LOG:-$RUNS/jobs.log}
mkdir -p "$RUNS"

export REPO RUNS END LOG EXP EXTRA=${EXTRA:-}

# cell by cell: all seeds of a cell next to each other
IFS=, read -r -a cells <<< "$(echo $CELLS)"
for cell in "${cells[@]}"; do
  set -- $cell
  [ $# -ge 2 ] || { echo "gpu_cells.sh: cell '$cell' needs a method and a scenario" >&2; exit 2; }
  m=$1 s=$2; shift 2
  for seed in ${*:-${SEEDS:-0 1 2}}; do echo "$m $s $seed"; done
done > "$RUNS/queue.txt" || exit 2

one_run() {  # METHOD SCENARIO SEED
  local left=$((END - $(date +%s)))
  [ "$left" -lt 30 ] && { echo "SKIP $*" >> "$LOG"; return 0; }
  local exp=$EXP
  [ "$1" = icarl ] && [ -f "$REPO/conf/paper/${EXP}_icarl.yaml" ] && exp=${EXP}_icarl  # its own preset
  local dir=$RUNS/${EXP//\//_}_$2_gpu/$1_s$3
  echo "START $(date +%s) $*" >> "$LOG"
  timeout "$left" python3 -c 'import sys; sys.argv[0] = "clrun"; from clrun.app import main; main()' \
    paper=$exp method=$1 scenario=$2 seed=$3 threads=1 quiet=true plots=false checkpoint=false \
    ${EXTRA:-} hydra.run.dir="$dir" > "$dir.out" 2>&1
  local rc=$?
  echo "END $(date +%s) rc=$rc $*" >> "$LOG"
}
export -f one_run
mkdir -p "$RUNS"/${EXP//\//_}_{task_il,domain_il,class_il}_gpu
cd "$REPO" && xargs -P "$JOBS" -L 1 bash -c 'one_run "$@"' _ < "$RUNS/queue.txt"
echo "all done after $(( $(date +%s) - T0 )) s" >> "$LOG"
