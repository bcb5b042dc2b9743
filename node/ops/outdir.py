"""Output directories that a command may reuse, but never clear of a user's files.

`testnet --out precious` used to `rmtree` whatever was in `precious` (a user's thesis
included) and `--out .` emptied the working directory (issue 13, item 1). The rule now, for
every command that writes a directory (`testnet`, `evolve`):

- `--out DIR` must be new, empty, or a directory this command wrote before: such a directory
  holds a marker file, `.qudag-out`, listing the names the command created in it;
- outputs of an earlier run are replaced only with `--force` (as `keygen`, `dag export` and
  `templates pull` already ask for single files), and only the names listed in the marker are
  deleted or overwritten: files a user put there afterwards stay, and a name the command would
  write that it did not create stops it;
- `--keep` (testnet) / `--resume` (evolve) continue with the earlier run's data instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qudag.node.errors import UserError

MARKER = ".qudag-out"


class OutDir:
    """One command's output directory; `prepare` decides, before anything is written, whether
    the command may use it; `record` lists what it created."""

    def __init__(self, path: Path, command: str, flag: str = "--out") -> None:
        self.path = path
        self.command = command
        self.flag = flag
        self.created: set[str] = set()

    def _read_marker(self) -> set[str] | None:
        """Names listed by our marker, or None if the directory carries no (readable) marker."""
        try:
            data = json.loads((self.path / MARKER).read_text())
            names = {str(n) for n in data["created"]}
            return {n for n in names if "/" not in n and n not in ("", ".", "..", MARKER)}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def prepare(
        self, names: list[str], *, force: bool = False, keep: bool = False, ours: bool = False
    ) -> None:
        """Create the directory, or check that the command may write `names` into it.

        `force`: delete the earlier run's outputs (only the names in the marker). `keep`: reuse
        them. `ours`: the directory is known to be this command's even without a marker (an
        `evolve --resume DIR` of a run written before markers existed)."""
        where = f"{self.flag} {self.path}"
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{where}: exists and is not a directory")
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
            except OSError as exc:
                reason = exc.strerror or exc
                raise UserError(f"{where}: cannot create directory: {reason}") from None
            self._write_marker()
            return
        try:
            entries = {p.name for p in self.path.iterdir()} - {MARKER}
        except OSError as exc:
            raise UserError(f"{where}: cannot read: {exc.strerror or exc}") from None
        listed = self._read_marker()
        if listed is None and ours:
            listed = set(names) & entries
        if listed is None:
            if entries:
                raise UserError(
                    f"{where}: not empty and not written by qudag-node {self.command}; nothing "
                    "was deleted (choose a new or empty directory)"
                )
            listed = set()
        self.created = set(listed)
        foreign = sorted((set(names) & entries) - listed)
        if foreign:
            raise UserError(
                f"{where}: {foreign[0]} was not written by qudag-node {self.command}; "
                "not touching it (choose another directory)"
            )
        earlier = sorted(listed & entries)
        if earlier and not (force or keep):
            more = ", ..." if len(earlier) > 3 else ""
            resume = "--keep" if self.command == "testnet" else "--resume DIR"
            raise UserError(
                f"{where}: holds an earlier run ({', '.join(earlier[:3])}{more}); "
                f"--force replaces its outputs, {resume} continues it"
            )
        if force and not keep:
            for name in earlier:
                target = self.path / name
                try:
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
                except OSError as exc:
                    reason = exc.strerror or exc
                    raise UserError(f"{where}: cannot remove {name}: {reason}") from None
            self.created -= set(earlier)
        self._write_marker()

    def record(self, *names: str) -> None:
        """Add `names` to the marker before creating them, so a crash mid-run still leaves a
        directory that `--force` may clean."""
        new = set(names) - self.created
        if new:
            self.created |= new
            self._write_marker()

    def _write_marker(self) -> None:
        body = {"command": self.command, "created": sorted(self.created)}
        try:
            (self.path / MARKER).write_text(json.dumps(body) + "\n")
        except OSError as exc:
            reason = exc.strerror or exc
            raise UserError(f"{self.flag} {self.path}: not writable: {reason}") from None
