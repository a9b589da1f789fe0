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
    readme = bash_blocks((ROOT / "README.md").read_text())
    assert len(readme) == 2, "the README holds two commands: the main job and the tests"
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci_lines[-1] == readme[1]


def test_main_job_pins_torch_and_runs_every_step():
    main_job = bash_blocks((ROOT / "README.md").read_text())[0]
    for step in ("torch==2.14.1", "torchvision==0.29.1", "dataset-fashion-mnist", "d3 compress fashion-mnist --ipc 10",
                 "--preset fast", "d3 info", "d3 expand", "--grid", "d3 eval", "--baseline random-real"):
        assert step in main_job
