"""The README's results come from files a run wrote (docs/results/), never a hand copy."""
from knowledge_recovery.cli import readme


def test_the_readme_shows_exactly_the_files_a_run_wrote():
    text = (readme.REPO / "README.md").read_text()
    assert readme.BLOCK.search(text), "no include block in the README"
    assert readme.main(["--check"]) == 0


def test_an_include_block_is_filled_from_its_file(tmp_path):
    (tmp_path / "t.md").write_text("| a |\n")
    text = "x\n<!-- include: t.md -->\nstale\n<!-- end include -->\ny\n"
    assert readme.render(text, tmp_path) == "x\n<!-- include: t.md -->\n| a |\n<!-- end include -->\ny\n"
