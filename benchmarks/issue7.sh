#!/usr/bin/env bash
# The measurements issue #7 asks for, in one run on whatever CPU this is, so that a session on
# another microarchitecture (AVX-512, VNNI) takes them with one command:
#
#   bash benchmarks/issue7.sh [OUT_DIR]      (default benchmarks/results/issue7-<date>)
#
# From a built tree, with llama-cpp-python installed and the models fetched
# (python tools/fetch_models.py). About 20 minutes on 2 cores (longer on an AVX-512 CPU, which
# gets the AVX-512 and plain-layout rows too); run it on an otherwise idle machine.
#   1. roofline: every weight type's matrix-vector rate against the read bandwidth, on every
#      instruction-set path this CPU has (plain layouts too where there is AVX-512);
#      and in L2 (one thread): the kernels' compute ceiling, i.e. their headroom over memory;
#   2. compare.py against llama.cpp, engines alternated (decode, prompt, % of bandwidth), by
#      default and with SMALLMIND_ISA=avx2 (plain AVX2, no vpdpbusd) where the CPU has more;
#      with SMALLMIND_REPACK=0 where it has AVX-512 (its plain-layout kernels);
#   3. where the CPU has vpdpbusd: the repacked products of several rows with and without it;
#   4. decode_budget: 2 threads over 1 against the bandwidth ratio.
# Each step writes its table (.txt) and JSON; lscpu and the load average go beside them.
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/issue7-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$out"
models="SmolLM2-135M-Instruct Q4_1,Gemma 3 270M Q4_K_M"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

lscpu > "$out/lscpu.txt"
uptime > "$out/load.txt"
paths=$(python -m smallmind bench --kernels --json)
echo "$paths" > "$out/kernels.json"
cpu=$(python -c 'import json, sys; print(json.load(sys.stdin)["cpu"])' <<< "$paths")
vnni=$(python -c 'from smallmind._core import _matmul as m; print(m.VNNI_NAMES[m._vnni(detected=True)] or "")')
echo "cpu path: $cpu, vpdpbusd: ${vnni:-none}" | tee "$out/summary.txt"

run() {  # run NAME COMMAND...: the command's output into NAME.txt, its exit status noted
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$out/summary.txt"
    "$@" > "$out/$name.txt" 2>&1 || echo "   exit $? (see $name.txt)" | tee -a "$out/summary.txt"
}

plain=()
[ "$cpu" = avx512 ] && plain=(--plain)
run roofline python benchmarks/roofline.py --quick --threads 1,2 "${plain[@]}" --json "$out/roofline.json"
# The same kernels on a matrix that stays in L2: their compute ceiling, as headroom over memory.
run roofline_l2 python benchmarks/roofline.py --quick --threads 1 --mb 0.375 --json "$out/roofline_l2.json"
run compare python benchmarks/compare.py --quick --rounds 3 --models "$models" --threads 1,2 \
    --json "$out/compare.json"
if [ "$cpu" = avx512 ] || [ -n "$vnni" ]; then
    run compare_avx2 env SMALLMIND_ISA=avx2 python benchmarks/compare.py --quick --rounds 3 \
        --models "$models" --threads 1,2 --json "$out/compare_avx2.json"
fi
if [ "$cpu" = avx512 ]; then
    run compare_plain env SMALLMIND_REPACK=0 python benchmarks/compare.py --quick --rounds 3 \
        --models "$models" --threads 1,2 --json "$out/compare_plain.json"
fi
if [ -n "$vnni" ]; then
    for form in none "$vnni"; do
        run "matmul_vnni_$form" python benchmarks/matmul.py --quick --types Q4_1,Q5_0,Q8_0 --ns 4,64,256 \
            --threads 1,2 --no-sweep --no-numpy --vnni "$form" --json "$out/matmul_vnni_$form.json"
    done
fi
run decode_budget python benchmarks/decode_budget.py --quick --threads 1,2 --json "$out/decode_budget.json"
uptime >> "$out/load.txt"
echo "results in $out" | tee -a "$out/summary.txt"
