#!/usr/bin/env bash
# A 4-job MNIST sweep (split MNIST, class-IL, er at 2 buffer sizes x 2 seeds) with Hydra's basic launcher
# (jobs one after another) and with joblib (2 jobs at once, 1 torch thread each) on this 2-core machine.
#   CLRUN_DATA=DIR bash scripts/speed/launchers.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CLRUN_DATA:?set CLRUN_DATA to a directory holding MNIST/raw}"
export CLRUN_DATA
out=$(mktemp -d)
args=(quiet=true plots=false benchmark=split_mnist method=er buffer=200,500 seed=0,1)
t0=$(date +%s.%N)
clrun -m "${args[@]}" hydra.sweep.dir="$out/basic" > /dev/null 2>&1
t1=$(date +%s.%N)
clrun -m hydra/launcher=joblib hydra.launcher.n_jobs=2 "${args[@]}" hydra.sweep.dir="$out/joblib" > /dev/null 2>&1
t2=$(date +%s.%N)
basic=$(echo "$t1 - $t0" | bc); joblib=$(echo "$t2 - $t1" | bc)
echo "cores: $(nproc)  basic launcher: ${basic}s  joblib (n_jobs=2): ${joblib}s  speed-up: $(echo "scale=2; $basic / $joblib" | bc)x"
python -c "import pandas as pd; a=pd.read_csv('$out/basic/summary.csv'); b=pd.read_csv('$out/joblib/summary.csv'); \
print('same ACC per job:', sorted(a.ACC.round(6)) == sorted(b.ACC.round(6)))"
