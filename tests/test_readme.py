"""The README's opening example runs as printed and trains."""

import pathlib
import re


def test_the_opening_example_runs_and_fits(capsys):
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.startswith("loss ") and "chain(" in out
    assert float(namespace["loss"](namespace["params"])) < 1e-3
