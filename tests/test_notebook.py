"""docs/quickstart.ipynb, executed as a user runs it (a Jupyter kernel, cell by cell, in a fresh
folder): every cell runs, and its outputs are the ones the notebook promises: a leaderboard, a
comparison with its statistics columns, a plotly figure that renders inline, and a champion that
the command line then finds in the same store."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from conftest import workbench_in_process
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def outputs(cell) -> str:
    """Everything a cell showed, as text: streams, plain and HTML representations, figure JSON."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for mime, value in out.get("data", {}).items():
            parts.append(f"<{mime}>")
            parts.append(value if isinstance(value, str) else json.dumps(value))
    return "\n".join(parts)


def test_the_quickstart_notebook_runs_and_shows_what_it_promises(workdir):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", [])) for c in code)
    shown = {c.source.split("\n")[0]: outputs(c) for c in code}

    assert f"sqlite:///{Path('mlruns') / 'mlflow.db'}" in shown["import workbench as wb"]
    board = shown["outcome = ws.sweep(spec)"]
    assert "<text/html>" in board and "trial-000" in board and "trial-001" in board
    comparison = shown['comparison = ws.compare(experiment="notebook", sweep="latest")']
    assert "<text/html>" in comparison and "p_vs_best" in comparison and "f1_macro_ci" in comparison
    figure = shown['report = ws.report(experiment="notebook", sweep="latest")']
    assert "<application/vnd.plotly.v1+json>" in figure and "val_f1_macro" in figure
    assert "version 1 of notebook-faces is the champion" in shown['promotion = ws.promote("notebook-faces", experiment="notebook")']

    # The notebook wrote where the command line reads: the same store, the report where it says.
    assert (workdir / "reports" / "notebook-report.html").is_file()
    listed = workbench_in_process("leaderboard", "notebook", cwd=workdir)
    assert listed.returncode == 0 and "trial-001" in listed.stdout
