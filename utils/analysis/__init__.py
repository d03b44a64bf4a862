"""Post-hoc analysis tools, each a command: ``python3 -m utils.analysis.<tool>`` with table (the
results table), rows (final.sh's rows and plan), launch and slurm (final.sh's runs), curves, energy,
plots, export_nir. Imports flow one way: table -> rows -> runs, table -> curves -> runs."""


def wrote(paths) -> int:
    """The end of a command that writes files: one ``wrote PATH`` line each, exit status 0."""
    for path in paths:
        print(f"wrote {path}")
    return 0
