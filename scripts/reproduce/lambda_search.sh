#!/usr/bin/env bash
# EWC's lam on permuted MNIST (5 tasks, domain-IL, seed 0): the log grid against an Optuna study with two
# objectives (ACC up, forgetting down), then the reference text's rule on each: the best ACC whose forgetting
# is <= the tolerance.   CLRUN_DATA=DIR bash scripts/reproduce/lambda_search.sh [OUT]
set -euo pipefail
out=${1:-outputs/lambda_search}
common=(quiet=true plots=false method=ewc benchmark=permuted_mnist seed=0)
# exit status 3: some jobs diverged (large lam at this lr): they are part of the answer, not a failure here
clrun -m "${common[@]}" lam=1,3,10,30,100,300,1000,3000,10000 hydra.sweep.dir="$out/grid" || [ $? -eq 3 ]
clrun -m "${common[@]}" hydra/sweeper=optuna hydra/sweeper/sampler=motpe \
  hydra.sweeper.sampler.n_startup_trials=3 hydra.sweeper.sampler.seed=0 hydra.sweeper.n_trials=12 \
  'hydra.sweeper.direction=[maximize,minimize]' 'lam=tag(log,interval(1,10000))' \
  hydra.sweep.dir="$out/optuna" || [ $? -eq 3 ]
for tol in 0.03 0.05; do
  clrun-select "$out/grid" --max-forgetting $tol -o "$out/grid"
  clrun-select "$out/optuna" --max-forgetting $tol -o "$out/optuna"
done
python "$(dirname "$0")/collect_lambda_search.py" "$out"   # -> results/mnist/lambda_search.csv
