"""The BENCHMARKS.md writer of the benchmark scripts (bench/harness.py): a rerun replaces its topic's section."""

from __future__ import annotations

import pytest

from bench.harness import anchor, replace_section, section_title, sections, summary_rows, write_section

DOC = """# Benchmarks

## Summary

| topic | headline |
|---|---|
| [HTTP load test](#http-load-test) | 164 req/s at 10 clients |

## Search

### HTTP load test

Date: 2026-11-27. Old run.

| clients | req/s |
|---|---|
| 10 | 163.7 |

### Query latency, recall and memory by index type (2026-11-27)

Old, dated heading.

#### A subsection of it

```
# a comment in a code block, not a heading
### nor is this
```

## Design choices from these numbers

- keep this
"""


def section(title: str, body: str = "New run.") -> str:
    return f"### {title}\n\nDate: 2026-12-01. {body}\n"


def test_a_rerun_replaces_its_section_in_place() -> None:
    new, old = replace_section(DOC, section("HTTP load test", "| 10 | 170.0 |"))
    assert "Old run." in old and "163.7" in old
    assert "163.7" not in new and "| 10 | 170.0 |" in new
    titles = [t for t, _, _ in sections(new)]
    assert titles == ["HTTP load test", "Query latency, recall and memory by index type"]  # same place, once
    assert new.count("### HTTP load test") == 1
    assert "### HTTP load test\n\nDate: 2026-12-01. | 10 | 170.0 |\n\n### Query latency" in new
    assert new.endswith("- keep this\n")


def test_a_dated_heading_is_the_same_topic_and_its_subsections_and_code_go_with_it() -> None:
    new, old = replace_section(DOC, section("Query latency, recall and memory by index type"))
    assert old.startswith("### Query latency, recall and memory by index type (2026-11-27)")
    assert "A subsection of it" in old and "nor is this" in old
    assert "A subsection of it" not in new and "(2026-11-27)" not in new
    assert "New run.\n\n## Design choices from these numbers" in new
    assert "### HTTP load test\n\nDate: 2026-11-27. Old run." in new  # the other section is untouched


def test_a_new_topic_goes_before_the_design_choices_or_at_the_end() -> None:
    new, old = replace_section(DOC, section("Index writes with two workers"))
    assert old == ""
    assert "- keep this\n" in new
    assert new.index("### Index writes with two workers") < new.index("## Design choices from these numbers")
    assert "```\n\n### Index writes with two workers\n\nDate: 2026-12-01. New run.\n\n## Design choices" in new

    plain, _ = replace_section("# Benchmarks\n\n### HTTP load test\n\nOld.\n", section("Speech experiment"))
    assert plain == ("# Benchmarks\n\n### HTTP load test\n\nOld.\n\n"
                     "### Speech experiment\n\nDate: 2026-12-01. New run.\n")
    empty, _ = replace_section("", section("Speech experiment"))
    assert empty == "### Speech experiment\n\nDate: 2026-12-01. New run.\n"


def test_two_sections_with_one_title_are_refused_and_a_section_needs_its_heading() -> None:
    doubled = DOC.replace("## Design choices", "### HTTP load test (2026-11-28)\n\nAgain.\n\n## Design choices")
    with pytest.raises(ValueError, match="2 sections titled 'HTTP load test'"):
        replace_section(doubled, section("HTTP load test"))
    with pytest.raises(ValueError, match="starts with a '### ' heading"):
        replace_section(DOC, "## HTTP load test\n\nNot a section.\n")


def test_titles_anchors_and_the_summary_rows_that_link_to_a_section() -> None:
    assert section_title("### ANN side by side: FAISS vs Milvus (2026-11-30)") == "ANN side by side: FAISS vs Milvus"
    assert section_title("### Retrieval of on-screen text") == "Retrieval of on-screen text"
    # GitHub's anchors: lower case, punctuation dropped except - and _, spaces to hyphens
    assert anchor("ANN side by side: FAISS vs Milvus Lite, IVF_FLAT at equal recall@10") == \
        "ann-side-by-side-faiss-vs-milvus-lite-ivf_flat-at-equal-recall10"
    assert anchor("Ingest throughput with on-screen text (OCR) on and off") == \
        "ingest-throughput-with-on-screen-text-ocr-on-and-off"
    assert summary_rows(DOC, "HTTP load test") == ["| [HTTP load test](#http-load-test) | 164 req/s at 10 clients |"]
    assert summary_rows(DOC, "Query latency, recall and memory by index type") == []


def test_write_section_goes_to_the_file_save_bench_output_names(tmp_path, monkeypatch) -> None:
    target = tmp_path / "BENCHMARKS.md"
    target.write_text(DOC)
    monkeypatch.setenv("SAVE_BENCH_OUTPUT", str(target))
    old, rows = write_section(section("HTTP load test"))
    assert "163.7" in old and rows == ["| [HTTP load test](#http-load-test) | 164 req/s at 10 clients |"]
    assert target.read_text() == replace_section(DOC, section("HTTP load test"))[0]
    old, rows = write_section(section("HTTP load test", "Third run."))  # and again: still one section
    assert "New run." in old and target.read_text().count("### HTTP load test") == 1
    fresh = tmp_path / "new.md"  # a file that does not exist yet is created
    write_section(section("HTTP load test"), fresh)
    assert fresh.read_text() == section("HTTP load test")
