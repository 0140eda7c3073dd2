#!/bin/bash
# Nsight Compute on the FP8 kernels (H100): clocks left as found (--clock-control none).
# Full reports under $OUT; key lines printed. Usage: bash benchmarks/tools/fp8_ncu.sh NAME REGEX ARGS...
# (ARGS: what python runs, e.g. -m benchmarks.tools.fp8_ncu gemm 8192 5120 2048)
name=$1; regex=$2; shift 2
ncu --clock-control none -k "regex:$regex" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
    --metrics smsp__warp_issue_stalled_long_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_barrier_per_warp_active.pct,smsp__warp_issue_stalled_wait_per_warp_active.pct,smsp__warp_issue_stalled_math_pipe_throttle_per_warp_active.pct,smsp__warp_issue_stalled_short_scoreboard_per_warp_active.pct,smsp__warp_issue_stalled_mio_throttle_per_warp_active.pct,smsp__warp_issue_stalled_lg_throttle_per_warp_active.pct,smsp__warp_issue_stalled_sleeping_per_warp_active.pct,smsp__warp_issue_stalled_selected_per_warp_active.pct,smsp__warp_issue_stalled_not_selected_per_warp_active.pct,smsp__warp_issue_stalled_dispatch_stall_per_warp_active.pct,smsp__warp_issue_stalled_no_instruction_per_warp_active.pct,smsp__warp_issue_stalled_membar_per_warp_active.pct,smsp__warp_issue_stalled_branch_resolving_per_warp_active.pct,smsp__warp_issue_stalled_imc_miss_per_warp_active.pct,smsp__warp_issue_stalled_drain_per_warp_active.pct,smsp__warp_issue_stalled_misc_per_warp_active.pct,smsp__warp_issue_stalled_tex_throttle_per_warp_active.pct,sm__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,lts__t_bytes.sum,dram__bytes.sum,sm__cycles_elapsed.avg.per_second,gpu__time_duration.sum \
    python "$@" > "$OUT/ncu_$name.txt" 2>&1
echo "== ncu $name: $*"
grep -E "Duration|SM Frequency|Throughput|Busy|Ipc|stalled|inst_executed|issue_active|wavefronts|lts__t_bytes|dram__bytes|Warp Cycles|Registers|Achieved Occupancy|Theoretical Occupancy|ERR|Error|error" "$OUT/ncu_$name.txt" | grep -v "^==PROF==" | head -60
