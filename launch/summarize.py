r"""Merges the results.csv files of benchmark runs of one task and writes their reports.

A benchmark extended by more seeds later (`launch.benchmark --first_seed`), or methods of
one task run in several output directories, are summarised over all their seeds at once:

    python -m launch.summarize --reference=joint --out=runs/T1_all \
        --results=runs/T1_s0/results.csv,runs/T1_s5/results.csv

A method run under another name (a command-line override) is renamed with
`PATH@old=new`: `--results=runs/old/results.csv@persistent_pseudo_labels=persistent_pseudo_labels_old`.
Writes OUT/results.csv, OUT/summary.md (mean ± std, paired gaps to the reference with a 95%
t interval and wins / ties / losses) and OUT/summary.png.
"""

from absl import app, flags

from gradmix_tf import benchmark, source_study
from launch import errors

_RESULTS = flags.DEFINE_list(
    "results", None, "results.csv files of benchmarks of one task, each PATH[@old=new...]."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (results.csv, summary.md, .png).")
_REFERENCE = flags.DEFINE_string(
    "reference", "gradmix", "The method the paired gaps are taken against."
)
_METHODS = flags.DEFINE_list("methods", None, "Methods to report, in this order (default: all).")
flags.mark_flags_as_required(["results", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = source_study.merge_results(_RESULTS.value)
    methods = _METHODS.value or list(dict.fromkeys(r["method"] for r in rows))
    unknown = [m for m in methods + [_REFERENCE.value] if m not in {r["method"] for r in rows}]
    if unknown:
        raise app.UsageError(
            f"no results for {sorted(set(unknown))} in {_RESULTS.value}; the files hold "
            f"{sorted({r['method'] for r in rows})}."
        )
    benchmark.write_reports(rows, _OUT.value, methods=methods, reference=_REFERENCE.value)
    print(open(f"{_OUT.value}/summary.md").read())


if __name__ == "__main__":
    errors.run(main)
