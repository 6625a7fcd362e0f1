"""`make bench`: what the images cost (build time, size) and how fast they run.

`python -m bench [--only PARTS] [--runs N] [--build-runs N]` measures on this
machine, in one run, and writes bench/report.md, bench/report.json and
bench/report.png. Benchmarks are not tests: nothing here asserts on a timing.
"""
