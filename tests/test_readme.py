"""The README's commands stay in step with CI."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bash_blocks(text: str) -> list[str]:
    blocks, inside = [], False
    for line in text.splitlines():
        if line.strip() == "```bash":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_exactly_the_readme_test_command():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2 and "d3 compress fashion-mnist" in blocks[0], "command 1 (the main job) comes first"
    assert "pytest" in blocks[1], "command 2 (the tests) comes second"
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci_lines[-1] == blocks[1]


def test_main_job_pins_torch_and_runs_every_step():
    main_job = bash_blocks((ROOT / "README.md").read_text())[0]
    for step in (
        "torch==2.14.1",
        "torchvision==0.29.1",
        "dataset-fashion-mnist",
        "d3 compress fashion-mnist --ipc 1 ",
        "d3 info",
        "d3 expand",
        "--grid",
        "d3 eval",
        "--baseline random-real",
    ):
        assert step in main_job
