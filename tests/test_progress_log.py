"""Log lines never land inside the progress bar's line (issue 23 item 6): while a run shows its bar,
console records go through tqdm.write (the bar is cleared, the line printed, the bar redrawn),
credentials still masked; the run's own handlers come back afterwards."""

from __future__ import annotations

import logging
import sys

from specsweep.sweep.credentials import RedactingFilter
from specsweep.sweep.run.loop import _console_beside, _progress


def test_console_records_go_above_the_bar_and_stay_redacted(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "sk-secretsecret123")
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)
    console.addFilter(RedactingFilter())
    saved = root.handlers[:], root.level
    root.handlers, root.level = [console], logging.INFO
    try:
        bar = _progress(True, 10, 0)
        with _console_beside(bar):
            (handler,) = root.handlers
            assert handler is not console and type(handler).__module__.startswith("tqdm")
            bar.update(3)
            logging.getLogger("specsweep.test").info("step 3 key sk-secretsecret123")
        bar.close()
        assert root.handlers == [console]
    finally:
        root.handlers, root.level = saved
    out = capsys.readouterr().out
    assert out == "step 3 key ***\n"  # a whole line of its own, the bar untouched on stderr


def test_no_bar_no_redirect() -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    with _console_beside(None):
        assert root.handlers == before
    assert _progress(False, 10, 0) is None
