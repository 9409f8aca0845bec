"""The fault battery: hostile inputs and a flaky machine, run through the command-line programs
(``python -m tests.battery.fault_cases``; docs/robustness.md)."""
