"""What the numbered notebooks need around the method: the one setup call (:mod:`.session`), showing figures
as PNG (:mod:`.display`), report sections (:mod:`.report`), the sentences that interpret a run's numbers
(:mod:`.captions`), the series runner (:mod:`.series`), HTML copies (:mod:`.html_export`) and what a
profile needs before its first notebook runs (:mod:`.prerequisites`).

``from maft import notebook; nb = notebook.setup(output_dir, config, overrides)`` starts every notebook.
"""
from .session import Notebook, setup

__all__ = ["Notebook", "setup"]
