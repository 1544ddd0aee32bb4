"""Instruction-count gate over the CodSpeed micro-benchmarks (callgrind, committed baseline).

python -m benchmarks.instructions                   # measure, compare with baseline.json, exit 1 on a regression
python -m benchmarks.instructions rebaseline        # measure and write baseline.json
python -m benchmarks.instructions spread --runs 3   # measure several times: the spread of each count
"""
