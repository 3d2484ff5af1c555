"""benchmarks/README.md's Results tables are exactly what the committed JSON files say."""
from benchmarks import report


def test_readme_results_section_matches_the_json():
    text = report.README.read_text()
    assert report.BEGIN in text and report.END in text
    section = text.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    assert section.strip() == report.render().strip(), \
        "benchmarks/README.md is stale: run `make bench-report` after a benchmark run"


def test_every_benchmark_has_committed_results():
    missing = [name for name, _ in report.SECTIONS if report.load(name) is None]
    assert not missing, f"no results JSON for {missing}"
