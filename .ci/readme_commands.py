"""Prints the README's two set-up commands, one per line, exactly as written there.

They are the first two ```bash blocks under "## Set-up on a fresh machine"; each must be one
line. .ci/run runs what this prints, so CI and the README cannot drift apart.
"""

import re
import sys
from pathlib import Path


def setup_commands(readme: str) -> list[str]:
    section = readme.split("## Set-up on a fresh machine", 1)
    if len(section) != 2:
        sys.exit("README.md: no '## Set-up on a fresh machine' section")
    body = section[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    if len(blocks) < 2:
        sys.exit("README.md: the set-up section needs two ```bash blocks")
    commands = [b.strip() for b in blocks[:2]]
    for c in commands:
        if "\n" in c:
            sys.exit(f"README.md: a set-up command must be one line, found:\n{c}")
    return commands


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("\n".join(setup_commands(path.read_text(encoding="utf-8"))))
