"""Every topic of the module plan maps to a section of a lecture (lectures/topics.yaml), and it exists."""
import json

import yaml

from optcourse.core.paths import REPO_ROOT

LECTURES = REPO_ROOT / "lectures"


def headings(notebook: str) -> set[str]:
    nb = json.loads((LECTURES / f"{notebook}.ipynb").read_text())
    return {line.strip() for cell in nb["cells"] if cell["cell_type"] == "markdown"
            for line in "".join(cell["source"]).splitlines() if line.startswith("#")}


def test_every_topic_maps_to_an_existing_section():
    topics = yaml.safe_load((LECTURES / "topics.yaml").read_text())
    assert sorted(topics) == sorted(p.stem for p in LECTURES.glob("*.ipynb")), "one entry per lecture"
    missing = [(nb, topic, heading) for nb, sections in topics.items()
               for topic, heading in sections.items() if heading not in headings(nb)]
    assert not missing, f"sections not found: {missing}"
    assert sum(len(s) for s in topics.values()) >= 45
