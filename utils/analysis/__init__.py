"""Post-hoc analysis tools, each a command: python3 -m utils.analysis.table | energy | plots."""
